"""Parametrisation helpers: exact inverses, and hypergradients in raw space."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

import hypergrad
from tests import helpers


def test_inverses():
  y = jnp.array([1e-4, 0.1, 1.0, 30.0])
  np.testing.assert_allclose(hypergrad.softplus(hypergrad.inverse_softplus(y)),
                             y, rtol=1e-10)
  p = jnp.array([1e-3, 0.5, 0.9, 0.999])
  np.testing.assert_allclose(hypergrad.sigmoid(hypergrad.logit(p)), p,
                             rtol=1e-10)


def test_reparametrized_hypergradient_is_chain_rule_and_matches_fd():
  step_fn, loss_fn, state = helpers.sgd_problem()
  raw_step = hypergrad.reparametrize(step_fn, {'lr': hypergrad.softplus,
                                               'momentum': hypergrad.sigmoid})
  lr = jnp.array([0.05, 0.1])
  mom = jnp.array([0.7])
  raw = {'lr': hypergrad.inverse_softplus(lr), 'momentum': hypergrad.logit(mom)}
  _, g_raw = hypergrad.forward_hypergrad(raw_step, loss_fn, state, raw, 10)
  _, g = hypergrad.forward_hypergrad(step_fn, loss_fn, state,
                                     {'lr': lr, 'momentum': mom}, 10)
  # d/d raw = d/d value * d value / d raw.
  chex.assert_trees_all_close(g_raw['lr'], g['lr'] * jax.nn.sigmoid(raw['lr']),
                              rtol=1e-10)
  chex.assert_trees_all_close(g_raw['momentum'],
                              g['momentum'] * mom * (1 - mom), rtol=1e-10)
  fd = helpers.finite_difference(
      jax.jit(lambda h: helpers.reference_unroll_loss(raw_step, loss_fn, state,
                                                      h, 10)), raw)
  chex.assert_trees_all_close(g_raw, fd, rtol=1e-5)


def test_schedule_helpers():
  h = hypergrad.constant(0.1, 4, jnp.float32)
  chex.assert_shape(h, (4,))
  chex.assert_type(h, jnp.float32)
  assert not h.weak_type
  np.testing.assert_array_equal(
      hypergrad.resample(jnp.array([1.0, 2.0]), 4), [1.0, 1.0, 2.0, 2.0])
  per_step = hypergrad.expand({'lr': jnp.array([1.0, 2.0, 3.0])}, 7)['lr']
  # (t * 3) // 7 for t = 0..6
  np.testing.assert_array_equal(per_step, [1, 1, 1, 2, 2, 3, 3])
  starts = hypergrad.interval_starts(3, 7)
  np.testing.assert_array_equal(starts, [0, 3, 5])
  for t in range(7):
    assert hypergrad.interval_index(t, 3, 7) == np.searchsorted(
        starts, t, side='right') - 1
