"""The calibrated cross-entropy: its value, its invariance and exact gradients."""

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hypergrad
from hypergrad._src import losses


def _data(seed=0, n=64, classes=5, scale=3.0):
  kz, ky = jax.random.split(jax.random.PRNGKey(seed))
  z = scale * jax.random.normal(kz, (n, classes), jnp.float64)
  y = jax.random.randint(ky, (n,), 0, classes)
  # Make most answers right, so that the best temperature is interior.
  z = z.at[jnp.arange(n), y].add(2.0)
  return z, y


def _xent(z, y):
  return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()


class CalibratedCrossEntropyTest(parameterized.TestCase):

  def test_value_is_the_minimum_over_temperatures(self):
    z, y = _data()
    curve = jax.jit(jax.vmap(lambda b: _xent(b * z, y)))
    coarse = np.exp(np.linspace(-7.0, 7.0, 2001))
    best = coarse[int(jnp.argmin(curve(jnp.asarray(coarse))))]
    fine = np.linspace(best * 0.99, best * 1.01, 20_001)
    brute = float(jnp.min(curve(jnp.asarray(fine))))
    got = float(hypergrad.calibrated_cross_entropy(z, y))
    np.testing.assert_allclose(got, brute, rtol=1e-9)
    self.assertLessEqual(got, float(_xent(z, y)))
    t = float(losses.optimal_temperature(z, y))
    np.testing.assert_allclose(float(_xent(z / t, y)), got, rtol=1e-12)

  @parameterized.parameters(0.1, 0.5, 2.0, 20.0)
  def test_unchanged_by_scaling_the_logits(self, c):
    z, y = _data(seed=1)
    np.testing.assert_allclose(
        float(hypergrad.calibrated_cross_entropy(c * z, y)),
        float(hypergrad.calibrated_cross_entropy(z, y)), rtol=1e-10)

  def test_overconfident_accurate_network_ranks_first(self):
    # Plain cross-entropy prefers the timid, less accurate network; the
    # calibrated one prefers the accurate one.
    z, y = _data(seed=2, scale=0.0)
    wrong = jnp.arange(z.shape[0]) % 8 == 0      # 1 in 8 wrong
    accurate = 10.0 * jax.nn.one_hot(jnp.where(wrong, (y + 1) % 5, y), 5)
    wrong = jnp.arange(z.shape[0]) % 3 == 0      # 1 in 3 wrong
    timid = 1.0 * jax.nn.one_hot(jnp.where(wrong, (y + 1) % 5, y), 5)
    self.assertGreater(float(_xent(accurate, y)), float(_xent(timid, y)))
    self.assertLess(float(hypergrad.calibrated_cross_entropy(accurate, y)),
                    float(hypergrad.calibrated_cross_entropy(timid, y)))

  @parameterized.named_parameters(('interior', False),
                                  ('at_the_upper_bound', True))
  def test_gradient_matches_finite_differences(self, at_bound):
    z, y = _data(seed=3)
    rng = (-7.0, 7.0)
    if at_bound:  # timid logits want beta* > 1 = e^0, the bound given
      z, rng = 0.1 * z, (-7.0, 0.0)
      self.assertAlmostEqual(float(losses.optimal_temperature(z, y, rng)),
                             1.0, places=12)
    f = jax.jit(lambda z: hypergrad.calibrated_cross_entropy(z, y, rng))
    direction = jax.random.normal(jax.random.PRNGKey(9), z.shape, z.dtype)
    _, jvp = jax.jvp(f, (z,), (direction,))
    grad = jax.grad(f)(z)
    eps = 1e-6
    fd = (f(z + eps * direction) - f(z - eps * direction)) / (2 * eps)
    np.testing.assert_allclose(float(jvp), float(fd), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(float(jnp.vdot(grad, direction)), float(fd),
                               rtol=1e-6, atol=1e-12)

  def test_hypergradient_through_training_matches_finite_differences(self):
    # Softmax regression trained by SGD; the validation objective is the
    # calibrated cross-entropy. Forward and reverse mode equal central
    # differences of the whole run.
    kx, kv = jax.random.split(jax.random.PRNGKey(4))
    w_true = jax.random.normal(kx, (6, 4), jnp.float64)
    x = jax.random.normal(kv, (96, 6), jnp.float64)
    y = jnp.argmax(x @ w_true, axis=1)
    xt, yt, xv, yv = x[:64], y[:64], x[64:], y[64:]

    def step_fn(w, h, t):
      del t
      g = jax.grad(lambda w: _xent(xt @ w, yt) + h['weight_decay'] * jnp.sum(
          w ** 2))(w)
      return w - h['lr'] * g

    def loss_fn(w):
      return hypergrad.calibrated_cross_entropy(xv @ w, yv)

    w0 = jnp.zeros((6, 4), jnp.float64)
    h = {'lr': jnp.array([0.5, 0.3], jnp.float64),
         'weight_decay': jnp.array([1e-2], jnp.float64)}
    num_steps = 20
    _, fwd = hypergrad.forward_hypergrad(step_fn, loss_fn, w0, h, num_steps)
    _, rev, _ = hypergrad.reverse()(step_fn, loss_fn, w0, h, num_steps)

    run = jax.jit(lambda h: loss_fn(hypergrad.unroll(
        step_fn, w0, h, num_steps)))
    fd = hypergrad.finite_difference(run, h)
    for k in h:
      np.testing.assert_allclose(fwd[k], fd[k], rtol=1e-6, atol=1e-10)
      np.testing.assert_allclose(rev[k], fd[k], rtol=1e-6, atol=1e-10)

  def test_no_retrace_on_second_call(self):
    z, y = _data(seed=5)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def f(z, y):
      return hypergrad.calibrated_cross_entropy(z, y)

    f(z, y)
    f(z + 1.0, y)

  def test_float32_stays_float32_and_half_precision_is_computed_in_it(self):
    z, y = _data(seed=6)
    out = hypergrad.calibrated_cross_entropy(z.astype(jnp.float32), y)
    chex.assert_type(out, jnp.float32)
    chex.assert_shape(out, ())
    half = hypergrad.calibrated_cross_entropy(z.astype(jnp.bfloat16), y)
    chex.assert_type(half, jnp.float32)
    np.testing.assert_allclose(
        float(half), float(hypergrad.calibrated_cross_entropy(
            z.astype(jnp.bfloat16).astype(jnp.float32), y)), rtol=1e-6)

  @parameterized.named_parameters(
      ('labels_shape', (8, 3), (7,), (-7.0, 7.0), 'shape'),
      ('logits_rank', (8,), (8,), (-7.0, 7.0), 'shape'),
      ('excludes_zero', (8, 3), (8,), (1.0, 7.0), 'contain 0'),
      ('unbounded', (8, 3), (8,), (None, 7.0), 'finite'),
      ('empty', (8, 3), (8,), (0.0, 0.0), 'lo < hi'))
  def test_bad_input_names_the_value(self, zshape, yshape, rng, message):
    z = jnp.zeros(zshape, jnp.float64)
    y = jnp.zeros(yshape, jnp.int32)
    with pytest.raises(ValueError, match=message):
      hypergrad.calibrated_cross_entropy(z, y, rng)

  def test_integer_logits_are_refused(self):
    with pytest.raises(ValueError, match='floating'):
      losses.optimal_temperature(jnp.zeros((4, 3), jnp.int32),
                                    jnp.zeros((4,), jnp.int32))
