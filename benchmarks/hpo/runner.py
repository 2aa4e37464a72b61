"""Runs a table: costs, every method's searches, the paired retrains.

A table is a list of independent pieces, each kept in a
:class:`benchmarks.journal.Journal` the moment it finishes (when one is
given): the measured costs, one search per method and seed, the retrains
of one seed. A rerun loads the finished pieces and runs the rest; shards
(``shard=(i, n)``) share one journal, each running every n-th search.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from typing import Callable

import jax
import optuna

from benchmarks import journal as journal_lib
from benchmarks.hpo import costs
from benchmarks.hpo import evaluation
from benchmarks.hpo import methods as methods_lib
from benchmarks.hpo import report
from benchmarks.hpo import searches
from benchmarks.hpo import settings as settings_lib
from hypergrad.experiments import tasks as tasks_lib

_key = evaluation.schedule_key


def _cpus() -> int:
  """CPU cores this process may run on (``taskset`` narrows them)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


def _no_hook(event: str, **info) -> None:
  del event, info


def run_table(task_name: str, *, horizon: int = 0, budget: int = 0,
              fds_outer_steps: int = 10, seeds: int = 5,
              methods=methods_lib.NAMES, eval_points: int = 5,
              eval_seeds: int = 3, eval_batch: int = 0,
              blackbox_lr_intervals: int = 1, hyperband_reports: int = 9,
              greedy_scales=(), tune_greedy: bool = False,
              fds_init: str = 'config',
              val_objective: str = '',
              fds_step_sizes: dict | None = None,
              fds_intervals: dict | None = None,
              reverse_checkpoint_every: int = -1, repeats: int = 3,
              data_dir: str | None = None, journal_dir: str | None = None,
              shard: tuple[int, int] = (0, 1), log=print,
              measure_costs: Callable = costs.measure_costs,
              hook: Callable = _no_hook) -> dict | None:
  """Runs every method for ``seeds`` seeds at one budget; returns results.

  With ``journal_dir`` every finished piece (costs, each search, each seed's
  retrains) is kept there and a rerun with the same settings resumes. With
  ``shard=(i, n)``, n > 1, this process runs every n-th search from the
  i-th and the retrains of the seeds then complete (n processes share one
  journal), and returns None: the call without ``shard`` on the same
  journal finishes what is left and returns the table.

  Args:
    tune_greedy: the greedy methods' meta step tuned on a seed of its own
      (:data:`benchmarks.hpo.searches.TUNE_SEED`) at the budget of one
      evaluated search; each evaluated seed then tries it first and refines
      around it.
    measure_costs: times the methods' calls, with the signature of
      :func:`benchmarks.hpo.costs.measure_costs` (tests give fixed costs,
      so that separate runs charge the same).
    hook: ``hook(event, **info)``, called before the data loads
      (``'load_task'``), before each search runs (``'search'``, ``seed``,
      ``method``) and before a seed's schedules are retrained
      (``'retrain'``, ``seed``, ``schedules``): what ran, and a place to
      inject a fault (a kill mid-table).
  """
  _check_methods(methods)
  setup = settings_lib.resolve(
      task_name, horizon=horizon, fds_step_sizes=fds_step_sizes,
      fds_intervals=fds_intervals,
      reverse_checkpoint_every=reverse_checkpoint_every,
      eval_batch=eval_batch, val_objective=val_objective, budget=budget,
      fds_outer_steps=fds_outer_steps, seeds=seeds, methods=tuple(methods),
      eval_points=eval_points, eval_seeds=eval_seeds,
      blackbox_lr_intervals=blackbox_lr_intervals,
      hyperband_reports=hyperband_reports, greedy_scales=list(greedy_scales),
      tune_greedy=tune_greedy, fds_init=fds_init, repeats=repeats, data_dir=data_dir)
  book = _open_journal(setup, journal_dir, shard)
  hook('load_task', task=task_name)
  task = tasks_lib.make_task(task_name, data_dir=data_dir, seed=0,
                             val_fraction=setup.config.val_fraction,
                             val_objective=setup.val_objective)
  optuna.logging.set_verbosity(optuna.logging.WARNING)
  log(f'{task_name}: T={setup.horizon}, backend {jax.default_backend()}')
  run = Run(setup, task, book, shard, log, hook)
  run.charge(measure_costs)
  run.search_all(journal_dir)
  if shard[1] > 1:
    run.log_shard_done()
    return None
  for seed in range(seeds):
    if seed not in run.eval_seconds:
      run.evaluate_seed(seed, wait=True)
  log(f'evaluation: {sum(run.eval_seconds.values()):.1f} s')
  return evaluation.table_results(run)


