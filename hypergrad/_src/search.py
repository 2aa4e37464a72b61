"""The outer loop: full-horizon hypergradients driving an outer optimiser.

Each outer step computes one hypergradient over the whole horizon (any
estimator), checks the inner run behind it, and applies the outer optimiser:
any optax ``GradientTransformation``, by default FDS's
:func:`hypergrad.sign_descent`. A diverging inner run is never taken as a
result: a NaN/Inf loss or hypergradient, a finite validation loss that
exploded (above ``divergence_factor`` times the loss at the initial
hyperparameters: a run at momentum 0.999 can end at loss ~1e3 without
overflowing), or one that collapsed to chance level (at or above
``collapse_loss``, e.g. ``ln(num_classes)`` for cross-entropy) rejects the step
that led to it: the values go halfway back to the last accepted ones and every
later update is halved.

A value whose hypergradient went through an expansion of the inner
dynamics above ``max_expansion`` (``info.expansion``: chaotic training, where
its sign is noise) is held in place for the step, as a population's
undecided values are; an optional ``check_loss`` tests every hypergradient
against finite differences of the loss (:func:`hypergrad.check_hypergrad`)
and warns, naming the remedies, when it does not predict it.
``docs/trust.md`` has the measurements behind both.

The loop keeps the best *evaluated and accepted* schedule (lowest validation
loss): that, not the last values (which were never evaluated), is the result.
The loop state is a small pytree, so the launch script checkpoints it after
every outer step and a resumed run continues exactly where it stopped.
"""

from __future__ import annotations

import math
import time
from typing import Any, Callable, Mapping, NamedTuple
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hypergrad._src import estimator as estimator_lib
from hypergrad._src import finite_difference
from hypergrad._src import population as population_lib
from hypergrad._src import projections
from hypergrad._src import registry
from hypergrad._src import transformations
from hypergrad._src import validation

PyTree = Any
HypergradFn = Callable[[PyTree, int], tuple[jax.Array, PyTree]]
ScoreFn = Callable[[Any, float], float]
CheckLossFn = Callable[[PyTree, int], Any]

# log10 of the expansion above which a value's hypergradient is held: on the
# main job's task the values whose hypergradients changed sign from seed to
# seed measured 2.0-3.9, every other one at most 1.8 (docs/trust.md).
MAX_EXPANSION = 2.0

_REMEDIES = ('a shorter horizon or more intervals, smaller learning rates, a '
             'population (hypergrad.population) or a smoothed estimate')

# A leaf with more values than this is summarised, not printed, in errors.
_PRINT_VALUES = 20


class DivergenceError(FloatingPointError):
  """The inner run diverges at the initial hyperparameters: nothing to back off to."""


class OuterState(NamedTuple):
  """Everything the outer loop needs to continue.

  Attributes:
    hparams: the schedule values to evaluate next (mapping kind -> pytree).
    last_good: the values of the last outer step whose inner run was
      accepted.
    opt_state: the outer optimiser's state.
    step: number of outer steps taken (accepted or rejected).
    converged: whether the convergence test has passed.
    initial_loss: validation loss at the initial hyperparameters (``nan``
      before the first step), the scale that tells an exploded loss.
    update_scale: factor on every update, halved by each rejected step.
    best_hparams: the accepted evaluated values with the lowest validation
      loss so far (the initial values before any step).
    best_loss: their validation loss (``inf`` before any accepted step).
    best_step: the outer step that evaluated them (-1: none yet).
    best_score: the score that made them the best: their validation loss,
      or what the loop's ``score`` hook returned (lower is better; ``inf``
      before any accepted step).
  """
  hparams: PyTree
  last_good: PyTree
  opt_state: Any
  step: int
  converged: bool
  initial_loss: float = float('nan')
  update_scale: float = 1.0
  best_hparams: PyTree = None
  best_loss: float = float('inf')
  best_step: int = -1
  best_score: float = float('inf')


def init(hparams: Mapping[str, PyTree],
         opt: optax.GradientTransformation) -> OuterState:
  """The loop state at the initial values ``hparams``."""
  hparams = {k: jax.tree.map(jnp.asarray, v) for k, v in hparams.items()}
  return OuterState(hparams, hparams, opt.init(hparams), 0, False,
                    best_hparams=hparams)


def _all_finite(tree) -> bool:
  return all(bool(jnp.all(jnp.isfinite(x))) for x in jax.tree.leaves(tree))


