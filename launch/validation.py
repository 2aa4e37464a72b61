"""The launch config's checks: every value that can be checked without data.

Ranges of the hyperparameters come from the inner optimiser's registry
(:mod:`hypergrad._src.registry`), the names of tasks, objectives, estimators
and aggregates from the modules that define them: nothing here repeats
them.
"""

from __future__ import annotations

import math

import ml_collections

import hypergrad
from hypergrad._src import registry
from hypergrad._src import schedule
from hypergrad._src import validation
from hypergrad.experiments import distributed as dist_lib
from hypergrad.experiments import fds as fds_lib
from hypergrad.experiments import tasks as tasks_lib

KINDS = registry.SGD.names
ESTIMATORS = fds_lib.ESTIMATOR_NAMES
# Fields that are whole numbers >= 0 (0: the default).
_COUNTS = ('retrain_steps', 'batch_size', 'chunk_size', 'checkpoint_every',
           'progress_every', 'retrain_inits', 'population_from')


class ConfigError(ValueError):
  """A config value is invalid; raised before any data is loaded."""


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def kinds_of(config) -> list[str]:
  """The hyperparameters ``config`` learns, checked."""
  kinds = [k.strip() for k in str(config.hyperparams).split(',') if k.strip()]
  if not kinds:
    raise ConfigError('hyperparams is empty: name at least one of '
                      f'{", ".join(KINDS)}.')
  for k in kinds:
    if k not in KINDS:
      raise ConfigError(f'unknown hyperparameter {k!r} in hyperparams; '
                        f'known: {", ".join(KINDS)}.')
  if len(set(kinds)) != len(kinds):
    raise ConfigError(f'hyperparams lists a kind twice: {config.hyperparams}')
  return kinds


def _check_choice(config, name: str, known) -> None:
  if config[name] not in known:
    raise ConfigError(f'unknown {name} {config[name]!r}; known: '
                      f'{", ".join(known)}.')


def _check_counts(config) -> None:
  for name in ('horizon', 'outer_steps'):
    value = config[name]
    if not _is_int(value) or value < 1:
      raise ConfigError(f'{name} must be a positive integer, got {value!r}.')
  for name in _COUNTS:
    value = config[name]
    if not _is_int(value) or value < 0:
      raise ConfigError(f'{name} must be an integer >= 0 (0: default), got '
                        f'{value!r}.')
  seed = config.seed
  if not _is_int(seed) or not 0 <= seed < 2**53:
    raise ConfigError(f'seed must be an integer in [0, 2**53), got {seed!r}.')


def _check_numbers(config) -> None:
  for name in ('val_fraction', 'tol'):
    if not validation.is_real(config[name]):
      raise ConfigError(f'{name} must be a number, got {config[name]!r}.')
  if not 0.0 < config.val_fraction < 1.0:
    raise ConfigError(f'val_fraction must be in (0, 1), got '
                      f'{config.val_fraction}.')
  if not 0.0 < config.tol < 1.0:
    raise ConfigError(f'tol must be in (0, 1), got {config.tol}.')


def _check_population(config) -> None:
  population = config.population
  if not _is_int(population) or population < 1:
    raise ConfigError(f'population must be an integer >= 1, got '
                      f'{population!r}.')
  _check_choice(config, 'aggregate', hypergrad.AGGREGATES)
  if not validation.is_real(config.min_agreement) or not (
      0.0 <= config.min_agreement <= 1.0):
    raise ConfigError(f'min_agreement must be in [0, 1] (0: off), got '
                      f'{config.min_agreement!r}.')
  expansion = config.get('max_expansion', 0.0)
  if not validation.is_real(expansion) or not 0 <= expansion < math.inf:
    raise ConfigError(f'max_expansion must be a finite number >= 0 (0: off), '
                      f'got {expansion!r}.')
  factor = config.get('divergence_factor', 0.0)
  if not validation.is_real(factor) or not (factor == 0 or 1 < factor < math.inf):
    raise ConfigError('divergence_factor must be 0 (off) or a finite number '
                      f'> 1, got {factor!r}.')


def _check_intervals(config, k: str) -> None:
  n = config.intervals.get(k, 1)
  if not _is_int(n) or n < 1:
    raise ConfigError(f'intervals for {k} must be a positive integer, got '
                      f'{n!r}.')
  if n > config.horizon:
    raise ConfigError(f'intervals for {k} ({n}) exceed the horizon '
                      f'({config.horizon} inner steps).')
  # pylint: disable-next=protected-access
  if n * config.horizon > schedule._MAX_STEP_PRODUCT:
    raise ConfigError(f'intervals for {k} ({n}) times the horizon '
                      f'({config.horizon}) overflow the int32 step '
                      'arithmetic; use fewer intervals or a shorter horizon.')


def _check_schedule(config, kinds) -> None:
  """Per-kind intervals, initial values and outer step sizes."""
  for name in ('intervals', 'init', 'step_sizes'):
    if not isinstance(config[name], (dict, ml_collections.ConfigDict)):
      raise ConfigError(f'{name} must map hyperparameter kinds to values, '
                        f'got {config[name]!r}.')
  for k in kinds:
    _check_intervals(config, k)
    if k not in config.init:
      raise ConfigError(f'no initial value for {k} in config.init.')
    step_size = config.step_sizes.get(k, 0)
    if not validation.is_real(step_size) or not 0 < step_size < math.inf:
      raise ConfigError(f'step size for {k} must be a finite number > 0, got '
                        f'{step_size!r}.')
  for k in KINDS:
    if k not in config.init:
      continue
    value = config.init[k]
    if not (validation.is_real(value) and math.isfinite(value)):
      raise ConfigError(f'initial value for {k} must be a finite number, got '
                        f'{value!r}.')
    # The range every outer step projects into: a start outside it would
    # be a schedule the search can never return to.
    lo, hi = registry.SGD.bounds[k]
    if not lo <= value <= hi:
      raise ConfigError(f'initial {k} must be in [{lo}, {hi}], got {value}.')


def _check_mesh(config) -> None:
  try:
    mesh = tasks_lib.make_mesh(config.get('mesh', ''))
    batch = config.batch_size or tasks_lib.TASKS[config.task].batch_size
    tasks_lib.check_mesh(mesh, batch)
    dist_lib.check_mesh(mesh)
    fds_lib.estimator_from_config(config, mesh)
    fds_lib.member_mesh(mesh, config.population)
  except ValueError as e:
    raise ConfigError(f'mesh={config.get("mesh", "")!r}: {e}') from None


def validate_config(config) -> list[str]:
  """Checks every value that can be checked without data; returns the kinds.

  Raises:
    ConfigError: the first bad value, named.
  """
  if not isinstance(config.task, str) or config.task not in tasks_lib.TASKS:
    raise ConfigError(f'unknown task {config.task!r}; known tasks: '
                      f'{", ".join(sorted(tasks_lib.TASKS))}.')
  _check_counts(config)
  _check_choice(config, 'val_objective', tasks_lib.VAL_OBJECTIVES)
  _check_choice(config, 'estimator', ESTIMATORS)
  _check_numbers(config)
  _check_population(config)
  kinds = kinds_of(config)
  _check_schedule(config, kinds)
  _check_mesh(config)
  return kinds
