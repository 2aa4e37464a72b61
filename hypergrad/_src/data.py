"""Datasets for long-horizon hypergradient experiments, held whole on device.

Hypergradients are computed through a ``lax.scan`` unroll of thousands of
inner training steps, so the whole training set is put on the device once and
every minibatch is chosen *inside* the jitted step from the step index
(:func:`batch_indices`, :func:`get_batch`). Loading happens on the host into a
:class:`Dataset` of numpy arrays.

Sources, in the order they are tried for each name:

* ``'mnist1d'``: generated locally by the ``mnist1d`` package (never its
  download path); 4000 train / 1000 test signals of length 40, 10 classes.
  Stored as ``(N, 40, 1)`` (length, channel), so 1-D convolutions apply
  directly and MLPs flatten it.
* ``'digits'``: scikit-learn's bundled 8x8 digits (1797 images); a fixed 20%
  (360 images) is the test set, the same on every machine.
* ``'fashion_mnist'``: IDX files in ``data_dir`` if it holds them, else (with no
  ``data_dir``) Debian's ``dataset-fashion-mnist`` folder
  ``/usr/share/datasets/fashion-mnist``, else tensorflow-datasets.
* ``'mnist'``: IDX files in ``data_dir`` if it holds them, else
  tensorflow-datasets.
* ``'svhn_cropped'`` (alias ``'svhn'``) and ``'cifar10'``: tensorflow-datasets.

tensorflow-datasets is read through its random-access path
(``tfds.data_source`` over ``array_record`` files), which needs no TensorFlow.
Nothing is ever downloaded: when the prepared files are absent
:class:`DatasetNotFoundError` is raised at once, saying how to prepare them.
The default ``data_dir`` is ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``.

Splits follow the FDS paper: a validation set (``val_fraction`` of the
training set, 5% by default) is held out from the training set by a seeded
draw, and the test set is untouched. :func:`resplit` re-draws it without
reloading.

Normalisation: images are float32 NHWC, ``(x / 255 - mean) / std`` per channel
with the standard constants for MNIST, Fashion-MNIST, SVHN and CIFAR-10. For
``'digits'`` and ``'mnist1d'`` a single mean/std is computed on the whole
training portion (train + validation, before the hold-out), so that re-drawing
the validation split never changes the scaling of the data. Labels are int32.

Device memory (float32 inputs plus int32 labels; "train" is the whole training
portion, of which ``val_fraction`` becomes the validation split)::

    dataset         train N  test N  example shape  train inputs  test inputs  all arrays
    mnist1d            4000    1000  (40, 1)             0.64 MB      0.16 MB     0.82 MB
    digits             1437     360  (8, 8, 1)           0.37 MB      0.09 MB     0.47 MB
    mnist             60000   10000  (28, 28, 1)       188.16 MB     31.36 MB   219.80 MB
    fashion_mnist     60000   10000  (28, 28, 1)       188.16 MB     31.36 MB   219.80 MB
    svhn_cropped      73257   26032  (32, 32, 3)       900.18 MB    319.88 MB  1220.46 MB
    cifar10           50000   10000  (32, 32, 3)       614.40 MB    122.88 MB   737.52 MB

(e.g. CIFAR-10 train: 50000 x 32 x 32 x 3 x 4 B = 614.4 MB; SVHN's 531k
``extra`` split is not used.) Forward-mode hypergradients carry no tangent for
the data, so these numbers are not doubled by ``jax.jvp``.
:func:`check_fits` checks them against the device before any compute.

Example:
  >>> ds = load_dataset('digits', seed=0)
  >>> ds.x_train.shape, ds.x_val.shape, ds.x_test.shape
  ((1365, 8, 8, 1), (72, 8, 8, 1), (360, 8, 8, 1))
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import pathlib
import re
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    'DATASET_NAMES',
    'DEBIAN_FASHION_MNIST_DIR',
    'Dataset',
    'DatasetNotFoundError',
    'augment',
    'batch_indices',
    'check_fits',
    'dataset_nbytes',
    'default_data_dir',
    'get_batch',
    'load_dataset',
    'pooled_train',
    'read_idx',
    'resplit',
    'split_indices',
    'to_device',
]

DATASET_NAMES = (
    'mnist1d', 'digits', 'fashion_mnist', 'mnist', 'svhn_cropped', 'cifar10')
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
_DIGITS_NUM_TEST = 360  # ceil(0.2 * 1797), fixed so the test set never moves.
_DIGITS_TEST_SEED = 0


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


# --------------------------------------------------------------------------
# Splitting.


def _check_val_fraction(val_fraction: Any) -> float:
  if (isinstance(val_fraction, bool)
      or not isinstance(val_fraction, (int, float, np.integer, np.floating))
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


# --------------------------------------------------------------------------
# Sources.


def default_data_dir() -> str:
  """Returns ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
  return os.environ.get('TFDS_DATA_DIR') or os.path.join(
      os.path.expanduser('~'), 'tensorflow_datasets')