def _norm(tree) -> float:
  return float(np.sqrt(sum(float(jnp.sum(jnp.square(x.astype(jnp.float32))))
                           for x in jax.tree.leaves(tree))))


def summarize(tree) -> PyTree:
  """Values for a message: small leaves as lists, large ones summarised.

  A leaf of more than 20 values (5,000 per-example weights) becomes a line
  with its shape, min, mean and max, so an error stays readable.
  """
  def one(x):
    x = np.asarray(x)
    if x.size <= _PRINT_VALUES:
      return x.tolist()
    finite = np.isfinite(x)
    stats = (f'min {np.min(x[finite]):.4g}, mean {np.mean(x[finite]):.4g}, '
             f'max {np.max(x[finite]):.4g}' if finite.any() else 'no finite')
    bad = int(x.size - finite.sum())
    return (f'<{x.dtype}{list(x.shape)}: {stats}'
            + (f', {bad} non-finite' if bad else '') + '>')
  return jax.tree.map(one, tree)


def _default_opt(hparams) -> optax.GradientTransformation:
  """FDS's sign descent, for hyperparameters whose names it has steps for."""
  known = registry.ALL_OUTER_STEPS
  names = sorted(hparams) if isinstance(hparams, Mapping) else None
  unknown = (['<not a mapping by name>'] if names is None
             else [k for k in names if k not in known])
  if unknown:
    raise ValueError(
        f'the default outer optimiser, hypergrad.sign_descent(), has initial '
        f'step sizes for {sorted(known)} only; hyperparameter(s) {unknown} '
        f'have none. Pass opt=..., e.g. opt=hypergrad.sign_descent('
        f'{{name: step, ...}}) with a step for every name, or any optax '
        f'transformation such as hypergrad.pytree_chain(optax.adam(0.1), '
        f'hypergrad.projection({{name: hypergrad.box(0, 1)}})).')
  return transformations.sign_descent()


def _as_result(out) -> tuple[Any, PyTree, Any]:
  """``(loss, hypergrads, info)`` of what a hypergradient function returned.

  An estimator's :class:`hypergrad.HypergradResult` (a population's too), or
  a pair ``(loss, hypergrads)`` such as ``jax.value_and_grad`` gives, whose
  info is None.
  """
  if isinstance(out, estimator_lib.HypergradResult):
    return tuple(out)
  if isinstance(out, tuple) and len(out) == 2:
    return out[0], out[1], None
  raise TypeError(
      'hypergrad_fn must return a hypergrad.HypergradResult (what every '
      'estimator, a population included, returns) or a pair (val_loss, '
      f'hypergrads); got {type(out).__name__}'
      + (f' of length {len(out)}' if isinstance(out, tuple) else '') + '.')


def _check_factor(divergence_factor) -> None:
  if divergence_factor is not None and not (
      validation.is_real(divergence_factor) and divergence_factor > 1):
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


def _check_max_expansion(max_expansion) -> None:
  if max_expansion is not None and not (
      validation.is_real(max_expansion) and not math.isnan(max_expansion)):
    raise ValueError('max_expansion must be a number or None, got '
                     f'max_expansion={max_expansion!r}.')


def _like_grads(expansion, grads):
  """``info.expansion`` for the values ``grads`` holds, or None.

  A ``hypergrad_fn`` may return the hypergradients of some of the values it
  ran with (others fixed): their expansion is picked by name.
  """
  if expansion is None:
    return None
  if isinstance(expansion, Mapping) and isinstance(grads, Mapping) and all(
      k in expansion for k in grads):
    expansion = {k: expansion[k] for k in grads}
  if jax.tree.structure(expansion) != jax.tree.structure(grads):
    return None
  return expansion


def _hold_untrusted(grads, expansion, max_expansion):
  """``(grads with untrusted values zeroed, number of untrusted values)``."""
  if expansion is None or max_expansion is None:
    return grads, 0
  # -inf (an adjoint that vanished) is as tame as it gets; NaN is unknown.
  trusted = jax.tree.map(lambda e: ~((jnp.asarray(e) > max_expansion)
                                     | jnp.isnan(jnp.asarray(e))), expansion)
  held = jax.tree.map(lambda g, ok: jnp.where(ok, g, jnp.zeros_like(g)),
                      grads, trusted)
  count = sum(int(jnp.sum(~ok)) for ok in jax.tree.leaves(trusted))
  return held, count


