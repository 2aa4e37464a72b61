r"""Black-box hyperparameter search baselines (random search, TPE, Hyperband).

The FDS paper compares full-horizon hypergradients with black-box searches at
the same compute. The searches here are optuna's (its ``RandomSampler``,
``TPESampler`` and ``HyperbandPruner``), not hand-written, run over the same
contract as the estimators: a trial trains ``state_{t+1} = step_fn(state_t,
hparams_t, t)`` for ``num_steps`` inner steps from ``init_state`` with a
sampled schedule and scores it with ``loss_fn(state_T)``, the outer
(validation) loss that FDS descends. Lower is better; a run whose loss is not
finite scores ``inf`` (the sampler learns it is bad).

Search space (FDS's hyperparameters and reach): per kind a range, sampled on
a log or linear scale (:data:`SEARCH_SPACE`: lr in [1e-3, 1] log, momentum in
[0, 0.99], weight decay in [1e-5, 1e-2] log). A kind is a constant by
default; ``intervals={'lr': 7}`` samples a piecewise-constant schedule of 7
independent values (FDS's interval sharing: value ``i`` holds over steps
``[i T / 7, (i + 1) T / 7)``). Kinds not in the space keep whatever
``step_fn`` uses when they are absent (a task's plain values).

Budget: counted in inner training steps actually run, the unit of the FDS
comparison. A full trial costs ``num_steps``; a Hyperband trial pruned after
``k`` of its ``R`` chunks costs the steps of those chunks. No trial starts
(or, for Hyperband, continues into a chunk) that the remaining budget cannot
pay for, so ``inner_steps <= budget`` always. Validation-loss evaluations
(one forward pass over the validation split per report) are not counted,
as for the estimators.

Methods:

* ``'random'``: ``RandomSampler``; every trial trains the whole horizon.
* ``'tpe'``: ``TPESampler`` (optuna's defaults: 10 random start-up trials);
  every trial trains the whole horizon.
* ``'hyperband'``: ``RandomSampler`` + ``HyperbandPruner`` (Li et al. 2018):
  the horizon is trained in ``R = hyperband_reports`` chunks, the validation
  loss is reported after each chunk but the last, and the pruner stops the
  trials that trail their rung. Resource unit = one chunk.

Seeds: a search is a deterministic function of its seed (the samplers are
seeded and the study name, which Hyperband hashes, is fixed). With the same
seed the three methods draw the same first configurations (TPE's start-up
trials are optuna's random sampler), so they differ by what they do next, not
by luck of the first draws.

Example:
  >>> import hypergrad.experiments
  >>> from hypergrad.experiments.blackbox import blackbox_search
  >>> task = hypergrad.experiments.make_task('digits_mlp')
  >>> step_fn, loss_fn, state = task.problem()
  >>> result = blackbox_search(step_fn, loss_fn, state, 100,
  ...                          budget=4 * 100, method='tpe')
  >>> len(result.trials)
  4
  >>> final = task.train(result.hparams, 100)   # retrain with the best
"""

from __future__ import annotations

import functools
import math
import time
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hypergrad._src import extras
from hypergrad._src import registry
from hypergrad._src import schedule
from hypergrad._src import unroll as unroll_lib
from hypergrad._src import validation

PyTree = Any

METHODS = ('random', 'tpe', 'hyperband')

# FDS's hyperparameters, ranges covering what its outer loop reaches from 0.
SEARCH_SPACE = registry.SGD.search_space


class TrialRecord(NamedTuple):
  """One trial of a search.

  Attributes:
    number: optuna's trial number.
    hparams: the sampled schedule, kind -> list of ``n`` floats.
    value: final validation loss (``inf``: diverged); ``nan`` for a trial
      that did not complete (pruned, or stopped by the budget).
    state: ``'complete'``, ``'pruned'`` (by Hyperband or for a non-finite
      intermediate loss) or ``'budget'`` (stopped: no budget left).
    inner_steps: inner steps this trial trained.
    cumulative_steps: inner steps of the search so far, this trial included.
    seconds: wall time of this trial (compilation included on first use).
  """
  number: int
  hparams: dict
  value: float
  state: str
  inner_steps: int
  cumulative_steps: int
  seconds: float


