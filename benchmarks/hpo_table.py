r"""FDS against greedy, reverse-mode and black-box HPO at an equal budget.

    python -m benchmarks.hpo_table --task mnist1d_mlp        # T = 1000, 5 seeds
    python -m benchmarks.hpo_table --task mnist1d_large_mlp  # 20,000 signals
    python -m benchmarks.hpo_table --task fashion_mnist_mlp  # real images
    python -m benchmarks.hpo_table --task digits_mlp         # T = 500
    python -m benchmarks.hpo_table --task mnist1d_mlp \
        --val_objective calibrated_cross_entropy --tag _calibrated
    python -m benchmarks.hpo_table --task cifar10_wrn16_1 \
        --data_dir ~/tensorflow_datasets                # GPU: T = 10^4

The FDS rows' settings come from the launch config; ``--fds_init``,
``--fds_step_sizes`` and ``--fds_intervals`` (shared intervals per
hyperparameter, e.g. ``lr=20``) override them, and the table records them.

Methods (all learn lr, momentum and weight decay of SGD with momentum):

* ``default``: the task's plain schedule (lr 0.1, momentum 0.9, wd 5e-4);
  no search.
* ``fds``: the FDS outer loop (sign steps on forward-mode hypergradients
  through the whole horizon) with the task's launch config
  (``launch/configs/<task>.py``: 7 lr intervals, re-drawn validation split
  and fresh initialisation per outer step; its initial schedule and outer
  step sizes: for the standard MNIST-1D the default schedule with steps lr
  0.05, momentum 0.02, wd 3e-4, for the others the paper's init 0 with
  steps 0.1, 0.1, 3e-4); one inner run per outer step, forward mode.
* ``fds_pop``: FDS-population, the same loop where, from outer step
  ``POPULATION_FROM`` (5) on, each outer step's hypergradient is the median
  of ``POPULATION`` (4) inner runs, each with its own initialisation and
  validation split, a value whose members split 2-2 in sign left in place
  (``min_agreement`` 0.5); the earlier steps run one inner run. The
  hypergradients are computed by ``hypergrad.auto()`` (the same numbers as
  forward mode, by whichever of forward and checkpointed reverse mode is
  faster: on CPU reverse); each step is charged its measured cost.
* ``fds_zero``: the task's launch config with the FDS paper's initial
  values and outer steps from ``launch/configs/base.py`` (init 0, steps lr
  0.1, momentum 0.1, wd 3e-4), whatever the task's config says; one inner
  run per outer step, its hypergradients computed by ``hypergrad.auto()``
  (the same numbers as forward mode; on CPU checkpointed reverse mode, about
  a third of the cost), so the budget pays for as many outer steps as the
  search needs to converge (10 forward-mode steps did not settle from 0).
* ``reverse``: the same loop with reverse-mode hypergradients (the same
  numbers, another cost), optionally checkpointed.
* ``hd``, ``rtho``, ``truncated``: greedy online methods (hypergradient
  descent on the validation loss; RTHO every T/20 steps; truncated
  forward-mode look-ahead of T/10 steps) started from the default schedule,
  with sign meta-steps; their meta step is tuned over a grid (the run with
  the lowest final validation loss wins) as large as the budget pays for:
  ``floor(budget / cost of one run)`` scales, log-spaced over [0.03, 10]
  and tried coarse to fine, so a smaller budget has tried a coarser grid.
  The schedule they return is the per-step values they used (T intervals).
* ``random``, ``tpe``, ``hyperband``: optuna black-box searches
  (:mod:`hypergrad.experiments.blackbox`) over a constant (or, with
  ``--blackbox_lr_intervals``, piecewise) schedule, lr in [1e-3, 1] log,
  momentum in [0, 0.99], wd in [1e-5, 1e-2] log; objective: the validation
  loss at the end of the T-step run (FDS's objective).

Budget accounting (inner-step equivalents, "steps"): a plain training run of
T steps costs T. Before the runs, the wall time of one call of each
estimator over the horizon is measured against the plain unroll of the same
T steps on this machine (best of ``--cost_repeats`` after a warm-up,
compilation excluded): an FDS outer step then costs ``ratio_fwd * T``, a
greedy run ``ratio_method * T``, a black-box trial the steps it trained. The
default budget is 10 FDS outer steps; every method stops before it would
exceed it. Wall time (compilation included) is reported too.

Evaluation, the same for every method and paired: within HPO seed i, each
found schedule and the default schedule are retrained from scratch for T
steps on the loaded training split from the same ``--eval_seeds``
initialisations and tested; the table gives the mean and standard deviation
over independent HPO seeds of that test accuracy, and the mean paired gain
over the default with its 95% Student-t confidence interval. The curve
evaluates, at fractions of the budget, the schedule each method would have
returned had it stopped there.

The validation loss is every method's objective: the cross-entropy, or with
``--val_objective calibrated_cross_entropy`` the cross-entropy after the
best temperature on the validation split (for every method alike); the table
reports test accuracy and the plain test cross-entropy. Run time with the
defaults (5 seeds) on 2 shared CPU cores: digits ~4 min, MNIST-1D ~26 min
(the larger one too), Fashion-MNIST MLP ~87 min (a plain run of T = 1000
steps takes 0.18 s on MNIST-1D and 0.83 s on Fashion-MNIST; the wall time is
the ~100-150-run budget of every method times 5 seeds, then the retrains).

Writes ``benchmarks/results/hpo_<task>{--tag}.{md,png,json}``. With
``--merge --methods m1,m2`` only those methods run (and the default, to
check the pairing), at the existing table's budget, and their rows replace
the table's; the table notes the command that produced them.

A long table resumes. While it runs, every finished piece (the measured
costs, each search of a method and seed, each seed's retrains) is kept in
``<out_dir>/hpo_<task>{--tag}.partial/`` (``--journal_dir``); the same
command after a kill loads them and runs only the rest, and the journal is
removed once the table is written (``--restart`` discards one instead). A
journal made with other settings is refused, naming them. On a machine
whose cores one process does not keep busy (XLA on 2 CPU cores: 1.2 times
the speed of one), shards share the journal and the searches::

    taskset -c 0 python -m benchmarks.hpo_table ARGS --shard 0/2 &
    taskset -c 1 python -m benchmarks.hpo_table ARGS --shard 1/2
    python -m benchmarks.hpo_table ARGS      # writes the table

The costs are measured once, by the first shard while the others wait, so
every search is charged the same; each shard retrains the seeds it
completes.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import json
import math
import os
import re
import sys
import time
import warnings

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np
import optuna

from benchmarks import common
from benchmarks import journal as journal_lib
import hypergrad
from hypergrad._src import registry
from hypergrad._src import schedule
from hypergrad._src import search
from hypergrad.experiments import blackbox
from hypergrad.experiments import fds as fds_lib
from hypergrad.experiments import tasks as tasks_lib
from launch.configs import base

GREEDY = ('hd', 'rtho', 'truncated')
BLACKBOX = blackbox.METHODS
OUTER = ('fds', 'fds_pop', 'fds_zero', 'reverse')
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
METHODS = ('default',) + OUTER + GREEDY + BLACKBOX
# Tables written before the objective was recorded all used this one.
OBJECTIVE_BEFORE_THE_FIELD = 'cross_entropy'
# The bounds of the automatic greedy meta-step grid (total drift of lr over
# the run, see greedy_method).
GREEDY_SCALE_RANGE = (0.03, 10.0)
KINDS = registry.SGD.names

# Per-task settings of the comparison (the FDS settings come from the task's
# launch config). WRN-16-1: reverse mode stores sqrt(T)-step checkpoints.
PRESETS = {
    'mnist1d_mlp': {'horizon': 1000},
    'mnist1d_large_mlp': {'horizon': 1000},
    'fashion_mnist_mlp': {'horizon': 1000},
    'digits_mlp': {'horizon': 500},
    'cifar10_wrn16_1': {'horizon': 10000, 'reverse_checkpoint_every': 100,
                        'eval_batch': 4},
}
# Retraining seeds of the final evaluation (never used by a search).
_EVAL_SEED_BASE = 10_000
# Two-sided 95% quantiles of Student's t by degrees of freedom (n - 1).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447,
         7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086,
         30: 2.042}


def _cost_keys(method: str) -> set:
  """The measured ratios ``method`` is charged by."""
  if method == 'fds_pop':
    return {'fds_pop', 'fds_pop_single'}
  if method == 'fds_zero':
    return {'fds_pop_single'}
  return {method} if method in OUTER + GREEDY else set()


def _cpus() -> int:
  """CPU cores this process may run on (``taskset`` narrows them)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def eval_inits(hpo_seed: int, n: int) -> list[int]:
  """The retraining initialisations of HPO seed ``hpo_seed``."""
  return [_EVAL_SEED_BASE + 100 * hpo_seed + i for i in range(n)]


