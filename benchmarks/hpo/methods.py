"""Every method of the table, one :class:`Method` record each.

Adding a method to the table is adding one record to :data:`METHODS`: its
name and label, how it searches, which calls its cost is measured by and
how it is charged, and how its search is reported. Nothing else in
``benchmarks/hpo/`` names a method.
"""

from __future__ import annotations

import dataclasses
from typing import Callable

import numpy as np

from benchmarks.hpo import costs
from benchmarks.hpo import searches
from benchmarks.hpo import settings as settings_lib
import hypergrad
from hypergrad.experiments import blackbox


@dataclasses.dataclass(frozen=True)
class Method:
  """One row of the table.

  Attributes:
    name: the ``--methods`` name and the results' key.
    label: the row's name in the table and the plot.
    family: ``'default'`` (no search), ``'reference'`` (a standard
      schedule, fixed or chosen from a small grid), ``'outer'`` (FDS's
      outer loop), ``'greedy'`` or ``'blackbox'``: the search it runs and
      how it is drawn and counted.
    search: ``search(setup, task, budget, cost, seed) -> (checkpoints,
      info)``, with ``cost`` what :attr:`charge` returned; None for the
      default schedule.
    measures: ``(ratio name, builder)`` of each call timed for it (see
      :mod:`benchmarks.hpo.costs`); a name shared by methods is timed once.
    charged_by: the measured ratios it needs (a resumed run measures a
      method again unless all of them are kept).
    charge: ``charge(ratios, horizon) -> cost`` of one search step (a
      number, or a list by outer step); None: nothing measured (a
      black-box trial is charged the steps it trained).
    ratio_alias: a ratio recorded under this method's name too.
    iterations: the table's search-iterations cell, from every seed's info.
    ratio_text: the table's cost cell, from the results' ratios.
  """

  name: str
  label: str
  family: str
  search: Callable | None = None
  measures: tuple = ()
  charged_by: tuple = ()
  charge: Callable | None = None
  ratio_alias: str | None = None
  iterations: Callable = lambda infos: '-'
  ratio_text: Callable | None = None

  def cost_cell(self, ratios: dict) -> str:
    """The table's 'cost of one (x T)' cell."""
    if self.ratio_text is not None:
      return self.ratio_text(ratios)
    ratio = ratios.get(self.name, 1.0 if self.family == 'blackbox' else None)
    return '-' if ratio is None else f'{ratio:.2f}'


def _ratio_charge(key):
  return lambda ratios, horizon: ratios[key] * horizon


def _outer(estimator, population=1, paper=False):
  """FDS's outer loop with ``estimator(setup)``'s hypergradients."""
  def search(setup, task, budget, cost, seed):
    config = (settings_lib.paper_config(setup.config) if paper
              else setup.config)
    return searches.run_outer(
        task, config, setup.horizon, budget, cost, estimator(setup), seed,
        'config' if paper else setup.fds_init, population)
  return search


def _outer_steps(infos):
  return f"{np.mean([i['outer_steps'] for i in infos]):.1f} outer steps"


def _greedy(name, label):
  def search(setup, task, budget, cost, seed):
    if not setup.tune_greedy:
      return searches.run_greedy(task, name, setup.horizon, budget, cost,
                                 seed, setup.greedy_scales)
    # Given its best setting: the meta step tuned on a seed of its own.
    tuned = searches.tune_greedy(task, name, setup.horizon, budget, cost,
                                 setup.greedy_scales)
    checkpoints, info = searches.run_greedy(
        task, name, setup.horizon, budget, cost, seed,
        searches.tuned_grid(tuned['tuned_scale'], budget, cost))
    return checkpoints, {**info, **tuned}

  def iterations(infos):
    text = f"{np.mean([len(i['runs']) for i in infos]):.1f} runs"
    if 'tuned_scale' in infos[0]:
      text += (f", meta step tuned on seed {infos[0]['tune_seed']}: "
               f"{infos[0]['tuned_scale']:.3g}")
    return text
  return Method(
      name, label, 'greedy', search,
      measures=((name, costs.greedy_call(name)),), charged_by=(name,),
      charge=_ratio_charge(name), iterations=iterations)


def _blackbox(name, label, space='constant'):
  """A black-box row: optuna's ``kind`` of search over ``space``.

  ``space``: ``'constant'`` (one value per kind, or ``--blackbox_lr_
  intervals`` lr pieces: the tables' rows since the start), ``'sched'``
  (the K-value schedule FDS learns: its launch config's shared intervals)
  or ``'param'`` (warm-up + cosine or linear decay, constant momentum and
  weight decay).
  """
  kind = name.split('_')[0]

  def search(setup, task, budget, cost, seed):
    del cost  # a trial is charged the steps it trained
    if space == 'param':
      return searches.run_parametric(task, kind, setup.horizon, budget, seed)
    intervals = (settings_lib.config_intervals(setup.config)
                 if space == 'sched'
                 else {'lr': setup.blackbox_lr_intervals})
    return searches.run_blackbox(task, kind, setup.horizon, budget, seed,
                                 intervals, setup.hyperband_reports)

  def iterations(infos):
    text = f"{np.mean([i['trials'] for i in infos]):.1f} trials"
    if kind == 'hyperband':
      text += f" ({np.mean([i['pruned'] for i in infos]):.1f} pruned)"
    return text
  return Method(name, label, 'blackbox', search, iterations=iterations)


def _cosine(setup, task, budget, cost, seed):
  del budget, cost, seed  # a fixed schedule: nothing searched
  return searches.run_cosine(task, setup.horizon)