class BlackBoxResult(NamedTuple):
  """Outcome of :func:`blackbox_search`.

  Attributes:
    method: the search method.
    hparams: the best complete trial's schedule, kind -> ``(n,)`` array
      (the core contract's schedule pytree).
    best_value: its validation loss.
    inner_steps: inner steps trained by the whole search (``<= budget``).
    wall_time: seconds for the whole search.
    trials: :class:`TrialRecord` for every trial, in order.
    study: the optuna study (for optuna's own analysis tools).
  """
  method: str
  hparams: dict
  best_value: float
  inner_steps: int
  wall_time: float
  trials: list
  study: Any


def _optuna():
  """optuna, imported on first use: the baselines extra is optional."""
  extras.require('baselines', 'optuna')
  import optuna  # pylint: disable=g-import-not-at-top
  return optuna


def validate_space(space: Mapping[str, tuple], intervals: Mapping[str, int],
                   num_steps: int) -> tuple[dict, dict]:
  """Checks a search space and its interval counts; returns plain dicts.

  Raises:
    ValueError: an empty space, a malformed range, ``low >= high``, a log
      range not above 0, intervals for a kind not in the space, or a count
      not in ``[1, num_steps]``; naming the offending kind and value.
  """
  if not space:
    raise ValueError('space is empty: give at least one hyperparameter '
                     'range.')
  out = {}
  for kind, rng in space.items():
    if not isinstance(rng, (tuple, list)) or len(rng) != 3:
      raise ValueError(f'space[{kind!r}] must be (low, high, log), got '
                       f'{rng!r}.')
    low, high, log = rng
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
      raise ValueError(f'space[{kind!r}] needs finite low < high, got '
                       f'{rng!r}.')
    if log and low <= 0:
      raise ValueError(f'space[{kind!r}] is log-scaled so needs low > 0, got '
                       f'{rng!r}.')
    out[kind] = (float(low), float(high), bool(log))
  unknown = set(intervals) - set(out)
  if unknown:
    raise ValueError(f'intervals given for {sorted(unknown)}, which are not '
                     f'in the search space {sorted(out)}.')
  counts = {}
  for kind in out:
    n = validation.check_int(intervals.get(kind, 1), f'intervals[{kind!r}]')
    if n > num_steps:
      raise ValueError(f'intervals[{kind!r}]={n} exceeds num_steps='
                       f'{num_steps}.')
    counts[kind] = n
  return out, counts


def param_names(kind: str, n: int) -> list[str]:
  """optuna parameter names of a kind's ``n`` values (``lr`` or ``lr_0``..)."""
  return [kind] if n == 1 else [f'{kind}_{i}' for i in range(n)]


def _sample(trial, space, counts) -> dict:
  return {kind: [trial.suggest_float(name, low, high, log=log)
                 for name in param_names(kind, counts[kind])]
          for kind, (low, high, log) in space.items()}


def _as_schedule(values: Mapping[str, list], dtype) -> dict:
  return {k: jnp.asarray(np.asarray(v, dtype=dtype)) for k, v in
          values.items()}


