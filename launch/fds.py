r"""FDS hyperparameter optimisation from the command line.

    python -m launch.fds                                   # MNIST-1D MLP, ~4 min on 2 CPU cores
    python -m launch.fds --task digits_mlp --outer_steps 5
    python -m launch.fds --task cifar10_wrn16_1 --data_dir ~/tensorflow_datasets
    python -m launch.fds --workdir workdir/run1 --resume    # continue a killed run

Each task's config lives in ``launch/configs/<task>.py`` (its docstring gives
the command, run time and expected result). ``--config FILE`` names the
config file, and with it ``--config.<field>=value`` overrides any field:

    python -m launch.fds --config launch/configs/mnist1d_mlp.py \
        --config.val_fraction=0.1 --config.step_sizes.lr=0.02

(``--config.<field>`` is only defined once ``--config`` is given.) The flags
below override the config when given.
"""

from __future__ import annotations

import json
import logging
import os
import time

from absl import app
from absl import flags
from ml_collections import config_flags

_CONFIG_DIR = os.path.join(os.path.dirname(__file__), 'configs')

_TASK = flags.DEFINE_string('task', 'mnist1d_mlp',
                            'Task name; its config is configs/<task>.py.')
_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file (default: configs/<task>.py).',
    lock_config=False)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Output folder (default: workdir/<task>-<date-time>, new '
    'for every run; give it explicitly to --resume).')
_DATA_DIR = flags.DEFINE_string('data_dir', None,
                                'Prepared datasets (tfds data_dir or IDX '
                                'folder); embedded datasets need none.')
_HORIZON = flags.DEFINE_integer('horizon', None,
                                'Inner steps per hypergradient.')
_INTERVALS = flags.DEFINE_string(
    'intervals', None, 'Intervals per kind, e.g. lr=7,momentum=1.')
_HYPERPARAMS = flags.DEFINE_string(
    'hyperparams', None, 'Kinds to learn, e.g. lr,momentum,weight_decay.')
_OUTER_STEPS = flags.DEFINE_integer('outer_steps', None,
                                    'Maximum outer steps.')
_ESTIMATOR = flags.DEFINE_string('estimator', None, 'forward or reverse.')
_SEED = flags.DEFINE_integer('seed', None, 'Seed of splits and inits.')
_RESUME = flags.DEFINE_bool('resume', False,
                            'Continue from the last checkpoint in --workdir.')
_MESH = flags.DEFINE_string(
    'mesh', None, "Data parallelism: 'data=N' splits every minibatch over N "
    'devices (replicated parameters and tangents). Default: one device.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'Multi-host: host:port of process 0; with '
    '--num_processes and --process_id calls jax.distributed.initialize.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Multi-host: number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'Multi-host: this process\'s index.')


def _parse_intervals(text: str) -> dict[str, int]:
  out = {}
  for item in text.split(','):
    if not item.strip():
      continue
    if '=' not in item:
      raise app.UsageError(f'--intervals expects kind=n pairs, got {item!r}.')
    kind, n = item.split('=', 1)
    if kind.strip() in out:
      raise app.UsageError(f'--intervals gives {kind.strip()} twice.')
    try:
      out[kind.strip()] = int(n)
    except ValueError:
      raise app.UsageError(
          f'--intervals: {kind.strip()}={n!r} is not an integer.') from None
  return out


