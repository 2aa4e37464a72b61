"""FDS end to end: search a schedule with full-horizon hypergradients, retrain, test.

``train_and_evaluate(config, workdir)`` is the whole job; ``launch/fds.py``
only parses flags. Config fields (see ``launch/configs/base.py``):

* ``task``, ``data_dir``, ``seed``, ``batch_size`` (0: the task's),
  ``val_fraction``.
* ``val_objective``: the validation loss the hypergradients descend,
  ``cross_entropy`` (FDS's) or ``calibrated_cross_entropy`` (after the best
  temperature on the validation split, ``hypergrad.calibrated_cross_entropy``:
  a more accurate but over-confident network is not scored worse).
* ``horizon``: inner steps per hypergradient; ``retrain_steps`` (0: horizon).
* ``hyperparams``: comma-separated kinds to learn (``lr``, ``momentum``,
  ``weight_decay``); the others keep the task's plain values.
* ``intervals``, ``init``, ``step_sizes``: per kind.
* ``outer_steps``, ``tol``: the sign-based outer loop's bound and tolerance;
  ``divergence_factor``: a validation loss above this multiple of the first
  one counts as diverged (0: only NaN/Inf).
* ``estimator``: ``forward`` (FDS), ``reverse`` or ``auto`` (the faster of
  the two within the device's memory, ``hypergrad.auto``: the same
  hypergradient); ``chunk_size``, ``checkpoint_every``: their memory knobs.
* ``population``: inner runs per outer step (``S``; each its own validation
  split and initialisation, one vmapped program); ``aggregate``
  (``mean``/``median``/``trimmed_mean``/``sign_vote``) combines their
  hypergradients and ``min_agreement`` (0: off) leaves a value whose sign
  agreement is below it in place (undecided); ``population_from``: outer
  steps before it run one inner run (0: the population from the start).
* ``redraw_val``, ``fresh_init``: per-outer-step validation split and inner
  initialisation.
* ``retrain_inits``: initialisations the learned and the default schedules
  are retrained from (paired: the same ones for both); test accuracies are
  their means (0: 3). The summary also reports the strongest reference
  schedule (the default, warm-up + cosine at the usual lr, or its peak lr
  the best of a small grid: ``hypergrad.experiments.references``), chosen
  on validation loss and retrained from the same initialisations, and the
  learned schedule's paired gain over it (fields ``strongest_reference``,
  ``reference_*``, ``paired_gain_over_reference``; their training steps
  are in ``reference_inner_steps``, not ``inner_steps``).

The result is the best schedule the search evaluated and accepted (lowest
validation loss), never values it did not evaluate; the last values are
reported beside it. A run that never improves on the initial schedule
reports the initial schedule, with a warning.

Outputs in ``workdir``: ``metrics.csv`` and TensorBoard events (one row per
outer step), ``schedules.png``, ``validation.png``, ``checkpoints/`` (orbax,
one per outer step; ``resume=True`` continues from the last) and
``summary.json``. The workdir is locked for the life of the run; a folder
holding a run is only continued (``resume``) or replaced (``overwrite``).

Several processes (after ``jax.distributed.initialize``, see
``launch/fds.py``): every process runs this same function on the same
``workdir`` (a shared file system) with a mesh over all their devices.
Process 0 locks and prepares the workdir and alone writes the outputs above;
orbax writes the checkpoints from process 0 too. The processes check that
they run the same config in the same workdir before any compute, and that
they hold the same outer state after every outer step.
"""

from __future__ import annotations

import json
import math
import os
import time
from typing import Any, Callable

from absl import logging
import jax
import ml_collections
import numpy as np
from tqdm import auto as tqdm_auto

import hypergrad
from hypergrad._src import registry
from hypergrad._src import search
from hypergrad.experiments import checkpoint as ckpt_lib
from hypergrad.experiments import distributed as dist_lib
from hypergrad.experiments import fds as fds_lib
from hypergrad.experiments import metrics as metrics_lib
from hypergrad.experiments import plotting
from hypergrad.experiments import references
from hypergrad.experiments import tasks as tasks_lib
from hypergrad.experiments import workdir as workdir_lib

try:
  from . import validation
except ImportError:  # run as a script, not as a package module
  import validation  # type: ignore

KINDS = registry.SGD.names
# The config's checks live in launch/validation.py; named here as before.
ConfigError = validation.ConfigError
ESTIMATORS = validation.ESTIMATORS
validate_config = validation.validate_config


