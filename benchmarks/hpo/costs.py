"""What one call of each method costs, relative to a plain T-step run.

Budget accounting is in inner-step equivalents: a plain training run of T
steps costs T, an FDS outer step ``ratio * T`` for its measured ``ratio``.
Which calls are timed for a method is its :class:`~benchmarks.hpo.methods.
Method`'s ``measures``: builders of a zero-argument call from a
:class:`Bench`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

from benchmarks import common
from benchmarks.hpo import searches
from benchmarks.hpo import settings as settings_lib
import hypergrad
from hypergrad.experiments import blackbox
from hypergrad.experiments import fds as fds_lib


@dataclasses.dataclass
class Bench:
  """What a timed call is built from: one problem at the start schedule."""

  task: Any
  horizon: int
  config: Any
  reverse_ckpt: int | None
  step_fn: Callable
  loss_fn: Callable
  state: Any
  fds_hparams: dict

  @classmethod
  def of(cls, task, horizon, config, reverse_ckpt) -> Bench:
    step_fn, loss_fn, state = task.problem(init_seed=0)
    return cls(task, horizon, config, reverse_ckpt, step_fn, loss_fn, state,
               settings_lib.initial_fds_hparams(task, config, 'default'))


def outer_step_call(estimator_fn, population: int):
  """Builds the call of one FDS outer step of ``population`` inner runs.

  An outer step is charged what the search's own per-outer-step function
  costs (new split and initialisation included), for one inner run and for
  a population alike.
  """
  def build(b: Bench):
    options = searches.population_options(population)
    fn = fds_lib.make_hypergrad_fn(
        b.task, estimator_fn(), b.horizon, seed=0,
        redraw_val=b.config.redraw_val, fresh_init=b.config.fresh_init,
        **options)
    # An outer step that runs the whole population.
    k = options['population_from']
    return lambda: fn(b.fds_hparams, k)
  return build


def reverse_call(b: Bench):
  """Builds the call of one reverse-mode hypergradient over the horizon."""
  return lambda: hypergrad.reverse(b.reverse_ckpt)(
      b.step_fn, b.loss_fn, b.state, b.fds_hparams, b.horizon)


def greedy_call(name: str):
  """Builds the call of one run of the greedy method ``name``."""
  def build(b: Bench):
    method = searches.greedy_method(name, b.step_fn, b.loss_fn, b.horizon,
                                    0.1)
    return functools.partial(hypergrad.run_online, method, b.state,
                             searches.default_constants(b.task), b.horizon)
  return build


def measure_costs(task, horizon: int, config, calls: dict, repeats: int,
                  reverse_ckpt, log=print) -> dict:
  """Wall-time ratios of each of ``calls`` to a plain T-step run.

  Args:
    task: the table's task.
    horizon: T.
    config: FDS's launch config (its start schedule is timed).
    calls: ratio name -> builder of the call to time, from a :class:`Bench`.
    repeats: timed repeats after a warm-up; the best is kept.
    reverse_ckpt: reverse mode's checkpoint block length (None: none).
    log: where progress lines go.

  Returns:
    ``{'plain_seconds': t, name: ratio, ...}`` in the order of ``calls``.
  """
  b = Bench.of(task, horizon, config, reverse_ckpt)
  default = task.default_hparams()
  # The program every black-box trial runs: a trial is the unit of cost.
  plain = lambda: blackbox.train_steps(b.step_fn, b.state, default,
                                       num_steps=horizon, start=0,
                                       stop=horizon)
  built = {name: build(b) for name, build in calls.items()}
  t_plain = common.best_time(plain, repeats)
  log(f'plain T={horizon}: {t_plain:.3f} s')
  ratios = {'plain_seconds': t_plain}
  for name, fn in built.items():
    t = common.best_time(fn, repeats)
    ratios[name] = t / t_plain
    log(f'{name}: {t:.3f} s = {t / t_plain:.2f} x plain')
  return ratios