def confidence_interval(values) -> tuple[float, float]:
  """Mean and half-width of the 95% t-interval of the mean."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if len(v) < 2:
    return (float(v.mean()) if len(v) else math.nan), math.nan
  df = len(v) - 1
  t = _T975[max(k for k in _T975 if k <= df)]
  return float(v.mean()), float(t * v.std(ddof=1) / np.sqrt(len(v)))

_TASK = flags.DEFINE_string('task', 'mnist1d_mlp', 'Task name.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Prepared datasets.')
_HORIZON = flags.DEFINE_integer('horizon', 0,
                                'Inner steps T per run (0: the preset).')
_BUDGET = flags.DEFINE_integer(
    'budget', 0, 'Inner-step equivalents per method and seed (0: '
    '--fds_outer_steps FDS outer steps at the measured cost).')
_FDS_STEPS = flags.DEFINE_integer('fds_outer_steps', 10,
                                  'Default budget, in FDS outer steps.')
_SEEDS = flags.DEFINE_integer('seeds', 5, 'Independent HPO runs per method.')
_METHODS = flags.DEFINE_list('methods', list(METHODS), 'Methods to run.')
_EVAL_POINTS = flags.DEFINE_integer(
    'eval_points', 5, 'Budget fractions at which the curve is evaluated.')
_EVAL_SEEDS = flags.DEFINE_integer(
    'eval_seeds', 3, 'Retraining initialisations per found schedule; the '
    'same ones for every method and the default within an HPO seed.')
_EVAL_BATCH = flags.DEFINE_integer(
    'eval_batch', 0, 'Schedules retrained at once (vmapped); 0: the preset '
    'or 16.')
_BB_LR_INTERVALS = flags.DEFINE_integer(
    'blackbox_lr_intervals', 1, 'Learning-rate pieces of the black-box '
    'search space (1: constant; FDS uses 7).')
_HB_REPORTS = flags.DEFINE_integer('hyperband_reports', 9,
                                   'Hyperband chunks per trial (resource).')
_GREEDY_SCALES = flags.DEFINE_list(
    'greedy_scales', [],
    'Greedy meta-step grid: the largest total drift of lr (and momentum) '
    'over the run; weight decay drifts 3e-3 times as far (FDS step ratio). '
    'Empty: as many scales as the budget pays for, log-spaced over '
    '[0.03, 10], coarse to fine.')
_FDS_INIT = flags.DEFINE_enum(
    'fds_init', 'config', ['config', 'default'], 'FDS/reverse initial '
    'schedule: the launch config\'s or the task\'s default.')
_FDS_STEP_SIZES = flags.DEFINE_string(
    'fds_step_sizes', '', 'Override of the config\'s initial outer step '
    'sizes, e.g. momentum=0.02,lr=0.05.')
_FDS_INTERVALS = flags.DEFINE_string(
    'fds_intervals', '', 'Override of the config\'s shared intervals per '
    'hyperparameter of FDS, FDS-population and reverse mode (the paper\'s '
    'setting too), e.g. lr=20,weight_decay=3.')
_REVERSE_CKPT = flags.DEFINE_integer(
    'reverse_checkpoint_every', -1, 'Reverse-mode block length (0: none; '
    '-1: the preset).')
_REPEATS = flags.DEFINE_integer('cost_repeats', 3, 'Timed repeats of the '
                                'cost ratios (best is kept).')
_OUT_DIR = flags.DEFINE_string(
    'out_dir', os.path.join(os.path.dirname(__file__), 'results'),
    'Output folder.')
_VAL_OBJECTIVE = flags.DEFINE_enum(
    'val_objective', '', ['', *tasks_lib.VAL_OBJECTIVES],
    'The validation loss every method descends or scores ('
    'hypergrad.experiments.tasks.VAL_OBJECTIVES); empty: the launch '
    'config\'s (cross_entropy unless it says otherwise).')
_TAG = flags.DEFINE_string('tag', '', 'Suffix of the output file names.')
_JOURNAL = flags.DEFINE_string(
    'journal_dir', None, 'Where finished searches and retrains are kept '
    'while the table runs, so that the same command resumes a killed run '
    '(default: <out_dir>/hpo_<task><tag>.partial; removed once the table is '
    'written).')
_SHARD = flags.DEFINE_string(
    'shard', '', 'i/n: run every n-th search from the i-th, sharing the '
    'journal with the other shards (run them side by side, e.g. each under '
    '`taskset -c i`), then the same command without --shard writes the '
    'table.')
_RESTART = flags.DEFINE_bool(
    'restart', False, 'Delete the journal of an earlier run of this table '
    'first instead of resuming it.')
_MERGE = flags.DEFINE_bool(
    'merge', False, 'Run only --methods and put their rows into the '
    'existing table of the task (its budget, seeds and retrain '
    'initialisations; the default schedule must retrain to the same '
    'accuracies), keeping its other rows.')


# ---------------------------------------------------------------------------
# Settings.


def fds_config(task_name: str):
  """The task's launch config (FDS's settings), or the base one."""
  try:
    module = importlib.import_module(f'launch.configs.{task_name}')
    return module.get_config()
  except ModuleNotFoundError:
    return base.get_base_config(task_name)


def paper_config(config):
  """``config`` with the FDS paper's initial values and outer step sizes."""
  paper = base.get_base_config(config.task)
  out = config.copy_and_resolve_references()
  out.init, out.step_sizes = paper.init, paper.step_sizes
  return out


