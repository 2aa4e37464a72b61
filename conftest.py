"""Docstring examples run as a user runs them.

``tests/conftest.py`` turns on strict dtype promotion for the test suite, and
JAX's config is global to the process, so without this the doctests of
``hypergrad/`` would run under it too. Examples show what a user types, with
JAX's default (standard) promotion; optax itself, used in some of them, is
not written for strict promotion.
"""

import jax
import pytest


@pytest.fixture(autouse=True)
def _standard_promotion_in_doctests(request):
  if isinstance(request.node, pytest.DoctestItem):
    with jax.numpy_dtype_promotion('standard'):
      yield
  else:
    yield
