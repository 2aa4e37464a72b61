"""The outer and meta optimisers: sign descent, its clip to the valid ranges."""

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hypergrad


def _apply(opt, grads, state, h):
  updates, state = opt.update(grads, state, h)
  return optax.apply_updates(h, updates), state, updates


def _sign_state(state):
  return state[0]


class SignDescentTest(parameterized.TestCase):

  def test_hand_made_sequence(self):
    opt = hypergrad.sign_descent({'lr': 0.1, 'momentum': 0.2})
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
      h, state, _ = _apply(opt, {'lr': jnp.array(g_lr),
                                 'momentum': jnp.array(g_mom)}, state, h)
      sign = _sign_state(state)
      np.testing.assert_allclose(h['lr'], expected_lr[i], atol=1e-12)
      np.testing.assert_allclose(sign.step_sizes['lr'], expected_lr_steps[i])
      np.testing.assert_allclose(h['momentum'], [expected_mom[i]], atol=1e-12)
      np.testing.assert_allclose(sign.step_sizes['momentum'],
                                 [expected_mom_steps[i]])
    self.assertEqual(int(_sign_state(state).count), 4)

  def test_jitted_update_equals_eager(self):
    opt = hypergrad.sign_descent({'lr': 0.1, 'momentum': 0.2})
    h = {'lr': jnp.array([0.5, 0.5]), 'momentum': jnp.array([0.5])}
    g = {'lr': jnp.array([-1.0, 2.0]), 'momentum': jnp.array([3.0])}
    state = opt.init(h)
    eager = opt.update(g, state, h)
    jitted = jax.jit(opt.update)(g, state, h)
    chex.assert_trees_all_close(eager, jitted)

  def test_clipping_keeps_valid_range(self):
    opt = hypergrad.sign_descent()
    h = {'lr': jnp.array([0.05]), 'momentum': jnp.array([0.95]),
         'weight_decay': jnp.array([1e-4])}
    h, _, _ = _apply(opt, {'lr': jnp.array([1.0]),
                           'momentum': jnp.array([-1.0]),
                           'weight_decay': jnp.array([1.0])}, opt.init(h), h)
    chex.assert_trees_all_close(h, {'lr': jnp.array([0.0]),
                                    'momentum': jnp.array([0.999]),
                                    'weight_decay': jnp.array([0.0])})

  def test_composes_with_optax_chain(self):
    # An extra optax transformation after sign descent: half-size steps.
    opt = optax.chain(hypergrad.scale_by_sign_descent({'lr': 0.1}),
                      optax.scale(0.5), hypergrad.projection({'lr': hypergrad.box(0.0, 1.0)}))
    h = {'lr': jnp.array([0.5])}
    h, _, _ = _apply(opt, {'lr': jnp.array([-3.0])}, opt.init(h), h)
    np.testing.assert_allclose(h['lr'], [0.55])

  def test_bad_arguments(self):
    with pytest.raises(ValueError, match='decay=1.5'):
      hypergrad.sign_descent(decay=1.5)
    with pytest.raises(ValueError, match=r"step_sizes\['lr'\]=-0.1"):
      hypergrad.sign_descent({'lr': -0.1})
    with pytest.raises(ValueError, match=r"missing \['gamma'\]"):
      hypergrad.sign_descent().init({'gamma': jnp.ones(1)})
    with pytest.raises(ValueError, match=r"bounds\['lr'\]"):
      hypergrad.sign_descent(bounds={'lr': (1.0, 0.0)})

  def test_step_sizes_are_traced_not_compiled_in(self):
    traces = []

    @jax.jit
    def one_update(opt, h, g):
      traces.append(1)
      updates, _ = opt.update(g, opt.init(h), h)
      return updates

    h = {'lr': jnp.array([0.5])}
    g = {'lr': jnp.array([-1.0])}
    u1 = one_update(hypergrad.sign_descent({'lr': 0.1}), h, g)
    u2 = one_update(hypergrad.sign_descent({'lr': 0.2}), h, g)
    self.assertLen(traces, 1)
    np.testing.assert_allclose([u1['lr'][0], u2['lr'][0]], [0.1, 0.2])
