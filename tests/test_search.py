"""The outer loop: convergence, divergence back-off, the best evaluated values."""

from absl.testing import parameterized
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hypergrad


def _apply(opt, grads, state, h):
  updates, state = opt.update(grads, state, h)
  return optax.apply_updates(h, updates), state, updates


class SettledTest(parameterized.TestCase):

  def test_settled(self):
    h = {'lr': jnp.array([1.0, 3.0])}
    opt = hypergrad.sign_descent({'lr': 0.1})
    state = opt.init(h)
    self.assertTrue(hypergrad.settled({'lr': jnp.array([0.04, -0.1])}, h,
                                      state))
    self.assertFalse(hypergrad.settled({'lr': jnp.array([0.06, -0.1])}, h,
                                       state))
    # No move with a non-zero hypergradient (Rprop's first step): not
    # settled; a zero hypergradient: settled.
    self.assertFalse(hypergrad.settled({'lr': jnp.array([0.0, 0.0])}, h,
                                       state))
    self.assertTrue(hypergrad.settled({'lr': jnp.array([0.0, 0.0])}, h,
                                      state, hypergrads={'lr': jnp.zeros(2)}))

  def test_value_pinned_at_bound_counts_as_settled(self):
    opt = hypergrad.sign_descent({'lr': 0.01, 'weight_decay': 1e-3})
    h = {'lr': jnp.array([1.0]), 'weight_decay': jnp.array([5e-4])}
    state = opt.init(h)
    # wd pushes below 0: clipped there, pinned, the step counts as settled.
    g = {'lr': jnp.array([1.0]), 'weight_decay': jnp.array([1.0])}
    h, state, updates = _apply(opt, g, state, h)
    self.assertTrue(bool(state[1].pinned['weight_decay'][0]))
    self.assertEqual(float(h['weight_decay'][0]), 0.0)
    self.assertTrue(hypergrad.settled(updates, h, state))


def _quadratic(curvature=5.0, num_steps=10):
  """GD on 0.5 a w^2 from w=1: the best constant learning rate is 1/a."""
  step_fn = lambda w, h, t: w - h['lr'] * curvature * w
  loss_fn = lambda w: w ** 2
  def hypergrad_fn(hparams, outer_step):
    del outer_step
    return hypergrad.forward_hypergrad(step_fn, loss_fn, jnp.float64(1.0),
                                       hparams, num_steps)
  return hypergrad_fn


