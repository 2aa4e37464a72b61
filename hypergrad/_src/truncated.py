r"""Truncated greedy hyperparameter optimisation (short-horizon look-ahead).

Every ``k`` steps, at the current state ``s_{t0}``, the values are moved
along the hypergradient of the validation loss after the *next* ``k`` steps
only, all run with those values:

    g = d E(s_{t0 + k}) / d h,   s_{t0 + k} = Phi^{(k)}(s_{t0}, h),
    h <- meta_step(h, g)                       (``meta_steps`` times)

and then the ``k`` real training steps run with the new values. This is the
greedy scheme whose short-horizon bias Wu et al. (2018) analyse and which
FDS contrasts with non-greedy hypergradients over the whole run. The
look-ahead is any full-horizon estimator value (``hypergrad.forward()``,
``hypergrad.reverse(...)``) on a ``k``-step horizon; the window start
``t0`` rides in the look-ahead's state as a traced int32 leaf (the wrapped
step calls ``step_fn(s, h, t0 + t)``), so one compiled look-ahead serves
every window.

With ``k`` equal to the whole horizon this is exactly one outer step of the
non-greedy method: ``h <- h - eta * forward_hypergrad(...)``, then training.

Cost per window: the look-ahead (``meta_steps`` hypergradients over ``k``
steps) plus the ``k`` real steps. If ``k`` does not divide the horizon the
last look-ahead still spans ``k`` steps, past the end of the run: it models
"the next ``k`` steps", whatever the run does afterwards.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from hypergrad._src import estimator as estimator_lib
from hypergrad._src import forward as forward_lib
from hypergrad._src import online
from hypergrad._src import validation

PyTree = Any


def _offset_step(step_fn, state, h, t):
  inner, t0 = state
  return step_fn(inner, h, t0 + t), t0


def _offset_loss(loss_fn, state):
  return loss_fn(state[0])


def _init(meta_opt, step_fn, loss_fn, inner_state, hparams):
  values = online.initial_values(hparams, 'truncated_greedy')
  online.check_unroll(step_fn, loss_fn, inner_state, hparams)
  return online.OnlineState(inner_state, values,
                            jax.tree.map(jnp.zeros_like, values),
                            online.meta_init(meta_opt, values))


def _update(window, estimator, meta_steps, meta_opt, step_fn, loss_fn,
            state: online.OnlineState, t):
  t = jnp.asarray(t, jnp.int32)
  # Partials of module-level functions: the same static identity on every
  # trace, so the look-ahead estimator's compilation cache is reused.
  window_step = jax.tree_util.Partial(_offset_step, step_fn)
  window_loss = jax.tree_util.Partial(_offset_loss, loss_fn)

  def hypergradient(values):
    sched = jax.tree.map(lambda h: h[None], values)
    start = (state.inner, t)
    g = estimator.compute(window_step, window_loss, start, sched,
                          window).hypergrads
    return jax.tree.map(lambda x: x[0], g)

  def look_ahead(operand):
    def meta(_, carry):
      values, _, meta_state = carry
      g = hypergradient(values)
      values, meta_state = online.meta_apply(meta_opt, meta_state, values, g)
      return values, g, meta_state
    return jax.lax.fori_loop(0, meta_steps, meta, operand)

  values, hypergrad, meta_state = jax.lax.cond(
      t % window == 0, look_ahead, lambda operand: operand,
      (state.hparams, state.hypergrad, state.meta_state))
  return online.OnlineState(step_fn(state.inner, values, t), values,
                            hypergrad, meta_state)


def truncated_greedy(step_fn: Callable, loss_fn: Callable, *, window: int,
                     meta_opt: optax.GradientTransformation | None = None,
                     estimator: estimator_lib.Estimator | None = None,
                     meta_steps: int = 1) -> online.OnlineMethod:
  r"""Truncated greedy: look ``window`` steps ahead, step the values, train.

  At steps ``t = 0, k, 2k, ...`` (``k = window``), before running step ``t``:
  ``meta_steps`` hyperparameter steps on ``E`` after ``k`` look-ahead steps
  from the current state (see the module docstring); then inner step ``t``.

  Args:
    step_fn: ``step_fn(state, hparams_t, t) -> state``.
    loss_fn: ``loss_fn(state) -> scalar``, the validation loss at the end of
      a look-ahead window.
    window: ``k``, the look-ahead horizon and the steps between updates;
      ``run_online`` refuses ``k`` longer than the run.
    meta_opt: the meta optimiser, an optax ``GradientTransformation``
      applied to the hypergradient; default
      ``hypergrad.meta_optimizer(1e-3)``, gradient steps of ``1e-3``.
      ``hypergrad.meta_optimizer(meta_lr, meta_update, bounds)`` builds the
      usual ones, e.g. ``hypergrad.meta_optimizer(1e-2, 'sign',
      hypergrad.SGD_BOUNDS)``.
    estimator: the look-ahead's estimator value: ``hypergrad.forward()``
      (default; memory flat in ``k``, cost growing with the number of
      values) or ``hypergrad.reverse(checkpoint_every=...)`` (cost flat in
      the number of values, memory growing with ``k`` unless
      rematerialised).
    meta_steps: hyperparameter steps per window (each re-runs the look-ahead
      from the same state with the updated values).

  Returns:
    An :class:`OnlineMethod` with state :class:`OnlineState`.

  Raises:
    ValueError: ``window < 1`` or ``meta_steps < 1``; at construction.
    TypeError: ``estimator`` not a single-run estimator value (a
      population's members would need stacked states), or ``meta_opt`` not an
      optax transformation; at construction.

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> def train_loss(w, t):  # a regression whose minibatch is step t's
    ...   x = jnp.sin(jnp.arange(3.0) + t)
    ...   return (x @ w - 1.0) ** 2
    >>> step_fn = hypergrad.sgd_momentum_step(train_loss, momentum=0.5)
    >>> loss_fn = lambda s: jnp.sum((s.params - 0.5) ** 2)   # "validation"
    >>> state = hypergrad.sgd_init(jnp.zeros(3))
    >>> method = hypergrad.truncated_greedy(
    ...     step_fn, loss_fn, window=100,
    ...     meta_opt=hypergrad.meta_optimizer(1e-2),
    ...     estimator=hypergrad.reverse())
    >>> final, sched = hypergrad.run_online(
    ...     method, state, {'lr': hypergrad.constant(0.05)}, 1000)
    >>> sched['lr'].shape
    (1000,)
  """
  window = validation.check_int(window, 'window')
  meta_steps = validation.check_int(meta_steps, 'meta_steps')
  estimator = estimator_lib.check_estimator(
      forward_lib.forward() if estimator is None else estimator,
      single_run=True)
  meta_opt = online.check_meta_opt(meta_opt)
  return online.make_method(
      online.Static(_init, ()),
      online.Static(_update, (window, estimator, meta_steps)), meta_opt,
      (step_fn, loss_fn), every=window, every_arg='window')
