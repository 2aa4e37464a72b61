"""FDS end to end: search a schedule with full-horizon hypergradients, retrain, test.

``train_and_evaluate(config, workdir)`` is the whole job; ``launch/fds.py``
only parses flags. Config fields (see ``launch/configs/base.py``):

* ``task``, ``data_dir``, ``seed``, ``batch_size`` (0: the task's),
  ``val_fraction``.
* ``horizon``: inner steps per hypergradient; ``retrain_steps`` (0: horizon).
* ``hyperparams``: comma-separated kinds to learn (``lr``, ``momentum``,
  ``weight_decay``); the others keep the task's plain values.
* ``intervals``, ``init``, ``step_sizes``: per kind.
* ``outer_steps``, ``tol``: the sign-based outer loop's bound and tolerance;
  ``divergence_factor``: a validation loss above this multiple of the first
  one counts as diverged (0: only NaN/Inf).
* ``estimator``: ``forward`` (FDS) or ``reverse``; ``chunk_size``,
  ``checkpoint_every``: their memory knobs.
* ``redraw_val``, ``fresh_init``: per-outer-step validation split and inner
  initialisation.

Outputs in ``workdir``: ``metrics.csv`` and TensorBoard events (one row per
outer step), ``schedules.png``, ``validation.png``, ``checkpoints/`` (orbax,
one per outer step; ``resume=True`` continues from the last) and
``summary.json``.
"""

from __future__ import annotations

import csv
import json
import math
import os
import time
from typing import Any

from absl import logging
import jax
import ml_collections
import numpy as np
import tqdm

import hypergrad
from hypergrad._src import checkpoint as ckpt_lib
from hypergrad._src import outer
from hypergrad._src import plotting
from hypergrad._src import schedule
from hypergrad._src import search
from hypergrad._src import tasks as tasks_lib

ESTIMATORS = ('forward', 'reverse')
KINDS = ('lr', 'momentum', 'weight_decay')
# Outer-step seeds: distinct per run seed and outer step, reproducible.
_SEED_STRIDE = 1000


class ConfigError(ValueError):
  """A config value is invalid; raised before any data is loaded."""


def _kinds(config) -> list[str]:
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


def _is_real(value) -> bool:
  return (isinstance(value, (int, float, np.integer, np.floating))
          and not isinstance(value, (bool, np.bool_)))


