"""The :class:`Dataset` type, the dataset names and seeded train/validation splits."""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Tuple

import numpy as np

from hypergrad._src import validation

DATASET_NAMES = (
    'mnist1d', 'mnist1d_large', 'digits', 'fashion_mnist', 'mnist',
    'svhn_cropped', 'cifar10')
_ALIASES = {'svhn': 'svhn_cropped'}

DEBIAN_FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'

# Standard per-channel statistics of the training sets, on pixels in [0, 1].
_IMAGE_STATS = {
    'mnist': ((0.1307,), (0.3081,)),
    'fashion_mnist': ((0.2860,), (0.3530,)),
    'svhn_cropped': ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}
_NUM_CLASSES = {name: 10 for name in DATASET_NAMES}
_IDX_NAMES = ('mnist', 'fashion_mnist')


class DatasetNotFoundError(FileNotFoundError):
  """Raised when a dataset's prepared files are not on this machine."""


class Dataset(NamedTuple):
  """A dataset split into train / validation / test, as host numpy arrays.

  Attributes:
    x_train: float32 ``(N_train, *input_shape)`` inputs.
    y_train: int32 ``(N_train,)`` labels.
    x_val: float32 ``(N_val, *input_shape)`` held out from the training set.
    y_val: int32 ``(N_val,)``.
    x_test: float32 ``(N_test, *input_shape)``; the official test set.
    y_test: int32 ``(N_test,)``.
    num_classes: number of classes.
    name: canonical dataset name (one of :data:`DATASET_NAMES`).
    input_shape: shape of one example, e.g. ``(32, 32, 3)`` or ``(40, 1)``.
    mean: float32 ``(C,)`` per-channel mean subtracted from the raw inputs.
    std: float32 ``(C,)`` per-channel std the inputs were divided by.
    train_index: int ``(N_train,)`` positions of the train examples in the
      pooled training set (train + val in load order); used by
      :func:`resplit`.
    val_index: int ``(N_val,)`` positions of the validation examples.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  name: str
  input_shape: Tuple[int, ...]
  mean: np.ndarray
  std: np.ndarray
  train_index: np.ndarray
  val_index: np.ndarray





def _check_val_fraction(val_fraction: Any) -> float:
  if (not validation.is_real(val_fraction)
      or not 0.0 < float(val_fraction) < 1.0):
    raise ValueError(
        f'val_fraction must be a number with 0 < val_fraction < 1, got '
        f'{val_fraction!r}.')
  return float(val_fraction)


def split_indices(
    seed: int, num_examples: int, val_fraction: float = 0.05
) -> Tuple[np.ndarray, np.ndarray]:
  """Draws a seeded train/validation partition of ``range(num_examples)``.

  Args:
    seed: integer seed; the same seed gives the same partition.
    num_examples: size of the pooled training set.
    val_fraction: fraction held out for validation, ``0 < f < 1``; rounded
      to a count of at least 1 and at most ``num_examples - 1``.

  Returns:
    ``(train_index, val_index)``: sorted int64 arrays, disjoint, covering
    ``range(num_examples)``.

  Example:
    >>> tr, va = split_indices(0, 100, 0.1)
    >>> len(tr), len(va)
    (90, 10)
  """
  val_fraction = _check_val_fraction(val_fraction)
  if num_examples < 2:
    raise ValueError(
        f'Need at least 2 training examples to hold out a validation set, '
        f'got {num_examples}.')
  num_val = min(max(int(round(val_fraction * num_examples)), 1),
                num_examples - 1)
  perm = np.random.default_rng(seed).permutation(num_examples)
  return np.sort(perm[num_val:]), np.sort(perm[:num_val])


def _make_dataset(name, x_pool, y_pool, x_test, y_test, mean, std,
                  val_fraction, seed) -> Dataset:
  train_index, val_index = split_indices(seed, len(x_pool), val_fraction)
  return Dataset(
      x_train=x_pool[train_index], y_train=y_pool[train_index],
      x_val=x_pool[val_index], y_val=y_pool[val_index],
      x_test=x_test, y_test=y_test,
      num_classes=_NUM_CLASSES[name], name=name,
      input_shape=tuple(x_pool.shape[1:]),
      mean=np.asarray(mean, np.float32), std=np.asarray(std, np.float32),
      train_index=train_index, val_index=val_index)


def pooled_train(dataset: Dataset) -> Tuple[np.ndarray, np.ndarray]:
  """The whole training portion (train + val) back in load order.

  Useful to keep one pool on the device and pass index arrays from
  :func:`split_indices` instead of copying data per split.

  Args:
    dataset: a :class:`Dataset`.

  Returns:
    ``(x_pool, y_pool)`` with ``x_pool[dataset.train_index] == x_train`` and
    ``x_pool[dataset.val_index] == x_val``; shapes ``(N_train + N_val, ...)``
    and ``(N_train + N_val,)``.

  Example:
    >>> from hypergrad.experiments.data import load_dataset
    >>> x_pool, y_pool = pooled_train(load_dataset('digits'))
    >>> x_pool.shape
    (1437, 8, 8, 1)
  """
  n = len(dataset.train_index) + len(dataset.val_index)
  x_pool = np.empty((n,) + tuple(np.shape(dataset.x_train)[1:]),
                    np.asarray(dataset.x_train).dtype)
  y_pool = np.empty((n,), np.asarray(dataset.y_train).dtype)
  x_pool[dataset.train_index] = np.asarray(dataset.x_train)
  x_pool[dataset.val_index] = np.asarray(dataset.x_val)
  y_pool[dataset.train_index] = np.asarray(dataset.y_train)
  y_pool[dataset.val_index] = np.asarray(dataset.y_val)
  return x_pool, y_pool


def resplit(dataset: Dataset, seed: int,
            val_fraction: Optional[float] = None) -> Dataset:
  """Re-draws the validation split from the pooled train + val, no reload.

  ``resplit(load_dataset(name, seed=a), b)`` equals
  ``load_dataset(name, seed=b)``: the pool is put back in load order first,
  so the result depends only on ``seed``.

  Args:
    dataset: a :class:`Dataset` from :func:`load_dataset`.
    seed: seed of the new split.
    val_fraction: new validation fraction; ``None`` keeps the current size.

  Returns:
    A new :class:`Dataset` with re-drawn ``x_train``/``x_val`` (and labels);
    the test set and normalisation are unchanged.

  Example:
    >>> from hypergrad.experiments.data import load_dataset
    >>> ds = load_dataset('digits', seed=0)
    >>> ds1 = resplit(ds, seed=1)  # e.g. once per outer step
  """
  x_pool, y_pool = pooled_train(dataset)
  n = len(y_pool)
  if val_fraction is None:
    # Exact fraction that reproduces the current count after rounding.
    val_fraction = len(dataset.val_index) / n
  return _make_dataset(dataset.name, x_pool, y_pool, dataset.x_test,
                       dataset.y_test, dataset.mean, dataset.std,
                       val_fraction, seed)
