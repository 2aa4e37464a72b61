"""The sign-based outer optimiser and the outer loop."""

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypergrad
from hypergrad._src import outer
from hypergrad._src import search


class SignDescentTest(parameterized.TestCase):

  def test_hand_made_sequence(self):
    opt = outer.sign_descent({'lr': 0.1, 'momentum': 0.2})
    h = {'lr': jnp.array([0.5, 0.5]), 'momentum': jnp.array([0.5])}
    state = opt.init(h)
    seq = [  # (lr hypergrads, momentum hypergrad)
        ([-1.0, 2.0], [3.0]),
        ([-1.0, -2.0], [-3.0]),   # lr[1] and momentum flip: halve
        ([5.0, -1.0], [1.0]),     # lr[0] flips now; momentum flips again
        ([0.0, -1.0], [1.0]),     # zero: no move, no flip
    ]
    expected_lr = [[0.6, 0.4], [0.7, 0.45], [0.65, 0.5], [0.65, 0.55]]
    expected_lr_steps = [[0.1, 0.1], [0.1, 0.05], [0.05, 0.05], [0.05, 0.05]]
    expected_mom = [0.3, 0.4, 0.35, 0.3]
    expected_mom_steps = [0.2, 0.1, 0.05, 0.05]
    for i, (g_lr, g_mom) in enumerate(seq):
      h, state = opt.update({'lr': jnp.array(g_lr),
                             'momentum': jnp.array(g_mom)}, state, h)
      np.testing.assert_allclose(h['lr'], expected_lr[i], atol=1e-12)
      np.testing.assert_allclose(state.step_sizes['lr'], expected_lr_steps[i])
      np.testing.assert_allclose(h['momentum'], [expected_mom[i]], atol=1e-12)
      np.testing.assert_allclose(state.step_sizes['momentum'],
                                 [expected_mom_steps[i]])
    self.assertEqual(int(state.count), 4)

  def test_clipping_keeps_valid_range(self):
    opt = outer.sign_descent()
    h = {'lr': jnp.array([0.05]), 'momentum': jnp.array([0.95]),
         'weight_decay': jnp.array([1e-4])}
    h, _ = opt.update({'lr': jnp.array([1.0]), 'momentum': jnp.array([-1.0]),
                       'weight_decay': jnp.array([1.0])}, opt.init(h), h)
    chex.assert_trees_all_close(h, {'lr': jnp.array([0.0]),
                                    'momentum': jnp.array([0.999]),
                                    'weight_decay': jnp.array([0.0])})

  def test_converged(self):
    opt = outer.sign_descent({'lr': 0.1})
    h = {'lr': jnp.array([1.0, 3.0])}
    state = opt.init(h)
    self.assertFalse(outer.converged(state, h))
    state = state._replace(step_sizes={'lr': jnp.array([0.04, 0.1])},
                           count=jnp.int32(1),
                           prev_sign={'lr': jnp.array([1.0, -1.0])})
    self.assertTrue(outer.converged(state, h))
    state = state._replace(step_sizes={'lr': jnp.array([0.06, 0.1])})
    self.assertFalse(outer.converged(state, h))

  def test_value_pinned_at_bound_counts_as_settled(self):
    opt = outer.sign_descent({'lr': 0.01, 'weight_decay': 1e-3})
    h = {'lr': jnp.array([1.0]), 'weight_decay': jnp.array([0.0])}
    state = opt.init(h)
    for _ in range(6):  # lr oscillates and its step shrinks; wd pushes below 0
      h, state = opt.update({'lr': jnp.array([1.0 if int(state.count) % 2
                                              else -1.0]),
                             'weight_decay': jnp.array([1.0])}, state, h)
    self.assertTrue(bool(state.pinned['weight_decay'][0]))
    self.assertEqual(float(h['weight_decay'][0]), 0.0)
    self.assertTrue(outer.converged(state, h))

  def test_bad_arguments(self):
    with pytest.raises(ValueError, match='decay=1.5'):
      outer.sign_descent(decay=1.5)
    with pytest.raises(ValueError, match="'lr' must be > 0, got -0.1"):
      outer.sign_descent({'lr': -0.1})
    with pytest.raises(ValueError, match=r"\['gamma'\]"):
      outer.sign_descent().init({'gamma': jnp.ones(1)})


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
    state, records = search.run(_quadratic(5.0), {'lr': jnp.array([0.03])},
                                max_outer_steps=30, tol=0.05)
    self.assertTrue(state.converged)
    self.assertLess(len(records), 30)
    np.testing.assert_allclose(state.hparams['lr'], [0.2], atol=0.01)

  def test_divergence_is_backed_off_not_accepted(self):
    # lr above 2/a diverges; the loop must refuse the step and come back.
    fn = _quadratic(5.0, num_steps=1500)
    opt = outer.sign_descent({'lr': 0.5})
    state = search.init({'lr': jnp.array([0.02])}, opt)
    # The hypergradient says increase lr towards 0.2; a step of 0.5 overshoots
    # to 0.52, where |1 - 0.52 a| = 1.6 and 1.6^1500 overflows.
    state, rec = search.step(fn, opt, state)
    self.assertTrue(rec['accepted'])
    np.testing.assert_allclose(state.hparams['lr'], [0.52])
    state, rec = search.step(fn, opt, state)
    self.assertFalse(rec['accepted'])
    self.assertFalse(np.isfinite(rec['val_loss']))
    np.testing.assert_allclose(state.hparams['lr'], [0.27])
    np.testing.assert_allclose(state.opt.step_sizes['lr'], [0.25])

  @parameterized.parameters((10.0, False), (None, True))
  def test_finite_but_exploded_loss_is_divergence(self, factor, accepted):
    # Over 20 steps lr 0.52 multiplies the loss by 1.6^40 ~ 1.5e8: finite,
    # but a run gone bad that must not be taken as a result.
    fn = _quadratic(5.0, num_steps=20)
    opt = outer.sign_descent({'lr': 0.5})
    state = search.init({'lr': jnp.array([0.02])}, opt)
    state, rec = search.step(fn, opt, state, divergence_factor=factor)
    self.assertTrue(rec['accepted'])
    first = rec['val_loss']
    self.assertAlmostEqual(state.initial_loss, first)
    state, rec = search.step(fn, opt, state, divergence_factor=factor)
    self.assertTrue(np.isfinite(rec['val_loss']))
    self.assertGreater(rec['val_loss'], 1e6 * first)
    self.assertEqual(rec['accepted'], accepted)
    if not accepted:
      np.testing.assert_allclose(state.hparams['lr'], [0.27])
    self.assertAlmostEqual(state.initial_loss, first)

  @parameterized.parameters(1.0, 0.5, -3.0, 'big', True)
  def test_bad_divergence_factor_is_named(self, factor):
    with pytest.raises(ValueError, match='divergence_factor='):
      search.run(_quadratic(5.0), {'lr': jnp.array([0.03])},
                 divergence_factor=factor)

  def test_divergence_at_start_raises(self):
    with pytest.raises(search.DivergenceError, match='initial'):
      search.run(_quadratic(5.0, num_steps=500), {'lr': jnp.array([1.0])})
