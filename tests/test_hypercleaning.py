"""Data hyper-cleaning end to end on a tiny Fashion-MNIST draw."""

import os

import jax
import numpy as np
import pytest

from hypergrad.experiments import hypercleaning as hc
from hypergrad.experiments.data import dataset as dataset_lib

pytestmark = pytest.mark.skipif(
    not os.path.isdir(dataset_lib.DEBIAN_FASHION_MNIST_DIR),
    reason='needs Debian\'s dataset-fashion-mnist')


@pytest.fixture(scope='module')
def data():
  return hc.make_data(0, num_train=300, num_val=500, num_test=2000)


def test_corruption_gives_wrong_labels_to_the_fraction():
  rng = np.random.default_rng(0)
  labels = np.arange(100) % 10
  noisy, mask = hc.corrupt(labels, 0.5, 10, rng)
  assert mask.sum() == 50
  assert np.all(noisy[mask] != labels[mask])
  assert np.all(noisy[~mask] == labels[~mask])


def test_hypercleaning_helps_end_to_end(data):
  config = hc.CleaningConfig(num_steps=100, inner_lr=0.05, outer_steps=8,
                             outer_lr=0.2)
  # optax.adam's bias correction mixes its int32 count with a Python float.
  with jax.numpy_dtype_promotion('standard'):
    r = hc.run(data, config, 0)
  assert 0.45 <= data.corrupted.mean() <= 0.55
  # Fails if hyper-cleaning stops helping: most of the baseline-to-oracle
  # gap closed and the corrupted examples found.
  assert r['oracle'] > r['baseline'] + 0.03
  assert r['cleaned'] > r['baseline'] + 0.6 * (r['oracle'] - r['baseline'])
  assert r['f1'] > 0.75
  assert r['weights_corrupted_mean'] < 0.5 < r['weights_clean_mean']


def test_weights_of_another_length_refused_before_compute(data):
  with pytest.raises(ValueError, match='one weight per training example: '
                     '300 weights, got shape'):
    hc.initial_hparams(data, np.ones(299))
