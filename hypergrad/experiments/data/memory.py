"""Device-memory budget of a dataset, checked before anything is put on the device."""

from __future__ import annotations

import math
import os
from typing import Any, Optional, Sequence, Tuple

import jax
import numpy as np

from hypergrad.experiments.data.dataset import Dataset

_SPLITS = ('train', 'val', 'test')


def dataset_nbytes(dataset: Dataset, splits: Sequence[str] = _SPLITS,
                   dtype: Optional[Any] = None) -> int:
  """Bytes the inputs and labels of ``splits`` take (on host or device).

  Args:
    dataset: a :class:`Dataset`.
    splits: which of ``'train'``, ``'val'``, ``'test'`` to count.
    dtype: count the inputs as if cast to this dtype (e.g. ``jnp.float64``
      doubles them); ``None`` counts them as stored (float32).

  Returns:
    Total bytes of ``x_<split>`` and ``y_<split>`` over ``splits``.

  Example:
    >>> from hypergrad.experiments.data import load_dataset
    >>> dataset_nbytes(load_dataset('digits'))
    467220
  """
  total = 0
  for s in splits:
    if s not in _SPLITS:
      raise ValueError(f'Unknown split {s!r}; expected one of {_SPLITS}.')
    x = getattr(dataset, f'x_{s}')
    itemsize = (np.dtype(dtype).itemsize if dtype is not None
                else np.dtype(x.dtype).itemsize)
    total += int(math.prod(np.shape(x))) * itemsize
    y = getattr(dataset, f'y_{s}')
    total += int(math.prod(np.shape(y))) * np.dtype(y.dtype).itemsize
  return total


def _host_available_bytes() -> Optional[int]:
  try:
    with open('/proc/meminfo') as f:
      for line in f:
        if line.startswith('MemAvailable:'):
          return int(line.split()[1]) * 1024
  except OSError:
    pass
  try:
    return os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  except (ValueError, OSError, AttributeError):
    return None


def _device_budget(device) -> Tuple[Optional[int], str]:
  stats = None
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    pass  # Some backends do not implement memory_stats.
  if stats and 'bytes_limit' in stats:
    return int(stats['bytes_limit']), f'{device} bytes_limit'
  return _host_available_bytes(), f'available host memory (for {device})'


def check_fits(dataset: Dataset, device: Optional[jax.Device] = None,
               budget_bytes: Optional[int] = None, fraction: float = 0.9,
               splits: Sequence[str] = _SPLITS,
               dtype: Optional[Any] = None) -> int:
  """Raises a clear error, before any compute, if the data won't fit.

  Args:
    dataset: a :class:`Dataset`.
    device: target device; default ``jax.devices()[0]``.
    budget_bytes: memory to check against; default the device's
      ``memory_stats()['bytes_limit']``, or the host's available memory on
      devices without it (CPU).
    fraction: share of the budget the data may take; the rest is left for
      parameters, optimiser state, tangents and activations.
    splits: splits that will be put on the device.
    dtype: dtype the inputs will have on the device (default as stored).

  Returns:
    The number of bytes the data needs.

  Raises:
    ValueError: the data needs more than ``fraction * budget``.

  Example:
    >>> from hypergrad.experiments.data import load_dataset
    >>> check_fits(load_dataset('digits'), budget_bytes=10**9)
    467220
  """
  needed = dataset_nbytes(dataset, splits, dtype)
  if budget_bytes is None:
    device = device if device is not None else jax.devices()[0]
    budget_bytes, source = _device_budget(device)
    if budget_bytes is None:
      return needed  # Nothing known to check against.
  else:
    source = 'budget_bytes'
  allowed = fraction * budget_bytes
  if needed > allowed:
    parts = ', '.join(
        f'{s} {dataset_nbytes(dataset, (s,), dtype) / 1e6:.1f} MB'
        for s in splits)
    raise ValueError(
        f'Dataset {dataset.name!r} needs {needed / 1e6:.1f} MB on the device '
        f'({parts}) but only {allowed / 1e6:.1f} MB is allowed '
        f'({fraction:.0%} of {budget_bytes / 1e6:.1f} MB, {source}). Use a '
        f'smaller dataset or subset, or a device with more memory.')
  return needed


def to_device(dataset: Dataset, device: Optional[jax.Device] = None) -> Dataset:
  """Puts the six data arrays on ``device`` (other fields stay on host).

  Args:
    dataset: a host :class:`Dataset`.
    device: target device; default ``jax.devices()[0]``.

  Returns:
    A :class:`Dataset` whose ``x_*``/``y_*`` are ``jax.Array``.

  Example:
    >>> from hypergrad.experiments.data import load_dataset
    >>> ds = to_device(load_dataset('digits'))
  """
  device = device if device is not None else jax.devices()[0]
  arrays = {f'{p}_{s}': jax.device_put(getattr(dataset, f'{p}_{s}'), device)
            for p in 'xy' for s in _SPLITS}
  return dataset._replace(**arrays)