def _check_methods(methods) -> None:
  unknown = [m for m in methods if m not in methods_lib.METHODS]
  if unknown:
    raise ValueError(f'unknown methods {unknown}; known: '
                     f'{", ".join(methods_lib.NAMES)}.')


def _open_journal(setup, journal_dir, shard):
  """The run's journal, or None; refuses bad shards and other settings."""
  index, count = shard
  if not 0 <= index < count:
    raise ValueError(f'bad shard {index}/{count}: want 0 <= i < n.')
  if count > 1 and not journal_dir:
    raise ValueError('shards share their work through a journal: give '
                     'journal_dir.')
  # Opened (and a mismatch refused) before any compute.
  return (journal_lib.Journal(journal_dir, setup.journal_settings())
          if journal_dir else None)


class Run:
  """One process's part of a table, its finished pieces in ``book``."""

  def __init__(self, setup, task, book, shard, log, hook):
    self.setup, self.task, self.book = setup, task, book
    self.index, self.count = shard
    self.log, self.hook = log, hook
    self.searched = [m for m in setup.methods if m != 'default']
    self.searches = [(seed, m) for seed in range(setup.seeds)
                     for m in self.searched]
    self.done = {}          # (seed, method) -> search entry, decoded
    self.score = {}         # (seed, schedule key) -> (test loss, accuracy)
    self.eval_seconds = {}  # seed -> its retrains' seconds
    self.default = task.default_hparams()

  def _lock(self, name='journal', wait=True):
    return (self.book.lock(name, wait) if self.book
            else contextlib.nullcontext(True))

  def _load(self, name):
    return self.book.load(name) if self.book else None

  def charge(self, measure_costs) -> None:
    """Sets each method's cost and the budget; measured once per table.

    Every process of a run charges the same costs: measured once (the
    methods a resumed run adds, then), kept in the journal.
    """
    s, start = self.setup, time.time()
    with self._lock():
      kept = self._load('costs') or {'ratios': {}}
      missing = [m for m in s.methods if not set(
          methods_lib.METHODS[m].charged_by) <= set(kept['ratios'])]
      if missing or 'plain_seconds' not in kept['ratios']:
        ratios = measure_costs(self.task, s.horizon, s.config,
                               methods_lib.cost_calls(missing), s.repeats,
                               s.reverse_ckpt, self.log)
        kept['ratios'] = {**ratios, **kept['ratios']}
        kept['seconds'] = kept.get('seconds', 0.0) + time.time() - start
      self.ratios = dict(kept['ratios'])
      self.cost = {}
      for m in s.methods:
        method = methods_lib.METHODS[m]
        if method.ratio_alias:
          self.ratios[m] = self.ratios[method.ratio_alias]
        if method.charge:
          self.cost[m] = method.charge(self.ratios, s.horizon)
      budget = kept.get('budget') or s.budget
      if not budget:
        if 'fds' not in self.ratios:
          raise ValueError('the default budget is set by FDS\'s cost: '
                           'include fds in --methods or give --budget.')
        budget = int(math.ceil(
            s.fds_outer_steps * self.ratios['fds'] * s.horizon))
      kept['budget'] = self.budget = budget
      self.kept = kept
      if self.book:
        self.book.save('costs', kept)
    self.log(f'budget: {budget} inner-step equivalents '
             f'({budget / s.horizon:.1f} training runs)')
    self.points = [budget * (j + 1) / s.eval_points
                   for j in range(s.eval_points)]

  def _decoded(self, entry):
    return dict(entry, checkpoints=[
        (c, journal_lib.decode_hparams(h, self.task.dtype))
        for c, h in entry['checkpoints']])

  def _search(self, seed, m) -> dict:
    """Runs one search and keeps it; returns its journal entry."""
    self.hook('search', seed=seed, method=m)
    t0 = time.time()
    checkpoints, info = methods_lib.METHODS[m].search(
        self.setup, self.task, self.budget, self.cost.get(m), seed)
    seconds = time.time() - t0
    entry = {'checkpoints': [(c, journal_lib.encode_hparams(h))
                             for c, h in checkpoints],
             'info': json.loads(json.dumps(report.jsonable(info),
                                           default=float)),
             'seconds': seconds,
             'spent': checkpoints[-1][0] if checkpoints else 0.0,
             'shard': f'{self.index}/{self.count}', 'cpus': _cpus()}
    if self.book:
      self.book.save(f'search_s{seed}_{m}', entry)
    self.log(f'seed {seed} {m:<10} spent {entry["spent"]:9.0f} steps, '
             f'{seconds:6.1f} s {json.dumps(entry["info"])[:150]}')
    return entry

  def search_all(self, journal_dir) -> None:
    """Runs this process's searches not in the journal, loads the rest.

    A seed's retrains run as soon as all its searches are in, by this
    process if its last search of the seed finished it (a kill keeps
    them).
    """
    mine_last = {seed: (seed, m) for i, (seed, m) in enumerate(self.searches)
                 if i % self.count == self.index}
    resumed = 0
    for i, (seed, m) in enumerate(self.searches):
      entry = self._load(f'search_s{seed}_{m}')
      if entry is None:
        if i % self.count != self.index:
          continue  # another shard's
        entry = self._search(seed, m)
      else:
        resumed += 1
      # Read back as the journal has it, so a resumed run and an unbroken
      # one evaluate the very same numbers.
      self.done[(seed, m)] = self._decoded(entry)
      if self.book and (seed, m) == mine_last.get(seed):
        # Retrained now if other shards have finished theirs, while they
        # go on searching.
        rest = {o: self._load(f'search_s{seed}_{o}') for o in self.searched
                if (seed, o) not in self.done}
        if all(rest.values()):
          self.done.update({(seed, o): self._decoded(e)
                            for o, e in rest.items()})
          self.evaluate_seed(seed, wait=False)
    if resumed:
      self.log(f'resumed {resumed} of {len(self.searches)} searches from '
               f'{journal_dir}')
    for seed in range(self.setup.seeds):
      complete = all((seed, m) in self.done for m in self.searched)
      if complete and seed not in self.eval_seconds:
        self.evaluate_seed(seed, wait=False)

  def _wanted(self, seed) -> dict:
    """Every schedule of ``seed`` to retrain: the returned and the curve's."""
    wanted = {_key(self.default): self.default}
    for m in self.searched:
      r = self.done[(seed, m)]
      r['curve'] = [searches.at_budget(r['checkpoints'], b)
                    for b in self.points]
      r['final'] = searches.at_budget(r['checkpoints'], self.budget)
      for h in r['curve'] + [r['final']]:
        if h is not None:
          wanted.setdefault(_key(h), h)
    return wanted

  def evaluate_seed(self, seed, wait) -> bool:
    """Retrains ``seed``'s schedules (the same initialisations for all).

    One process at a time: with ``wait`` off, False if another holds it.
    """
    name = f'eval_s{seed}'
    with self._lock(name, wait) as ok:
      if not ok:
        return False
      have = self._load(name) or {'scores': {}, 'seconds': 0.0}
      wanted = self._wanted(seed)
      todo = [k for k in wanted if k.hex() not in have['scores']]
      if todo:
        self.hook('retrain', seed=seed, schedules=len(todo))
        t0 = time.time()
        s = self.setup
        scores = evaluation.evaluate(
            self.task, [wanted[k] for k in todo], s.horizon,
            evaluation.eval_inits(seed, s.eval_seeds), s.eval_batch)
        have['scores'].update({k.hex(): [float(x) for x in v]
                               for k, v in zip(todo, scores)})
        have['seconds'] += time.time() - t0
        if self.book:
          self.book.save(name, have)
      self.score.update({(seed, k): have['scores'][k.hex()] for k in wanted})
      self.eval_seconds[seed] = have['seconds']
      return True

  def log_shard_done(self) -> None:
    # One process writes the table (and removes the journal): the command
    # without --shard, which finds every piece done or finishes it.
    self.log(f'shard {self.index}/{self.count} done '
             f'({len(self.searches) - len(self.done)} of '
             f'{len(self.searches)} searches were not finished by other '
             f'shards when it looked). Once every shard is done, the same '
             f'command without --shard writes the table.')