class SearchTest(parameterized.TestCase):

  def test_converges_to_known_best_learning_rate(self):
    state, records = hypergrad.fds_search(
        _quadratic(5.0), {'lr': jnp.array([0.03])}, max_outer_steps=30,
        tol=0.05)
    self.assertTrue(state.converged)
    self.assertLess(len(records), 30)
    np.testing.assert_allclose(state.hparams['lr'], [0.2], atol=0.01)
    # The result is an evaluated schedule, with its validation loss.
    evaluated = [float(r['hparams']['lr'][0]) for r in records]
    self.assertIn(float(state.best_hparams['lr'][0]), evaluated)
    self.assertEqual(state.best_loss, min(r['val_loss'] for r in records))

  @parameterized.named_parameters(
      ('adam', lambda: optax.adam(0.03)),
      ('rprop', lambda: optax.rprop(0.02)),
      ('sign_descent', lambda: hypergrad.sign_descent({'lr': 0.05})))
  def test_any_optax_outer_optimizer(self, make_opt):
    # optax's adam and rprop mix int32 counts with floats internally.
    with jax.numpy_dtype_promotion('standard'):
      state, records = hypergrad.fds_search(
          _quadratic(5.0), {'lr': jnp.array([0.03])}, opt=make_opt(),
          max_outer_steps=40, tol=1e-3)
    # Every one of them finds the best constant learning rate 1/a = 0.2.
    self.assertLess(records[-1]['val_loss'], records[0]['val_loss'])
    np.testing.assert_allclose(state.best_hparams['lr'], [0.2], atol=0.03)

  def test_divergence_is_backed_off_not_accepted(self):
    # lr above 2/a diverges; the loop must refuse the step and come back.
    fn = _quadratic(5.0, num_steps=1500)
    opt = hypergrad.sign_descent({'lr': 0.5})
    state = hypergrad.outer_init({'lr': jnp.array([0.02])}, opt)
    # The hypergradient says increase lr towards 0.2; a step of 0.5 overshoots
    # to 0.52, where |1 - 0.52 a| = 1.6 and 1.6^1500 overflows.
    state, rec = hypergrad.outer_step(fn, opt, state)
    self.assertTrue(rec['accepted'])
    np.testing.assert_allclose(state.hparams['lr'], [0.52])
    state, rec = hypergrad.outer_step(fn, opt, state)
    self.assertFalse(rec['accepted'])
    self.assertFalse(np.isfinite(rec['val_loss']))
    np.testing.assert_allclose(state.hparams['lr'], [0.27])
    np.testing.assert_allclose(state.update_scale, 0.5)
    self.assertIn('non-finite', rec['reason'])
    # The result stays the evaluated, accepted step 0 values.
    np.testing.assert_allclose(state.best_hparams['lr'], [0.02])

  @parameterized.parameters((10.0, False), (None, True))
  def test_finite_but_exploded_loss_is_divergence(self, factor, accepted):
    # Over 20 steps lr 0.52 multiplies the loss by 1.6^40 ~ 1.5e8: finite,
    # but a run gone bad that must not be taken as a result.
    fn = _quadratic(5.0, num_steps=20)
    opt = hypergrad.sign_descent({'lr': 0.5})
    state = hypergrad.outer_init({'lr': jnp.array([0.02])}, opt)
    state, rec = hypergrad.outer_step(fn, opt, state,
                                      divergence_factor=factor)
    self.assertTrue(rec['accepted'])
    first = rec['val_loss']
    self.assertAlmostEqual(state.initial_loss, first)
    state, rec = hypergrad.outer_step(fn, opt, state,
                                      divergence_factor=factor)
    self.assertTrue(np.isfinite(rec['val_loss']))
    self.assertGreater(rec['val_loss'], 1e6 * first)
    self.assertEqual(rec['accepted'], accepted)
    if not accepted:
      np.testing.assert_allclose(state.hparams['lr'], [0.27])
    self.assertAlmostEqual(state.initial_loss, first)

  @parameterized.parameters(1.0, 0.5, -3.0, 'big', True)
  def test_bad_divergence_factor_is_named(self, factor):
    with pytest.raises(ValueError, match='divergence_factor='):
      hypergrad.fds_search(_quadratic(5.0), {'lr': jnp.array([0.03])},
                           divergence_factor=factor)

  def test_divergence_at_start_raises_naming_the_inner_step(self):
    def fn(hparams, outer_step):
      del outer_step
      return hypergrad.forward()(lambda w, h, t: w - h['lr'] * 5.0 * w,
                                 lambda w: w ** 2, jnp.float64(1.0), hparams,
                                 600)
    with pytest.raises(hypergrad.DivergenceError,
                       match='initial.*from inner step [0-9]+'):
      hypergrad.fds_search(fn, {'lr': jnp.array([1.0])})

  def test_collapse_to_chance_is_divergence(self):
    # Losses: 1.0 at the start, then 2.5 (at "chance", 2.3) with finite
    # hypergradients: rejected, and the initial schedule stays the result.
    losses = iter([1.0, 2.5])
    def fn(hparams, outer_step):
      del outer_step
      return jnp.float64(next(losses)), {'lr': jnp.array([-1.0])}
    opt = hypergrad.sign_descent({'lr': 0.1})
    state, records = hypergrad.fds_search(fn, {'lr': jnp.array([0.1])},
                                          opt=opt, max_outer_steps=2,
                                          collapse_loss=2.3)
    self.assertEqual([r['accepted'] for r in records], [True, False])
    self.assertIn('chance', records[1]['reason'])
    np.testing.assert_allclose(state.best_hparams['lr'], [0.1])
    self.assertEqual(state.best_step, 0)