def _readonly(*arrays):
  for a in arrays:
    a.flags.writeable = False
  return arrays


@functools.lru_cache(maxsize=1)
def _mnist1d_raw():
  # Generation takes ~3-4 s, so it is done once per process.
  from mnist1d.data import get_dataset_args, make_dataset  # pylint: disable=g-import-not-at-top
  # make_dataset reseeds numpy's global RNG; keep the caller's stream intact.
  state = np.random.get_state()
  try:
    d = make_dataset(get_dataset_args())
  finally:
    np.random.set_state(state)
  return _readonly(
      np.asarray(d['x'], np.float32)[..., None],
      np.asarray(d['y'], np.int32),
      np.asarray(d['x_test'], np.float32)[..., None],
      np.asarray(d['y_test'], np.int32))


@functools.lru_cache(maxsize=1)
def _digits_raw():
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  d = load_digits()
  x = np.asarray(d.images, np.float32)[..., None]  # (1797, 8, 8, 1) in [0, 16]
  y = np.asarray(d.target, np.int32)
  perm = np.random.default_rng(_DIGITS_TEST_SEED).permutation(len(y))
  test, pool = np.sort(perm[:_DIGITS_NUM_TEST]), np.sort(perm[_DIGITS_NUM_TEST:])
  return _readonly(x[pool], y[pool], x[test], y[test])


def _standardise(x_pool, x_test):
  mean = float(x_pool.mean())
  std = float(x_pool.std())
  return (((x_pool - mean) / std).astype(np.float32),
          ((x_test - mean) / std).astype(np.float32), (mean,), (std,))


_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype('>i2'),
               0x0C: np.dtype('>i4'), 0x0D: np.dtype('>f4'),
               0x0E: np.dtype('>f8')}


def read_idx(path: os.PathLike | str) -> np.ndarray:
  """Parses one IDX file (the MNIST distribution format), gzipped or not.

  Args:
    path: path to e.g. ``train-images-idx3-ubyte`` or ``...-ubyte.gz``;
      gzip is recognised from the file's magic bytes, not its name.

  Returns:
    The array with the shape stored in the header, e.g. uint8
    ``(60000, 28, 28)`` for images or ``(60000,)`` for labels.

  Example:
    >>> images = read_idx('/usr/share/datasets/fashion-mnist/'
    ...                   't10k-images-idx3-ubyte.gz')  # doctest: +SKIP
  """
  with open(path, 'rb') as f:
    raw = f.read()
  if raw[:2] == b'\x1f\x8b':
    raw = gzip.decompress(raw)
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
    raise ValueError(f'{path} is not an IDX file (bad magic {raw[:4]!r}).')
  dtype = np.dtype(_IDX_DTYPES[raw[2]])
  ndim = raw[3]
  shape = tuple(int(d) for d in np.frombuffer(raw, '>u4', ndim, offset=4))
  offset = 4 + 4 * ndim
  count = math.prod(shape)
  if len(raw) - offset != count * dtype.itemsize:
    raise ValueError(
        f'{path}: header says shape {shape} of {dtype} but the file holds '
        f'{len(raw) - offset} data bytes.')
  return np.frombuffer(raw, dtype, count, offset=offset).reshape(shape).astype(
      dtype.newbyteorder('='))


