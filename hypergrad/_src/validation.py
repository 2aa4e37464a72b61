"""Argument checks shared by every estimator, greedy method and outer optimiser.

All run on Python values before any compute, and name the bad argument and its
value in the message.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

_INT_TYPES = (int, np.integer)
_REAL_TYPES = (int, float, np.integer, np.floating)


def is_bool(value: Any) -> bool:
  return isinstance(value, (bool, np.bool_))


def is_real(value: Any) -> bool:
  """A Python or NumPy real number that is not a bool (it may be inf or nan).

  The one real-number check: every option that takes a number reads it.
  """
  return isinstance(value, _REAL_TYPES) and not is_bool(value)


def check_int(value, name: str, *, minimum: int = 1,
              allow_none: bool = False) -> int | None:
  """An int (not a bool) ``>= minimum``, or None where allowed; returns it.

  A numpy integer comes back as a Python int: as a static jit argument the
  two would compile separately.
  """
  if value is None and allow_none:
    return None
  if is_bool(value) or not isinstance(value, _INT_TYPES) or value < minimum:
    none = ' or None' if allow_none else ''
    raise ValueError(f'{name} must be an int >= {minimum}{none}, got '
                     f'{name}={value!r}.')
  return int(value)


def check_positive(value, name: str) -> float:
  """A finite real number ``> 0``; returns it as a float."""
  if not is_real(value):
    raise ValueError(f'{name} must be a positive number, got {name}='
                     f'{value!r}.')
  if not (math.isfinite(value) and value > 0):
    raise ValueError(f'{name} must be > 0 and finite, got {name}={value!r}.')
  return float(value)


def check_bounds(lo_hi, name: str) -> tuple[float, float]:
  """A pair ``(lo, hi)`` with None for no bound; returns floats (+-inf)."""
  if not isinstance(lo_hi, (tuple, list)) or len(lo_hi) != 2:
    raise ValueError(f'{name} must be a pair (lo, hi) with None for no bound, '
                     f'got {name}={lo_hi!r}.')
  lo, hi = lo_hi
  for v in (lo, hi):
    if v is not None and (not is_real(v) or math.isnan(v)):
      raise ValueError(f'{name} bounds must be numbers or None, got '
                       f'{name}={lo_hi!r}.')
  lo = -math.inf if lo is None else float(lo)
  hi = math.inf if hi is None else float(hi)
  if lo > hi:
    raise ValueError(f'{name} has lo > hi: {name}={lo_hi!r}.')
  return lo, hi