def validate_config(config) -> list[str]:
  """Checks every value that can be checked without data; returns the kinds."""
  if not isinstance(config.task, str) or config.task not in tasks_lib.TASKS:
    raise ConfigError(f'unknown task {config.task!r}; known tasks: '
                      f'{", ".join(sorted(tasks_lib.TASKS))}.')
  for name in ('horizon', 'outer_steps'):
    value = config[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
      raise ConfigError(f'{name} must be a positive integer, got {value!r}.')
  for name in ('retrain_steps', 'batch_size', 'chunk_size',
               'checkpoint_every', 'progress_every'):
    value = config[name]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
      raise ConfigError(f'{name} must be an integer >= 0 (0: default), got '
                        f'{value!r}.')
  seed = config.seed
  if (not isinstance(seed, int) or isinstance(seed, bool)
      or not 0 <= seed < 2**53):
    raise ConfigError(f'seed must be an integer in [0, 2**53), got {seed!r}.')
  if config.estimator not in ESTIMATORS:
    raise ConfigError(f'unknown estimator {config.estimator!r}; known: '
                      f'{", ".join(ESTIMATORS)}.')
  for name in ('val_fraction', 'tol'):
    if not _is_real(config[name]):
      raise ConfigError(f'{name} must be a number, got {config[name]!r}.')
  if not 0.0 < config.val_fraction < 1.0:
    raise ConfigError(f'val_fraction must be in (0, 1), got '
                      f'{config.val_fraction}.')
  if not 0.0 < config.tol < 1.0:
    raise ConfigError(f'tol must be in (0, 1), got {config.tol}.')
  factor = config.get('divergence_factor', 0.0)
  if not _is_real(factor) or not (factor == 0 or 1 < factor < math.inf):
    raise ConfigError('divergence_factor must be 0 (off) or a finite number '
                      f'> 1, got {factor!r}.')
  kinds = _kinds(config)
  for name in ('intervals', 'init', 'step_sizes'):
    if not isinstance(config[name], (dict, ml_collections.ConfigDict)):
      raise ConfigError(f'{name} must map hyperparameter kinds to values, '
                        f'got {config[name]!r}.')
  for k in kinds:
    n = config.intervals.get(k, 1)
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
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
    if k not in config.init:
      raise ConfigError(f'no initial value for {k} in config.init.')
    step_size = config.step_sizes.get(k, 0)
    if not _is_real(step_size) or not 0 < step_size < math.inf:
      raise ConfigError(f'step size for {k} must be a finite number > 0, got '
                        f'{step_size!r}.')
  for k in KINDS:
    if k in config.init and not (_is_real(config.init[k])
                                 and math.isfinite(config.init[k])):
      raise ConfigError(f'initial value for {k} must be a finite number, got '
                        f'{config.init[k]!r}.')
  if config.init.get('lr', 0.0) < 0 or config.init.get('weight_decay',
                                                       0.0) < 0:
    raise ConfigError('initial lr and weight_decay must be >= 0.')
  if not 0.0 <= config.init.get('momentum', 0.0) < 1.0:
    raise ConfigError(f'initial momentum must be in [0, 1), got '
                      f'{config.init.get("momentum")}.')
  try:
    mesh = tasks_lib.make_mesh(config.get('mesh', ''))
    batch = config.batch_size or tasks_lib.TASKS[config.task].batch_size
    tasks_lib.check_mesh(mesh, batch)
  except ValueError as e:
    raise ConfigError(f'mesh: {e}') from None
  return kinds


class _Metrics:
  """CSV and TensorBoard rows, one per outer step; rewritten on resume."""

  FIELDS = ('outer_step', 'accepted', 'val_loss', 'val_accuracy',
            'nonfinite_step', 'hypergrad_norm', 'seconds', 'inner_steps',
            'wall_time')

  def __init__(self, workdir: str, records: list[dict]):
    self.path = os.path.join(workdir, 'metrics.csv')
    self._tb = None
    try:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))
    except ImportError:
      logging.warning('tensorboardX not installed: no TensorBoard events.')
    with open(self.path, 'w', newline='') as f:
      csv.writer(f).writerow(
          list(self.FIELDS) + ['hparams', 'hypergrads', 'step_sizes'])
    for r in records:
      self.write(r, tensorboard=False)

  def write(self, r: dict, tensorboard: bool = True) -> None:
    row = [r.get(k, '') for k in self.FIELDS] + [
        json.dumps(r['hparams']), json.dumps(r['hypergrads']),
        json.dumps(r['step_sizes'])]
    with open(self.path, 'a', newline='') as f:
      csv.writer(f).writerow(row)
    if self._tb is not None and tensorboard:
      step = r['outer_step']
      for k in ('val_loss', 'val_accuracy', 'hypergrad_norm', 'seconds'):
        if isinstance(r.get(k), (int, float)) and math.isfinite(r[k]):
          self._tb.add_scalar(k, r[k], step)
      for kind, values in r['hparams'].items():
        for i, v in enumerate(np.ravel(values)):
          self._tb.add_scalar(f'hparams/{kind}/{i}', v, step)
      for kind, values in r['hypergrads'].items():
        for i, v in enumerate(np.ravel(values)):
          self._tb.add_scalar(f'hypergrad_sign/{kind}/{i}', np.sign(v), step)
      self._tb.flush()

  def close(self):
    if self._tb is not None:
      self._tb.close()