def _find_idx_file(folder: pathlib.Path, prefix: str, kind: str, nd: int):
  for stem in (f'{prefix}-{kind}-idx{nd}-ubyte', f'{prefix}-{kind}.idx{nd}-ubyte'):
    for suffix in ('', '.gz'):
      p = folder / (stem + suffix)
      if p.is_file():
        return p
  return None


def _idx_files(folder) -> Optional[dict]:
  """The four IDX files in ``folder``, or None if any is missing."""
  if folder is None:
    return None
  folder = pathlib.Path(folder).expanduser()
  if not folder.is_dir():
    return None
  files = {
      'x_train': _find_idx_file(folder, 'train', 'images', 3),
      'y_train': _find_idx_file(folder, 'train', 'labels', 1),
      'x_test': _find_idx_file(folder, 't10k', 'images', 3),
      'y_test': _find_idx_file(folder, 't10k', 'labels', 1),
  }
  return files if all(files.values()) else None


def _load_idx(files: dict):
  arr = {k: read_idx(v) for k, v in files.items()}
  for split in ('train', 'test'):
    x, y = arr[f'x_{split}'], arr[f'y_{split}']
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
      raise ValueError(
          f'IDX {split} files disagree: images {x.shape}, labels {y.shape} '
          f'({files[f"x_{split}"]}, {files[f"y_{split}"]}).')
  return (arr['x_train'][..., None], arr['y_train'],
          arr['x_test'][..., None], arr['y_test'])


def _version_key(v: str):
  return tuple(int(p) for p in v.split('.'))


def _prepare_hint(name: str) -> str:
  hint = (
      f'hypergrad never downloads. To prepare {name!r}, on a machine with '
      f'internet run\n'
      f'  python -c "import tensorflow_datasets as tfds; '
      f"tfds.data_source('{name}', data_dir='DIR', download=True)\"\n"
      f'or\n'
      f'  tfds build {name} --data_dir DIR --file_format array_record\n'
      f'then copy DIR to this machine and pass data_dir=DIR (--data_dir DIR) '
      f'or set TFDS_DATA_DIR=DIR.')
  if name in _IDX_NAMES:
    hint += ('\nAlternatively pass data_dir=FOLDER holding the raw IDX files '
             '(train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], '
             't10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]).')
  if name == 'fashion_mnist':
    hint += ('\nOn Debian/Ubuntu, `apt-get install dataset-fashion-mnist` puts '
             f'them in {DEBIAN_FASHION_MNIST_DIR}, which is searched by '
             'default.')
  return hint


def _find_tfds_version(name: str, data_dir: str, searched: Sequence[str]):
  """Returns the newest prepared version in data_dir, or raises at once."""
  root = pathlib.Path(data_dir).expanduser() / name
  versions = []
  if root.is_dir():
    for child in root.iterdir():
      # Skips tfds' '<version>.incomplete...' leftovers of interrupted builds.
      if (re.fullmatch(r'\d+\.\d+\.\d+', child.name)
          and (child / 'dataset_info.json').is_file()):
        versions.append(child.name)
  if not versions:
    where = ', '.join(list(searched) + [
        f'{root}/<version>/dataset_info.json (tensorflow-datasets)'])
    raise DatasetNotFoundError(
        f'Dataset {name!r} not found; searched: {where}.\n'
        + _prepare_hint(name))
  version = max(versions, key=_version_key)
  info_path = root / version / 'dataset_info.json'
  with open(info_path) as f:
    file_format = json.load(f).get('fileFormat', 'tfrecord')
  if file_format not in ('array_record', 'parquet'):
    raise DatasetNotFoundError(
        f'Dataset {name!r} in {root / version} was prepared as '
        f'{file_format!r}, which only TensorFlow can read; hypergrad reads '
        f'array_record without TensorFlow. Re-prepare it into another '
        f'data_dir with --file_format array_record.\n' + _prepare_hint(name))
  return version