def _cosine_grid(setup, task, budget, cost, seed):
  del cost  # a run is charged the steps it trained
  return searches.run_cosine_grid(task, setup.horizon, budget, seed)


def _population_cost(ratios, horizon):
  # One inner run per outer step before POPULATION_FROM, the population's
  # cost from then on.
  return ([ratios['fds_pop_single'] * horizon] * searches.POPULATION_FROM
          + [ratios['fds_pop'] * horizon])


def _population_ratio(ratios):
  ratio = ratios.get('fds_pop')
  if 'fds_pop_single' in ratios:
    return (f"{ratios['fds_pop_single']:.2f}, from outer step "
            f"{searches.POPULATION_FROM} {ratio:.2f}")
  return '-' if ratio is None else f'{ratio:.2f}'


def _zero_ratio(ratios):
  # Tables from before fds_zero had its own estimator charged FDS's cost.
  ratio = ratios.get('fds_zero', ratios.get('fds'))
  return '-' if ratio is None else f'{ratio:.2f}'


_FORWARD = costs.outer_step_call(hypergrad.forward, 1)
_AUTO_SINGLE = costs.outer_step_call(hypergrad.auto, 1)
_AUTO_POPULATION = costs.outer_step_call(hypergrad.auto, searches.POPULATION)

SCHED_LABEL = 'FDS\'s schedule space'
PARAM_LABEL = 'warm-up + decay'

_ALL = [
    Method('default', 'default schedule', 'default'),
    # The references a practitioner would start from (issue 26): the
    # usual lr with warm-up and cosine decay, and its peak lr tuned.
    Method('default_cosine', 'warm-up + cosine at the usual lr',
           'reference', _cosine),
    Method('cosine_grid',
           f'warm-up + cosine, peak lr best of {len(searches.COSINE_GRID)}',
           'reference', _cosine_grid,
           iterations=lambda infos: (
               f"{np.mean([i['trials'] for i in infos]):.1f} runs"),
           ratio_text=lambda ratios: '1.00'),
    Method('fds', 'FDS (forward, non-greedy)', 'outer',
           _outer(lambda setup: hypergrad.forward()),
           measures=(('fds', _FORWARD),), charged_by=('fds',),
           charge=_ratio_charge('fds'), iterations=_outer_steps),
    Method('fds_pop',
           f'FDS-population (S={searches.POPULATION} from outer step '
           f'{searches.POPULATION_FROM}, {searches.POPULATION_AGGREGATE}, '
           f'undecided < {searches.POPULATION_MIN_AGREEMENT} left in place)',
           'outer',
           _outer(lambda setup: hypergrad.auto(), searches.POPULATION),
           measures=(('fds_pop', _AUTO_POPULATION),
                     ('fds_pop_single', _AUTO_SINGLE)),
           charged_by=('fds_pop', 'fds_pop_single'),
           charge=_population_cost, iterations=_outer_steps,
           ratio_text=_population_ratio),
    # The paper's setting with the same hypergradients at the cheaper exact
    # estimator's cost (hypergrad.auto: on CPU checkpointed reverse mode).
    # FDS's forward-mode step is timed too: it sets the default budget.
    Method('fds_zero', 'FDS, paper setting (init 0, steps 0.1; auto)',
           'outer', _outer(lambda setup: hypergrad.auto(), paper=True),
           measures=(('fds', _FORWARD), ('fds_pop_single', _AUTO_SINGLE)),
           charged_by=('fds_pop_single',),
           charge=_ratio_charge('fds_pop_single'),
           ratio_alias='fds_pop_single', iterations=_outer_steps,
           ratio_text=_zero_ratio),
    Method('reverse', 'reverse-mode non-greedy', 'outer',
           _outer(lambda setup: hypergrad.reverse(setup.reverse_ckpt)),
           measures=(('reverse', costs.reverse_call),),
           charged_by=('reverse',), charge=_ratio_charge('reverse'),
           iterations=_outer_steps),
    _greedy('hd', 'HD (greedy)'),
    _greedy('rtho', 'RTHO (greedy)'),
    _greedy('truncated', 'truncated greedy'),
    *(_blackbox(name, label) for name, label in zip(
        blackbox.METHODS, ('random search', 'TPE', 'Hyperband'))),
    # The same search space as FDS (issue 26): its K-value schedule.
    *(_blackbox(f'{name}_sched', f'{label}, {SCHED_LABEL}', 'sched')
      for name, label in zip(blackbox.METHODS,
                             ('random search', 'TPE', 'Hyperband'))),
    # The schedule family practitioners tune.
    *(_blackbox(f'{name}_param', f'{label}, {PARAM_LABEL}', 'param')
      for name, label in zip(blackbox.PARAMETRIC_METHODS,
                             ('random search', 'TPE'))),
]
# In table order.
METHODS = {m.name: m for m in _ALL}
NAMES = tuple(METHODS)
LABELS = {m.name: m.label for m in _ALL}


def of_family(family: str) -> tuple[str, ...]:
  """The names of the methods of ``family``, in table order."""
  return tuple(m.name for m in _ALL if m.family == family)


REFERENCE = ('default',) + of_family('reference')
OUTER = of_family('outer')
GREEDY = of_family('greedy')
BLACKBOX = of_family('blackbox')


def cost_calls(names) -> dict:
  """The calls to time for methods ``names``: ratio name -> builder.

  In table order whatever the order of ``names``, so that the ratios (and
  the table's header listing them) always come out in one order.
  """
  wanted = {key for n in names for key, _ in METHODS[n].measures}
  calls = {}
  for m in _ALL:
    for key, build in m.measures:
      if key in wanted:
        calls.setdefault(key, build)
  return calls
