"""The FDS outer problem of a task, shared by the launch script and the benchmarks.

FDS (Micaelli & Storkey 2021) evaluates every outer step on a fresh problem:
the validation split (5% of the training set) is re-drawn and the network is
re-initialised, so the schedule is not fitted to one split or one
initialisation. :func:`make_hypergrad_fn` builds that ``hypergrad_fn(hparams,
outer_step)`` for :func:`hypergrad.fds_search` from a task and an estimator
value; :func:`estimator_from_config` is the one place where a command-line
name (``forward``/``reverse``/``auto``) becomes an estimator value.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

from absl import logging
import jax

import hypergrad
from hypergrad._src import schedule
from hypergrad._src import validation
from hypergrad.experiments import tasks as tasks_lib

# Outer-step seeds: distinct per run seed and outer step, reproducible.
SEED_STRIDE = 1000

ESTIMATOR_NAMES = ('forward', 'reverse', 'auto')


def outer_seed(seed: int, outer_step: int) -> int:
  """The seed of outer step ``outer_step`` of a run with seed ``seed``."""
  return seed * SEED_STRIDE + outer_step


def member_seed(step_seed: int, member: int) -> int:
  """The seed of population member ``member`` at an outer step's seed.

  Member 0 is the single run's seed, so a population of 1 is the same run.
  """
  return step_seed + member * 10**7


def first_member(result: hypergrad.HypergradResult) -> tuple[Any, int]:
  """``(final_state, nonfinite_step)`` of a result's (first) inner run.

  A population's info holds its members' on a leading axis: member 0's.
  """
  info = result.info
  if isinstance(info, hypergrad.PopulationStats):
    return (jax.tree.map(lambda x: x[0], info.final_state),
            int(info.nonfinite_step[0]))
  return info.final_state, int(info.nonfinite_step)


def estimator_from_config(config, mesh=None) -> hypergrad.Estimator:
  """The estimator value named by a launch config.

  Fields: ``estimator`` (``'forward'``, ``'reverse'`` or ``'auto'``: the
  faster of forward and checkpointed reverse mode within the device's memory,
  :func:`hypergrad.auto`; the same hypergradient either way), ``chunk_size``
  (forward; 0: all tangents at once), ``checkpoint_every`` (reverse; 0: no
  rematerialisation).

  Args:
    config: the launch config.
    mesh: the run's mesh (:func:`tasks.make_mesh`): with a ``tangent`` axis
      of more than one device, forward mode splits its tangents over it.

  Raises:
    ValueError: an unknown name, or a ``tangent`` axis with reverse mode.
  """
  split = tasks_lib.mesh_size(mesh, 'tangent') > 1
  if config.estimator == 'forward':
    if split:
      return hypergrad.forward(mesh=mesh, tangent_axis='tangent')
    return hypergrad.forward(config.chunk_size or None)
  if split:
    raise ValueError(f'a tangent mesh axis splits forward mode\'s tangents; '
                     f'estimator={config.estimator!r} is not forward mode '
                     f'(set estimator=forward, or drop tangent= from the '
                     f'mesh).')
  if config.estimator == 'reverse':
    return hypergrad.reverse(config.checkpoint_every or None)
  if config.estimator == 'auto':
    return hypergrad.auto()
  raise ValueError(f'unknown estimator {config.estimator!r}; known: '
                   f'{", ".join(ESTIMATOR_NAMES)}.')


def initial_hparams(task: tasks_lib.Task, init: Mapping[str, float],
                    intervals: Mapping[str, int]) -> dict:
  """Constant schedules of ``intervals[k]`` pieces at ``init[k]``, per kind."""
  return {k: schedule.constant(v, intervals.get(k, 1), task.dtype)
          for k, v in init.items()}


def member_mesh(mesh: jax.sharding.Mesh | None,
                population: int) -> jax.sharding.Mesh | None:
  """``mesh`` when it splits a population's members, else None.

  Raises:
    ValueError: ``population`` not a multiple of the ``member`` axis size.
  """
  members = tasks_lib.mesh_size(mesh, 'member')
  if population % members:
    raise ValueError(f'population={population} must be a multiple of the '
                     f'{members} devices of the mesh\'s member axis.')
  return mesh if members > 1 else None


def make_hypergrad_fn(
    task: tasks_lib.Task, estimator: hypergrad.Estimator, horizon: int, *,
    seed: int, redraw_val: bool = True, fresh_init: bool = True,
    progress: hypergrad.Progress | None = None,
    on_result: Callable[[Any, Any], None] | None = None,
    population: int = 1, aggregate: str = 'mean',
    min_agreement: float | None = None, population_from: int = 0,
    mesh: jax.sharding.Mesh | None = None) -> Callable[[Any, int], Any]:
  """FDS's ``hypergrad_fn(hparams, outer_step)`` for a task.

  With ``population=S > 1`` each outer step's hypergradient aggregates ``S``
  inner runs in one program (:func:`hypergrad.population` around
  ``estimator``), each member with its own validation split and
  initialisation; its :class:`hypergrad.HypergradResult`'s info is then a
  :class:`hypergrad.PopulationStats` (the outer loop records its sign
  agreement).

  Args:
    task: the task.
    estimator: any estimator value (``hypergrad.forward()``, ...).
    horizon: inner steps per hypergradient.
    seed: the run's seed; outer step ``k`` uses ``outer_seed(seed, k)``.
    redraw_val: re-draw the validation split at every outer step (FDS).
    fresh_init: re-initialise the network at every outer step (FDS).
    progress: host progress callback for the inner run.
    on_result: called with ``(result, split)`` after each hypergradient,
      e.g. to evaluate the trained network on that step's validation split
      (a population's first member's split).
    population: inner runs per outer step, ``S >= 1``.
    aggregate, min_agreement: how a population's hypergradients combine
      (see :func:`hypergrad.population`); ignored for ``S = 1``.
    population_from: outer steps before this one run one inner run (the
      population's first member), the later ones the population. Far from
      the optimum every member agrees in sign (from FDS's init 0 on the
      main job's task, all of them for the first 5 outer steps), so a
      population there only costs; 0: the population from the start.
    mesh: a mesh with a ``member`` axis splits a population's members over
      its devices (``S`` must be a multiple of its size); other axes are
      the task's and the estimator's.

  Returns:
    The function :func:`hypergrad.fds_search` takes; the same compiled
    program serves every outer step (new splits and initialisations are
    arguments).
  """
  population = validation.check_int(population, 'population')
  population_from = validation.check_int(population_from, 'population_from',
                                         minimum=0)
  # Built here, so a bad estimator or aggregate is refused before compute.
  members = hypergrad.population(estimator, aggregate=aggregate,
                                 min_agreement=min_agreement,
                                 mesh=member_mesh(mesh, population))

  told = []

  def fn(hparams, outer_step: int):
    s = outer_seed(seed, outer_step)
    size = population if outer_step >= population_from else 1
    seeds = [member_seed(s, i) for i in range(size)]
    splits = [task.split(x) if redraw_val else task.default_split()
              for x in seeds]
    states = [task.init_state(x if fresh_init else seed) for x in seeds]
    if isinstance(estimator, hypergrad.Auto) and not told:
      # Say once which estimator runs, and why (shapes decide: it is the
      # same for every outer step and member).
      told.append(estimator.choose(task.step_fn(splits[0]),
                                   task.loss_fn(splits[0]), states[0],
                                   hparams, horizon))
      logging.info('hypergrad.auto: %s', told[0].reason)
    if size == 1:
      result = estimator(task.step_fn(splits[0]), task.loss_fn(splits[0]),
                         states[0], hparams, horizon, progress=progress)
    else:
      result = members(
          [task.step_fn(x) for x in splits], [task.loss_fn(x) for x in splits],
          jax.tree.map(lambda *xs: jax.numpy.stack(xs), *states), hparams,
          horizon)
    if on_result is not None:
      on_result(result, splits[0])
    return result

  return fn
