"""Optional dependencies: a missing one names the ``pip install`` that brings it."""

from __future__ import annotations

import importlib.util
import sys

DISTRIBUTION = 'jax-hypergrad'


def _absent(module: str) -> bool:
  if module in sys.modules:
    # None there is Python's "import blocked" marker.
    return sys.modules[module] is None
  return importlib.util.find_spec(module) is None


def missing(*modules: str) -> list[str]:
  """The top-level modules among ``modules`` that cannot be imported."""
  return [m for m in modules if _absent(m)]


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
