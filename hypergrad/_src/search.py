"""The outer loop: full-horizon hypergradients driving sign-based outer steps.

Each outer step computes one hypergradient over the whole horizon (any
estimator), checks it is finite, and applies :func:`sign_descent`. A diverging
inner run is never taken as a result: a NaN/Inf loss or hypergradient, or a
finite validation loss that exploded (above ``divergence_factor`` times the
loss at the initial hyperparameters: a run at momentum 0.999 can end at loss
~1e3 without overflowing), rejects the step that led to it, which is halved
back towards the last good values while every step size shrinks. The loop
state is a small pytree, so the launch script checkpoints it after every
outer step and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hypergrad._src import outer

PyTree = Any
HypergradFn = Callable[[PyTree, int], tuple[jax.Array, PyTree]]


class DivergenceError(FloatingPointError):
  """The inner run diverges at the initial hyperparameters: nothing to back off to."""


class OuterState(NamedTuple):
  """Everything the outer loop needs to continue.

  Attributes:
    hparams: the current schedule values (mapping of kind -> pytree).
    last_good: the values of the last outer step whose inner run was finite.
    opt: the :class:`SignDescentState`.
    step: number of outer steps taken (accepted or rejected).
    converged: whether the convergence test has passed.
    initial_loss: validation loss at the initial hyperparameters (``nan``
      before the first step), the scale that tells an exploded loss.
  """
  hparams: PyTree
  last_good: PyTree
  opt: outer.SignDescentState
  step: int
  converged: bool
  initial_loss: float = float('nan')


def init(hparams: Mapping[str, PyTree], opt: outer.SignDescent) -> OuterState:
  hparams = {k: jax.tree.map(jnp.asarray, v) for k, v in hparams.items()}
  return OuterState(hparams, hparams, opt.init(hparams), 0, False)


def _all_finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def _norm(tree) -> float:
  return float(np.sqrt(sum(float(jnp.sum(jnp.square(x.astype(jnp.float32))))
                           for x in jax.tree.leaves(tree))))


def _check_factor(divergence_factor) -> None:
  if divergence_factor is not None and not (
      isinstance(divergence_factor, (int, float, np.floating))
      and not isinstance(divergence_factor, bool)
      and divergence_factor > 1):
    raise ValueError('divergence_factor must be a number > 1 or None, got '
                     f'divergence_factor={divergence_factor!r}.')


def exploded(loss: float, initial_loss: float,
             divergence_factor: float | None) -> bool:
  """Whether a finite ``loss`` counts as diverged against the initial one.

  Only a positive initial loss sets a scale (cross-entropy and squared
  errors are; a loss that can be negative is judged on finiteness alone).
  """
  return (divergence_factor is not None and initial_loss > 0
          and loss > divergence_factor * initial_loss)


def step(hypergrad_fn: HypergradFn, opt: outer.SignDescent, state: OuterState,
         *, tol: float = 0.05, divergence_factor: float | None = 10.0
         ) -> tuple[OuterState, dict]:
  """One outer step.

  Args:
    hypergrad_fn: ``hypergrad_fn(hparams, outer_step) -> (val_loss,
      hypergrads)``; the outer step index lets it re-draw the validation split
      or the inner initialisation reproducibly.
    opt: the outer optimiser, e.g. ``sign_descent()``.
    state: the loop state.
    tol: convergence tolerance (fraction of each value).
    divergence_factor: a finite validation loss above this multiple of the
      loss at the initial hyperparameters is treated as divergence (the step
      is rejected); ``None`` rejects non-finite losses only.

  Returns:
    ``(new_state, record)`` where ``record`` holds the step's metrics:
    ``outer_step``, ``val_loss``, ``accepted``, ``hypergrad_norm``,
    ``hypergrads``, ``hparams`` (the values evaluated), ``step_sizes``,
    ``seconds``.

  Raises:
    ValueError: ``divergence_factor`` not a number > 1 or None.
    DivergenceError: the first step's inner run is not finite.
  """
  _check_factor(divergence_factor)
  start = time.perf_counter()
  loss, grads = hypergrad_fn(state.hparams, state.step)
  loss = jax.block_until_ready(loss)
  record = {'outer_step': state.step, 'hparams': state.hparams,
            'val_loss': float(loss), 'hypergrads': grads}
  # The first step's loss (init leaves it nan) is the scale of "exploded".
  initial_loss = state.initial_loss
  if not np.isfinite(initial_loss):
    initial_loss = record['val_loss']
  if (bool(jnp.isfinite(loss)) and _all_finite(grads)
      and not exploded(record['val_loss'], initial_loss, divergence_factor)):
    hparams, opt_state = opt.update(grads, state.opt, state.hparams)
    new = OuterState(hparams, state.hparams, opt_state, state.step + 1,
                     outer.converged(opt_state, hparams, tol), initial_loss)
    record.update(accepted=True, hypergrad_norm=_norm(grads))
  else:
    if state.step == 0:
      raise DivergenceError(
          f'the inner run diverged (validation loss {float(loss)}) at the '
          f'initial hyperparameters {jax.tree.map(np.asarray, state.hparams)};'
          ' start from smaller learning rates.')
    # Go halfway back to the last values that trained, with smaller steps.
    hparams = jax.tree.map(lambda h, g: (g + 0.5 * (h - g)).astype(h.dtype),
                           state.hparams, state.last_good)
    new = OuterState(hparams, state.last_good, outer.back_off(state.opt),
                     state.step + 1, False, initial_loss)
    record.update(accepted=False, hypergrad_norm=float('nan'))
  record.update(step_sizes=new.opt.step_sizes,
                seconds=time.perf_counter() - start)
  return new, record


def run(hypergrad_fn: HypergradFn, hparams: Mapping[str, PyTree], *,
        opt: outer.SignDescent | None = None, max_outer_steps: int = 10,
        tol: float = 0.05, divergence_factor: float | None = 10.0,
        state: OuterState | None = None,
        callback: Callable[[OuterState, dict], None] | None = None
        ) -> tuple[OuterState, list[dict]]:
  """Runs outer steps until converged or ``max_outer_steps`` steps were taken.

  Args:
    hypergrad_fn: see :func:`step`.
    hparams: initial schedule values (ignored when ``state`` is given).
    opt: outer optimiser; default :func:`sign_descent` with the paper's steps.
    max_outer_steps: bound on outer steps (counting rejected ones).
    tol: convergence tolerance.
    divergence_factor: see :func:`step`.
    state: a loop state to resume from.
    callback: called after every outer step with ``(state, record)``, e.g.
      to log and checkpoint.

  Returns:
    The final loop state and the list of records of the steps run here.

  Example:
    >>> fn = lambda h, k: hypergrad.forward_hypergrad(step_fn, loss_fn, s0, h, T)
    >>> state, records = run(fn, {'lr': constant(0.0, 7)}, max_outer_steps=10)
  """
  if max_outer_steps < 1:
    raise ValueError(f'max_outer_steps must be >= 1, got {max_outer_steps}.')
  _check_factor(divergence_factor)
  opt = opt or outer.sign_descent()
  state = state if state is not None else init(hparams, opt)
  records = []
  while state.step < max_outer_steps and not state.converged:
    state, record = step(hypergrad_fn, opt, state, tol=tol,
                         divergence_factor=divergence_factor)
    records.append(record)
    if callback is not None:
      callback(state, record)
  return state, records