def _check(check_loss, hparams, grads, outer_step):
  """The finite-difference check of one outer step, warning if it fails."""
  if check_loss is None or not _all_finite(grads):
    return None
  result = finite_difference.check_hypergrad(
      lambda h: check_loss(h, outer_step), hparams, grads)
  if not result.agrees:
    warnings.warn(
        f'outer step {outer_step}: the hypergradient does not predict the '
        f'validation loss (it predicts a slope of {result.predicted:.4g} along '
        f'itself; finite differences at steps {list(result.steps)} measure '
        f'{[round(m, 4) for m in result.measured]}). The inner training may be '
        f'chaotic; remedies: {_REMEDIES}.', RuntimeWarning, stacklevel=3)
  return result


def _check_collapse(collapse_loss) -> None:
  if collapse_loss is not None and not (
      validation.is_real(collapse_loss) and math.isfinite(collapse_loss)):
    raise ValueError('collapse_loss must be a finite number or None, got '
                     f'collapse_loss={collapse_loss!r}.')


# ---------------------------------------------------------------------------
# Convergence.


def _find(state, cls):
  """Every ``cls`` instance inside a (chained) optimiser state."""
  if isinstance(state, cls):
    return [state]
  if isinstance(state, (tuple, list)):
    return [s for part in state for s in _find(part, cls)]
  return []


def settled(updates: PyTree, hparams: PyTree, opt_state, tol: float = 0.05,
            hypergrads: PyTree | None = None) -> bool:
  """Whether the last outer update says the search has converged.

  A value has settled when the update moved it, by less than ``tol`` times
  its magnitude (for sign descent: its step is that small), when its
  hypergradient was exactly zero (a stationary point), or when it is pinned
  at a bound of its valid range (weight decay pushed below 0, say).
  Converged when every value has. An update of exactly zero with a non-zero
  hypergradient (an optimiser warming up, as Rprop's first step) settles
  nothing.

  Args:
    updates: the last update applied, like ``hparams``.
    hparams: the values after it.
    opt_state: the optimiser's state (the clip to valid ranges inside
      :func:`hypergrad.sign_descent` or :func:`hypergrad.meta_optimizer`, if
      any, says which values are pinned).
    tol: fraction of each value.
    hypergrads: the hypergradients behind the update (None: unknown).
  """
  pinned = [p.pinned for p in _find(opt_state, projections.ProjectState)]
  pinned = pinned[-1] if pinned else jax.tree.map(
      lambda h: jnp.zeros(jnp.shape(h), bool), hparams)
  if hypergrads is None:
    hypergrads = jax.tree.map(jnp.ones_like, hparams)
  checks = jax.tree.map(
      lambda u, h, p, g: bool(jnp.all(
          ((u != 0) & (jnp.abs(u) < tol * jnp.abs(h))) | (g == 0) | p)),
      updates, hparams, pinned, hypergrads)
  return all(jax.tree.leaves(checks))


def _effective_step_sizes(state: OuterState):
  """Sign descent's current steps times the update scale, if it has steps."""
  found = _find(state.opt_state, transformations.SignDescentState)
  if not found:
    return None
  return jax.tree.map(lambda s: s * state.update_scale, found[0].step_sizes)


