"""The three ways a method searches: FDS's outer loop, greedy, black-box.

Each returns ``(checkpoints, info)``: ``checkpoints`` lists (inner-step
equivalents spent, the schedule the search would return if stopped then),
``info`` what the table reports of the search.
"""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np

from benchmarks.hpo import settings as settings_lib
import hypergrad
from hypergrad._src import schedule
from hypergrad._src import search
from hypergrad.experiments import blackbox
from hypergrad.experiments import fds as fds_lib
from hypergrad.experiments import references

# FDS-population: each outer step aggregates this many inner runs (own
# initialisation and validation split) by the median, the aggregate whose
# sign two populations agree on most often
# (benchmarks/results/population_signal*.md), and leaves a value whose
# members split evenly in sign in place: the main job's settings
# (launch/configs/mnist1d_large_mlp.py, which runs the population from the
# first outer step: it has no budget to keep). Its hypergradients come from
# hypergrad.auto(), the faster exact estimator on this machine (the same
# numbers as forward mode); it is charged that measured cost.
POPULATION = 4
POPULATION_AGGREGATE = 'median'
POPULATION_MIN_AGREEMENT = 0.5
# The first outer steps run one inner run: far from the optimum every member
# agrees in sign (launch/configs/mnist1d_large_mlp.py), and on CPU a
# population costs S runs. Each step is charged its own measured cost.
POPULATION_FROM = 5
# The bounds of the automatic greedy meta-step grid (total drift of lr over
# the run, see greedy_method).
GREEDY_SCALE_RANGE = (0.03, 10.0)


def population_options(population: int) -> dict:
  """``make_hypergrad_fn``'s population keywords for ``population`` runs."""
  return {'population': population, 'aggregate': POPULATION_AGGREGATE,
          'min_agreement': (POPULATION_MIN_AGREEMENT if population > 1
                            else None),
          'population_from': POPULATION_FROM if population > 1 else 0}


def outer_spend(costs, budget) -> list[float]:
  """Cumulative cost after each outer step the budget pays for.

  ``costs``: the cost of outer step ``k`` is ``costs[min(k, len - 1)]``.
  """
  spent, out = 0.0, []
  while True:
    c = costs[min(len(out), len(costs) - 1)]
    if spent + c > budget + 1e-9:
      return out
    spent += c
    out.append(spent)


def run_outer(task, config, horizon, budget, cost, estimator, seed, init,
              population=1):
  """FDS's outer loop with any estimator value's hypergradients.

  ``cost``: of one outer step, or a list (step ``k`` costs ``cost[k]``,
  the last entry every later step).
  """
  spend = outer_spend(cost if isinstance(cost, list) else [cost], budget)
  max_steps = len(spend)
  hparams0 = settings_lib.initial_fds_hparams(task, config, init)
  if max_steps < 1:
    return [(0.0, hparams0)], {'outer_steps': 0}
  fn = fds_lib.make_hypergrad_fn(task, estimator, horizon, seed=seed,
                                 redraw_val=config.redraw_val,
                                 fresh_init=config.fresh_init,
                                 **population_options(population))
  opt = hypergrad.sign_descent(
      {k: config.step_sizes[k] for k in settings_lib.KINDS})
  checkpoints = [(0.0, hparams0)]
  records = []

  def callback(state, record):
    records.append(record)
    # What the search would return if stopped now: its best evaluated
    # schedule, never values it has not evaluated.
    checkpoints.append((spend[state.step - 1], state.best_hparams))

  state, _ = search.run(fn, hparams0, opt=opt, max_outer_steps=max_steps,
                        tol=config.tol, callback=callback,
                        collapse_loss=0.99 * task.chance_loss)
  return checkpoints, {
      'outer_steps': state.step, 'converged': bool(state.converged),
      'rejected': sum(not r['accepted'] for r in records),
      'val_loss': [r['val_loss'] for r in records]}


def coarse_to_fine(n: int, low: float, high: float) -> list[float]:
  """``n`` log-spaced scales in ``[low, high]``, in van der Corput order.

  Any prefix covers the range evenly (0.5, 0.25, 0.75, ... of the log
  range), so a search stopped early by the budget has tried a coarser grid
  rather than only the small scales.
  """
  def radical_inverse(i):
    x, f = 0.0, 0.5
    while i:
      x, i, f = x + f * (i & 1), i >> 1, f / 2
    return x
  fractions = [radical_inverse(i + 1) for i in range(n)]
  return [float(low * (high / low) ** u) for u in fractions]