def _hypergrad_fn(config, task, mesh=None):
  """FDS's ``hypergrad_fn`` with a progress bar; records val accuracy.

  ``mesh``: the run's mesh (tangent or member splits), or None.
  """
  progress_every = config.progress_every or max(config.horizon // 10, 1)
  bar = {'bar': None}

  def on_step(t):
    if bar['bar'] is not None:
      bar['bar'].n = t + 1
      bar['bar'].refresh()

  extra = {}

  def on_result(result, split):
    jax.block_until_ready(result.hypergrads)
    jax.effects_barrier()
    final_state, nonfinite_step = fds_lib.first_member(result)
    extra['val_accuracy'] = (
        task.evaluate(final_state, 'val', split)['accuracy']
        if nonfinite_step < 0 else float('nan'))

  inner = fds_lib.make_hypergrad_fn(
      task, fds_lib.estimator_from_config(config, mesh), config.horizon,
      seed=config.seed, redraw_val=config.redraw_val,
      fresh_init=config.fresh_init,
      progress=hypergrad.Progress(on_step, progress_every),
      on_result=on_result, population=config.population,
      aggregate=config.aggregate,
      min_agreement=config.min_agreement or None,
      population_from=config.population_from, mesh=mesh)

  def fn(hparams, outer_step):
    # Host values every step: after an outer update they are device arrays
    # placed like the hypergradients (on a mesh: replicated over it), not
    # like the initial ones, and a new placement recompiles the unroll.
    hparams = jax.tree.map(np.asarray, hparams)
    bar['bar'] = tqdm_auto.tqdm(total=config.horizon, leave=False,
                                desc=f'outer step {outer_step}: inner steps',
                                disable=None if dist_lib.is_primary()
                                else True)
    try:
      return inner(hparams, outer_step)
    finally:
      bar['bar'].close()
      bar['bar'] = None

  return fn, extra


def _retrain(task, hparams, steps: int, seeds) -> dict:
  """Test metrics of ``hparams`` retrained from each seed; means, or diverged."""
  tests, vals = [], []
  for seed in seeds:
    final = task.train(hparams, steps, init_seed=seed)
    test = task.evaluate(final, 'test')
    if not math.isfinite(test['loss']):
      return {'test_accuracy': None, 'test_loss': None, 'val_accuracy': None,
              'test_accuracies': None, 'diverged': True}
    tests.append(test)
    vals.append(task.evaluate(final, 'val')['accuracy'])
  return {'test_accuracy': float(np.mean([t['accuracy'] for t in tests])),
          'test_loss': float(np.mean([t['loss'] for t in tests])),
          'val_accuracy': float(np.mean(vals)),
          'test_accuracies': [t['accuracy'] for t in tests],
          'diverged': False}


def _reference(task, steps: int, seeds, init_seed: int, default) -> dict:
  """The strongest reference schedule, chosen on validation, and its gain.

  The references of the HPO table (``hypergrad.experiments.references``:
  the default, warm-up + cosine at the usual lr, its peak lr the best of a
  small grid) are scored by the validation objective FDS descends, trained
  from ``init_seed`` on the default split (as the table's black-box trials
  are); the lowest is retrained from ``seeds`` (the default already was).
  Summary fields of their own: the existing ones are unchanged.
  """
  split = task.default_split()
  loss_fn = task.loss_fn(split)

  def val_loss(hparams):
    loss = float(loss_fn(task.train(hparams, steps, init_seed=init_seed,
                                    split=split)))
    return loss if math.isfinite(loss) else math.inf
  ref = references.strongest_reference(task, steps, val_loss)
  name = ref['strongest']
  retrained = default if name == 'default' else _retrain(
      task, ref['schedules'][name], steps, seeds)
  return {
      'strongest_reference': name,
      'reference_val_losses': ref['val_loss'],
      'reference_test_accuracy': retrained['test_accuracy'],
      'reference_test_accuracies': retrained['test_accuracies'],
      # The grid's runs, then the retrains unless the default won.
      'reference_inner_steps': steps * (
          len(ref['grid_val_loss']) + 1
          + (0 if name == 'default' else len(seeds)))}


def _agreement_text(record, config) -> str:
  """`, sign agreement min/mean, k undecided` for a population's step."""
  agreement = record.get('sign_agreement')
  if not agreement:
    return ''
  values = np.concatenate([np.ravel(v) for v in agreement.values()])
  undecided = int(np.sum(values < (config.min_agreement or 0.0)))
  return (f', sign agreement min {values.min():.2f} mean {values.mean():.2f}'
          f', {undecided}/{values.size} undecided')


def _status(record, config) -> str:
  if record['accepted']:
    return 'accepted'
  return f'REJECTED: {record["reason"]}; backing off'


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       resume: bool = False, overwrite: bool = False,
                       on_outer_step: Callable[[Any, dict], None] | None = None
                       ) -> dict[str, Any]:
  """Runs the FDS search, retrains with the best schedule found and tests it.

  Args:
    config: see the module docstring.
    workdir: output folder (created, and locked while the run lasts).
    resume: continue from the last checkpoint in ``workdir``.
    overwrite: remove the outputs of an earlier run in ``workdir`` first.
    on_outer_step: called with ``(outer state, record)`` after each outer
      step is logged and checkpointed (e.g. to watch a run, or to stop one
      there as a kill would).

  Returns:
    The summary also written to ``workdir/summary.json``.

  Raises:
    ConfigError: a bad config value, a workdir that is busy, unwritable or
      holds another run (before any compute).
    hypergrad.experiments.data.DatasetNotFoundError: the data is absent.
    search.DivergenceError: the inner run diverges at the initial values.
    RetrainDivergedError: retraining with the learned schedule diverged (the
      summary is written first, with no test accuracy).
  """
  kinds = validate_config(config)
  config_json = config.to_json(sort_keys=True)
  lock = _claim_workdir(workdir, resume, overwrite, config_json)
  try:
    return _run(config, kinds, config_json, workdir, resume, on_outer_step)
  finally:
    lock.release()


