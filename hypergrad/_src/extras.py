"""Optional dependencies: a missing one names the ``pip install`` that brings it."""

from __future__ import annotations

import importlib.util

DISTRIBUTION = 'jax-hypergrad'


def missing(*modules: str) -> list[str]:
  """The top-level modules among ``modules`` that cannot be imported."""
  return [m for m in modules if importlib.util.find_spec(m) is None]


def require(extra: str, *modules: str) -> None:
  """Raises ImportError naming ``pip install 'jax-hypergrad[extra]'`` if needed.

  Args:
    extra: the extra of ``setup.cfg`` that installs ``modules``.
    *modules: top-level import names, e.g. ``'flax'``.

  Raises:
    ImportError: one of ``modules`` is not installed.
  """
  absent = missing(*modules)
  if absent:
    raise ImportError(
        f'this part of hypergrad needs {", ".join(absent)}, which is not '
        f"installed; run: pip install '{DISTRIBUTION}[{extra}]'")