def _load_tfds(name: str, data_dir: str, searched: Sequence[str] = (),
               chunk: int = 4096):
  version = _find_tfds_version(name, data_dir, searched)
  # Imported lazily: importing tfds costs ~0.6 s and it is not always needed.
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  out = []
  for split in ('train', 'test'):
    source = tfds.data_source(f'{name}:{version}', split=split,
                              data_dir=os.fspath(data_dir), download=False)
    n = len(source)
    images, labels = None, np.empty((n,), np.int32)
    for start in range(0, n, chunk):
      idx = list(range(start, min(start + chunk, n)))
      examples = (source.__getitems__(idx) if hasattr(source, '__getitems__')
                  else [source[i] for i in idx])
      batch = np.stack([np.asarray(e['image']) for e in examples])
      if images is None:
        images = np.empty((n,) + batch.shape[1:], batch.dtype)
      images[start:start + len(idx)] = batch
      labels[start:start + len(idx)] = [int(e['label']) for e in examples]
    out += [images, labels]
  return tuple(out)


def _normalise_images(name, x_pool, x_test):
  mean, std = _IMAGE_STATS[name]
  m = np.asarray(mean, np.float32)
  s = np.asarray(std, np.float32)

  def f(x):
    x = x.astype(np.float32)
    x /= 255.0
    x -= m
    x /= s
    return x

  return f(x_pool), f(x_test), mean, std


def load_dataset(name: str, *, data_dir: Optional[str] = None,
                 val_fraction: float = 0.05, seed: int = 0) -> Dataset:
  """Loads a dataset, normalised and split into train / validation / test.

  Args:
    name: one of ``'mnist1d'``, ``'digits'`` (both embedded, need nothing),
      ``'fashion_mnist'``, ``'mnist'``, ``'svhn_cropped'`` (alias ``'svhn'``),
      ``'cifar10'``.
    data_dir: tensorflow-datasets data directory holding
      ``<name>/<version>/`` in array_record format, or (MNIST / Fashion-MNIST)
      a folder of raw IDX files. ``None``: Debian's Fashion-MNIST folder for
      ``'fashion_mnist'``, then :func:`default_data_dir`. Ignored by the
      embedded datasets.
    val_fraction: fraction of the training set held out for validation,
      ``0 < val_fraction < 1``.
    seed: seed of the validation draw (see :func:`resplit`).

  Returns:
    A :class:`Dataset`: float32 inputs ``(N, H, W, C)`` (``(N, 40, 1)`` for
    MNIST-1D), int32 labels.

  Raises:
    ValueError: unknown ``name`` or bad ``val_fraction``.
    DatasetNotFoundError: the data is not on this machine (raised at once;
      nothing is downloaded).

  Example:
    >>> ds = load_dataset('mnist1d', val_fraction=0.1, seed=3)
    >>> ds.x_train.shape, ds.x_test.shape
    ((3600, 40, 1), (1000, 40, 1))
  """
  key = _ALIASES.get(name, name) if isinstance(name, str) else name
  if key not in DATASET_NAMES:
    raise ValueError(
        f'Unknown dataset {name!r}; valid names: '
        f'{", ".join(DATASET_NAMES + tuple(_ALIASES))}.')
  name = key
  _check_val_fraction(val_fraction)

  if name == 'mnist1d':
    x_pool, y_pool, x_test, y_test = _mnist1d_raw()
    x_pool, x_test, mean, std = _standardise(x_pool, x_test)
  elif name == 'digits':
    x_pool, y_pool, x_test, y_test = _digits_raw()
    x_pool, x_test, mean, std = _standardise(x_pool, x_test)
  else:
    raw = None
    searched = []
    if name in _IDX_NAMES:
      idx_dirs = [data_dir] if data_dir is not None else (
          [DEBIAN_FASHION_MNIST_DIR] if name == 'fashion_mnist' else [])
      for folder in idx_dirs:
        files = _idx_files(folder)
        if files is not None:
          raw = _load_idx(files)
          break
        searched.append(f'{folder} (IDX files)')
    if raw is None:
      raw = _load_tfds(name, data_dir if data_dir is not None
                       else default_data_dir(), searched)
    x_pool, y_pool, x_test, y_test = raw
    x_pool, x_test, mean, std = _normalise_images(name, x_pool, x_test)
    y_pool = y_pool.astype(np.int32)
    y_test = y_test.astype(np.int32)
  return _make_dataset(name, x_pool, y_pool, x_test, y_test, mean, std,
                       val_fraction, seed)