def _claim_workdir(workdir, resume, overwrite, config_json):
  """Locks and prepares ``workdir`` (process 0) for every process of the run.

  The other processes check that they run process 0's config and flags and
  see its lock in their ``workdir`` (so the same folder). Any refusal, such
  as process 0's for a workdir held by another run (another set of
  processes), stops every process with that message before any compute.

  Returns:
    The lock (held by process 0 only).

  Raises:
    ConfigError: the first refusal, naming the process when not process 0.
  """
  lock = workdir_lib.WorkdirLock(workdir)
  error = ''
  if dist_lib.is_primary():
    try:
      lock.acquire()
      workdir_lib.prepare(workdir, resume=resume, overwrite=overwrite)
    except workdir_lib.WorkdirError as e:
      lock.release()
      error = str(e)
  if dist_lib.process_count() > 1:
    run = json.dumps([config_json, resume, overwrite])
    first = json.loads(dist_lib.broadcast('workdir/claim', json.dumps(
        {'error': error, 'token': lock.token, 'run': run})
                                          if dist_lib.is_primary() else None))
    if not dist_lib.is_primary():
      if first['error']:
        error = f'process 0: {first["error"]}'
      elif first['run'] != run:
        error = (f'{dist_lib.label()} was started with another config or '
                 'other --resume/--overwrite flags than process 0; start '
                 'every process with the same command line.')
      elif workdir_lib.lock_token(workdir) != first['token']:
        error = (f'{dist_lib.label()} does not see the lock of process 0 in '
                 f'{os.path.abspath(workdir)}: give every process the same '
                 '--workdir, on a file system they share.')
    error = dist_lib.first_error('workdir/check', error)
  if error:
    lock.release()
    # All processes know it: none waits for another in a collective.
    raise dist_lib.fail_together(ConfigError(error))
  return lock


class RetrainDivergedError(RuntimeError):
  """Retraining with the learned schedule diverged."""


def _restore(checkpointer, state, workdir, config_json):
  """The outer state and records of the run in ``workdir``, if it is ours."""
  records = []
  restored = checkpointer.restore_latest(state, with_meta=True)
  if restored is None:
    # Killed before its first checkpoint: its config.json says whose
    # run this is, and it starts again from the beginning.
    with open(os.path.join(workdir, 'config.json')) as f:
      recorded = f.read()
  else:
    state, records, meta = restored
    recorded = meta.get('config', 'null') or 'null'
  if json.loads(recorded) != json.loads(config_json):
    raise ConfigError(
        f'--resume: the run in {workdir} was made by another config; '
        'use a new --workdir (or --overwrite).')
  logging.info('resumed from outer step %d', state.step)
  return state, records