def step(hypergrad_fn: HypergradFn, opt: optax.GradientTransformation,
         state: OuterState, *, tol: float = 0.05,
         divergence_factor: float | None = 10.0,
         collapse_loss: float | None = None,
         score: ScoreFn | None = None,
         max_expansion: float | None = MAX_EXPANSION,
         check_loss: CheckLossFn | None = None) -> tuple[OuterState, dict]:
  """One outer step.

  Args:
    hypergrad_fn: ``hypergrad_fn(hparams, outer_step)`` returning what
      any estimator returns, a :class:`hypergrad.HypergradResult` (whose
      info locates a divergence; a population's also holds its members'
      sign agreement, which is recorded), or a pair ``(val_loss,
      hypergrads)``; the outer step index
      lets it re-draw the validation split or the inner initialisation
      reproducibly.
    opt: the outer optimiser, any optax ``GradientTransformation`` (e.g.
      ``hypergrad.sign_descent()``, ``optax.adam(1e-2)``).
    state: the loop state.
    tol: convergence tolerance (fraction of each value; see
      :func:`hypergrad.settled`).
    divergence_factor: a finite validation loss above this multiple of the
      loss at the initial hyperparameters is treated as divergence (the step
      is rejected); ``None`` rejects non-finite losses only.
    collapse_loss: a finite validation loss at or above this is a collapse
      to chance level and treated as divergence (about ``ln(num_classes)``
      for a classifier's cross-entropy: a uniform predictor's loss); None:
      off. A search whose initial values are already at or above it (a
      learning rate of 0 trains nothing) has nothing to collapse from and
      is judged without it.
    score: None (the best evaluated values are those of the lowest
      validation loss), or ``score(out, val_loss) -> float``, lower is
      better, called on an accepted step with what ``hypergrad_fn``
      returned (e.g. minus a validation accuracy computed from a
      :class:`hypergrad.HypergradResult`'s final inner state).
    max_expansion: values whose ``info.expansion`` (``log10``) is above it
      are held in place for this step: their hypergradient is noise
      (``docs/trust.md``). None: every value steps.
    check_loss: None, or ``check_loss(hparams, outer_step) -> scalar``, the
      validation loss after a plain run on the same split and
      initialisation as the hypergradient: each step's hypergradient is then
      checked against it (:func:`hypergrad.check_hypergrad`, 4 plain runs)
      and a failing check is a ``RuntimeWarning`` naming the remedies.

  Returns:
    ``(new_state, record)`` where ``record`` holds the step's metrics:
    ``outer_step``, ``val_loss``, ``accepted``, ``reason`` (why a step was
    rejected, else ''), ``nonfinite_step`` (first non-finite inner step, -1
    if none, None if unknown), ``sign_agreement`` (a population's, like
    ``hparams``; else None), ``hypergrad_norm``, ``hypergrads``,
    ``hparams`` (the values evaluated), ``step_sizes`` (sign descent's, else
    None), ``score`` (the hook's value; the validation loss without it;
    nan for a rejected step), ``expansion`` (``info.expansion``, like
    ``hparams``; None if not measured), ``untrusted`` (values held for it),
    ``check`` (a :class:`hypergrad.HypergradCheck`, or None), ``seconds``.

  Raises:
    ValueError: ``divergence_factor`` not a number > 1 or None, or a bad
      ``collapse_loss``.
    DivergenceError: the first step's inner run diverged, naming the inner
      step and the values.
  """
  _check_factor(divergence_factor)
  _check_collapse(collapse_loss)
  _check_max_expansion(max_expansion)
  start = time.perf_counter()
  out = hypergrad_fn(state.hparams, state.step)
  loss, grads, info = _as_result(out)
  expansion = _like_grads(getattr(info, 'expansion', None), grads)
  # A population's info holds its members' agreement; a single run's, none.
  sign_agreement = getattr(info, 'sign_agreement', None)
  nonfinite_step = (None if info is None else
                    population_lib.first_nonfinite(info.nonfinite_step))
  loss = float(jax.block_until_ready(loss))
  record = {'outer_step': state.step, 'hparams': state.hparams,
            'val_loss': loss, 'hypergrads': grads,
            'nonfinite_step': nonfinite_step,
            'sign_agreement': sign_agreement, 'expansion': expansion,
            'untrusted': 0, 'check': None}
  # The first step's loss (init leaves it nan) is the scale of "exploded".
  initial_loss = state.initial_loss
  if not np.isfinite(initial_loss):
    initial_loss = loss
  reason = ''
  if not (math.isfinite(loss) and _all_finite(grads)):
    reason = 'non-finite validation loss or hypergradient' + (
        f' (inner run non-finite from inner step {nonfinite_step})'
        if nonfinite_step is not None and nonfinite_step >= 0 else '')
  elif exploded(loss, initial_loss, divergence_factor):
    reason = (f'validation loss {loss:.4g} exploded (above '
              f'{divergence_factor:g} x the first, {initial_loss:.4g})')
  elif (collapse_loss is not None and loss >= collapse_loss
        and initial_loss < collapse_loss):
    reason = (f'validation loss {loss:.4g} at or above chance level '
              f'({collapse_loss:.4g})')
  if not reason:
    record['check'] = _check(check_loss, state.hparams, grads, state.step)
    grads, record['untrusted'] = _hold_untrusted(grads, expansion,
                                                 max_expansion)
    updates, opt_state = opt.update(grads, state.opt_state, state.hparams)
    updates = jax.tree.map(lambda u: (u * state.update_scale).astype(u.dtype),
                           updates)
    hparams = optax.apply_updates(state.hparams, updates)
    value = loss if score is None else float(score(out, loss))
    # An older state (a checkpoint from before the hook) has no best_score:
    # its best validation loss is its score.
    best_score = (state.best_score if math.isfinite(state.best_score)
                  or state.best_step < 0 else state.best_loss)
    better = value < best_score
    new = state._replace(
        hparams=hparams, last_good=state.hparams, opt_state=opt_state,
        step=state.step + 1,
        converged=settled(updates, hparams, opt_state, tol, grads),
        initial_loss=initial_loss,
        best_hparams=state.hparams if better else state.best_hparams,
        best_loss=loss if better else state.best_loss,
        best_step=state.step if better else state.best_step,
        best_score=value if better else best_score)
    record.update(accepted=True, reason='', hypergrad_norm=_norm(grads),
                  score=value)
  else:
    if state.step == 0:
      raise DivergenceError(
          f'the inner run diverged at the initial hyperparameters '
          f'{summarize(state.hparams)}: '
          f'{reason}; start from smaller learning rates.')
    # Go halfway back to the last values that trained, with smaller steps.
    hparams = jax.tree.map(lambda h, g: (g + 0.5 * (h - g)).astype(h.dtype),
                           state.hparams, state.last_good)
    new = state._replace(hparams=hparams, step=state.step + 1,
                         converged=False, initial_loss=initial_loss,
                         update_scale=state.update_scale * 0.5)
    record.update(accepted=False, reason=reason, hypergrad_norm=float('nan'),
                  score=float('nan'))
  record.update(step_sizes=_effective_step_sizes(new),
                seconds=time.perf_counter() - start)
  return new, record


