r"""Validation objectives: cross-entropy after the best temperature.

A hypergradient makes the validation loss smaller, and cross-entropy is not
accuracy: a network that is right more often but over-confident has the
larger cross-entropy, so a search on cross-entropy can prefer the
less-trained, less accurate network (measured in
``benchmarks/results/hpo_mnist1d_mlp.md``: every search lowered the test loss
and none beat the default's accuracy). The *calibrated* cross-entropy scores
a network by its cross-entropy after the one temperature that suits it best
on the validation set (temperature scaling, Guo et al. 2017), so confidence
that a single scalar could fix no longer counts against it.

Its hypergradient is exact and cheap. With :math:`z(\lambda)` the validation
logits at the end of the run and

.. math::
  V(\lambda) = \min_{\beta \in [\beta_-, \beta_+]} L(\beta z(\lambda)),

the envelope theorem gives :math:`dV/d\lambda = \partial L / \partial z
\cdot \beta^* \, dz/d\lambda` at the minimiser :math:`\beta^*`: the
minimiser's own derivative drops out (at an interior minimum
:math:`\partial L/\partial \beta = 0`; at a bound :math:`\beta^*` does not
move). So :math:`\beta^*` is found on stopped values and every estimator
(forward, reverse, population, finite differences) differentiates the loss
at that fixed inverse temperature, exactly.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from hypergrad._src import validation

# Inverse temperatures searched: e^-7 (nearly uniform) to e^7. A bisection
# on log beta halves a width of 14: 64 halvings reach float64 resolution.
LOG_BETA_RANGE = (-7.0, 7.0)
_ITERATIONS = 64


def _check(logits, labels):
  logits, labels = jnp.asarray(logits), jnp.asarray(labels)
  if logits.ndim != 2 or labels.shape != logits.shape[:1]:
    raise ValueError(
        f'logits must have shape (n, classes) and labels (n,); got logits '
        f'{logits.shape} and labels {labels.shape}.')
  if not jnp.issubdtype(logits.dtype, jnp.floating):
    raise ValueError(f'logits must be floating point; got {logits.dtype}.')
  if not jnp.issubdtype(labels.dtype, jnp.integer):
    raise ValueError(f'labels must be integer class indices; got '
                     f'{labels.dtype}.')
  return logits, labels


def _check_range(log_beta_range):
  lo, hi = validation.check_bounds(log_beta_range, 'log_beta_range')
  if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
    raise ValueError(f'log_beta_range must be finite with lo < hi; got '
                     f'{log_beta_range!r}.')
  return lo, hi


def optimal_temperature(logits: jax.Array, labels: jax.Array,
                        log_beta_range: tuple[float, float] = LOG_BETA_RANGE
                        ) -> jax.Array:
  r"""The temperature :math:`1/\beta^*` minimising the mean cross-entropy.

  :math:`L(\beta z)` is convex in :math:`\beta` (a log-sum-exp of a linear
  function minus a linear one), so its derivative
  :math:`\frac{1}{n}\sum_i (\mathbb{E}_{p(\beta z_i)}[z_i] - z_{i,y_i})` is
  increasing and a bisection on its sign over :math:`\log \beta` finds the
  minimiser (or the bound it lies beyond) to working precision. Carries no
  gradient: see the module docstring for why none is needed.

  Args:
    logits: ``(n, classes)`` floating logits.
    labels: ``(n,)`` integer labels.
    log_beta_range: bounds of :math:`\log \beta` searched.

  Returns:
    The scalar temperature :math:`1/\beta^*`, in the dtype of ``logits``.

  Example:
    >>> import jax.numpy as jnp
    >>> z = jnp.array([[4.0, 0.0], [0.0, 4.0], [4.0, 0.0]])
    >>> t = optimal_temperature(z, jnp.array([0, 1, 1]))
    >>> bool(t > 1.0)   # one of three confident answers is wrong: soften
    True
  """
  logits, labels = _check(logits, labels)
  return _temperature(logits, labels, *_check_range(log_beta_range))


def _temperature(logits, labels, lo, hi):
  """:func:`optimal_temperature` on checked arguments."""
  z = jax.lax.stop_gradient(logits)
  z_true = jnp.take_along_axis(z, labels[:, None], axis=1)[:, 0]

  def slope(log_beta):
    p = jax.nn.softmax(jnp.exp(log_beta) * z, axis=-1)
    return jnp.mean(jnp.sum(p * z, axis=-1) - z_true)

  def halve(_, bracket):
    a, b = bracket
    m = 0.5 * (a + b)
    rising = slope(m) > 0
    return jnp.where(rising, a, m), jnp.where(rising, m, b)

  a, b = jax.lax.fori_loop(0, _ITERATIONS, halve,
                           (jnp.asarray(lo, z.dtype), jnp.asarray(hi, z.dtype)))
  return jnp.exp(-0.5 * (a + b))


def calibrated_cross_entropy(logits: jax.Array, labels: jax.Array,
                             log_beta_range: tuple[float, float]
                             = LOG_BETA_RANGE) -> jax.Array:
  r"""Mean cross-entropy of ``logits`` at their best temperature.

  .. math::
    \min_{\log\beta \in [a, b]} \frac{1}{n} \sum_i
    -\log \operatorname{softmax}(\beta z_i)_{y_i}

  A validation objective for hyperparameter search that ranks networks by
  what they know, not by how confident they are: it is unchanged when the
  logits are multiplied by any positive constant (within the range), and it
  is at most the plain cross-entropy (:math:`\beta = 1` is in the range).
  Differentiable in ``logits`` (hence in every hyperparameter) with the
  exact gradient of the minimum, at the cost of a 64-step bisection on the
  stopped logits.

  Args:
    logits: ``(n, classes)`` floating logits.
    labels: ``(n,)`` integer labels.
    log_beta_range: bounds of :math:`\log \beta` searched; must contain 0.

  Returns:
    The scalar loss (float32 for half-precision logits).

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> z, y = jnp.array([[2.0, 0.0], [0.0, 1.0]]), jnp.array([0, 1])
    >>> a = hypergrad.calibrated_cross_entropy(z, y)
    >>> b = hypergrad.calibrated_cross_entropy(10.0 * z, y)
    >>> bool(jnp.allclose(a, b))
    True
  """
  lo, hi = _check_range(log_beta_range)
  if not lo <= 0.0 <= hi:
    raise ValueError(f'log_beta_range must contain 0 (the plain '
                     f'cross-entropy); got {log_beta_range}.')
  logits, labels = _check(logits, labels)
  if logits.dtype in (jnp.float16, jnp.bfloat16):
    # Half precision cannot resolve the temperature or the loss.
    logits = logits.astype(jnp.float32)
  t = _temperature(logits, labels, lo, hi)
  return optax.softmax_cross_entropy_with_integer_labels(
      logits / t, labels).mean()
