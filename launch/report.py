"""The launch job's result: retrains, reference schedules, summary and plots.

After the search, :func:`summarize` retrains the best evaluated schedule
and the task's default from the same initialisations (:func:`retrain`),
scores the strongest reference schedule (:func:`reference`), draws the
run's plots (:func:`plot`) and writes ``summary.json``;
:func:`print_summary` prints it for ``launch/fds.py``. The summary's fields
are described in ``launch/train.py``'s module docstring.
"""

from __future__ import annotations

import json
import math
import os

from absl import logging
import numpy as np

from hypergrad.experiments import distributed as dist_lib
from hypergrad.experiments import fds as fds_lib
from hypergrad.experiments import plotting
from hypergrad.experiments import references
from hypergrad.experiments import workdir as workdir_lib


class RetrainDivergedError(RuntimeError):
  """Retraining with the learned schedule diverged."""


def retrain(task, hparams, steps: int, seeds) -> dict:
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


def reference(task, steps: int, seeds, init_seed: int, default) -> dict:
  """The strongest reference schedule, chosen on validation, and its gain.

  The references of the HPO table (``hypergrad.experiments.references``:
  the default, warm-up + cosine at the usual lr, its peak lr the best of a
  small grid) are scored by the validation objective FDS descends, trained
  from ``init_seed`` on the default split (as the table's black-box trials
  are); the lowest is retrained from ``seeds`` (the default already was).
  Summary fields of their own: the existing ones are unchanged.
  """
  ref = references.strongest_reference(
      task, steps, references.validation_loss(task, steps, init_seed))
  name = ref['strongest']
  retrained = default if name == 'default' else retrain(
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


def plot(config, records, workdir, best, default_val_accuracy):
  """The run's plots: schedules, validation and the population's signs."""
  path = os.path.join(workdir, 'schedules.png')
  with workdir_lib.writing(path):
    plotting.plot_schedules(records, config.horizon, path, final=best,
                            title=f'FDS on {config.task}')
  path = os.path.join(workdir, 'validation.png')
  with workdir_lib.writing(path):
    plotting.plot_validation(records, path, baseline=default_val_accuracy,
                             title=f'FDS on {config.task}')
  if config.population > 1:
    path = os.path.join(workdir, 'sign_agreement.png')
    with workdir_lib.writing(path):
      plotting.plot_sign_agreement(
          records, path, threshold=config.min_agreement or None,
          title=f'FDS on {config.task}: population of {config.population}')


def summarize(config, kinds, task, state, records, workdir, elapsed) -> dict:
  """Retrains, tests, plots and writes ``summary.json`` (process 0).

  Args:
    config: the run's config.
    kinds: the hyperparameters it learned.
    task: its task.
    state: the outer state the search ended with.
    records: the records of every outer step.
    workdir: the output folder.
    elapsed: ``elapsed()`` is the run's wall time so far, in seconds.

  Returns:
    The summary.

  Raises:
    RetrainDivergedError: retraining with the learned schedule diverged (the
      summary is written first, with no test accuracy).
  """
  best = _to_list(state.best_hparams)
  if state.best_step <= 0:
    logging.warning('no outer step improved on the initial schedule '
                    '(validation loss); reporting the initial schedule.')
  retrain_steps = config.retrain_steps or config.horizon
  seeds = [fds_lib.outer_seed(config.seed, 500 + i)
           for i in range(config.get('retrain_inits', 0) or 3)]
  cast = lambda h: {k: np.asarray(v, task.dtype) for k, v in h.items()}
  learned = retrain(task, cast(state.best_hparams), retrain_steps, seeds)
  default = retrain(task, task.default_hparams(), retrain_steps, seeds)

  primary = dist_lib.is_primary()
  if primary:
    plot(config, records, workdir, best, default['val_accuracy'])
  ref = reference(task, retrain_steps, seeds,
                  fds_lib.outer_seed(config.seed, 0), default)
  ref['paired_gain_over_reference'] = (
      None if learned['diverged'] or ref['reference_test_accuracy'] is None
      else learned['test_accuracy'] - ref['reference_test_accuracy'])
  summary = {
      **_search_fields(config, kinds, task, state, records),
      **_test_fields(task, learned, default, seeds),
      # Hypergradient unrolls plus the final retrains, in inner steps.
      'inner_steps': (sum(r['inner_steps'] for r in records)
                      + 2 * len(seeds) * retrain_steps),
      'search_seconds': sum(r['seconds'] for r in records),
      'wall_time': elapsed(),
      **ref,
  }
  if primary:
    path = os.path.join(workdir, 'summary.json')
    with workdir_lib.writing(path), open(path, 'w') as f:
      json.dump(summary, f, indent=2)
  if summary['retrain_diverged']:
    raise RetrainDivergedError(
        f'retraining with the learned schedule {best} diverged (non-finite '
        f'test loss); {workdir}/summary.json records no test accuracy.')
  return summary


def _to_list(hparams) -> dict:
  return {k: np.asarray(v).tolist() for k, v in hparams.items()}


def _search_fields(config, kinds, task, state, records) -> dict:
  """The summary's fields on the search: its config, end and schedules."""
  return {
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
      'learned_schedule': _to_list(state.best_hparams),
      'learned_schedule_outer_step': state.best_step,
      'learned_schedule_val_loss': state.best_loss,
      'improved_on_initial': state.best_step > 0,
      'last_schedule': _to_list(state.hparams),
      'fixed_hyperparameters': {k: v for k, v in task.fixed_hparams.items()
                                if k not in kinds},
  }


def _test_fields(task, learned, default, seeds) -> dict:
  """The summary's fields on the paired retrains: learned and default."""
  gain = (None if learned['diverged'] or default['diverged'] else
          learned['test_accuracy'] - default['test_accuracy'])
  return {
      'test_accuracy': learned['test_accuracy'],
      'test_loss': learned['test_loss'],
      'test_accuracies': learned['test_accuracies'],
      'retrain_diverged': learned['diverged'],
      'default_schedule': dict(task.spec.default_hparams),
      'default_test_accuracy': default['test_accuracy'],
      'default_test_accuracies': default['test_accuracies'],
      'paired_gain': gain,
      'retrain_seeds': seeds,
  }


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
