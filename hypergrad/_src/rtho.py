r"""Real-time hyperparameter optimisation, RTHO (Franceschi et al. 2017).

Forward mode run *online*: alongside the training run the tangents
``Z_t = d s_t / d h`` of the state with respect to the current
hyperparameter values are propagated,

    Z_{t+1} = (d Phi / d s) Z_t + d Phi / d h        (at s_t, h_t, t),

and every ``k`` steps the hypergradient of the validation loss at the current
state, ``g = grad E(s_t) . Z_t``, makes a hyperparameter step. The tangents
are then either kept (``reset_tangents=False``, Franceschi et al.'s Algorithm
3: ``Z`` keeps summing the influence of every past step, as if the values
had always been the current ones) or reset to zero (``reset_tangents=True``:
the hypergradient only sees the last ``k`` steps, a truncated look-back).

Exactly: with the run cut into windows ``[0, k), [k, 2k), ...`` and the value
used in window ``j`` written ``h_j``, the update at the end of window ``j`` is
the forward hypergradient of ``E(s_{(j+1)k})`` with respect to the schedule
``(h_0, ..., h_j)``, summed over all windows (kept tangents) or taken for the
last window only (reset tangents).

Cost: ``K`` tangents (one per scalar hyperparameter value) pushed through
every step with ``jax.linearize`` + ``jax.vmap``, like ``forward_hypergrad``,
plus one validation gradient every ``k`` steps. Memory: ``K`` state-sized
tangents, whatever the horizon.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hypergrad._src import online
from hypergrad._src import unroll as unroll_lib

PyTree = Any


class RTHOState(NamedTuple):
  """State of :func:`rtho`.

  Attributes:
    inner: the inner state.
    hparams: current values (leaves without the interval axis); after
      ``update(state, t)``, the values step ``t`` used.
    hypergrad: the hypergradient of the latest hyperparameter update; zeros
      before the first.
    tangents: ``d inner / d hparams`` for every floating inner leaf (in
      ``jax.tree.leaves`` order), each of shape ``(K, *leaf.shape)`` with
      ``K`` the total number of scalar hyperparameter values.
  """
  inner: PyTree
  hparams: PyTree
  hypergrad: PyTree
  tangents: list


def _basis(values):
  """One-hot tangents of the values, leaf ``l``: ``(K, *leaf.shape)``."""
  leaves, treedef = jax.tree.flatten(values)
  sizes = [int(np.size(h)) for h in leaves]
  total, offset, out = sum(sizes), 0, []
  for h, size in zip(leaves, sizes):
    b = np.zeros((total, size), dtype=h.dtype)
    b[offset + np.arange(size), np.arange(size)] = 1
    out.append(jnp.asarray(b.reshape((total,) + np.shape(h))))
    offset += size
  return jax.tree.unflatten(treedef, out)


def contract(tangents, grads, values):
  """``grad E . Z`` as a pytree like ``values``.

  Each state leaf's contribution is cast to the hyperparameter's dtype before
  summing, so mixed-precision states pass strict dtype promotion.
  """
  leaves, treedef = jax.tree.flatten(values)
  out, offset = [], 0
  for h in leaves:
    size = int(np.size(h))
    total = None
    for z, g in zip(tangents, grads):
      rows = z[offset:offset + size].reshape(size, -1)
      term = (rows @ g.reshape(-1).astype(z.dtype)).astype(h.dtype)
      total = term if total is None else total + term
    out.append(total.reshape(np.shape(h)))
    offset += size
  return jax.tree.unflatten(treedef, out)


def _init(cfg, step_fn, loss_fn, inner_state, hparams):
  values = online.initial_values(hparams, 'rtho')
  online.check_unroll(step_fn, loss_fn, inner_state, hparams)
  online.per_leaf(cfg, values)
  k = sum(int(np.size(h)) for h in jax.tree.leaves(values))
  diff = unroll_lib.split_state(inner_state).diff
  tangents = [jnp.zeros((k,) + np.shape(x), jnp.result_type(x)) for x in diff]
  return RTHOState(inner_state, values, jax.tree.map(jnp.zeros_like, values),
                   tangents)


def _update(cfg, every, reset, step_fn, loss_fn, state: RTHOState, t):
  t = jnp.asarray(t, jnp.int32)
  split = unroll_lib.split_state(state.inner)
  merge = lambda d, r: unroll_lib.merge_state(d, r, split.treedef, split.mask)

  def hyper_step(operand):
    values, tangents, _ = operand
    grads = jax.grad(lambda d: loss_fn(merge(d, split.rest)))(split.diff)
    g = contract(tangents, grads, values)
    if reset:
      tangents = [jnp.zeros_like(z) for z in tangents]
    return online.meta_step(cfg, values, g), tangents, g

  # Step 0 has nothing to learn from; after that, every `every` steps.
  due = (t > 0) & (t % every == 0)
  values, tangents, hypergrad = jax.lax.cond(
      due, hyper_step, lambda operand: operand,
      (state.hparams, state.tangents, state.hypergrad))

  def step(diff, h):
    out = unroll_lib.split_state(step_fn(merge(diff, split.rest), h, t))
    return out.diff, out.rest

  # Linearise once, apply to all K tangents: the primal step and its
  # residuals are computed once per step, not once per tangent.
  new_diff, lin, new_rest = jax.linearize(step, split.diff, values,
                                          has_aux=True)
  tangents = jax.vmap(lin)(tangents, _basis(values))
  return RTHOState(merge(new_diff, new_rest), values, hypergrad,
                   list(tangents))


def rtho(step_fn: Callable, loss_fn: Callable, *, every: int = 10,
         meta_lr=1e-3, reset_tangents: bool = False,
         meta_update: str = 'sgd', bounds=None) -> online.OnlineMethod:
  r"""Real-time HO: forward tangents online, a hyperparameter step every ``k``.

  At steps ``t = k, 2k, ...`` (before running step ``t``), the values move
  along ``grad E(s_t) . Z_t`` (see the module docstring); then inner step
  ``t`` runs and the tangents are propagated through it.

  Args:
    step_fn: ``step_fn(state, hparams_t, t) -> state``.
    loss_fn: ``loss_fn(state) -> scalar``, the validation loss (evaluated
      every ``every`` steps; make it pick a validation batch internally for a
      stochastic version).
    every: ``k``, inner steps between hyperparameter updates (with
      ``k = num_steps`` the run makes none: ``run_online`` refuses only
      ``k > num_steps``).
    meta_lr: positive float or mapping name -> positive float.
    reset_tangents: zero the tangents after each update (truncated look-back)
      instead of keeping them (Franceschi et al.'s RTHO).
    meta_update: ``'sgd'``, ``'sign'`` or ``'normalized'``.
    bounds: None, ``(lo, hi)``, or a mapping name -> ``(lo, hi)`` such as
      ``hypergrad.SGD_BOUNDS``.

  Returns:
    An :class:`OnlineMethod` with state :class:`RTHOState`.

  Raises:
    ValueError: ``every < 1``, a non-positive ``meta_lr``, an unknown
      ``meta_update`` or malformed ``bounds``; at construction.

  Example:
    >>> method = hypergrad.rtho(step_fn, loss_fn, every=50, meta_lr=1e-3,
    ...                         bounds=hypergrad.SGD_BOUNDS)
    >>> final, sched = hypergrad.run_online(
    ...     method, state, {'lr': hypergrad.constant(0.05)}, 1000)
  """
  every = online.validate_positive_int(every, 'every')
  cfg = online.meta_config(meta_lr, meta_update, bounds)
  return online.make_method(
      cfg, online.Static(_init, ()),
      online.Static(_update, (every, bool(reset_tangents))),
      (step_fn, loss_fn), every=every, every_arg='every')