def config_intervals(config) -> dict:
  """A config's shared intervals of every hyperparameter."""
  return {k: int(config.intervals.get(k, 1)) for k in KINDS}


def initial_fds_hparams(task, config, init: str) -> dict:
  """FDS's starting schedule: the config's values or the task's defaults."""
  values = dict(task.spec.default_hparams if init == 'default'
                else config.init)
  return {k: schedule.constant(values[k], config.intervals.get(k, 1),
                               task.dtype) for k in KINDS}


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
  return factory(step_fn, loss_fn, meta_lr=meta_lr, meta_update='sign',
                 bounds=hypergrad.SGD_BOUNDS, **kw)


# ---------------------------------------------------------------------------
# Cost of each estimator relative to plain training.


def measure_costs(task, horizon: int, config, methods, repeats: int,
                  reverse_ckpt, log=print) -> dict:
  """Wall-time ratios of one call of each method to a plain T-step run."""
  step_fn, loss_fn, state = task.problem(init_seed=0)
  default = task.default_hparams()
  fds_h = initial_fds_hparams(task, config, 'default')
  # The program every black-box trial runs: a trial is the unit of cost.
  plain = lambda: blackbox.train_steps(step_fn, state, default,
                                       num_steps=horizon, start=0,
                                       stop=horizon)
  calls = {}
  # An FDS outer step is charged what the search's own per-outer-step
  # function costs (new split and initialisation included), for one inner
  # run and for a population alike.
  def outer_step_fn(estimator, population):
    options = population_options(population)
    fn = fds_lib.make_hypergrad_fn(
        task, estimator, horizon, seed=0,
        redraw_val=config.redraw_val, fresh_init=config.fresh_init,
        **options)
    # An outer step that runs the whole population.
    k = options['population_from']
    return lambda: fn(fds_h, k)

  if 'fds' in methods or 'fds_zero' in methods:
    calls['fds'] = outer_step_fn(hypergrad.forward(), 1)
  if 'fds_pop' in methods:
    calls['fds_pop'] = outer_step_fn(hypergrad.auto(), POPULATION)
  if 'fds_pop' in methods or 'fds_zero' in methods:
    calls['fds_pop_single'] = outer_step_fn(hypergrad.auto(), 1)
  if 'reverse' in methods:
    calls['reverse'] = lambda: hypergrad.reverse(reverse_ckpt)(
        step_fn, loss_fn, state, fds_h, horizon)
  one = {k: schedule.constant(v, 1, task.dtype)
         for k, v in task.spec.default_hparams}
  for name in GREEDY:
    if name in methods:
      method = greedy_method(name, step_fn, loss_fn, horizon, 0.1)
      calls[name] = functools.partial(hypergrad.run_online, method, state,
                                       one, horizon)
  t_plain = common.best_time(plain, repeats)
  log(f'plain T={horizon}: {t_plain:.3f} s')
  ratios = {'plain_seconds': t_plain}
  for name, fn in calls.items():
    t = common.best_time(fn, repeats)
    ratios[name] = t / t_plain
    log(f'{name}: {t:.3f} s = {t / t_plain:.2f} x plain')
  return ratios


# ---------------------------------------------------------------------------
# The searches. Each returns (checkpoints, info): checkpoints is a list of
# (inner-step equivalents spent, schedule it would return now).


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
  hparams0 = initial_fds_hparams(task, config, init)
  if max_steps < 1:
    return [(0.0, hparams0)], {'outer_steps': 0}
  fn = fds_lib.make_hypergrad_fn(task, estimator, horizon, seed=seed,
                                 redraw_val=config.redraw_val,
                                 fresh_init=config.fresh_init,
                                 **population_options(population))
  opt = hypergrad.sign_descent({k: config.step_sizes[k] for k in KINDS})
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