def build_config():
  """The config from --config or configs/<task>.py, with flag overrides."""
  # pylint: disable=g-import-not-at-top
  from hypergrad._src import tasks as tasks_lib
  from launch.configs import base
  config = _CONFIG.value
  task = _TASK.value
  if config is not None:
    try:
      config.get('task')
    except Exception as e:  # pylint: disable=broad-except
      # config_flags defers a bad --config file's error to the first access.
      raise app.UsageError(f'--config: {e}') from None
  if config is None:
    if task not in tasks_lib.TASKS:
      raise app.UsageError(f'unknown --task {task!r}; known tasks: '
                           f'{", ".join(sorted(tasks_lib.TASKS))}.')
    path = os.path.join(_CONFIG_DIR, f'{task}.py')
    if os.path.exists(path):
      import importlib
      config = importlib.import_module(f'launch.configs.{task}').get_config()
    else:
      config = base.get_base_config(task)
  elif flags.FLAGS['task'].present:
    config.task = task
  if _DATA_DIR.value is not None:
    config.data_dir = _DATA_DIR.value
  if _MESH.value is not None:
    config.mesh = _MESH.value
  for flag, field in ((_HORIZON, 'horizon'), (_HYPERPARAMS, 'hyperparams'),
                      (_OUTER_STEPS, 'outer_steps'), (_ESTIMATOR, 'estimator'),
                      (_SEED, 'seed')):
    if flag.value is not None:
      config[field] = flag.value
  if _INTERVALS.value is not None:
    learned = [k.strip() for k in str(config.hyperparams).split(',')]
    for kind, n in _parse_intervals(_INTERVALS.value).items():
      if kind not in ('lr', 'momentum', 'weight_decay'):
        raise app.UsageError(f'--intervals: unknown hyperparameter {kind!r}.')
      if kind not in learned:
        # It would be silently ignored: the kind keeps the task's value.
        raise app.UsageError(
            f'--intervals gives {kind}={n}, but {kind} is not learned '
            f'(--hyperparams {",".join(learned)}).')
      config.intervals[kind] = n
  return config


class _QuietOrbax(logging.Filter):
  """orbax logs every file rename at INFO; keep its warnings only."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or '/orbax/' not in (
        record.pathname or '')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for handler in logging.getLogger().handlers + logging.getLogger(
      'absl').handlers:
    handler.addFilter(_QuietOrbax())
  if _COORDINATOR.value or _NUM_PROCESSES.value or _PROCESS_ID.value:
    import jax  # pylint: disable=g-import-not-at-top
    # Before anything touches a device: every process then sees the global
    # device list, and a 'data=N' mesh may span hosts.
    jax.distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                               _PROCESS_ID.value)
  # pylint: disable=g-import-not-at-top
  from launch import train
  config = build_config()
  try:
    train.validate_config(config)
  except train.ConfigError as e:
    raise app.UsageError(str(e)) from None
  if _RESUME.value and not _WORKDIR.value:
    raise app.UsageError('--resume needs the --workdir of the run to continue.')
  workdir = _WORKDIR.value or os.path.join(
      'workdir', f'{config.task}-{time.strftime("%Y%m%d-%H%M%S")}')
  # pylint: disable=g-import-not-at-top
  from hypergrad._src import checkpoint as ckpt_lib
  from hypergrad._src import data as data_lib
  from hypergrad._src import search
  try:
    summary = train.train_and_evaluate(config, workdir, resume=_RESUME.value)
  except train.ConfigError as e:
    raise app.UsageError(str(e)) from None
  except (ckpt_lib.CheckpointError, search.DivergenceError,
          data_lib.DatasetNotFoundError, ValueError) as e:
    # Known failure modes get their message, not a traceback.
    raise SystemExit(f'error: {e}') from None
  sched = summary['learned_schedule']
  print(f'\nFDS on {summary["task"]}: {summary["outer_steps"]} outer steps '
        f'({"converged" if summary["converged"] else "not converged"}), '
        f'{summary["wall_time"]:.0f} s')
  for kind, values in sched.items():
    print(f'  learned {kind:<13}', ' '.join(f'{v:.4g}' for v in
                                             json.loads(json.dumps(values))))
  acc = summary['test_accuracy']
  default = summary['default_test_accuracy']
  fmt = lambda a: 'diverged' if a is None else f'{100 * a:.2f}%'
  print(f'  test accuracy, learned schedule: {fmt(acc)}')
  print(f'  test accuracy, default schedule {summary["default_schedule"]}: '
        f'{fmt(default)}')
  print(f'  outputs in {os.path.abspath(workdir)}: summary.json, '
        'metrics.csv, schedules.png, validation.png, tensorboard/')
  if summary['retrain_diverged']:
    raise SystemExit('retraining with the learned schedule diverged')


if __name__ == '__main__':
  app.run(main)
