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


# The recipe that travels: everything chosen on validation data only.

_TINY = hc.CleaningConfig(num_steps=100, inner_lr=0.05)
_TINY_RECIPE = hc.RecipeConfig(outer_lrs=(0.15, 0.3), outer_steps=8)


@pytest.fixture(scope='module')
def recipe_run(data):
  return hc.hyperclean(hc.blind(data), _TINY, 0, _TINY_RECIPE)


def test_two_component_split_falls_between_the_modes():
  weights = np.concatenate([np.full(30, 0.05), np.linspace(0.1, 0.2, 10),
                            np.linspace(0.7, 1.0, 60)])
  split = hc.two_component_split(weights)
  assert 0.2 < split < 0.7
  assert hc.two_component_split(np.ones(5)) == 0.0
  assert hc.candidate_thresholds(weights)[0] == 0.0


def test_select_flags_takes_the_fewest_flags_validation_cannot_tell_apart():
  weights = np.array([0.0, 0.1, 0.5, 0.9, 1.0, 1.0])
  rng = np.random.default_rng(0)
  noise = rng.normal(0, 1e-3, 200)

  def val_losses(keep):  # flagging the first two helps; more is a tie
    return 1.0 - 0.5 * (not keep[0]) - 0.5 * (not keep[1]) + noise

  flagged, info = hc.select_flags(weights, val_losses, [0.0, 0.05, 0.3, 0.95])
  np.testing.assert_array_equal(flagged, weights < 0.3)
  assert info['threshold'] == 0.3


def test_flagging_never_reads_the_corruption_mask(data, recipe_run):
  # The recipe is handed blinded data; given shuffled true labels and mask
  # instead, it flags exactly the same examples.
  assert hc.blind(data).corrupted is None and hc.blind(data).y_true is None
  rng = np.random.default_rng(1)
  order = rng.permutation(len(data.y_train))
  shuffled = data._replace(corrupted=data.corrupted[order],
                           y_true=data.y_true[order])
  again = hc.hyperclean(shuffled, _TINY, 0, _TINY_RECIPE)
  np.testing.assert_array_equal(again['flagged'], recipe_run['flagged'])
  assert again['outer_lr'] == recipe_run['outer_lr']


def test_recipe_flags_most_corrupted_examples(data, recipe_run):
  # Fails if the validation-chosen recipe stops finding the wrong labels.
  scores = hc.flag_scores(recipe_run['flagged'], data.corrupted)
  assert scores['recall'] > 0.7  # 0.77 at this draw
  assert scores['precision'] > 0.8  # 0.88
  assert scores['f1'] > 0.75  # 0.82
  assert recipe_run['flag_info']['threshold'] > 0.0
