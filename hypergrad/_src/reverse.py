r"""Reverse-mode hypergradients: backpropagation through the unroll.

Reverse mode (Franceschi et al. 2017, "Forward and Reverse Gradient-Based
Hyperparameter Optimization") differentiates the same dynamics as forward
mode, ``s_{t+1} = Phi(s_t, lambda_t, t)``, by the adjoint recursion

    a_T = grad E(s_T),
    a_t = a_{t+1} (d Phi / d s)(s_t, lambda_t, t),
    d E / d lambda = sum_t a_{t+1} (d Phi / d lambda_t)(s_t, lambda_t, t)
                     (d lambda_t / d lambda),

which is exactly ``jax.grad`` through the ``lax.scan`` unroll. One backward
pass gives the derivative with respect to *every* hyperparameter value at
once, but it visits the states in reverse order, so they must be stored (or
recomputed).

Against forward mode: reverse mode's time is a few plain runs whatever the
number of hyperparameter values ``K`` (one backward pass, plus one extra
forward pass with checkpoints), forward mode's grows with ``K``; reverse
mode's memory grows with ``T`` (``O(T r)`` for ``r`` bytes of residuals per
step, ``O((T / c) |s| + c r)`` with checkpoints), forward mode's does not.
Measured figures: ``docs/benchmarks.md``.

``c = checkpoint_every``; ``c ~ sqrt(T)`` gives ``O(sqrt(T))`` memory, and
``c = 1`` stores exactly the ``T`` states (``T |s|``, about 3x less than the
per-step residuals ``r`` here) for the price of recomputing each step.
Forward mode wins for a handful of values (the FDS setting: ~10 shared
schedule values) and very long horizons, where reverse mode's memory becomes
the limit; reverse mode wins when hyperparameters are many, e.g. one learning
rate per parameter or one weight per training example, where ``K`` tangents
would each be the size of the state and cost a step each.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from hypergrad._src import estimator as estimator_lib
from hypergrad._src import expansion as expansion_lib
from hypergrad._src import unroll as unroll_lib
from hypergrad._src import validation

PyTree = Any


@dataclasses.dataclass(frozen=True)
class Reverse(estimator_lib.Estimator):
  """Reverse mode: backpropagation through the unroll.

  Attributes:
    checkpoint_every: None, or the block length ``c >= 1`` of the
      rematerialised scan (about ``T / c + c`` stored steps).
  """
  checkpoint_every: int | None = None

  def __post_init__(self):
    object.__setattr__(self, 'checkpoint_every', validation.check_int(
        self.checkpoint_every, 'checkpoint_every', allow_none=True))

  def compute(self, step_fn, loss_fn, init_state, hparams, num_steps,
              progress=None) -> estimator_lib.HypergradResult:
    del progress  # The backward pass is one XLA op: no host callbacks.

    # The adjoint's norm is read where each interval begins and at the end
    # (the last slot): the expansion the hypergradient went through.
    steps = expansion_lib.starts(hparams, num_steps)

    def outer_loss(h, slots):
      info = unroll_lib.unroll(step_fn, init_state, h, num_steps,
                               checkpoint_every=self.checkpoint_every,
                               return_info=True,
                               taps=(jnp.asarray(steps), slots[:-1]))
      return loss_fn(unroll_lib.tap_state(info.final_state, slots[-1])), info

    slots = jnp.zeros((len(steps) + 1,), jnp.float32)
    (loss, info), (grads, log_norms) = jax.value_and_grad(
        outer_loss, argnums=(0, 1), has_aux=True)(hparams, slots)
    # A float32 loss of a float64 schedule (or vice versa) must not change the
    # dtypes the outer optimiser sees.
    grads = jax.tree.map(lambda g, h: g.astype(h.dtype), grads, hparams)
    info = info._replace(expansion=expansion_lib.per_value(
        expansion_lib.from_adjoint(log_norms), steps, hparams, num_steps))
    return estimator_lib.HypergradResult(loss, grads, info)


def reverse(checkpoint_every: int | None = None) -> Reverse:
  """The reverse-mode estimator, as a value to pass around.

  Args:
    checkpoint_every: None (store every step's residuals), or the block
      length of rematerialisation; ``round(sqrt(T))`` gives ``O(sqrt(T))``
      memory for one extra forward pass.

  Returns:
    A :class:`Reverse` estimator; call it like any
    :class:`hypergrad.Estimator`.

  Raises:
    ValueError: ``checkpoint_every`` not None or an int >= 1.

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> step = lambda w, h, t: w - h['lr'] * 2.0 * (w - 3.0)
    >>> result = hypergrad.reverse(checkpoint_every=10)(
    ...     step, lambda w: (w - 3.0) ** 2, jnp.zeros(()),
    ...     {'lr': jnp.full((2,), 0.1)}, num_steps=100)
    >>> result.hypergrads['lr'].shape
    (2,)
  """
  return Reverse(checkpoint_every)
