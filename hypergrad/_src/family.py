"""Schedule families: a hyperparameter as a differentiable function of a few parameters.

A :class:`WarmupDecay` is the practitioner's recipe (a linear warm-up to a
peak, then a cosine or linear decay to a final fraction of it) times
piecewise residual factors shared over intervals (the FDS sharing, on top of
the family). Every estimator differentiates through it: forward mode pushes
one tangent per parameter (all begun at step 0) and one per residual
interval, reverse mode gets them from one backward pass.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from hypergrad._src import schedule

DECAYS = ('cosine', 'linear')


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class WarmupDecay:
  r"""Warm-up + decay with residual factors, in force at step ``t`` of ``T``.

  .. math::
    h_t = e^{p}\,\begin{cases} u'/w & u' < w \\
      f + (1 - f)\,d\big(\frac{u - w}{1 - w}\big) & \text{else}\end{cases}
      \;e^{r_{i(t)}}

  with ``u = t / T``, ``u' = (t + 1) / T``, ``w = sigmoid(warmup_logit)``,
  ``f = sigmoid(final_logit)``, ``d(x) = (1 + cos(pi x)) / 2`` (cosine) or
  ``1 - x`` (linear), and ``r`` shared over ``n`` intervals. Every
  parameter lives on an unbounded scale (log, logit), so one sign-descent
  step of 0.1 moves the peak and the residual factors by about 10%.

  Attributes:
    log_peak: ``(1,)``, log of the peak value.
    warmup_logit: ``(1,)``, logit of the warm-up fraction of the run.
    final_logit: ``(1,)``, logit of the final value as a fraction of the peak.
    log_residual: ``(n,)``, log of the factor on each of ``n`` intervals.
    decay: ``'cosine'`` or ``'linear'`` (static).
  """
  log_peak: jax.Array
  warmup_logit: jax.Array
  final_logit: jax.Array
  log_residual: jax.Array
  decay: str = dataclasses.field(default='cosine',
                                 metadata=dict(static=True))

  # Read by schedule.hparams_at and schedule.expand.
  is_schedule_family = True

  def at(self, t, num_steps: int) -> jax.Array:
    """The value in force at inner step ``t`` (int or traced int32): a scalar."""
    dtype = jnp.result_type(self.log_peak)
    t = jnp.asarray(t)
    u = t.astype(dtype) / num_steps
    u1 = (t + 1).astype(dtype) / num_steps
    w = jax.nn.sigmoid(self.warmup_logit[0])
    f = jax.nn.sigmoid(self.final_logit[0])
    x = jnp.clip((u - w) / (1 - w), 0, 1)
    if self.decay == 'cosine':
      d = 0.5 * (1 + jnp.cos(jnp.asarray(np.pi, dtype) * x))
    else:
      d = 1 - x
    shape = jnp.where(u1 < w, u1 / w, f + (1 - f) * d)
    r = self.log_residual[schedule.interval_index(
        t, self.log_residual.shape[0], num_steps)]
    return (jnp.exp(self.log_peak[0] + r) * shape).astype(dtype)


def warmup_decay(peak, *, warmup: float = 0.05, final: float = 0.0,
                 decay: str = 'cosine', intervals: int = 1,
                 dtype=None) -> WarmupDecay:
  """A warm-up + decay schedule family, as a hyperparameter leaf.

  Use it wherever a schedule goes in ``hparams``; hypergradients come back
  as a :class:`WarmupDecay` of the same shapes, with respect to its
  parameters. The residual factors start at 1.

  Args:
    peak: the peak value, > 0.
    warmup: the warm-up fraction of the run, in ``(0, 1)``.
    final: the final value as a fraction of the peak, in ``[0, 1)`` (0 is
      taken as 1e-4: the family lives on a logit scale).
    decay: ``'cosine'`` or ``'linear'``.
    intervals: ``n``, the residual factors' intervals.
    dtype: the parameters' floating dtype (default float32).

  Returns:
    A :class:`WarmupDecay`.

  Raises:
    ValueError: a value out of its range, or another ``decay``; naming it.

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> lr = hypergrad.warmup_decay(0.4, warmup=0.1, intervals=3)
    >>> hypergrad.expand({'lr': lr}, 10)['lr'].round(3).tolist()[:3]
    [0.4, 0.4, 0.388]
  """
  def real(x):
    return isinstance(x, (int, float, np.integer, np.floating)) and not \
        isinstance(x, (bool, np.bool_)) and np.isfinite(x)

  if not (real(peak) and peak > 0):
    raise ValueError(f'peak must be a finite number > 0, got peak={peak!r}.')
  if not (real(warmup) and 0 < warmup < 1):
    raise ValueError(f'warmup must be in (0, 1), got warmup={warmup!r}.')
  if not (real(final) and 0 <= final < 1):
    raise ValueError(f'final must be in [0, 1), got final={final!r}.')
  if decay not in DECAYS:
    raise ValueError(f"decay must be 'cosine' or 'linear', got "
                     f'decay={decay!r}.')
  if isinstance(intervals, bool) or not isinstance(
      intervals, (int, np.integer)) or intervals < 1:
    raise ValueError(f'intervals must be an int >= 1, got '
                     f'intervals={intervals!r}.')
  dtype = jnp.float32 if dtype is None else dtype
  logit = lambda p: float(np.log(p) - np.log1p(-p))
  one = lambda v: jnp.full((1,), v, dtype)
  return WarmupDecay(one(float(np.log(peak))), one(logit(warmup)),
                     one(logit(max(final, 1e-4))),
                     jnp.zeros((int(intervals),), dtype), decay)
