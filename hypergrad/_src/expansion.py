"""How much the inner dynamics amplify a perturbation: a hypergradient's trust.

A value's hypergradient is a sum of its effects carried from the step its
interval begins, ``s``, to the end of the run by the linearised dynamics
``J_{T-1} ... J_s``. Where that product expands (chaotic training: a large
step, a sharp loss), round-off and the choice of minibatches are amplified
with it and the hypergradient's sign is noise (Metz et al. 2021). Each
estimator measures ``log10`` of the expansion over ``[s, T)`` almost for free:
reverse mode from the adjoint's norm at ``s`` against its norm at ``T``
(:func:`tap`), forward mode from one extra state tangent, renormalised every
step (:func:`renormalise`). See ``docs/trust.md`` for the threshold.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from hypergrad._src import schedule

PyTree = Any

_LN10 = float(np.log(10.0))


def starts(hparams: PyTree, num_steps: int) -> np.ndarray:
  """The distinct first steps of every interval of ``hparams`` (schedules), sorted."""
  out = {0}
  for shape in schedule.schedule_shapes(hparams):
    out.update(int(s) for s in schedule.interval_starts(shape[0], num_steps))
  return np.array(sorted(out), np.int32)


def per_value(at_starts: jax.Array, probe_starts: np.ndarray, hparams: PyTree,
              num_steps: int) -> PyTree:
  """``at_starts[k]`` (one per distinct start) spread over every value.

  Returns:
    A float32 pytree like ``hparams`` (schedule leaves ``(n, ...)``): each
    value gets the entry of the step its interval begins.
  """
  def one(h):
    idx = np.searchsorted(probe_starts,
                          schedule.interval_starts(h.shape[0], num_steps))
    col = at_starts[idx].astype(jnp.float32)
    return jnp.broadcast_to(col.reshape((-1,) + (1,) * (h.ndim - 1)),
                            h.shape)
  return jax.tree.map(one, hparams)


@jax.custom_vjp
def _tap(leaves, slot):
  del slot
  return leaves


def _tap_fwd(leaves, slot):
  return leaves, jnp.zeros_like(slot)


def _tap_bwd(zero, cotangents):
  return cotangents, (zero + _log_norm(cotangents)).astype(zero.dtype)


_tap.defvjp(_tap_fwd, _tap_bwd)


def _log_norm(leaves) -> jax.Array:
  """``log ||leaves||`` without overflow (a chaotic adjoint passes 1e19)."""
  big = jnp.max(jnp.stack([jnp.max(jnp.abs(x)).astype(jnp.float32)
                           for x in leaves]))
  safe = jnp.where(big > 0, big, 1.0)
  sq = sum(jnp.sum(jnp.square(x.astype(jnp.float32) / safe)) for x in leaves)
  return jnp.where(big > 0, jnp.log(safe) + 0.5 * jnp.log(sq), -jnp.inf)


def tap(leaves: list, slot: jax.Array) -> list:
  """The identity on ``leaves``; its reverse pass gives ``slot`` their adjoint's log-norm.

  ``slot`` is a float32 scalar whose value is ignored: differentiating the
  outer loss with respect to it yields ``log ||d loss / d leaves||`` (natural
  log), the adjoint's size at the point of the run where ``tap`` was applied.
  One reduction of the adjoint per use, no stored states.
  """
  if not leaves:
    return leaves
  return _tap(list(leaves), slot)


def from_adjoint(log_norms: jax.Array) -> jax.Array:
  """``log10 ||a_s|| / ||a_T||`` per start from ``(S + 1,)`` log-norms (the last at T)."""
  logs = log_norms.astype(jnp.float32)
  # A loss that does not depend on the final state has no adjoint to grow.
  return jnp.where(jnp.isfinite(logs[-1]),
                   (logs[:-1] - logs[-1]) / _LN10, 0.0)


def probe_init(diff: list) -> list:
  """A fixed random unit tangent of the state's differentiable leaves."""
  key = jax.random.key(0)
  out = [jax.random.normal(jax.random.fold_in(key, i), jnp.shape(x),
                           jnp.float32)
         for i, x in enumerate(diff)]
  norm = jnp.sqrt(sum(jnp.sum(jnp.square(p)) for p in out))
  return [(p / norm).astype(jnp.result_type(x)) for p, x in zip(out, diff)]


def renormalise(probe: list, log_norm: jax.Array) -> tuple[list, jax.Array]:
  """The probe scaled back to unit norm, its growth added to ``log_norm`` (natural log).

  A probe that vanished (a step that forgets its input) is kept as it was
  and adds nothing: it cannot be renormalised.
  """
  norm = jnp.sqrt(sum(jnp.sum(jnp.square(p.astype(jnp.float32)))
                      for p in probe))
  ok = jnp.isfinite(norm) & (norm > 0)
  safe = jnp.where(ok, norm, 1.0)
  probe = [(p / safe.astype(p.dtype)).astype(p.dtype) for p in probe]
  return probe, log_norm + jnp.where(ok, jnp.log(safe), 0.0)


def record(at_starts: jax.Array, probe_starts: jax.Array, t, log_norm):
  """``at_starts`` with the probe's log-norm stored at the start equal to ``t``."""
  return jnp.where(probe_starts == t, log_norm, at_starts)


def from_probe(at_starts: jax.Array, log_norm: jax.Array) -> jax.Array:
  """``log10`` of the probe's growth from each start to the end of the run."""
  return (log_norm - at_starts) / _LN10
