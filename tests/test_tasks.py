"""Tasks: the core contract on real models and data."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypergrad
from hypergrad.experiments import tasks
from tests import helpers


@pytest.fixture(scope='module')
def digits():
  return tasks.make_task('digits_mlp')


def test_problem_contract_and_training_beats_chance(digits):
  state = digits.train(digits.default_hparams(), 300)
  acc = digits.evaluate(state, 'test')['accuracy']
  assert acc > 0.85, acc  # chance is 0.1


def test_new_split_and_init_reuse_the_compiled_unroll(digits):
  hp = {'lr': hypergrad.constant(0.1, 2, jnp.float32)}
  compiles = []
  losses = []

  def listener(event, duration, **kwargs):
    del duration, kwargs
    if event == '/jax/core/compile/backend_compile_duration':
      compiles.append(event)

  # JAX reports every XLA compilation through jax.monitoring.
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    for seed in range(3):
      step_fn, loss_fn, state = digits.problem(split_seed=seed,
                                               init_seed=seed)
      # A fresh Partial each outer step, over the same function: no retrace.
      loss, _ = hypergrad.forward_hypergrad(step_fn, loss_fn, state, hp, 20)
      losses.append(float(loss))
      if seed == 0:
        first = len(compiles)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert first > 0
  # Building a problem may compile small helpers (a split, an init); the
  # hypergradient itself is not compiled again.
  seen = len(compiles)
  step_fn, loss_fn, state = digits.problem(split_seed=7, init_seed=7)
  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    hypergrad.forward_hypergrad(step_fn, loss_fn, state, hp, 20)
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert len(compiles) == seen, compiles
  assert len(set(losses)) == 3


def test_splits_are_disjoint_and_reproducible(digits):
  a, b = digits.split(1), digits.split(1)
  chex.assert_trees_all_equal(a, b)
  assert not set(np.asarray(a.train)) & set(np.asarray(a.val))
  assert len(set(np.asarray(a.val)) ^ set(np.asarray(digits.split(2).val)))


def test_batchnorm_model_hypergradient_matches_finite_differences():
  task = tasks.make_task(
      'digits_mlp', dtype=jnp.float64, batch_size=16,
      model_kwargs=(('widths', (8,)), ('activation', 'tanh'),
                    ('batch_norm', True)))
  num_steps = 8
  step_fn, state, hparams = helpers.check_task_hypergrad(task, num_steps)
  assert jax.tree.leaves(state.opt.model_state), 'no BatchNorm statistics'
  # Eval uses running statistics, so they must have moved.
  final = hypergrad.unroll(step_fn, state, hparams, num_steps)
  moved = jax.tree.map(lambda a, b: float(jnp.max(jnp.abs(a - b))),
                       final.opt.model_state, state.opt.model_state)
  assert max(jax.tree.leaves(moved)) > 0


def test_unknown_task_and_bad_override():
  with pytest.raises(ValueError, match="unknown task 'nope'"):
    tasks.make_task('nope')
  with pytest.raises(ValueError, match='bad task override'):
    tasks.make_task('digits_mlp', colour='red')
  with pytest.raises(ValueError, match='batch_size must be >= 1'):
    tasks.make_task('digits_mlp', batch_size=0)
  with pytest.raises(ValueError, match="unknown val_objective 'accuracy'"):
    tasks.make_task('digits_mlp', val_objective='accuracy')


def test_calibrated_objective_scores_the_validation_split(digits):
  calibrated = tasks.make_task('digits_mlp',
                               val_objective='calibrated_cross_entropy')
  hp = digits.default_hparams()
  plain_fn = digits.problem(split_seed=3, init_seed=1)
  step_fn, loss_fn, state = calibrated.problem(split_seed=3, init_seed=1)
  final = hypergrad.unroll(step_fn, state, hp, 200)
  split = calibrated.split(3)
  logits, _ = hypergrad.experiments.models.apply_model(
      calibrated.model, final.opt.params, final.opt.model_state,
      calibrated.x_pool[split.val], train=False)
  expected = hypergrad.calibrated_cross_entropy(logits,
                                                calibrated.y_pool[split.val])
  np.testing.assert_allclose(float(loss_fn(final)), float(expected),
                             rtol=1e-6)
  # Same data, init and run: only the objective differs, and the plain
  # cross-entropy is the calibrated one at temperature 1.
  plain = float(plain_fn.loss_fn(hypergrad.unroll(plain_fn.step_fn,
                                                  plain_fn.init_state, hp,
                                                  200)))
  assert float(loss_fn(final)) <= plain + 1e-6
  # Its hypergradient is a forward-mode one like any other.
  _, g = hypergrad.forward_hypergrad(step_fn, loss_fn, state, hp, 50)
  assert all(np.isfinite(np.asarray(v)).all() for v in g.values())


def test_calibrated_task_hypergradient_matches_finite_differences():
  task = tasks.make_task('digits_mlp', dtype=jnp.float64, batch_size=16,
                         val_objective='calibrated_cross_entropy',
                         model_kwargs=(('widths', (8,)),
                                       ('activation', 'tanh')))
  helpers.check_task_hypergrad(task, 8)


def test_absent_dataset_fails_fast(tmp_path):
  with pytest.raises(hypergrad.experiments.data.DatasetNotFoundError,
                     match=str(tmp_path)):
    tasks.make_task('cifar10_wrn16_1', data_dir=str(tmp_path))
