"""Loaders: MNIST-1D and digits generated or bundled locally, IDX files, tensorflow-datasets.

Nothing is ever downloaded: absent files raise :class:`DatasetNotFoundError`
naming the ``data_dir`` to prepare.
"""

from __future__ import annotations

import functools
import gzip
import json
import math
import os
import pathlib
import re
from typing import Optional, Sequence

import numpy as np

from hypergrad.experiments.data.dataset import _ALIASES
from hypergrad.experiments.data.dataset import _IDX_NAMES
from hypergrad.experiments.data.dataset import _IMAGE_STATS
from hypergrad.experiments.data.dataset import DATASET_NAMES
from hypergrad.experiments.data.dataset import DEBIAN_FASHION_MNIST_DIR
from hypergrad.experiments.data.dataset import Dataset
from hypergrad.experiments.data.dataset import DatasetNotFoundError
from hypergrad.experiments.data.dataset import _check_val_fraction
from hypergrad.experiments.data.dataset import _make_dataset

_DIGITS_NUM_TEST = 360  # ceil(0.2 * 1797), fixed so the test set never moves.
_DIGITS_TEST_SEED = 0


def default_data_dir() -> str:
  """Returns ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``."""
  return os.environ.get('TFDS_DATA_DIR') or os.path.join(
      os.path.expanduser('~'), 'tensorflow_datasets')


def _readonly(*arrays):
  for a in arrays:
    a.flags.writeable = False
  return arrays


# Samples generated for each MNIST-1D variant (80% train, 20% test): the
# standard 5,000 of the paper, and 25,000 for a task where the validation
# signal is not drowned by a 200-example split.
_MNIST1D_SAMPLES = {'mnist1d': 5000, 'mnist1d_large': 25000}


@functools.lru_cache(maxsize=2)
def _mnist1d_raw(num_samples: int = 5000):
  # Generation takes ~3-4 s per 5,000, so it is done once per process.
  from mnist1d.data import get_dataset_args  # pylint: disable=g-import-not-at-top
  from mnist1d.data import make_dataset  # pylint: disable=g-import-not-at-top
  # make_dataset reseeds numpy's global RNG; keep the caller's stream intact.
  state = np.random.get_state()
  args = get_dataset_args()
  args.num_samples = num_samples
  try:
    d = make_dataset(args)
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
      f'then copy DIR to this machine and pass data_dir=DIR (launch script: '
      f'--config.data_dir=DIR; benchmarks: --data_dir DIR) '
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
    name: one of ``'mnist1d'``, ``'mnist1d_large'`` (25,000 generated
      signals), ``'digits'`` (all embedded, need nothing),
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

  if name in _MNIST1D_SAMPLES:
    x_pool, y_pool, x_test, y_test = _mnist1d_raw(_MNIST1D_SAMPLES[name])
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