def _run(config, kinds, config_json, workdir, resume, on_outer_step):
  start = time.time()
  overrides = {'batch_size': config.batch_size} if config.batch_size else {}
  overrides['val_objective'] = config.val_objective
  mesh = tasks_lib.make_mesh(config.get('mesh', ''))
  task = tasks_lib.make_task(config.task, data_dir=config.data_dir or None,
                             seed=config.seed,
                             val_fraction=config.val_fraction,
                             mesh=tasks_lib.data_mesh(mesh), **overrides)
  hparams0 = fds_lib.initial_hparams(
      task, {k: config.init[k] for k in kinds}, config.intervals)
  opt = hypergrad.sign_descent({k: config.step_sizes[k] for k in kinds})
  fn, extra = _hypergrad_fn(config, task, mesh)

  checkpointer = ckpt_lib.OuterCheckpointer(os.path.join(workdir,
                                                         'checkpoints'))
  try:
    state, records = search.init(hparams0, opt), []
    if resume:
      state, records = _restore(checkpointer, state, workdir, config_json)
    primary = dist_lib.is_primary()
    if primary:
      with open(os.path.join(workdir, 'config.json'), 'w') as f:
        f.write(config_json)
    metrics = metrics_lib.MetricsWriter(workdir, records, active=primary)
    prior_seconds = records[-1]['wall_time'] if records else 0.0
    bar = tqdm_auto.tqdm(total=config.outer_steps, initial=state.step,
                         desc=f'FDS {config.task}',
                         disable=None if primary else True)
    factor = config.get('divergence_factor', 0.0) or None

    def on_step(state, record):
      # Logging, the cross-process check and the checkpoint of every outer
      # step; the loop itself is the library's.
      record.update(val_accuracy=extra['val_accuracy'],
                    inner_steps=config.horizon,
                    wall_time=prior_seconds + time.time() - start)
      record = ckpt_lib.jsonable(record)
      records.append(record)
      if dist_lib.process_count() > 1:
        # Equal inputs, equal programs: a difference is a bug, and a resume
        # would silently follow process 0's state only.
        dist_lib.check_same(f'state/{state.step}',
                            ckpt_lib.state_digest(state),
                            f'the outer state after outer step '
                            f'{record["outer_step"]}')
      metrics.write(record)
      checkpointer.save(state, records, {'config': config_json})
      bar.update(1)
      logging.info('outer step %d %s: val loss %.4f, val acc %.4f, %.1fs%s',
                   record['outer_step'], _status(record, config),
                   record['val_loss'], record['val_accuracy'],
                   record['seconds'], _agreement_text(record, config))
      if on_outer_step is not None:
        on_outer_step(state, record)

    state, _ = hypergrad.fds_search(
        fn, hparams0, opt=opt, max_outer_steps=config.outer_steps,
        tol=config.tol, divergence_factor=factor,
        collapse_loss=0.99 * task.chance_loss, state=state, callback=on_step)
    bar.close()
    metrics.close()
  finally:
    checkpointer.close()
  return _report(config, kinds, task, state, records, workdir, start,
                 prior_seconds)


def _plot(config, records, workdir, best, default_val_accuracy):
  """The run's plots: schedules, validation and the population's signs."""
  plotting.plot_schedules(records, config.horizon,
                          os.path.join(workdir, 'schedules.png'),
                          final=best, title=f'FDS on {config.task}')
  plotting.plot_validation(records, os.path.join(workdir, 'validation.png'),
                           baseline=default_val_accuracy,
                           title=f'FDS on {config.task}')
  if config.population > 1:
    plotting.plot_sign_agreement(
        records, os.path.join(workdir, 'sign_agreement.png'),
        threshold=config.min_agreement or None,
        title=f'FDS on {config.task}: population of {config.population}')