def _hypergrad_fn(config, task, estimator_cost):
  """``fn(hparams, outer_step) -> (loss, hypergrads)`` recording val accuracy."""
  progress_every = config.progress_every or max(config.horizon // 10, 1)
  bar = {'bar': None}

  def on_step(t):
    if bar['bar'] is not None:
      bar['bar'].n = t + 1
      bar['bar'].refresh()

  progress = hypergrad.Progress(on_step, progress_every)
  extra = {}

  def fn(hparams, outer_step):
    seed = config.seed * _SEED_STRIDE + outer_step
    split = task.split(seed) if config.redraw_val else task.default_split()
    init_seed = seed if config.fresh_init else config.seed
    step_fn, loss_fn = task.step_fn(split), task.loss_fn(split)
    state = task.init_state(init_seed)
    bar['bar'] = tqdm.tqdm(total=config.horizon, leave=False,
                           desc=f'outer step {outer_step}: inner steps',
                           disable=None)
    try:
      if config.estimator == 'forward':
        loss, grads, info = hypergrad.forward_hypergrad(
            step_fn, loss_fn, state, hparams, config.horizon,
            chunk_size=config.chunk_size or None, progress=progress,
            return_info=True)
      else:
        loss, grads, info = hypergrad.reverse_hypergrad(
            step_fn, loss_fn, state, hparams, config.horizon,
            checkpoint_every=config.checkpoint_every or None,
            return_info=True)
      jax.block_until_ready(grads)
      jax.effects_barrier()
    finally:
      bar['bar'].close()
      bar['bar'] = None
    extra['nonfinite_step'] = int(info.nonfinite_step)
    extra['val_accuracy'] = (
        task.evaluate(info.final_state, 'val', split)['accuracy']
        if extra['nonfinite_step'] < 0 else float('nan'))
    extra['inner_steps'] = estimator_cost
    return loss, grads

  return fn, extra


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       resume: bool = False) -> dict[str, Any]:
  """Runs the FDS search, retrains with the learned schedule and tests it.

  Args:
    config: see the module docstring.
    workdir: output folder (created).
    resume: continue from the last checkpoint in ``workdir`` (an error if the
      folder holds a run of another config).

  Returns:
    The summary also written to ``workdir/summary.json``.

  Raises:
    ConfigError: a bad config value (before any compute).
    hypergrad.data.DatasetNotFoundError: the task's data is not prepared.
    search.DivergenceError: the inner run diverges at the initial values.
  """
  kinds = validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  config_path = os.path.join(workdir, 'config.json')
  config_json = config.to_json(sort_keys=True)
  if resume and os.path.exists(config_path):
    with open(config_path) as f:
      if json.load(f) != json.loads(config_json):
        raise ConfigError(f'--resume: {workdir} holds a run of another config '
                          f'({config_path}); use a new --workdir.')
  elif not resume and os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise ConfigError(f'{workdir} already holds a run; pass --resume to '
                      'continue it or choose another --workdir.')
  with open(config_path, 'w') as f:
    f.write(config_json)

  start = time.time()
  overrides = {'batch_size': config.batch_size} if config.batch_size else {}
  task = tasks_lib.make_task(config.task, data_dir=config.data_dir or None,
                             seed=config.seed,
                             val_fraction=config.val_fraction,
                             mesh=tasks_lib.make_mesh(config.get('mesh', '')),
                             **overrides)
  hparams0 = {k: schedule.constant(config.init[k], config.intervals.get(k, 1),
                                   task.dtype) for k in kinds}
  opt = outer.sign_descent({k: config.step_sizes[k] for k in kinds})
  # A forward hypergradient over T steps costs more than T training steps;
  # budgets count inner-step equivalents of the plain unroll as the wall-time
  # ratio is not known here, so record the plain count and the seconds.
  fn, extra = _hypergrad_fn(config, task, config.horizon)

  checkpointer = ckpt_lib.OuterCheckpointer(os.path.join(workdir,
                                                         'checkpoints'))
  state, records = search.init(hparams0, opt), []
  if resume:
    restored = checkpointer.restore_latest(state)
    if restored is not None:
      state, records = restored
      logging.info('resumed from outer step %d', state.step)
  metrics = _Metrics(workdir, records)
  prior_seconds = records[-1]['wall_time'] if records else 0.0

  bar = tqdm.tqdm(total=config.outer_steps, initial=state.step,
                  desc=f'FDS {config.task}', disable=None)

  def callback(new_state, record):
    record.update(val_accuracy=extra['val_accuracy'],
                  nonfinite_step=extra['nonfinite_step'],
                  inner_steps=extra['inner_steps'],
                  wall_time=prior_seconds + time.time() - start)
    record = ckpt_lib.jsonable(record)
    records.append(record)
    metrics.write(record)
    checkpointer.save(new_state, records)
    bar.update(1)
    if record['accepted']:
      status = 'accepted'
    elif record['nonfinite_step'] is None:
      status = ('REJECTED: validation loss exploded (above '
                f'{config.divergence_factor:g} x the first); backing off')
    else:
      status = ('REJECTED: inner run diverged at inner step '
                f'{record["nonfinite_step"]}; backing off')
    logging.info('outer step %d %s: val loss %.4f, val acc %.4f, %.1fs',
                 record['outer_step'], status, record['val_loss'],
                 record['val_accuracy'], record['seconds'])

  while state.step < config.outer_steps and not state.converged:
    state, record = search.step(
        fn, opt, state, tol=config.tol,
        divergence_factor=config.get('divergence_factor', 0.0) or None)
    callback(state, record)
  bar.close()
  metrics.close()
  checkpointer.close()

  learned = {k: np.asarray(v).tolist() for k, v in state.hparams.items()}
  retrain_steps = config.retrain_steps or config.horizon
  learned_h = jax.tree.map(lambda v: np.asarray(v, task.dtype),
                           state.hparams)
  results = {}
  for name, h in (('learned', learned_h),
                  ('default', task.default_hparams())):
    final = task.train(h, retrain_steps, init_seed=config.seed)
    test = task.evaluate(final, 'test')
    diverged = not math.isfinite(test['loss'])
    results[name] = {'test_accuracy': None if diverged else test['accuracy'],
                     'test_loss': None if diverged else test['loss'],
                     'val_accuracy': task.evaluate(final, 'val')['accuracy'],
                     'diverged': diverged}

  plotting.plot_schedules(records, config.horizon,
                          os.path.join(workdir, 'schedules.png'),
                          final=learned, title=f'FDS on {config.task}')
  plotting.plot_validation(records, os.path.join(workdir, 'validation.png'),
                           baseline=results['default']['val_accuracy'],
                           title=f'FDS on {config.task}')

  summary = {
      'task': config.task,
      'estimator': config.estimator,
      'horizon': config.horizon,
      'outer_steps': state.step,
      'converged': state.converged,
      'rejected_outer_steps': sum(not r['accepted'] for r in records),
      'learned_schedule': learned,
      'fixed_hyperparameters': {k: v for k, v in task.fixed_hparams.items()
                                if k not in kinds},
      'test_accuracy': results['learned']['test_accuracy'],
      'test_loss': results['learned']['test_loss'],
      'retrain_diverged': results['learned']['diverged'],
      'default_schedule': dict(task.spec.default_hparams),
      'default_test_accuracy': results['default']['test_accuracy'],
      # Hypergradient unrolls plus the final retrain, in inner steps.
      'inner_steps': sum(r['inner_steps'] for r in records) + retrain_steps,
      'search_seconds': sum(r['seconds'] for r in records),
      'wall_time': prior_seconds + time.time() - start,
  }
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=2)
  if summary['retrain_diverged']:
    logging.error('retraining with the learned schedule diverged; the '
                  'summary records no test accuracy.')
  return summary
