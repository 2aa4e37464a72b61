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
every step by the tangent engine that ``forward_hypergrad`` uses,
plus one validation gradient every ``k`` steps. Memory: ``K`` state-sized
tangents, whatever the horizon.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hypergrad._src import online
from hypergrad._src import tangents as tangents_lib
from hypergrad._src import unroll as unroll_lib
from hypergrad._src import validation

PyTree = Any


def _init(meta_opt, step_fn, loss_fn, inner_state, hparams):
  values = online.initial_values(hparams, 'rtho')
  online.check_unroll(step_fn, loss_fn, inner_state, hparams)
  k = sum(int(np.size(h)) for h in jax.tree.leaves(values))
  tangents = tangents_lib.zeros(k, unroll_lib.split_state(inner_state).diff)
  return online.OnlineState(inner_state, values,
                            jax.tree.map(jnp.zeros_like, values),
                            online.meta_init(meta_opt, values), tangents)


def _update(every, reset, meta_opt, step_fn, loss_fn,
            state: online.OnlineState, t):
  t = jnp.asarray(t, jnp.int32)
  split = unroll_lib.split_state(state.inner)
  step, merge = tangents_lib.step_pieces(step_fn, split)

  def hyper_step(operand):
    values, tangents, _, meta_state = operand
    grads = jax.grad(lambda d: loss_fn(merge(d, split.rest)))(split.diff)
    g = tangents_lib.contract(tangents, grads, values)
    if reset:
      tangents = [jnp.zeros_like(z) for z in tangents]
    values, meta_state = online.meta_apply(meta_opt, meta_state, values, g)
    return values, tangents, g, meta_state

  # Step 0 has nothing to learn from; after that, every `every` steps.
  due = (t > 0) & (t % every == 0)
  values, tangents, hypergrad, meta_state = jax.lax.cond(
      due, hyper_step, lambda operand: operand,
      (state.hparams, state.tangents, state.hypergrad, state.meta_state))

  new_diff, new_rest, tangents = tangents_lib.push_batch(
      step, split.diff, split.rest, values, t, tangents,
      tangents_lib.basis(values))
  return online.OnlineState(merge(new_diff, new_rest), values, hypergrad,
                            meta_state, tangents)


def rtho(step_fn: Callable, loss_fn: Callable, *, every: int = 10,
         meta_opt: optax.GradientTransformation | None = None,
         reset_tangents: bool = False) -> online.OnlineMethod:
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
    meta_opt: the meta optimiser, an optax ``GradientTransformation``
      applied to the hypergradient; default
      ``hypergrad.meta_optimizer(1e-3)``, gradient steps of ``1e-3``.
      ``hypergrad.meta_optimizer(meta_lr, meta_update, bounds)`` builds the
      usual ones, e.g. ``hypergrad.meta_optimizer(1e-3,
      bounds=hypergrad.SGD_BOUNDS)``.
    reset_tangents: zero the tangents after each update (truncated look-back)
      instead of keeping them (Franceschi et al.'s RTHO).

  Returns:
    An :class:`OnlineMethod` with state :class:`OnlineState`
    (``tangents`` filled).

  Raises:
    ValueError: ``every < 1``; at construction.
    TypeError: ``meta_opt`` is not an optax transformation; at construction.

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> def train_loss(w, t):  # a regression whose minibatch is step t's
    ...   x = jnp.sin(jnp.arange(3.0) + t)
    ...   return (x @ w - 1.0) ** 2
    >>> step_fn = hypergrad.sgd_momentum_step(train_loss, momentum=0.5)
    >>> loss_fn = lambda s: jnp.sum((s.params - 0.5) ** 2)   # "validation"
    >>> state = hypergrad.sgd_init(jnp.zeros(3))
    >>> method = hypergrad.rtho(
    ...     step_fn, loss_fn, every=50,
    ...     meta_opt=hypergrad.meta_optimizer(1e-3,
    ...                                       bounds=hypergrad.SGD_BOUNDS))
    >>> final, sched = hypergrad.run_online(
    ...     method, state, {'lr': hypergrad.constant(0.05)}, 1000)
    >>> bool(sched['lr'][-1] != sched['lr'][0])   # it moved online
    True
  """
  every = validation.check_int(every, 'every')
  meta_opt = online.check_meta_opt(meta_opt)
  return online.make_method(
      online.Static(_init, ()),
      online.Static(_update, (every, bool(reset_tangents))), meta_opt,
      (step_fn, loss_fn), every=every, every_arg='every')