def _report(config, kinds, task, state, records, workdir, start,
            prior_seconds):
  to_list = lambda h: {k: np.asarray(v).tolist() for k, v in h.items()}
  best, last = to_list(state.best_hparams), to_list(state.hparams)
  improved = state.best_step > 0
  if not improved:
    logging.warning('no outer step improved on the initial schedule '
                    '(validation loss); reporting the initial schedule.')
  retrain_steps = config.retrain_steps or config.horizon
  seeds = [fds_lib.outer_seed(config.seed, 500 + i)
           for i in range(config.get('retrain_inits', 0) or 3)]
  cast = lambda h: {k: np.asarray(v, task.dtype) for k, v in h.items()}
  results = {'learned': _retrain(task, cast(state.best_hparams),
                                 retrain_steps, seeds),
             'default': _retrain(task, task.default_hparams(),
                                 retrain_steps, seeds)}

  primary = dist_lib.is_primary()
  if primary:
    _plot(config, records, workdir, best, results['default']['val_accuracy'])
  learned, default = results['learned'], results['default']
  gain = (None if learned['diverged'] or default['diverged'] else
          learned['test_accuracy'] - default['test_accuracy'])
  reference = _reference(task, retrain_steps, seeds,
                         fds_lib.outer_seed(config.seed, 0), default)
  reference['paired_gain_over_reference'] = (
      None if learned['diverged'] or reference['reference_test_accuracy']
      is None else learned['test_accuracy']
      - reference['reference_test_accuracy'])
  summary = {
      'task': config.task,
      'estimator': config.estimator,
      'val_objective': config.val_objective,
      'population': config.population,
      'population_from': config.population_from,
      'aggregate': config.aggregate,
      'min_agreement': config.min_agreement,
      'horizon': config.horizon,
      'outer_steps': state.step,
      'converged': state.converged,
      'rejected_outer_steps': sum(not r['accepted'] for r in records),
      'learned_schedule': best,
      'learned_schedule_outer_step': state.best_step,
      'learned_schedule_val_loss': state.best_loss,
      'improved_on_initial': improved,
      'last_schedule': last,
      'fixed_hyperparameters': {k: v for k, v in task.fixed_hparams.items()
                                if k not in kinds},
      'test_accuracy': learned['test_accuracy'],
      'test_loss': learned['test_loss'],
      'test_accuracies': learned['test_accuracies'],
      'retrain_diverged': learned['diverged'],
      'default_schedule': dict(task.spec.default_hparams),
      'default_test_accuracy': default['test_accuracy'],
      'default_test_accuracies': default['test_accuracies'],
      'paired_gain': gain,
      'retrain_seeds': seeds,
      # Hypergradient unrolls plus the final retrains, in inner steps.
      'inner_steps': (sum(r['inner_steps'] for r in records)
                      + 2 * len(seeds) * retrain_steps),
      'search_seconds': sum(r['seconds'] for r in records),
      'wall_time': prior_seconds + time.time() - start,
      **reference,
  }
  if primary:
    with open(os.path.join(workdir, 'summary.json'), 'w') as f:
      json.dump(summary, f, indent=2)
  if summary['retrain_diverged']:
    raise RetrainDivergedError(
        f'retraining with the learned schedule {best} diverged (non-finite '
        f'test loss); {workdir}/summary.json records no test accuracy.')
  return summary


def print_summary(summary, workdir):
  """Prints a finished run's result and where its outputs are."""
  pct = lambda a: 'diverged' if a is None else f'{100 * a:.2f}%'
  print(f'\nFDS on {summary["task"]}: {summary["outer_steps"]} outer steps '
        f'({"converged" if summary["converged"] else "not converged"}), '
        f'{summary["wall_time"]:.0f} s')
  step = summary['learned_schedule_outer_step']
  label = (f'best evaluated (outer step {step})' if
           summary['improved_on_initial'] else
           'initial (no outer step improved on it)')
  print(f'  learned schedule, {label}:')
  for kind, values in summary['learned_schedule'].items():
    print(f'    {kind:<13}', ' '.join(f'{v:.4g}' for v in
                                      json.loads(json.dumps(values))))
  print('  last schedule (not evaluated): ' + ', '.join(
      f'{k} ' + ' '.join(f'{v:.4g}' for v in vs)
      for k, vs in summary['last_schedule'].items()))
  n = len(summary['retrain_seeds'])
  print(f'  test accuracy, learned schedule: {pct(summary["test_accuracy"])}'
        f' (mean of {n} retrains)')
  print(f'  test accuracy, default schedule {summary["default_schedule"]}: '
        f'{pct(summary["default_test_accuracy"])} (same {n} inits)')
  if 'strongest_reference' in summary:
    name = summary['strongest_reference']
    gain = summary['paired_gain_over_reference']
    print(f'  test accuracy, strongest reference ({name}, chosen on '
          f'validation): {pct(summary["reference_test_accuracy"])}; paired '
          f'gain ' + ('-' if gain is None else f'{100 * gain:+.2f}')
          + ' points (same inits)')
  plots = ['schedules.png', 'validation.png'] + [
      name for name in ('sign_agreement.png',)
      if os.path.exists(os.path.join(workdir, name))]
  print(f'  outputs in {os.path.abspath(workdir)}: summary.json, '
        f'metrics.csv, {", ".join(plots)}, tensorboard/')
