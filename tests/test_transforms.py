"""Parametrisation helpers: exact inverses, and hypergradients in raw space."""

import chex
import jax
import jax.numpy as jnp
import numpy as np

import hypergrad
from tests import helpers


def test_inverses():
  y = jnp.array([1e-4, 0.1, 1.0, 30.0])
  np.testing.assert_allclose(jax.nn.softplus(hypergrad.inverse_softplus(y)),
                             y, rtol=1e-10)
  p = jnp.array([1e-3, 0.5, 0.9, 0.999])
  np.testing.assert_allclose(jax.nn.sigmoid(jax.scipy.special.logit(p)), p,
                             rtol=1e-10)


def test_reparametrized_hypergradient_is_chain_rule_and_matches_fd():
  step_fn, loss_fn, state = helpers.sgd_problem()
  raw_step = hypergrad.reparametrize(step_fn, {'lr': jax.nn.softplus,
                                               'momentum': jax.nn.sigmoid})
  lr = jnp.array([0.05, 0.1])
  mom = jnp.array([0.7])
  raw = {'lr': hypergrad.inverse_softplus(lr),
         'momentum': jax.scipy.special.logit(mom)}
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