def greedy_method(name: str, step_fn, loss_fn, horizon: int, scale: float):
  """A greedy method whose values may drift by ``scale`` over the run."""
  if name == 'hd':
    updates, kw = horizon, {}
    factory = hypergrad.hypergradient_descent
  elif name == 'rtho':
    every = max(horizon // 20, 1)
    updates, kw = max((horizon - 1) // every, 1), {'every': every}
    factory = hypergrad.rtho
  else:
    window = max(horizon // 10, 1)
    updates, kw = -(-horizon // window), {'window': window}
    factory = hypergrad.truncated_greedy
  # Sign steps: scale-free, like FDS's outer steps, with FDS's per-kind
  # step ratio (lr 0.1 : momentum 0.1 : wd 3e-4).
  meta_lr = {k: scale * r / updates for k, r in
             (('lr', 1.0), ('momentum', 1.0), ('weight_decay', 3e-3))}
  return factory(step_fn, loss_fn,
                 meta_opt=hypergrad.meta_optimizer(meta_lr, 'sign',
                                                   hypergrad.SGD_BOUNDS),
                 **kw)


def default_constants(task) -> dict:
  """The task's default values, one interval each (a greedy start)."""
  return {k: schedule.constant(v, 1, task.dtype)
          for k, v in task.spec.default_hparams}


# --tune_greedy: the search seed the greedy methods' meta step is tuned on,
# none of the evaluated ones (0 to seeds - 1).
TUNE_SEED = 1000
# Evaluated seeds then try the tuned meta step first and refine around it
# within this factor either way.
TUNE_SPAN = 4.0
_TUNED = {}  # (task, method, horizon, budget, cost, grid) -> tuning info


def tune_greedy(task, name, horizon, budget, cost, scales) -> dict:
  """The meta step of greedy ``name``, tuned on :data:`TUNE_SEED`.

  The tuning seed runs the grid its budget share (the one each evaluated
  seed has) pays for and keeps the scale of the lowest validation loss.
  Computed once per process (deterministic: shards and resumed runs agree).

  Returns:
    ``{'tuned_scale': s, 'tune_seed': TUNE_SEED, 'tune_runs': [...]}``.
  """
  key = (task.name, name, horizon, budget, cost, tuple(scales))
  if key not in _TUNED:
    _, info = run_greedy(task, name, horizon, budget, cost, TUNE_SEED,
                         scales)
    best = min(info['runs'], key=lambda r: r['val_loss'])
    _TUNED[key] = {'tuned_scale': best['scale'], 'tune_seed': TUNE_SEED,
                   'tune_runs': info['runs']}
  return _TUNED[key]


def tuned_grid(tuned: float, budget: float, cost: float) -> list[float]:
  """The tuned scale, then a grid refining around it (coarse to fine)."""
  n = max(int(budget // cost), 1)
  # coarse_to_fine starts at the log-midpoint, the tuned scale itself.
  return [tuned] + coarse_to_fine(n, tuned / TUNE_SPAN,
                                  tuned * TUNE_SPAN)[1:]


def run_greedy(task, name, horizon, budget, cost, seed, scales):
  """A greedy method, its meta step chosen by final validation loss."""
  if not scales:
    scales = coarse_to_fine(max(int(budget // cost), 1), *GREEDY_SCALE_RANGE)
  split = task.default_split()
  step_fn, loss_fn = task.step_fn(split), task.loss_fn(split)
  one = default_constants(task)
  checkpoints, spent, best, runs = [], 0.0, None, []
  for scale in scales:
    if spent + cost > budget + 1e-9:
      break
    method = greedy_method(name, step_fn, loss_fn, horizon, scale)
    state = task.init_state(fds_lib.outer_seed(seed, 0))
    final, used = hypergrad.run_online(method, state, one, horizon)
    val = float(loss_fn(final))
    val = val if math.isfinite(val) else math.inf
    spent += cost
    runs.append({'scale': scale, 'val_loss': val})
    if best is None or val < best[0]:
      best = (val, used)
    checkpoints.append((spent, best[1]))
  return checkpoints, {'runs': runs}


def run_blackbox(task, name, horizon, budget, seed, intervals, reports):
  """An optuna search over schedules of ``intervals`` values per kind.

  ``intervals``: kind -> values (1: a constant); the registry's ranges.
  """
  split = task.default_split()
  result = blackbox.blackbox_search(
      task.step_fn(split), task.loss_fn(split),
      task.init_state(fds_lib.outer_seed(seed, 0)), horizon, int(budget),
      method=name, seed=seed, intervals=intervals,
      hyperband_reports=reports, dtype=task.dtype)
  # Trials are sequential: at a smaller budget the search would have
  # returned the best trial finished by then.
  checkpoints = []
  for r in result.trials:
    best = blackbox.best_so_far(result.trials, r.cumulative_steps)
    if best is not None:
      checkpoints.append((float(r.cumulative_steps), best.hparams))
  info = {'trials': len(result.trials),
          'pruned': sum(r.state != 'complete' for r in result.trials),
          'best_val_loss': result.best_value}
  return [(c, {k: jnp.asarray(np.asarray(v, task.dtype)) for k, v in
               h.items()}) for c, h in checkpoints], info


# The references (hypergrad.experiments.references, shared with the main
# job's summary).
COSINE_WARMUP = references.COSINE_WARMUP
COSINE_GRID = references.COSINE_GRID
cosine_values = references.cosine_values


def _trial_checkpoints(task, horizon, trials):
  """What a sequence of full trials would return at each budget."""
  checkpoints = []
  for r in trials:
    best = blackbox.best_so_far(trials, r.cumulative_steps)
    if best is not None:
      checkpoints.append((float(r.cumulative_steps),
                          blackbox.parametric_schedule(
                              best.hparams, horizon, task.dtype)))
  return checkpoints


def _search_problem(task, seed):
  """The split and initialisation every black-box trial of ``seed`` uses."""
  split = task.default_split()
  return (task.step_fn(split), task.loss_fn(split),
          task.init_state(fds_lib.outer_seed(seed, 0)))


def run_parametric(task, name, horizon, budget, seed):
  """Random search or TPE over the warm-up + decay schedule."""
  trials = blackbox.parametric_search(
      *_search_problem(task, seed), horizon, int(budget), method=name,
      seed=seed, dtype=task.dtype)
  best = blackbox.best_so_far(trials, int(budget))
  return _trial_checkpoints(task, horizon, trials), {
      'trials': len(trials),
      'best_val_loss': best.value if best else math.inf,
      'best': best.hparams if best else None}


def run_cosine_grid(task, horizon, budget, seed):
  """The warm-up + cosine reference, its peak lr the best of a small grid.

  Chosen by the validation loss of the same split and initialisation as
  the black-box trials; each run is charged T steps.
  """
  peak = dict(task.spec.default_hparams)['lr']
  grid = [cosine_values(task, peak * f) for f in COSINE_GRID]
  losses = []

  def propose(number):
    if number >= len(grid):
      return None
    return grid[number], losses.append
  trials = blackbox.schedule_trials(*_search_problem(task, seed), horizon,
                                    int(budget), propose, task.dtype)
  return _trial_checkpoints(task, horizon, trials), {
      'trials': len(trials),
      'peak_lr': [r.hparams['peak_lr'] for r in trials],
      'val_loss': losses}


def run_cosine(task, horizon):
  """The warm-up + cosine reference at the task's lr: no search, no cost."""
  return [(0.0, blackbox.parametric_schedule(cosine_values(task), horizon,
                                             task.dtype))], {}


def validation_loss(task, hparams, horizon, seed) -> float:
  """The validation loss every black-box trial of ``seed`` is scored by."""
  step_fn, loss_fn, state = _search_problem(task, seed)
  final = blackbox.train_steps(step_fn, state, hparams, num_steps=horizon,
                               start=0, stop=horizon)
  loss = float(loss_fn(final))
  return loss if math.isfinite(loss) else math.inf


def at_budget(checkpoints, budget):
  """The schedule a method would return with ``budget`` steps (or None)."""
  found = [h for c, h in checkpoints if c <= budget + 1e-9]
  return found[-1] if found else None
