"""The finite-difference reference itself: exact on a cubic, rejects bad eps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypergrad


def test_matches_the_analytic_gradient_of_a_cubic():
  # conftest turns x64 on: the reference is computed in float64.
  hparams = {'lr': jnp.array([0.3, -1.2, 2.0]), 'wd': jnp.array([[0.5]])}

  def loss(h):
    return jnp.sum(h['lr'] ** 3) + 2.0 * jnp.sum(h['lr']) * h['wd'][0, 0]

  fd = hypergrad.finite_difference(jax.jit(loss), hparams)
  exact = jax.grad(loss)(hparams)
  assert jax.tree.structure(fd) == jax.tree.structure(hparams)
  np.testing.assert_allclose(fd['lr'], exact['lr'], rtol=1e-8)
  np.testing.assert_allclose(fd['wd'], exact['wd'], rtol=1e-8)
  assert fd['wd'].shape == (1, 1)


@pytest.mark.parametrize('eps', [0.0, -1e-6, float('nan'), '1e-6'])
def test_bad_eps_is_named(eps):
  with pytest.raises(ValueError, match='eps='):
    hypergrad.finite_difference(lambda h: h['lr'].sum(),
                                {'lr': jnp.ones(2)}, eps=eps)