def chunk_bounds(num_steps: int, num_chunks: int) -> list[tuple[int, int]]:
  """``[start, stop)`` of ``num_chunks`` contiguous near-equal chunks."""
  edges = [(k * num_steps) // num_chunks for k in range(num_chunks + 1)]
  return list(zip(edges[:-1], edges[1:]))


# The chunk boundaries are static (the scan length must be); step_fn is a
# traced argument (a Partial), so one compilation serves every trial and every
# split of the same shapes.
@functools.partial(jax.jit, static_argnames=('num_steps', 'start', 'stop'))
def train_steps(step_fn, state, hparams, *, num_steps: int, start: int = 0,
                stop: int | None = None):
  """Jitted ``hypergrad.unroll`` of steps ``[start, stop)``: what a trial runs.

  ``step_fn`` must be a pytree callable (``jax.tree_util.Partial``), e.g. a
  task's ``step_fn(split)``.
  """
  return unroll_lib.unroll(step_fn, state, hparams, num_steps, start=start,
                           stop=stop)


@jax.jit
def _loss(loss_fn, state):
  return loss_fn(state)


def _sampler(method: str, seed: int):
  optuna = _optuna()
  if method == 'tpe':
    return optuna.samplers.TPESampler(seed=seed)
  # Hyperband is random sampling plus early stopping (Li et al. 2018).
  return optuna.samplers.RandomSampler(seed=seed)


def blackbox_search(step_fn: Callable, loss_fn: Callable, init_state: PyTree,
                    num_steps: int, budget: int, *, method: str = 'random',
                    seed: int = 0,
                    space: Mapping[str, tuple] | None = None,
                    intervals: Mapping[str, int] | None = None,
                    hyperband_reports: int = 9, reduction_factor: int = 3,
                    dtype=jnp.float32,
                    callback: Callable[[TrialRecord], None] | None = None,
                    storage: str | None = None,
                    study_name: str | None = None,
                    ) -> BlackBoxResult:
  """Searches a schedule with an optuna black-box method under a step budget.

  Args:
    step_fn: ``step_fn(state, hparams_t, t) -> state``, as for
      :func:`hypergrad.forward_hypergrad`; bind data with
      ``jax.tree_util.Partial`` so trials share one compilation.
    loss_fn: ``loss_fn(final_state) -> scalar``, the validation loss to
      minimise (the objective FDS descends).
    init_state: the inner state at step 0 (every trial starts from it), or
      a callable ``init_state(trial_number) -> state`` for a fresh
      initialisation per trial.
    num_steps: the horizon ``T`` of every trial.
    budget: total inner training steps the search may run; at least
      ``num_steps`` (one full trial).
    method: ``'random'``, ``'tpe'`` or ``'hyperband'``.
    seed: seed of the optuna sampler (and, through the study name, of
      Hyperband's bracket assignment): equal seeds give equal searches.
    space: kind -> ``(low, high, log)``; default :data:`SEARCH_SPACE`.
    intervals: kind -> number of independently sampled values (a piecewise
      constant schedule); default 1 for every kind.
    hyperband_reports: ``R``, the chunks a Hyperband trial is trained in
      (its maximum resource); at least 2.
    reduction_factor: Hyperband's ``eta``.
    dtype: float dtype of the schedule arrays (the inner state's).
    callback: called with each :class:`TrialRecord` as it finishes.
    storage: an optuna RDB storage URL (``'sqlite:///study.db'`` on one
      machine, a PostgreSQL URL across machines) to run one search from
      several processes in parallel: each process calls this function with
      the same ``storage`` and ``study_name`` and a *different* ``seed`` (or
      their random draws coincide), and each spends its own ``budget``. The
      sampler (TPE) then learns from every process's trials; ``None`` keeps
      the study in memory.
    study_name: the shared study's name (default
      ``'hypergrad-<method>-<seed>'``, which Hyperband hashes to assign
      brackets, so a fixed name keeps a search reproducible).

  Returns:
    A :class:`BlackBoxResult`; ``result.hparams`` is a schedule pytree ready
    for ``hypergrad.unroll`` or ``Task.train``. If no trial completed (all
    pruned), the best is the trial with the lowest last reported loss at the
    largest resource reached. With a shared ``storage`` the result is the
    best of *this* process's trials; ``result.study.best_trial`` is the best
    of all processes' (its ``params`` are named by :func:`param_names`).

  Raises:
    ValueError: unknown ``method``, ``budget`` below ``num_steps`` or not a
      positive int, bad ``space``/``intervals``, ``hyperband_reports < 2``
      or more than ``num_steps``, ``reduction_factor < 2``, a ``storage``
      or ``study_name`` that is not a non-empty string; before any compute.
  """
  if method not in METHODS:
    raise ValueError(f'unknown method {method!r}; known: '
                     f'{", ".join(METHODS)}.')
  num_steps = schedule.validate_num_steps(num_steps)
  budget = validation.check_int(budget, 'budget')
  if budget < num_steps:
    raise ValueError(f'budget={budget} inner steps cannot pay for one trial '
                     f'of num_steps={num_steps}.')
  seed = validation.check_int(seed, 'seed', minimum=0)
  space, counts = validate_space(SEARCH_SPACE if space is None else space,
                                 intervals or {}, num_steps)
  num_chunks = 1
  if method == 'hyperband':
    num_chunks = validation.check_int(hyperband_reports,
                                      'hyperband_reports', minimum=2)
    if num_chunks > num_steps:
      raise ValueError(f'hyperband_reports={num_chunks} exceeds num_steps='
                       f'{num_steps}.')
    reduction_factor = validation.check_int(reduction_factor,
                                            'reduction_factor', minimum=2)
  for name, value in (('storage', storage), ('study_name', study_name)):
    if value is not None and (not isinstance(value, str) or not value):
      raise ValueError(f'{name} must be a non-empty string or None, got '
                       f'{name}={value!r}.')
  study_name = study_name or f'hypergrad-{method}-{seed}'
  dtype = jnp.dtype(dtype)
  _optuna()  # before anything else: a missing extra is named at once
  step_fn = unroll_lib.as_pytree_fn(step_fn)
  loss_fn = unroll_lib.as_pytree_fn(loss_fn)
  make_state = init_state if callable(init_state) else (lambda _: init_state)

  # optuna logs every trial at INFO; the callback is this search's report.
  optuna = _optuna()
  verbosity = optuna.logging.get_verbosity()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  try:
    return _search(step_fn, loss_fn, make_state, num_steps, budget, method,
                   seed, space, counts, num_chunks, reduction_factor, dtype,
                   callback, storage, study_name)
  finally:
    optuna.logging.set_verbosity(verbosity)


def _search(step_fn, loss_fn, make_state, num_steps, budget, method, seed,
            space, counts, num_chunks, reduction_factor, dtype, callback,
            storage, study_name):
  optuna = _optuna()
  pruner = (optuna.pruners.HyperbandPruner(
      min_resource=1, max_resource=num_chunks,
      reduction_factor=reduction_factor) if method == 'hyperband'
            else optuna.pruners.NopPruner())
  # A fixed study name: Hyperband assigns brackets by hashing it with the
  # trial number, and optuna's default name is random.
  study = optuna.create_study(direction='minimize',
                              sampler=_sampler(method, seed), pruner=pruner,
                              study_name=study_name, storage=storage,
                              load_if_exists=storage is not None)
  chunks = chunk_bounds(num_steps, num_chunks)
  min_cost = chunks[0][1] - chunks[0][0] if method == 'hyperband' else (
      num_steps)

  start_time = time.perf_counter()
  spent, records = 0, []
  while budget - spent >= min_cost:
    trial_start = time.perf_counter()
    trial = study.ask()
    values = _sample(trial, space, counts)
    hparams = _as_schedule(values, dtype)
    state = unroll_lib.as_state(make_state(trial.number))
    steps, outcome, value = 0, 'complete', float('nan')
    for k, (start, stop) in enumerate(chunks):
      if spent + steps + (stop - start) > budget:
        outcome = 'budget'
        break
      state = train_steps(step_fn, state, hparams, num_steps=num_steps,
                           start=start, stop=stop)
      steps += stop - start
      loss = float(_loss(loss_fn, state))
      if k == len(chunks) - 1:
        value = loss if math.isfinite(loss) else math.inf
        break
      # A diverged run cannot recover: stop paying for it.
      if not math.isfinite(loss):
        outcome = 'pruned'
        break
      trial.report(loss, k + 1)
      if trial.should_prune():
        outcome = 'pruned'
        break
    if outcome == 'complete':
      study.tell(trial, value)
    else:
      study.tell(trial, state=optuna.trial.TrialState.PRUNED)
    spent += steps
    record = TrialRecord(trial.number, values, value, outcome, steps, spent,
                         time.perf_counter() - trial_start)
    records.append(record)
    if callback is not None:
      callback(record)
    if outcome == 'budget':
      break

  best = _best(study, records)
  return BlackBoxResult(method, _as_schedule(best.hparams, dtype),
                        best.value, spent, time.perf_counter() - start_time,
                        records, study)


def _best(study, records: list[TrialRecord]) -> TrialRecord:
  complete = [r for r in records if r.state == 'complete']
  if complete:
    return min(complete, key=lambda r: (r.value, r.number))
  # Nothing completed: rank by the furthest, lowest intermediate loss.
  by_number = {t.number: t for t in study.trials}

  def key(r):
    inter = by_number[r.number].intermediate_values
    if not inter:
      return (0, math.inf, r.number)
    last = max(inter)
    return (-last, inter[last], r.number)

  best = min(records, key=key)
  inter = by_number[best.number].intermediate_values
  return best._replace(value=inter[max(inter)] if inter else math.nan)


def best_so_far(trials: list[TrialRecord], budget: int) -> TrialRecord | None:
  """The best complete trial among those finished within ``budget`` steps.

  For accuracy-vs-budget curves: what the search would return had it been
  given only ``budget`` inner steps (trials are sequential, so this is exact
  for random search and TPE, and for Hyperband up to the trial cut short by
  the smaller budget).
  """
  done = [r for r in trials if r.state == 'complete'
          and r.cumulative_steps <= budget]
  return min(done, key=lambda r: (r.value, r.number)) if done else None


# The schedule practitioners use instead of a learned one: a linear warm-up
# to a peak lr, then a cosine or linear decay to a fraction of the peak;
# constant momentum and weight decay. Ranges: the peak's, momentum's and
# weight decay's are the registry's (SEARCH_SPACE), the shape's the usual
# ones (warm-up up to a fifth of the run, decay to at most half the peak).
PARAMETRIC_SPACE = {
    'peak_lr': SEARCH_SPACE['lr'],
    'warmup_fraction': (0.0, 0.2, False),
    'final_fraction': (0.0, 0.5, False),
    'momentum': SEARCH_SPACE['momentum'],
    'weight_decay': SEARCH_SPACE['weight_decay'],
}
DECAYS = ('cosine', 'linear')
PARAMETRIC_METHODS = ('random', 'tpe')


def parametric_lr(num_steps: int, peak_lr: float, warmup_fraction: float,
                  decay: str, final_fraction: float) -> np.ndarray:
  """Per-step lr of the warm-up + decay schedule, shape ``(num_steps,)``.

  Step ``t < W = round(warmup_fraction * T)`` has ``peak (t + 1) / W``;
  from ``W`` the lr falls from the peak to ``final_fraction * peak`` at the
  last step, along a half cosine or a line.

  Raises:
    ValueError: an unknown ``decay``.
  """
  if decay not in DECAYS:
    raise ValueError(f'unknown decay {decay!r}; known: {", ".join(DECAYS)}.')
  t = np.arange(num_steps, dtype=np.float64)
  warm = int(round(warmup_fraction * num_steps))
  # Progress through the decay: 0 at the first step after warm-up, 1 at
  # the last step.
  p = np.clip((t - warm) / max(num_steps - warm - 1, 1), 0.0, 1.0)
  shape = 0.5 * (1 + np.cos(np.pi * p)) if decay == 'cosine' else 1 - p
  lr = peak_lr * (final_fraction + (1 - final_fraction) * shape)
  if warm:
    lr = np.where(t < warm, peak_lr * (t + 1) / warm, lr)
  return lr


def parametric_schedule(values: Mapping[str, Any], num_steps: int,
                        dtype=jnp.float32) -> dict:
  """The schedule pytree of parametric ``values`` (T lr values, constants)."""
  lr = parametric_lr(num_steps, values['peak_lr'], values['warmup_fraction'],
                     values['decay'], values['final_fraction'])
  return _as_schedule({'lr': lr, 'momentum': [values['momentum']],
                       'weight_decay': [values['weight_decay']]}, dtype)


def _sample_parametric(trial, space) -> dict:
  values = {k: trial.suggest_float(k, low, high, log=log)
            for k, (low, high, log) in space.items()}
  values['decay'] = trial.suggest_categorical('decay', DECAYS)
  return values


def schedule_trials(step_fn: Callable, loss_fn: Callable, init_state: PyTree,
                    num_steps: int, budget: int, propose: Callable,
                    dtype=jnp.float32) -> list[TrialRecord]:
  """Full-horizon trials of schedules from ``propose`` under a step budget.

  The loop of :func:`blackbox_search` without chunks or pruning, for a
  search space that is not one value per interval (a parametric schedule,
  a fixed grid).

  Args:
    step_fn, loss_fn, init_state, num_steps: as for
      :func:`blackbox_search` (``init_state`` a state: every trial starts
      from it).
    budget: inner steps; a trial runs only if the rest pays for all of it.
    propose: ``propose(number) -> (values, tell)`` or None (no more
      trials): ``values`` are what :func:`parametric_schedule` reads, and
      ``tell(loss)`` is called with the trial's validation loss.
    dtype: of the schedule arrays.

  Returns:
    A :class:`TrialRecord` per trial (``hparams``: the proposed values).
  """
  step_fn = unroll_lib.as_pytree_fn(step_fn)
  loss_fn = unroll_lib.as_pytree_fn(loss_fn)
  state0 = unroll_lib.as_state(init_state)
  spent, records = 0, []
  while budget - spent >= num_steps:
    start = time.perf_counter()
    proposal = propose(len(records))
    if proposal is None:
      break
    values, tell = proposal
    hparams = parametric_schedule(values, num_steps, dtype)
    final = train_steps(step_fn, state0, hparams, num_steps=num_steps,
                        start=0, stop=num_steps)
    loss = float(_loss(loss_fn, final))
    value = loss if math.isfinite(loss) else math.inf
    tell(value)
    spent += num_steps
    records.append(TrialRecord(len(records), dict(values), value,
                               'complete', num_steps, spent,
                               time.perf_counter() - start))
  return records


def parametric_search(step_fn: Callable, loss_fn: Callable,
                      init_state: PyTree, num_steps: int, budget: int, *,
                      method: str = 'random', seed: int = 0,
                      space: Mapping[str, tuple] | None = None,
                      dtype=jnp.float32) -> list[TrialRecord]:
  """optuna's random search or TPE over the warm-up + decay schedule.

  The space is :data:`PARAMETRIC_SPACE` (or ``space``, the same keys) and
  the decay's shape (:data:`DECAYS`); a trial trains the whole horizon.
  The best trial's schedule is ``parametric_schedule(best.hparams, T)``
  (see :func:`best_so_far`).

  Raises:
    ValueError: an unknown ``method``.
  """
  if method not in PARAMETRIC_METHODS:
    raise ValueError(f'unknown method {method!r}; known: '
                     f'{", ".join(PARAMETRIC_METHODS)}.')
  optuna = _optuna()
  space = dict(PARAMETRIC_SPACE if space is None else space)
  verbosity = optuna.logging.get_verbosity()
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  study = optuna.create_study(direction='minimize',
                              sampler=_sampler(method, seed),
                              study_name=f'hypergrad-param-{method}-{seed}')

  def propose(number):
    del number
    trial = study.ask()
    return (_sample_parametric(trial, space),
            lambda value: study.tell(trial, value))
  try:
    return schedule_trials(step_fn, loss_fn, init_state, num_steps, budget,
                           propose, dtype)
  finally:
    optuna.logging.set_verbosity(verbosity)