# --------------------------------------------------------------------------
# Memory.

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
    >>> ds = to_device(load_dataset('digits'))
  """
  device = device if device is not None else jax.devices()[0]
  arrays = {f'{p}_{s}': jax.device_put(getattr(dataset, f'{p}_{s}'), device)
            for p in 'xy' for s in _SPLITS}
  return dataset._replace(**arrays)


# --------------------------------------------------------------------------
# On-device batching and augmentation.


_FEISTEL_ROUNDS = 6


def _mix(x: jax.Array, round_key: jax.Array) -> jax.Array:
  """A uint32 avalanche hash (murmur3's finaliser) of ``x`` keyed by a word."""
  x = x ^ round_key
  x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
  x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _permute(key: jax.Array, i: jax.Array, n: int) -> jax.Array:
  """``perm(i)`` for a keyed pseudo-random permutation ``perm`` of ``[0, n)``.

  A balanced Feistel network is a bijection of ``[0, 4**h)``, ``4**h >= n``;
  cycle-walking (re-encrypting values that land in ``[n, 4**h)``) restricts
  it to a bijection of ``[0, n)`` (Black & Rogaway 2002). The cost is a few
  integer operations per *requested* index, where drawing the whole
  permutation (``jax.random.permutation``) sorts ``n`` keys at every step:
  on a 3,800-example MNIST-1D epoch that sort was 80% of a training step.
  """
  half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
  mask = jnp.uint32((1 << half) - 1)
  round_keys = jax.random.bits(key, (_FEISTEL_ROUNDS,), jnp.uint32)

  def encrypt(x):
    left, right = x >> half, x & mask
    for r in range(_FEISTEL_ROUNDS):
      left, right = right, left ^ (_mix(right, round_keys[r]) & mask)
    return (left << half) | right

  # The walk ends: a bijection's orbit from an in-range value comes back in.
  y = encrypt(i.astype(jnp.uint32))
  y = jax.lax.while_loop(
      lambda y: jnp.any(y >= n),
      lambda y: jnp.where(y >= n, encrypt(y), y), y)
  return y.astype(jnp.int32)


def batch_indices(key: jax.Array, t: jax.Array, batch_size: int,
                  num_examples: int) -> jax.Array:
  """Indices of minibatch ``t`` of shuffled epochs, computed inside jit.

  Epoch ``e = t // (num_examples // batch_size)`` is a pseudo-random
  permutation of the examples keyed by ``jax.random.fold_in(key, e)``; batch
  ``t`` is positions ``[p * batch_size, (p + 1) * batch_size)`` of it,
  ``p = t % steps_per_epoch``. Only those ``batch_size`` entries are computed
  (a keyed Feistel permutation, not a sort of the whole epoch), so a step
  pays for its batch, not for the dataset. The last
  ``num_examples % batch_size`` positions of each epoch are never reached, so
  every batch is full (and has a static shape); each epoch drops different
  examples.

  Args:
    key: PRNG key fixing the whole sequence of batches.
    t: scalar int step index; may be traced (e.g. a ``lax.scan`` counter).
    batch_size: static batch size, ``1 <= batch_size <= num_examples``.
    num_examples: static number of training examples, ``< 2**31``.

  Returns:
    int32 ``(batch_size,)`` indices into the training set, distinct within
    an epoch.

  Example:
    >>> key = jax.random.key(0)
    >>> idx = jax.jit(batch_indices, static_argnums=(2, 3))(key, 7, 32, 1000)
    >>> idx.shape
    (32,)
  """
  batch_size, num_examples = int(batch_size), int(num_examples)
  if not 1 <= batch_size <= num_examples:
    raise ValueError(
        f'batch_size must be in [1, num_examples={num_examples}], got '
        f'{batch_size}.')
  if num_examples >= 2**31:
    raise ValueError(f'num_examples={num_examples} must be below 2**31.')
  steps_per_epoch = num_examples // batch_size
  t = jnp.asarray(t, jnp.int32)
  epoch = t // steps_per_epoch
  position = t % steps_per_epoch
  slots = position * batch_size + jnp.arange(batch_size, dtype=jnp.int32)
  return _permute(jax.random.fold_in(key, epoch), slots, num_examples)


def get_batch(x: jax.Array, y: jax.Array, key: jax.Array, t: jax.Array,
              batch_size: int) -> Tuple[jax.Array, jax.Array]:
  """Minibatch ``t`` of ``(x, y)`` as chosen by :func:`batch_indices`.

  Args:
    x: ``(N, ...)`` inputs, ideally already on the device.
    y: ``(N,)`` labels.
    key: PRNG key of the batch sequence.
    t: scalar int step index (may be traced).
    batch_size: static batch size.

  Returns:
    ``(x_batch, y_batch)`` of shapes ``(batch_size, ...)`` and
    ``(batch_size,)``.

  Example:
    >>> xb, yb = get_batch(ds.x_train, ds.y_train, key, t, 128)  # doctest: +SKIP
  """
  idx = batch_indices(key, t, batch_size, x.shape[0])
  return jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0)