def run_greedy(task, name, horizon, budget, cost, seed, scales):
  """A greedy method, its meta step chosen by final validation loss."""
  if not scales:
    scales = coarse_to_fine(max(int(budget // cost), 1), *GREEDY_SCALE_RANGE)
  split = task.default_split()
  step_fn, loss_fn = task.step_fn(split), task.loss_fn(split)
  one = {k: schedule.constant(v, 1, task.dtype)
         for k, v in task.spec.default_hparams}
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


def run_blackbox(task, name, horizon, budget, seed, lr_intervals, reports):
  split = task.default_split()
  result = blackbox.blackbox_search(
      task.step_fn(split), task.loss_fn(split),
      task.init_state(fds_lib.outer_seed(seed, 0)), horizon, int(budget),
      method=name, seed=seed, intervals={'lr': lr_intervals},
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


def at_budget(checkpoints, budget):
  """The schedule a method would return with ``budget`` steps (or None)."""
  found = [h for c, h in checkpoints if c <= budget + 1e-9]
  return found[-1] if found else None


# ---------------------------------------------------------------------------
# Evaluation: retrain from scratch with each schedule, test.


@functools.partial(jax.jit, static_argnums=0)
def _train_many(num_steps, step_fn, init_state, hparams):
  return jax.vmap(lambda h: hypergrad.unroll(step_fn, init_state, h,
                                             num_steps))(hparams)


def _per_step(task, h, horizon):
  """A schedule as ``T`` per-step values of every kind (the same run)."""
  full = dict(task.fixed_hparams)
  full.update(h)
  return {k: np.asarray(schedule.expand(
      {k: jnp.asarray(np.asarray(full[k], task.dtype).reshape(-1))},
      horizon)[k]) for k in KINDS}


def evaluate(task, schedules, horizon, eval_seeds, batch):
  """Test loss and accuracy of each schedule, averaged over ``eval_seeds``.

  Schedules are expanded to per-step values and retrained ``batch`` at a
  time with one vmapped unroll (padded to ``batch``: one compilation).
  """
  step_fn = task.step_fn(task.default_split())
  expanded = [_per_step(task, h, horizon) for h in schedules]
  out = np.zeros((len(schedules), 2))
  for e in eval_seeds:
    state = task.init_state(e)
    for i in range(0, len(expanded), batch):
      group = expanded[i:i + batch]
      group = group + [group[0]] * (batch - len(group))
      stacked = {k: jnp.asarray(np.stack([g[k] for g in group]))
                 for k in KINDS}
      final = _train_many(horizon, step_fn, state, stacked)
      for j in range(min(batch, len(expanded) - i)):
        one = jax.tree.map(lambda x, j=j: x[j], final)
        m = task.evaluate(one, 'test')
        out[i + j] += (m['loss'], m['accuracy'])
  return out / len(eval_seeds)


def _key(h) -> bytes:
  return b''.join(k.encode() + np.asarray(h[k]).tobytes() for k in sorted(h))


# ---------------------------------------------------------------------------
# Driver.


def run_table(task_name: str, *, horizon: int = 0, budget: int = 0,
              fds_outer_steps: int = 10, seeds: int = 5, methods=METHODS,
              eval_points: int = 5, eval_seeds: int = 3, eval_batch: int = 0,
              blackbox_lr_intervals: int = 1, hyperband_reports: int = 9,
              greedy_scales=(), fds_init: str = 'config',
              val_objective: str = '',
              fds_step_sizes: dict | None = None,
              fds_intervals: dict | None = None,
              reverse_checkpoint_every: int = -1, repeats: int = 3,
              data_dir: str | None = None, journal_dir: str | None = None,
              shard: tuple[int, int] = (0, 1), log=print) -> dict | None:
  """Runs every method for ``seeds`` seeds at one budget; returns results.

  With ``journal_dir`` every finished piece (costs, each search, each seed's
  retrains) is kept there and a rerun with the same settings resumes. With
  ``shard=(i, n)``, n > 1, this process runs every n-th search from the
  i-th and the retrains of the seeds then complete (n processes share one
  journal), and returns None: the call without ``shard`` on the same
  journal finishes what is left and returns the table.
  """
  unknown = [m for m in methods if m not in METHODS]
  if unknown:
    raise ValueError(f'unknown methods {unknown}; known: {", ".join(METHODS)}.')
  preset = PRESETS.get(task_name, {})
  config = fds_config(task_name)
  for k, v in (fds_step_sizes or {}).items():
    if k not in KINDS or not v > 0:
      raise ValueError(f'bad FDS step size {k}={v}.')
    config.step_sizes[k] = float(v)
  horizon = horizon or preset.get('horizon', config.horizon)
  for k, v in (fds_intervals or {}).items():
    if k not in KINDS or not (math.isfinite(v) and v == int(v)
                              and 1 <= v <= horizon):
      raise ValueError(f'bad FDS interval count {k}={v}: a whole number '
                       f'from 1 to the horizon {horizon}, for one of '
                       f'{", ".join(KINDS)}.')
    config.intervals[k] = int(v)
  if reverse_checkpoint_every < 0:
    reverse_checkpoint_every = preset.get('reverse_checkpoint_every', 0)
  reverse_ckpt = reverse_checkpoint_every or None
  eval_batch = eval_batch or preset.get('eval_batch', 16)
  val_objective = val_objective or config.val_objective
  settings = {'task': task_name, 'horizon': horizon, 'budget': budget,
              'fds_outer_steps': fds_outer_steps,
              'eval_points': eval_points, 'eval_seeds': eval_seeds,
              'eval_batch': eval_batch,
              'blackbox_lr_intervals': blackbox_lr_intervals,
              'hyperband_reports': hyperband_reports,
              'greedy_scales': list(greedy_scales), 'fds_init': fds_init,
              'val_objective': val_objective,
              'fds_step_sizes': config.step_sizes.to_dict(),
              'fds_intervals': config_intervals(config),
              'reverse_checkpoint_every': reverse_ckpt,
              'hypergrad': hypergrad.__version__}
  index, count = shard
  if not 0 <= index < count:
    raise ValueError(f'bad shard {index}/{count}: want 0 <= i < n.')
  if count > 1 and not journal_dir:
    raise ValueError('shards share their work through a journal: give '
                     'journal_dir.')
  # Opened (and a mismatch refused) before any compute.
  book = journal_lib.Journal(journal_dir, settings) if journal_dir else None

  task = tasks_lib.make_task(task_name, data_dir=data_dir, seed=0,
                             val_fraction=config.val_fraction,
                             val_objective=val_objective)
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  log(f'{task_name}: T={horizon}, backend {jax.default_backend()}')

  start = time.time()
  with book.lock() if book else contextlib.nullcontext():
    # Every process of a run charges the same costs: measured once (the
    # methods a resumed run adds, then), kept in the journal.
    kept = (book.load('costs') if book else None) or {'ratios': {}}
    missing = [m for m in methods if not _cost_keys(m) <= set(kept['ratios'])]
    if missing or 'plain_seconds' not in kept['ratios']:
      ratios = measure_costs(task, horizon, config, missing, repeats,
                             reverse_ckpt, log)
      kept['ratios'] = {**ratios, **kept['ratios']}
      kept['seconds'] = kept.get('seconds', 0.0) + time.time() - start
    ratios = dict(kept['ratios'])
    cost = {m: ratios[m] * horizon for m in OUTER + GREEDY if m in ratios}
    if 'fds_zero' in methods:
      # The paper's setting with the same hypergradients at the cheaper
      # exact estimator's cost (hypergrad.auto: on CPU checkpointed reverse
      # mode).
      ratios['fds_zero'] = ratios['fds_pop_single']
      cost['fds_zero'] = ratios['fds_zero'] * horizon
    if 'fds_pop' in ratios:
      cost['fds_pop'] = ([ratios['fds_pop_single'] * horizon]
                         * POPULATION_FROM + [ratios['fds_pop'] * horizon])
    budget = kept.get('budget') or budget
    if not budget:
      if 'fds' not in ratios:
        raise ValueError('the default budget is set by FDS\'s cost: include '
                         'fds in --methods or give --budget.')
      budget = int(math.ceil(fds_outer_steps * cost['fds']))
    kept['budget'] = budget
    if book:
      book.save('costs', kept)
  log(f'budget: {budget} inner-step equivalents '
      f'({budget / horizon:.1f} training runs)')

  def search_one(seed, m):
    if m in OUTER:
      zero = m == 'fds_zero'
      return run_outer(
          task, paper_config(config) if zero else config, horizon, budget,
          cost[m], (hypergrad.reverse(reverse_ckpt) if m == 'reverse'
                    else hypergrad.auto() if m in ('fds_pop', 'fds_zero')
                    else hypergrad.forward()), seed,
          'config' if zero else fds_init,
          POPULATION if m == 'fds_pop' else 1)
    if m in GREEDY:
      return run_greedy(task, m, horizon, budget, cost[m], seed,
                        greedy_scales)
    return run_blackbox(task, m, horizon, budget, seed,
                        blackbox_lr_intervals, hyperband_reports)

  # The same evaluation for every method, paired: within HPO seed i, every
  # method's schedules and the default are retrained from the same
  # initialisations (eval_inits(i)), so gains over the default are paired.
  # A seed is retrained once all its searches are in; by one process at a
  # time (the others skip it, or, once nothing else is left, wait for it).
  points = [budget * (j + 1) / eval_points for j in range(eval_points)]
  default = task.default_hparams()
  score = {}
  eval_seconds = {}

  def wanted_of(seed):
    wanted = {_key(default): default}
    for m in methods:
      if m == 'default':
        continue
      r = done[(seed, m)]
      r['curve'] = [at_budget(r['checkpoints'], b) for b in points]
      r['final'] = at_budget(r['checkpoints'], budget)
      for h in r['curve'] + [r['final']]:
        if h is not None:
          wanted.setdefault(_key(h), h)
    return wanted

  def evaluate_seed(seed, wait):
    name = f'eval_s{seed}'
    with book.lock(name, wait) if book else contextlib.nullcontext(True) as ok:
      if not ok:
        return False
      have = (book.load(name) if book else None) or {'scores': {},
                                                     'seconds': 0.0}
      wanted = wanted_of(seed)
      todo = [k for k in wanted if k.hex() not in have['scores']]
      if todo:
        t0 = time.time()
        scores = evaluate(task, [wanted[k] for k in todo], horizon,
                          eval_inits(seed, eval_seeds), eval_batch)
        have['scores'].update({k.hex(): [float(x) for x in v]
                               for k, v in zip(todo, scores)})
        have['seconds'] += time.time() - t0
        if book:
          book.save(name, have)
      score.update({(seed, k): have['scores'][k.hex()] for k in wanted})
      eval_seconds[seed] = have['seconds']
      return True

  searches = [(seed, m) for seed in range(seeds) for m in methods
              if m != 'default']
  done = {}
  resumed = 0
  mine_last = {seed: (seed, m) for i, (seed, m) in enumerate(searches)
               if i % count == index}

  def decoded(entry):
    return dict(entry, checkpoints=[
        (c, journal_lib.decode_hparams(h, task.dtype))
        for c, h in entry['checkpoints']])

  for i, (seed, m) in enumerate(searches):
    name = f'search_s{seed}_{m}'
    entry = book.load(name) if book else None
    if entry is None:
      if i % count != index:
        continue  # another shard's
      t0 = time.time()
      checkpoints, info = search_one(seed, m)
      seconds = time.time() - t0
      entry = {'checkpoints': [(c, journal_lib.encode_hparams(h))
                               for c, h in checkpoints],
               'info': json.loads(json.dumps(_jsonable(info), default=float)),
               'seconds': seconds, 'spent': checkpoints[-1][0]
               if checkpoints else 0.0, 'shard': f'{index}/{count}',
               'cpus': _cpus()}
      if book:
        book.save(name, entry)
      log(f'seed {seed} {m:<10} spent {entry["spent"]:9.0f} steps, '
          f'{seconds:6.1f} s {json.dumps(entry["info"])[:150]}')
    else:
      resumed += 1
    # Read back as the journal has it, so a resumed run and an unbroken
    # one evaluate the very same numbers.
    done[(seed, m)] = decoded(entry)
    if book and (seed, m) == mine_last.get(seed):
      # This process's last search of the seed: retrain it now (a kill
      # keeps it) if other shards have finished theirs, while they go on
      # searching.
      rest = {o: book.load(f'search_s{seed}_{o}') for o in methods
              if o != 'default' and (seed, o) not in done}
      if all(rest.values()):
        done.update({(seed, o): decoded(e) for o, e in rest.items()})
        evaluate_seed(seed, wait=False)
  if resumed:
    log(f'resumed {resumed} of {len(searches)} searches from {journal_dir}')

  complete = [s for s in range(seeds)
              if all((s, m) in done for m in methods if m != 'default')]
  for seed in complete:
    if seed not in eval_seconds:
      evaluate_seed(seed, wait=False)
  if count > 1:
    # One process writes the table (and removes the journal): the command
    # without --shard, which finds every piece done or finishes it.
    log(f'shard {index}/{count} done ({len(searches) - len(done)} of '
        f'{len(searches)} searches were not finished by other shards when '
        f'it looked). Once every shard is done, the same command without '
        f'--shard writes the table.')
    return None
  for seed in range(seeds):
    if seed not in eval_seconds:
      evaluate_seed(seed, wait=True)
  for seed in range(seeds):
    for m in methods:
      if m != 'default':
        done[(seed, m)]['default_final'] = score[(seed, _key(default))]
  log(f'evaluation: {sum(eval_seconds.values()):.1f} s')
  runs = {m: [done[(seed, m)] if m != 'default' else
              {'checkpoints': [(0.0, default)], 'info': {}, 'seconds': 0.0,
               'spent': 0.0, 'curve': [default] * eval_points,
               'final': default,
               'default_final': score[(seed, _key(default))]}
              for seed in range(seeds)] for m in methods}

  results = {'task': task_name, 'horizon': horizon, 'budget': budget,
             'seeds': seeds, 'ratios': ratios, 'points': points,
             'eval_seeds': eval_seeds, 'fds_init': fds_init,
             'val_objective': val_objective,
             'fds_step_sizes': config.step_sizes.to_dict(),
             'fds_intervals': config_intervals(config),
             'blackbox_lr_intervals': blackbox_lr_intervals,
             'reverse_checkpoint_every': reverse_ckpt,
             'backend': f'{jax.default_backend()} '
                        f'({jax.devices()[0].device_kind})',
             'methods': {}}
  for m, rs in runs.items():
    per_seed = []
    for seed, r in enumerate(rs):
      final = score[(seed, _key(r['final']))] if r['final'] is not None else (
          (math.nan, math.nan))
      per_seed.append({
          'test_loss': float(final[0]), 'test_accuracy': float(final[1]),
          'default_test_accuracy': float(r['default_final'][1]),
          'paired_gain': float(final[1] - r['default_final'][1]),
          'spent': r['spent'], 'seconds': r['seconds'], 'info': r['info'],
          'curve': [float(score[(seed, _key(h))][1]) if h is not None
                    else math.nan for h in r['curve']],
          'curve_loss': [float(score[(seed, _key(h))][0]) if h is not None
                         else math.nan for h in r['curve']],
          'schedule': {k: np.asarray(v).tolist()
                       for k, v in (r['final'] or {}).items()
                       if np.size(v) <= 16}})
    results['methods'][m] = per_seed
  # Compute spent on this table, resumed pieces included (processes that
  # ran side by side add up).
  results['total_seconds'] = (kept.get('seconds', 0.0) + sum(
      eval_seconds.values()) + sum(
      r['seconds'] for r in done.values()))
  results['search_processes'] = sorted(
      {f"shard {r['shard']} on {r['cpus']} CPU "
       f"core{'s' if r['cpus'] != 1 else ''}" for r in done.values()
       if 'shard' in r})
  return results


def merge_results(old: dict, new: dict, command: str) -> dict:
  """``old``'s table with ``new``'s rows put in (same seeds, same budget).

  Refused unless both ran the same task, horizon, budget, HPO seeds and
  retrain initialisations, and the default schedule retrained to the same
  test accuracies in both (so every gain stays paired).
  """
  old = {'val_objective': OBJECTIVE_BEFORE_THE_FIELD, **old}
  for key in ('task', 'horizon', 'budget', 'seeds', 'eval_seeds',
              'val_objective'):
    if old[key] != new[key]:
      raise ValueError(f'cannot merge: {key} is {new[key]!r} here and '
                       f'{old[key]!r} in the existing table.')
  if 'default' in new['methods']:
    was = [r['test_accuracy'] for r in old['methods']['default']]
    now = [r['test_accuracy'] for r in new['methods']['default']]
    if not np.allclose(was, now, rtol=0, atol=1e-6):
      raise ValueError(f'cannot merge: the default schedule retrained to '
                       f'{now} here and {was} in the existing table; the '
                       f'gains would not be paired.')
  was = old.get('fds_intervals') or config_intervals(
      fds_config(old['task']))
  kept = [m for m in old['methods'] if m in OUTER and m not in new['methods']]
  if any(m in OUTER for m in new['methods']) and kept and new.get(
      'fds_intervals', was) != was:
    raise ValueError(
        f'cannot merge: FDS shared intervals are {new["fds_intervals"]} '
        f'here and {was} in the existing table, whose {", ".join(kept)} '
        f'rows keep them; write a table of its own with --tag.')
  out = dict(old)
  if any(m in OUTER for m in new['methods']):
    # The outer-loop rows now come from this run's FDS settings.
    for key in ('fds_init', 'fds_step_sizes', 'fds_intervals',
                'reverse_checkpoint_every'):
      if key in new:
        out[key] = new[key]
  methods = dict(old['methods'])
  methods.update(new['methods'])
  out['methods'] = {m: methods[m] for m in METHODS if m in methods}
  out['ratios'] = {**old['ratios'], **{k: v for k, v in new['ratios'].items()
                                       if k != 'plain_seconds'}}
  out['merged'] = list(old.get('merged', [])) + [{
      'command': command, 'methods': sorted(new['methods']),
      'total_seconds': new['total_seconds'],
      'plain_seconds': new['ratios']['plain_seconds']}]
  return out


def paired_differences(results, leaders=('fds_pop', 'fds', 'fds_zero')
                       ) -> str:
  """Markdown: each leader's paired gain over every other method.

  Within an HPO seed every method is retrained from the same
  initialisations, so ``gain_a - gain_b`` is paired; the interval is the
  95% Student-t interval of its mean over seeds (above 0: ``a`` beats ``b``
  beyond seed luck).
  """
  methods = results['methods']
  leaders = [a for a in leaders if a in methods]
  rows = []
  for b in methods:
    if b == 'default':
      continue
    row = [LABELS[b]]
    for a in leaders:
      if a == b:
        row.append('-')
        continue
      diff = [ra['paired_gain'] - rb['paired_gain']
              for ra, rb in zip(methods[a], methods[b])]
      mean, half = confidence_interval(diff)
      row.append(f'{100 * mean:+.2f} [{100 * (mean - half):+.2f}, '
                 f'{100 * (mean + half):+.2f}]')
    rows.append(row)
  return common.markdown_table(
      ['method b'] + [f'{LABELS[a]} minus b, points [95% CI]'
                      for a in leaders], rows)


def _jsonable(tree):
  return jax.tree.map(
      lambda x: float(x) if isinstance(x, (float, np.floating)) else x, tree)


def _mean_std(values):
  v = np.asarray(values, np.float64)
  return float(np.mean(v)), float(np.std(v))


LABELS = {'default': 'default schedule', 'fds': 'FDS (forward, non-greedy)',
          'fds_pop': f'FDS-population (S={POPULATION} from outer step '
                     f'{POPULATION_FROM}, {POPULATION_AGGREGATE}, undecided '
                     f'< {POPULATION_MIN_AGREEMENT} left in place)',
          'fds_zero': 'FDS, paper setting (init 0, steps 0.1; auto)',
          'reverse': 'reverse-mode non-greedy', 'hd': 'HD (greedy)',
          'rtho': 'RTHO (greedy)', 'truncated': 'truncated greedy',
          'random': 'random search', 'tpe': 'TPE', 'hyperband': 'Hyperband'}


def table(results) -> str:
  rows = []
  T = results['horizon']
  for m, per_seed in results['methods'].items():
    acc = _mean_std([r['test_accuracy'] for r in per_seed])
    loss = _mean_std([r['test_loss'] for r in per_seed])
    spent = np.mean([r['spent'] for r in per_seed])
    secs = np.mean([r['seconds'] for r in per_seed])
    # Tables from before fds_zero had its own estimator charged FDS's cost.
    key = 'fds' if m == 'fds_zero' and m not in results['ratios'] else m
    ratio = results['ratios'].get(key, 1.0 if m in BLACKBOX else None)
    if m == 'fds_pop' and 'fds_pop_single' in results['ratios']:
      ratio = (f"{results['ratios']['fds_pop_single']:.2f}, from outer step "
               f"{POPULATION_FROM} {ratio:.2f}")
    gain, half = confidence_interval([r['paired_gain'] for r in per_seed])
    rows.append([LABELS[m], f'{100 * acc[0]:.2f} ± {100 * acc[1]:.2f}',
                 '-' if m == 'default' else
                 f'{100 * gain:+.2f} [{100 * (gain - half):+.2f}, '
                 f'{100 * (gain + half):+.2f}]',
                 f'{loss[0]:.3f} ± {loss[1]:.3f}', f'{spent:,.0f}',
                 f'{spent / T:.1f}', _iterations(m, per_seed),
                 '-' if ratio is None else
                 ratio if isinstance(ratio, str) else f'{ratio:.2f}',
                 f'{secs:.0f}'])
  return common.markdown_table(
      ['method', 'test acc % (mean ± std)',
       'paired gain over default, points [95% CI]', 'test loss',
       'inner steps (equiv.)',
       '= runs of T', 'search iterations', 'cost of one (x T)',
       'search wall s'], rows)


def _iterations(m, per_seed) -> str:
  """Outer steps, greedy runs or trials (pruned), mean over seeds."""
  info = [r['info'] for r in per_seed]
  if m in OUTER:
    return f"{np.mean([i['outer_steps'] for i in info]):.1f} outer steps"
  if m in GREEDY:
    return f"{np.mean([len(i['runs']) for i in info]):.1f} runs"
  if m in BLACKBOX:
    text = f"{np.mean([i['trials'] for i in info]):.1f} trials"
    if m == 'hyperband':
      text += f" ({np.mean([i['pruned'] for i in info]):.1f} pruned)"
    return text
  return '-'


def plot(results, path):
  """Test accuracy and test loss of the returned schedule vs budget."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  T = results['horizon']
  x = np.asarray(results['points']) / T
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
  for ax, field, scale, ylabel in (
      (axes[0], 'curve', 100, 'test accuracy %'),
      (axes[1], 'curve_loss', 1, 'test cross-entropy (the objective)')):
    for m, per_seed in results['methods'].items():
      curves = scale * np.asarray([r[field] for r in per_seed], np.float64)
      if m == 'default':
        ax.axhline(np.nanmean(curves), color='k', ls='--', lw=1,
                   label=LABELS[m])
        continue
      with warnings.catch_warnings():  # a point no seed reached: NaN
        warnings.simplefilter('ignore', RuntimeWarning)
        mean = np.nanmean(curves, axis=0)
        std = np.nanstd(curves, axis=0)
      style = '-' if m in OUTER else (':' if m in GREEDY else '-.')
      line, = ax.plot(x, mean, style, marker='o', ms=3, label=LABELS[m])
      ax.fill_between(x, mean - std, mean + std, color=line.get_color(),
                      alpha=0.12)
    ax.set_xlabel(f'budget (training runs of T = {T} inner steps, '
                  'cost-weighted)')
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
  axes[0].legend(fontsize=7, ncol=2)
  fig.suptitle(f"{results['task']}: schedule returned at each budget, "
               f"retrained and tested (mean ± std over {results['seeds']} "
               'seeds)', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def write(results, out_dir, command, tag=''):
  os.makedirs(out_dir, exist_ok=True)
  base = os.path.join(out_dir, f"hpo_{results['task']}{tag}")
  r = results
  ratios = ', '.join(f'{k} {v:.2f}' for k, v in r['ratios'].items()
                     if k != 'plain_seconds')
  text = (
      f"# HPO at equal budget: {r['task']}\n\n"
      f"Produced by `{command}` in {r['total_seconds'] / 60:.1f} min on "
      f"{r['backend']}, {os.cpu_count()} CPU cores (shared: timings are "
      f"noisy){_processes_note(r)}.\n\n"
      f"Horizon T = {r['horizon']} inner steps; budget {r['budget']:,} "
      f"inner-step equivalents per method and seed "
      f"({r['budget'] / r['horizon']:.1f} training runs). Measured cost of "
      f"one run relative to plain training (plain T steps = "
      f"{r['ratios']['plain_seconds']:.2f} s): {ratios}. Test accuracy: "
      f"schedule retrained from scratch for T steps, mean over "
      f"{r['eval_seeds']} initialisations, then mean ± std over "
      f"{r['seeds']} HPO seeds. Paired gain: within each HPO seed the "
      f"default schedule is retrained from the same initialisations; the "
      f"interval is the 95% Student-t interval of the mean gain over HPO "
      f"seeds (an interval above 0: a gain that is not seed luck). "
      f"Validation objective of every method: "
      f"{r.get('val_objective', OBJECTIVE_BEFORE_THE_FIELD)}. "
      f"Black-box objective: validation loss at "
      f"the end of training; black-box lr pieces: "
      f"{r['blackbox_lr_intervals']}. FDS/reverse init: {r['fds_init']}, "
      f"outer step sizes {r['fds_step_sizes']}"
      f"{_intervals_note(r)}; "
      f"reverse checkpointing: {r['reverse_checkpoint_every']}. Search wall "
      f"time includes compilation on the first seed.\n\n"
      f"{table(r)}\n\n"
      f"Paired method against method (the same HPO seeds and retrain "
      f"initialisations; an interval above 0: the first method wins beyond "
      f"seed luck):\n\n{paired_differences(r)}\n\n"
      f"{_merged_note(r)}"
      f"![accuracy vs budget]({os.path.basename(base)}.png)\n")
  with open(base + '.md', 'w') as f:
    f.write(text)
  with open(base + '.json', 'w') as f:
    json.dump(_jsonable(r), f, indent=1, default=float)
  plot(r, base + '.png')
  return base


def _processes_note(r) -> str:
  # Shards ran side by side: their minutes add up, the wall time is less.
  shards = r.get('search_processes') or []
  if len(shards) < 2:
    return ''
  return (f"; the searches were shared among {len(shards)} processes "
          f"({'; '.join(shards)}), whose compute the minutes add up (they "
          f"ran side by side: the wall time was less); the costs were "
          f"measured once, by one process while the others waited")


def _intervals_note(r) -> str:
  # Tables written before the field was recorded used the launch config's.
  if 'fds_intervals' not in r:
    return ''
  return f", shared intervals {r['fds_intervals']}"


def parse_overrides(text: str, flag: str) -> dict:
  """``'lr=0.05,momentum=0.02'`` as ``{'lr': 0.05, 'momentum': 0.02}``."""
  out = {}
  for item in filter(None, (t.strip() for t in text.split(','))):
    name, eq, value = item.partition('=')
    try:
      if not eq:
        raise ValueError
      out[name.strip()] = float(value)
    except ValueError:
      raise app.UsageError(f'--{flag}: bad entry {item!r}; expected '
                           f'name=number, e.g. lr=0.1.') from None
  return out


def parse_shard(text: str) -> tuple[int, int]:
  """``'1/2'`` as ``(1, 2)``; ``''`` as ``(0, 1)`` (the whole table)."""
  if not text:
    return 0, 1
  i, slash, n = text.partition('/')
  try:
    if not slash:
      raise ValueError
    index, count = int(i), int(n)
  except ValueError:
    raise app.UsageError(f'--shard: bad value {text!r}; expected i/n, e.g. '
                         f'0/2.') from None
  if not 0 <= index < count:
    raise app.UsageError(f'--shard {text}: want 0 <= i < n.')
  return index, count


def _produced_by(json_path: str) -> str | None:
  """The command in the ``Produced by`` line of a table's markdown."""
  try:
    with open(json_path[:-len('.json')] + '.md') as f:
      text = f.read()
  except OSError:
    return None
  match = re.search(r'Produced by `([^`]*)`', text)
  return match.group(1) if match else None


def _merged_note(r) -> str:
  if not r.get('merged'):
    return ''
  lines = [f"* `{m['command']}` ({', '.join(m['methods'])}; "
           f"{m['total_seconds'] / 60:.1f} min, plain T steps = "
           f"{m['plain_seconds']:.2f} s)" for m in r['merged']]
  return ('Rows replaced later, at the same budget, seeds and retrain '
          'initialisations (the default schedule retrained to the same '
          'accuracies):\n\n' + '\n'.join(lines) + '\n\n')


def main(argv):
  del argv
  common.enable_compilation_cache()
  old = None
  budget = _BUDGET.value
  if _MERGE.value:
    path = os.path.join(_OUT_DIR.value, f'hpo_{_TASK.value}{_TAG.value}.json')
    if not os.path.exists(path):
      raise app.UsageError(f'--merge: no table to merge into at {path}.')
    with open(path) as f:
      old = json.load(f)
    budget = budget or old['budget']
  shard = parse_shard(_SHARD.value)
  journal_dir = _JOURNAL.value or os.path.join(
      _OUT_DIR.value, f'hpo_{_TASK.value}{_TAG.value}.partial')
  if _RESTART.value:
    journal_lib.Journal.delete(journal_dir)
  methods = _METHODS.value
  if old is not None and 'default' not in methods:
    methods = ['default'] + list(methods)  # to check the pairing
  results = run_table(
      _TASK.value, horizon=_HORIZON.value, budget=budget,
      fds_outer_steps=_FDS_STEPS.value, seeds=_SEEDS.value,
      methods=methods, eval_points=_EVAL_POINTS.value,
      eval_seeds=_EVAL_SEEDS.value, eval_batch=_EVAL_BATCH.value,
      blackbox_lr_intervals=_BB_LR_INTERVALS.value,
      hyperband_reports=_HB_REPORTS.value,
      greedy_scales=[float(s) for s in _GREEDY_SCALES.value],
      fds_init=_FDS_INIT.value, val_objective=_VAL_OBJECTIVE.value,
      fds_step_sizes=parse_overrides(_FDS_STEP_SIZES.value,
                                     'fds_step_sizes'),
      fds_intervals=parse_overrides(_FDS_INTERVALS.value, 'fds_intervals'),
      reverse_checkpoint_every=_REVERSE_CKPT.value, repeats=_REPEATS.value,
      data_dir=_DATA_DIR.value, journal_dir=journal_dir, shard=shard,
      log=lambda s: print(s, flush=True))
  if results is None:
    return  # a shard: the table is written by the command without --shard
  command = ('python -m benchmarks.hpo_table ' + ' '.join(sys.argv[1:])
             ).strip()
  if old is not None:
    results = merge_results(old, results, command)
    command = old.get('command') or _produced_by(path) or command
  results['command'] = command
  base = write(results, _OUT_DIR.value, command, _TAG.value)
  print(table(results))
  print(f'wrote {base}.md, .png and .json')
  journal_lib.Journal.delete(journal_dir)


if __name__ == '__main__':
  app.run(main)