def run(hypergrad_fn: HypergradFn, hparams: Mapping[str, PyTree], *,
        opt: optax.GradientTransformation | None = None,
        max_outer_steps: int = 10, tol: float = 0.05,
        divergence_factor: float | None = 10.0,
        collapse_loss: float | None = None,
        state: OuterState | None = None,
        callback: Callable[[OuterState, dict], None] | None = None,
        score: ScoreFn | None = None,
        max_expansion: float | None = MAX_EXPANSION,
        check_loss: CheckLossFn | None = None
        ) -> tuple[OuterState, list[dict]]:
  """Runs outer steps until converged or ``max_outer_steps`` steps were taken.

  Args:
    hypergrad_fn: see :func:`step`.
    hparams: initial schedule values (ignored when ``state`` is given).
    opt: outer optimiser, any optax ``GradientTransformation`` (chain
      :func:`hypergrad.projection` to it to stay in a box, a simplex or the
      positive-definite cone); default :func:`hypergrad.sign_descent` with
      the paper's steps, for the registry's names only (another name is
      refused, saying to pass ``opt``).
    max_outer_steps: bound on outer steps (counting rejected ones).
    tol: convergence tolerance.
    divergence_factor: see :func:`step`.
    collapse_loss: see :func:`step`.
    state: a loop state to resume from.
    callback: called after every outer step with ``(state, record)``, e.g.
      to log and checkpoint.
    score: see :func:`step`: what picks ``best_hparams``.
    max_expansion, check_loss: see :func:`step`: how far hypergradients
      are trusted.

  Returns:
    The final loop state and the list of records of the steps run here.

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> step = lambda w, h, t: w - h['lr'] * 5.0 * w   # GD on 2.5 w^2
    >>> fn = lambda h, k: hypergrad.forward_hypergrad(
    ...     step, lambda w: w ** 2, jnp.float32(1.0), h, 10)
    >>> state, records = hypergrad.fds_search(
    ...     fn, {'lr': hypergrad.constant(0.03, dtype=jnp.float32)},
    ...     max_outer_steps=30)
    >>> round(float(state.best_hparams['lr'][0]), 2)   # the best is 1 / 5
    0.2
  """
  validation.check_int(max_outer_steps, 'max_outer_steps')
  _check_factor(divergence_factor)
  _check_collapse(collapse_loss)
  _check_max_expansion(max_expansion)
  if opt is None:
    opt = _default_opt(state.hparams if state is not None else hparams)
  state = state if state is not None else init(hparams, opt)
  records = []
  while state.step < max_outer_steps and not state.converged:
    state, record = step(hypergrad_fn, opt, state, tol=tol,
                         divergence_factor=divergence_factor,
                         collapse_loss=collapse_loss, score=score,
                         max_expansion=max_expansion, check_loss=check_loss)
    records.append(record)
    if callback is not None:
      callback(state, record)
  return state, records