def augment(key: jax.Array, images: jax.Array, pad: int = 4,
            flip: bool = True, mode: str = 'reflect') -> jax.Array:
  """Random-crop-with-padding and horizontal-flip augmentation, per example.

  Each image is padded by ``pad`` pixels on every side and a random
  ``H x W`` window is cropped (a shift of up to ``pad`` pixels each way),
  then flipped left-right with probability 1/2. Deterministic given ``key``;
  jit-able; draws independently per example (``vmap``).

  Padding: ``mode='reflect'`` (default, as in the WRN paper) mirrors the
  border; ``mode='constant'`` pads zeros, which for normalised inputs is the
  dataset's mean colour. Flips suit CIFAR-10; for SVHN digits pass
  ``flip=False``.

  Args:
    key: PRNG key.
    images: ``(N, H, W, C)`` images (any float dtype).
    pad: maximum shift in pixels; 0 disables cropping.
    flip: whether to apply random horizontal flips.
    mode: ``'reflect'`` or ``'constant'``.

  Returns:
    Augmented images, same shape and dtype as ``images``.

  Example:
    >>> xb = augment(jax.random.key(1), xb)  # doctest: +SKIP
  """
  if images.ndim != 4:
    raise ValueError(f'augment expects (N, H, W, C) images, got shape '
                     f'{images.shape}.')
  if mode not in ('reflect', 'constant'):
    raise ValueError(f"mode must be 'reflect' or 'constant', got {mode!r}.")
  pad = int(pad)
  _, h, w, c = images.shape

  def one(k, img):
    k_crop, k_flip = jax.random.split(k)
    if pad > 0:
      padded = jnp.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
      dy, dx = jax.random.randint(k_crop, (2,), 0, 2 * pad + 1)
      img = jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))
    if flip:
      img = jnp.where(jax.random.bernoulli(k_flip), img[:, ::-1, :], img)
    return img

  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(one)(keys, images)
