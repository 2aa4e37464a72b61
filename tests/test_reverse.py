"""Reverse-mode hypergradients: equality with forward mode, memory, bad input."""

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import optax
import pytest

import hypergrad
from tests import helpers


def _assert_reverse_equals_forward(step_fn, loss_fn, state, hparams,
                                   num_steps, checkpoints):
  loss, fwd = hypergrad.forward_hypergrad(step_fn, loss_fn, state, hparams,
                                          num_steps)
  for c in checkpoints:
    rev_loss, rev, _ = hypergrad.reverse(checkpoint_every=c)(
        step_fn, loss_fn, state, hparams, num_steps)
    chex.assert_trees_all_equal_shapes_and_dtypes(rev, hparams)
    # Same float64 computation in a different order: round-off only.
    chex.assert_trees_all_close(rev_loss, loss, rtol=1e-12)
    chex.assert_trees_all_close(rev, fwd, rtol=1e-10, atol=1e-14)


class ReverseEqualsForwardTest(parameterized.TestCase):

  def test_sgd_fds_schedules(self):
    # checkpoint_every=5 does not divide 23: a partial final block, and
    # interval boundaries fall inside blocks.
    step_fn, loss_fn, state = helpers.sgd_problem()
    hparams = {'lr': jnp.linspace(0.02, 0.1, 4), 'momentum': jnp.array([0.8]),
               'weight_decay': jnp.array([1e-3])}
    _assert_reverse_equals_forward(step_fn, loss_fn, state, hparams, 23,
                                   [None, 5])

  def test_per_layer_and_per_unit_values(self):
    train_loss, val_loss, params = helpers.regression_problem()
    step_fn = hypergrad.sgd_momentum_step(train_loss, momentum=0.5)
    hparams = {'lr': {'a': jnp.full((2, 4), 0.07), 'b': jnp.array([0.1])},
               'weight_decay': jnp.array([1e-2, 1e-3, 0.0])}
    _assert_reverse_equals_forward(step_fn, lambda s: val_loss(s.params),
                                   hypergrad.sgd_init(params), hparams, 13,
                                   [4])

  def test_optax_adam_with_integer_count(self):
    train_loss, val_loss, params = helpers.regression_problem()
    opt = optax.inject_hyperparams(optax.adam)(
        learning_rate=jnp.float64(0.01), b1=jnp.float64(0.9))
    step_fn = hypergrad.optax_step(train_loss, opt)
    hparams = {'learning_rate': jnp.array([0.02, 0.01]),
               'b1': jnp.array([0.8])}
    # optax mixes int and float in its bias correction: standard promotion.
    with jax.numpy_dtype_promotion('standard'):
      _assert_reverse_equals_forward(step_fn, lambda s: val_loss(s.params),
                                     hypergrad.optax_init(opt, params),
                                     hparams, 11, [3])


class CompilationTest(parameterized.TestCase):

  def test_reverse_new_values_do_not_retrace(self):
    # chex keys trace counts on the call stack and the source: start afresh.
    chex.clear_trace_counter()
    step_fn, loss_fn, state = helpers.sgd_problem()
    # One trace by the structural check, one by the gradient.
    counted_loss = chex.assert_max_traces(loss_fn, n=2)
    for lr in (0.05, 0.07, 0.09):
      hparams = {'lr': jnp.full((3,), lr), 'momentum': jnp.array([0.5])}
      hypergrad.reverse(checkpoint_every=6)(step_fn, counted_loss, state,
                                            hparams, 20)

  def test_float32_stays_float32_and_under_jit(self):
    step_fn, loss_fn, state = helpers.sgd_problem(dtype=jnp.float32)
    hparams = {'lr': jnp.array([0.05, 0.1], jnp.float32),
               'momentum': jnp.array([0.5], jnp.float32)}
    fn = jax.jit(lambda s, h: hypergrad.reverse(checkpoint_every=5)(
        step_fn, loss_fn, s, h, 12)[:2])
    loss, grads = fn(state, hparams)
    chex.assert_type(loss, jnp.float32)
    chex.assert_trees_all_equal_dtypes(grads, hparams)
    chex.assert_tree_all_finite(grads)


class MemoryTest(parameterized.TestCase):

  def test_checkpointing_stores_fewer_states(self):
    # Compiled, never run: XLA's own account of the buffers the backward
    # pass keeps alive.
    step_fn, loss_fn, state = helpers.sgd_problem(dtype=jnp.float32)
    hparams = {'lr': jnp.full((4,), 0.05, jnp.float32)}

    def temp_bytes(num_steps, c):
      f = jax.jit(lambda s, h: hypergrad.reverse(checkpoint_every=c)(
          step_fn, loss_fn, s, h, num_steps)[:2])
      return f.lower(state, hparams).compile().memory_analysis(
      ).temp_size_in_bytes

    plain = temp_bytes(1600, None)
    small, large = temp_bytes(400, 20), temp_bytes(1600, 40)
    # sqrt(T) blocks of sqrt(T) steps: ~80 stored steps instead of 1600.
    assert large < 0.1 * plain, (large, plain)
    # 4x the horizon: ~2x the memory (sqrt), far from 4x (linear).
    assert large < 2.6 * small, (small, large)


class BadInputTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.step_fn, self.loss_fn, self.state = helpers.sgd_problem()

  def _call(self, hparams, num_steps=10, **kw):
    return hypergrad.reverse(**kw)(self.step_fn, self.loss_fn, self.state,
                                   hparams, num_steps)[:2]

  @parameterized.parameters(0, -4, 2.5, True, '3')
  def test_bad_checkpoint_every(self, c):
    def no_trace(*args):
      raise AssertionError('traced before validation')
    with pytest.raises(ValueError, match=f'checkpoint_every={c!r}'):
      hypergrad.reverse(checkpoint_every=c)(no_trace, no_trace, self.state,
                                            {'lr': jnp.array([0.1])}, 10)

  def test_bad_num_steps(self):
    with pytest.raises(ValueError, match='num_steps=0'):
      self._call({'lr': jnp.array([0.1])}, 0)

  def test_more_intervals_than_steps(self):
    with pytest.raises(ValueError, match=r"\['lr'\] has n=11 intervals"):
      self._call({'lr': jnp.full((11,), 0.1)}, 10)

  def test_step_fn_changing_structure(self):
    with pytest.raises(ValueError, match='same pytree structure'):
      hypergrad.reverse()(
          lambda s, h, t: self.step_fn(s, h, t).params, self.loss_fn,
          self.state, {'lr': jnp.array([0.1])}, 10)

  def test_non_scalar_loss(self):
    with pytest.raises(ValueError, match='real scalar'):
      hypergrad.reverse()(self.step_fn, lambda s: s.params['b'],
                          self.state, {'lr': jnp.array([0.1])}, 10)

