"""Tests for hypergrad.experiments.data (offline; prepares its own tfds/IDX data)."""

import gzip
import io
import json
import os
import sys
import time
import types

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hypergrad.experiments import data
from hypergrad.experiments.data import dataset as data_dataset

_N_TRAIN, _N_TEST = 60, 20


def _png(image: np.ndarray) -> bytes:
  from PIL import Image  # pylint: disable=g-import-not-at-top
  buf = io.BytesIO()
  Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image).save(
      buf, format='PNG')
  return buf.getvalue()


def _write_tfds(data_dir, name, n_train=_N_TRAIN, n_test=_N_TEST):
  """Writes a small array_record copy of tfds dataset ``name``.

  Uses the real registered builder (so features, version and file layout are
  exactly what tfds reads back) with its download step replaced by random
  examples. Images are handed over PNG-encoded by PIL because tfds' own
  encoder needs TensorFlow.

  Returns:
    {'train': (images, labels), 'test': (images, labels)} as written.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  builder = tfds.builder(name, data_dir=os.fspath(data_dir),
                         file_format='array_record')
  features = builder.info.features
  shape = features['image'].shape
  written = {}
  for split, n, seed in (('train', n_train, 0), ('test', n_test, 1)):
    rng = np.random.default_rng(seed)
    written[split] = (rng.integers(0, 256, (n,) + shape, dtype=np.uint8),
                      rng.integers(0, 10, n).astype(np.int32))

  def generate(split):
    images, labels = written[split]
    for i in range(len(labels)):
      ex = {'image': _png(images[i]), 'label': int(labels[i])}
      if 'id' in features:
        ex['id'] = f'{split}_{i}'
      yield i, ex

  builder._split_generators = types.MethodType(  # pylint: disable=protected-access
      lambda self, dl_manager: {s: generate(s) for s in written}, builder)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return written


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  root = tmp_path_factory.mktemp('tfds')
  written = {name: _write_tfds(root, name)
             for name in ('mnist', 'cifar10', 'svhn_cropped')}
  return root, written


def _write_idx(path, array, gz):
  codes = {np.uint8: 0x08}
  header = bytes([0, 0, codes[array.dtype.type], array.ndim])
  header += np.asarray(array.shape, '>u4').tobytes()
  payload = header + array.tobytes()
  if gz:
    path = path.with_name(path.name + '.gz')
    payload = gzip.compress(payload)
  path.write_bytes(payload)
  return path


def _make_idx_dir(folder, gz, n_train=30, n_test=10):
  folder.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(3)
  arrays = {
      'train-images-idx3-ubyte': rng.integers(0, 256, (n_train, 28, 28),
                                              dtype=np.uint8),
      'train-labels-idx1-ubyte': rng.integers(0, 10, n_train, dtype=np.uint8),
      't10k-images-idx3-ubyte': rng.integers(0, 256, (n_test, 28, 28),
                                             dtype=np.uint8),
      't10k-labels-idx1-ubyte': rng.integers(0, 10, n_test, dtype=np.uint8),
  }
  for fname, arr in arrays.items():
    _write_idx(folder / fname, arr, gz)
  return arrays


_pool = data.pooled_train


class _TestCase(parameterized.TestCase):
  """absltest's create_tempdir needs parsed absl flags; use pytest's."""

  @pytest.fixture(autouse=True)
  def _tmp_path(self, tmp_path):
    self.tmp = tmp_path


def _assert_same_examples(a, b):
  """(x, y) pairs a and b hold the same examples, in any order."""

  def rows(xy):
    x, y = xy
    table = np.concatenate(
        [np.round(np.asarray(x, np.float64).reshape(len(x), -1), 4),
         np.asarray(y, np.float64)[:, None]], axis=1)
    return table[np.lexsort(table.T[::-1])]

  np.testing.assert_allclose(rows(a), rows(b), atol=1e-4)


class TfdsTest(_TestCase):

  @pytest.fixture(autouse=True)
  def _dir(self, tfds_dir):
    self.root, self.written = tfds_dir

  @parameterized.parameters(
      ('mnist', 'mnist', (28, 28, 1)),
      ('cifar10', 'cifar10', (32, 32, 3)),
      ('svhn', 'svhn_cropped', (32, 32, 3)),
  )
  def test_loads_and_normalises(self, name, canonical, shape):
    ds = data.load_dataset(name, data_dir=str(self.root), val_fraction=0.1,
                           seed=0)
    self.assertEqual(ds.name, canonical)
    self.assertEqual(ds.input_shape, shape)
    self.assertEqual(ds.num_classes, 10)
    chex.assert_shape(ds.x_train, (54,) + shape)
    chex.assert_shape(ds.x_val, (6,) + shape)
    chex.assert_shape(ds.x_test, (_N_TEST,) + shape)
    for x in (ds.x_train, ds.x_val, ds.x_test):
      self.assertEqual(x.dtype, np.float32)
    for y in (ds.y_train, ds.y_val, ds.y_test):
      self.assertEqual(y.dtype, np.int32)
    mean, std = data_dataset._IMAGE_STATS[canonical]  # pylint: disable=protected-access
    normalise = lambda raw: (raw / 255.0 - np.asarray(mean)) / np.asarray(std)
    # tfds shuffles examples when writing, so compare as multisets.
    raw_x, raw_y = self.written[canonical]['train']
    _assert_same_examples(_pool(ds), (normalise(raw_x), raw_y))
    raw_xt, raw_yt = self.written[canonical]['test']
    _assert_same_examples((ds.x_test, ds.y_test), (normalise(raw_xt), raw_yt))
    self.assertNotIn('tensorflow', sys.modules)

  def test_default_data_dir_from_env(self):
    with pytest.MonkeyPatch.context() as mp:
      mp.setenv('TFDS_DATA_DIR', str(self.root))
      self.assertEqual(data.default_data_dir(), str(self.root))
      ds = data.load_dataset('mnist')
    chex.assert_shape(ds.x_test, (_N_TEST, 28, 28, 1))

  def test_tfrecord_format_is_refused_clearly(self):
    bad = self.tmp
    src = self.root / 'cifar10'
    version = next(p.name for p in src.iterdir())
    (bad / 'cifar10' / version).mkdir(parents=True)
    info = json.loads((src / version / 'dataset_info.json').read_text())
    info['fileFormat'] = 'tfrecord'
    (bad / 'cifar10' / version / 'dataset_info.json').write_text(
        json.dumps(info))
    with self.assertRaisesRegex(data.DatasetNotFoundError, 'array_record'):
      data.load_dataset('cifar10', data_dir=str(bad))


class MissingDataTest(_TestCase):

  @parameterized.parameters('cifar10', 'svhn_cropped', 'mnist')
  def test_missing_raises_at_once(self, name):
    empty = str(self.tmp)
    start = time.monotonic()
    with self.assertRaises(data.DatasetNotFoundError) as cm:
      data.load_dataset(name, data_dir=empty)
    elapsed = time.monotonic() - start
    self.assertLess(elapsed, 2.0)  # No download retries.
    self.assertIsInstance(cm.exception, FileNotFoundError)
    msg = str(cm.exception)
    self.assertIn(repr(name), msg)
    self.assertIn(empty, msg)
    self.assertIn(f'tfds build {name}', msg)
    self.assertIn('download=True', msg)
    # Nothing was created in the searched folder.
    self.assertEqual(os.listdir(empty), [])

  def test_fashion_mnist_message_mentions_idx_and_debian(self):
    empty = str(self.tmp)
    with self.assertRaises(data.DatasetNotFoundError) as cm:
      data.load_dataset('fashion_mnist', data_dir=empty)
    msg = str(cm.exception)
    self.assertIn('IDX', msg)
    self.assertIn('dataset-fashion-mnist', msg)


class IdxTest(_TestCase):

  @parameterized.parameters(True, False)
  def test_read_idx_round_trip(self, gz):
    folder = self.tmp
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    path = _write_idx(folder / 'x-idx3-ubyte', arr, gz)
    np.testing.assert_array_equal(data.read_idx(path), arr)

  def test_read_idx_rejects_garbage(self):
    path = self.tmp / 'junk'
    path.write_bytes(b'not an idx file')
    with self.assertRaisesRegex(ValueError, 'not an IDX file'):
      data.read_idx(path)

  def test_read_idx_rejects_truncated(self):
    folder = self.tmp
    path = _write_idx(folder / 'x', np.zeros((4, 2), np.uint8), gz=False)
    path.write_bytes(path.read_bytes()[:-1])
    with self.assertRaisesRegex(ValueError, 'header says'):
      data.read_idx(path)

  @parameterized.parameters(('mnist', True), ('fashion_mnist', False))
  def test_load_from_idx_folder(self, name, gz):
    folder = self.tmp
    arrays = _make_idx_dir(folder, gz)
    ds = data.load_dataset(name, data_dir=str(folder), val_fraction=0.2)
    chex.assert_shape(ds.x_train, (24, 28, 28, 1))
    chex.assert_shape(ds.x_val, (6, 28, 28, 1))
    chex.assert_shape(ds.x_test, (10, 28, 28, 1))
    mean, std = data_dataset._IMAGE_STATS[name]  # pylint: disable=protected-access
    x_pool, y_pool = _pool(ds)
    np.testing.assert_allclose(
        x_pool[..., 0],
        (arrays['train-images-idx3-ubyte'] / 255.0 - mean[0]) / std[0],
        rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(y_pool, arrays['train-labels-idx1-ubyte'])
    np.testing.assert_array_equal(ds.y_test, arrays['t10k-labels-idx1-ubyte'])
    self.assertEqual(ds.y_test.dtype, np.int32)

  @pytest.mark.skipif(
      not os.path.isdir(data.DEBIAN_FASHION_MNIST_DIR),
      reason=f'{data.DEBIAN_FASHION_MNIST_DIR} absent '
             '(apt-get install dataset-fashion-mnist)')
  def test_debian_fashion_mnist_is_default(self):
    ds = data.load_dataset('fashion_mnist')
    self.assertLen(ds.x_train, 57000)
    self.assertLen(ds.x_val, 3000)
    chex.assert_shape(ds.x_test, (10000, 28, 28, 1))
    self.assertEqual(len(ds.x_train) + len(ds.x_val), 60000)
    self.assertSetEqual(set(np.unique(ds.y_test)), set(range(10)))
    # The fixed constants are Fashion-MNIST's own statistics.
    x_pool, _ = _pool(ds)
    self.assertAlmostEqual(float(x_pool.mean()), 0.0, delta=0.01)
    self.assertAlmostEqual(float(x_pool.std()), 1.0, delta=0.01)


class EmbeddedTest(_TestCase):

  def test_mnist1d(self):
    state = np.random.get_state()
    ds = data.load_dataset('mnist1d')
    # Generation must not reseed the caller's global numpy RNG.
    np.testing.assert_array_equal(np.random.get_state()[1], state[1])
    chex.assert_shape(ds.x_train, (3800, 40, 1))
    chex.assert_shape(ds.x_val, (200, 40, 1))
    chex.assert_shape(ds.x_test, (1000, 40, 1))
    self.assertEqual(ds.input_shape, (40, 1))
    self.assertEqual(ds.x_train.dtype, np.float32)
    self.assertEqual(ds.y_train.dtype, np.int32)
    self.assertSetEqual(set(np.unique(ds.y_test)), set(range(10)))
    x_pool, _ = _pool(ds)
    self.assertAlmostEqual(float(x_pool.mean()), 0.0, delta=1e-4)
    self.assertAlmostEqual(float(x_pool.std()), 1.0, delta=1e-4)

  def test_digits(self):
    ds = data.load_dataset('digits')
    chex.assert_shape(ds.x_train, (1365, 8, 8, 1))
    chex.assert_shape(ds.x_val, (72, 8, 8, 1))
    chex.assert_shape(ds.x_test, (360, 8, 8, 1))
    self.assertEqual(ds.x_test.dtype, np.float32)
    self.assertEqual(ds.y_test.dtype, np.int32)
    # The test split is fixed, whatever the validation seed.
    other = data.load_dataset('digits', seed=5, val_fraction=0.3)
    np.testing.assert_array_equal(ds.x_test, other.x_test)
    np.testing.assert_array_equal(ds.y_test, other.y_test)

  def test_cached_raw_arrays_are_not_aliased(self):
    ds = data.load_dataset('digits')
    ds.x_train[...] = 123.0
    self.assertFalse(np.any(data.load_dataset('digits').x_train == 123.0))

  def test_docstring_memory_table(self):
    for name in ('mnist1d', 'digits'):
      ds = data.load_dataset(name)
      row = next(line for line in data.__doc__.splitlines()
                 if line.strip().startswith(name + ' '))
      self.assertIn(f'{data.dataset_nbytes(ds) / 1e6:.2f} MB', row)


class SplitTest(_TestCase):

  def test_seeded_split(self):
    a = data.load_dataset('digits', seed=1)
    b = data.load_dataset('digits', seed=1)
    c = data.load_dataset('digits', seed=2)
    np.testing.assert_array_equal(a.val_index, b.val_index)
    np.testing.assert_array_equal(a.x_val, b.x_val)
    self.assertFalse(np.array_equal(a.val_index, c.val_index))
    for ds in (a, c):
      n = len(ds.train_index) + len(ds.val_index)
      self.assertEmpty(np.intersect1d(ds.train_index, ds.val_index))
      np.testing.assert_array_equal(
          np.union1d(ds.train_index, ds.val_index), np.arange(n))

  def test_train_val_disjoint_as_data(self):
    ds = data.load_dataset('mnist1d', val_fraction=0.1, seed=3)
    train_rows = {r.tobytes() for r in ds.x_train}
    self.assertFalse(any(r.tobytes() in train_rows for r in ds.x_val))

  @parameterized.parameters(0.05, 0.2, 0.5)
  def test_val_fraction(self, f):
    ds = data.load_dataset('digits', val_fraction=f)
    self.assertLen(ds.x_val, round(f * 1437))
    self.assertLen(ds.x_train, 1437 - round(f * 1437))

  @parameterized.parameters(0, 0.0, 1, 1.0, -0.1, 1.5, True, 'x', None)
  def test_bad_val_fraction(self, f):
    with self.assertRaisesRegex(ValueError, 'val_fraction.*' + repr(f)[:3]):
      data.load_dataset('digits', val_fraction=f)

  def test_resplit_matches_fresh_load(self):
    ds = data.load_dataset('digits', seed=0)
    re1 = data.resplit(ds, seed=7)
    fresh = data.load_dataset('digits', seed=7)
    for field in ('x_train', 'y_train', 'x_val', 'y_val', 'x_test',
                  'train_index', 'val_index'):
      np.testing.assert_array_equal(getattr(re1, field),
                                    getattr(fresh, field), err_msg=field)
    # Order of re-splits does not matter, and seed 0 comes back.
    np.testing.assert_array_equal(data.resplit(re1, 0).x_val, ds.x_val)
    self.assertFalse(np.array_equal(re1.val_index, ds.val_index))

  def test_pooled_train(self):
    ds = data.load_dataset('digits', seed=4)
    x_pool, y_pool = data.pooled_train(ds)
    chex.assert_shape(x_pool, (1437, 8, 8, 1))
    np.testing.assert_array_equal(x_pool[ds.val_index], ds.x_val)
    np.testing.assert_array_equal(y_pool[ds.train_index], ds.y_train)
    # Independent of the split seed.
    np.testing.assert_array_equal(
        x_pool, data.pooled_train(data.load_dataset('digits', seed=9))[0])

  def test_resplit_new_fraction(self):
    ds = data.resplit(data.load_dataset('digits'), 1, val_fraction=0.5)
    self.assertLen(ds.x_val, round(0.5 * 1437))

  def test_unknown_name(self):
    with self.assertRaisesRegex(ValueError, "Unknown dataset 'imagenet'.*"
                                "mnist1d.*digits.*cifar10.*svhn"):
      data.load_dataset('imagenet')

  def test_split_indices(self):
    tr, va = data.split_indices(0, 100, 0.1)
    self.assertLen(va, 10)
    self.assertLen(tr, 90)
    tr, va = data.split_indices(0, 10, 0.001)
    self.assertLen(va, 1)  # at least one validation example


class BatchTest(_TestCase):

  @parameterized.parameters((100, 10), (103, 10), (50, 50))
  def test_each_example_once_per_epoch(self, n, bs):
    key = jax.random.key(0)
    spe = n // bs

    @jax.jit
    def epochs(key):
      return jax.lax.map(lambda t: data.batch_indices(key, t, bs, n),
                         jnp.arange(3 * spe))

    idx = np.asarray(epochs(key))
    chex.assert_shape(idx, (3 * spe, bs))
    self.assertEqual(idx.dtype, np.int32)
    for e in range(3):
      flat = idx[e * spe:(e + 1) * spe].ravel()
      self.assertLen(np.unique(flat), spe * bs)  # no repeats in an epoch
      self.assertTrue(np.all((flat >= 0) & (flat < n)))
      if n % bs == 0:
        np.testing.assert_array_equal(np.sort(flat), np.arange(n))
    # Epochs are reshuffled.
    self.assertFalse(np.array_equal(idx[:spe], idx[spe:2 * spe]))

  def test_same_key_same_batches(self):
    f = jax.jit(data.batch_indices, static_argnums=(2, 3))
    k0, k1 = jax.random.key(0), jax.random.key(1)
    for t in (0, 5, 17):
      chex.assert_trees_all_equal(f(k0, t, 8, 50), f(k0, t, 8, 50))
      chex.assert_trees_all_equal(f(k0, t, 8, 50),
                                  data.batch_indices(k0, t, 8, 50))
    self.assertFalse(np.array_equal(f(k0, 3, 8, 50), f(k1, 3, 8, 50)))

  def test_traced_step_in_scan_and_x64(self):
    key = jax.random.key(2)

    def body(c, t):
      return c, data.batch_indices(key, t, 4, 20)

    _, idx = jax.lax.scan(body, 0, jnp.arange(5, dtype=jnp.int32))
    with jax.enable_x64(True):
      _, idx64 = jax.lax.scan(body, 0, jnp.arange(5))
      self.assertEqual(idx64.dtype, jnp.int32)
    chex.assert_trees_all_equal(idx, idx64)

  def test_bad_batch_size(self):
    with self.assertRaisesRegex(ValueError, 'batch_size'):
      data.batch_indices(jax.random.key(0), 0, 11, 10)

  def test_get_batch(self):
    x = jnp.arange(40.0).reshape(20, 2)
    y = jnp.arange(20, dtype=jnp.int32)
    key = jax.random.key(0)
    (xb, yb), idx = jax.jit(
        lambda x, y, key, t: (data.get_batch(x, y, key, t, 5),
                              data.batch_indices(key, t, 5, 20)))(x, y, key, 3)
    chex.assert_trees_all_equal((xb, yb), (x[idx], y[idx]))


class AugmentTest(_TestCase):

  def setUp(self):
    super().setUp()
    # numpy, not jax.random, to spare a threefry compile.
    self.images = jnp.asarray(
        np.random.default_rng(0).normal(size=(16, 8, 8, 3)), jnp.float32)

  def test_shape_dtype_determinism(self):
    f = jax.jit(data.augment, static_argnames=('pad', 'flip', 'mode'))
    out = f(jax.random.key(1), self.images)
    chex.assert_shape(out, self.images.shape)
    chex.assert_type(out, jnp.float32)
    chex.assert_trees_all_equal(out, f(jax.random.key(1), self.images))
    chex.assert_trees_all_equal(
        out, data.augment(jax.random.key(1), self.images))
    self.assertFalse(np.array_equal(out, f(jax.random.key(2), self.images)))

  def test_flip_only(self):
    out = np.asarray(data.augment(jax.random.key(3), self.images, pad=0))
    imgs = np.asarray(self.images)
    flipped = [np.array_equal(o, i[:, ::-1]) for o, i in zip(out, imgs)]
    same = [np.array_equal(o, i) for o, i in zip(out, imgs)]
    self.assertTrue(all(f or s for f, s in zip(flipped, same)))
    self.assertTrue(any(flipped))
    self.assertTrue(any(same))

  @parameterized.parameters('reflect', 'constant')
  def test_crop_only(self, mode):
    pad = 2
    out = np.asarray(data.augment(jax.random.key(4), self.images, pad=pad,
                                  flip=False, mode=mode))
    imgs = np.asarray(self.images)
    padded = np.pad(imgs, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=mode)
    shifts = []
    for o, p in zip(out, padded):
      match = [(dy, dx) for dy in range(2 * pad + 1)
               for dx in range(2 * pad + 1)
               if np.array_equal(o, p[dy:dy + 8, dx:dx + 8])]
      self.assertNotEmpty(match)  # every output is a window of the padding
      shifts.append(match[0])
    self.assertGreater(len(set(shifts)), 1)
    self.assertTrue(any(not np.array_equal(o, i) for o, i in zip(out, imgs)))

  def test_rejects_non_images(self):
    with self.assertRaises(ValueError):
      data.augment(jax.random.key(0), jnp.zeros((4, 40, 1)))


class MemoryTest(_TestCase):

  def test_nbytes(self):
    ds = data.load_dataset('digits')
    self.assertEqual(data.dataset_nbytes(ds), 1797 * (64 * 4 + 4))
    self.assertEqual(data.dataset_nbytes(ds, ('test',)), 360 * (64 * 4 + 4))
    self.assertEqual(data.dataset_nbytes(ds, dtype=np.float64),
                     1797 * (64 * 8 + 4))

  def test_check_fits(self):
    ds = data.load_dataset('digits')
    self.assertEqual(data.check_fits(ds, budget_bytes=10**9),
                     data.dataset_nbytes(ds))
    with self.assertRaisesRegex(ValueError, "'digits' needs 0.5 MB"):
      data.check_fits(ds, budget_bytes=100_000)
    with self.assertRaisesRegex(ValueError, "'digits' needs 0.9 MB"):
      data.check_fits(ds, budget_bytes=1_000_000, dtype=np.float64)
    # Default: this device (host memory on CPU); digits always fits.
    self.assertEqual(data.check_fits(ds), data.dataset_nbytes(ds))

  def test_to_device(self):
    ds = data.to_device(data.load_dataset('digits'))
    self.assertIsInstance(ds.x_train, jax.Array)
    self.assertIsInstance(ds.y_test, jax.Array)
    self.assertEqual(ds.name, 'digits')
