r"""FDS hyperparameter optimisation from the command line.

    python -m launch.fds                      # larger MNIST-1D MLP, ~50 s on 2 CPU cores
    python -m launch.fds --config launch/configs/digits_mlp.py --config.outer_steps=5
    python -m launch.fds --config launch/configs/cifar10_wrn16_1.py \
        --config.data_dir=~/tensorflow_datasets
    python -m launch.fds --workdir workdir/run1 --resume    # continue a killed run

``--config FILE`` names a task's config (``launch/configs/<task>.py``; its
docstring gives the command, run time and expected result; default:
``mnist1d_large_mlp.py``, MNIST-1D generated larger), and
``--config.<field>=value`` overrides any of its fields (see
``launch/train.py``). A pip install runs the same script as ``hypergrad-fds``
and takes ``--config`` paths of the installed package's configs
(``hypergrad-fds --config=$(python -m hypergrad_launch.configs digits_mlp)``).

A workdir holding a run is never overwritten: ``--resume`` continues it,
``--overwrite`` starts it over. It is locked while a run uses it.

Compiled programs are kept in a persistent cache (``--compilation_cache_dir``,
default ``$HYPERGRAD_CACHE_DIR`` or ``~/.cache/hypergrad/jax``), so a rerun or
a ``--resume`` of the same config does not compile again.

Several processes (hosts, or GPUs of a host) run one search together: start
the same command in every process with ``--coordinator_address``,
``--num_processes`` and ``--process_id`` (or ``--distributed`` alone under
SLURM, Open MPI or on a Cloud TPU VM, which JAX detects) and a
``--config.mesh=data=N`` over all their devices; see WORKSPACE.md, "Several
devices, several hosts". A process that dies or hangs stops the others within
``--heartbeat_timeout`` seconds, with exit status 1 (or 134 where JAX aborts
them), and ``--resume`` continues the run.
"""

from __future__ import annotations

import json
import logging
import os
import time

from hypergrad._src import extras

# A pip install without the launch extra gets the line to run, not a trace.
try:
  extras.require('launch', 'absl', 'ml_collections', 'flax', 'orbax',
                 'matplotlib', 'tqdm')
except ImportError as e:
  raise SystemExit(f'error: {e}') from None

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                           'configs')

_CONFIG = config_flags.DEFINE_config_file(
    'config', os.path.join(_CONFIG_DIR, 'mnist1d_large_mlp.py'),
    'Config file, e.g. launch/configs/digits_mlp.py (default: MNIST-1D '
    'generated larger).',
    lock_config=True)
_WORKDIR = flags.DEFINE_string(
    'workdir', None, 'Output folder (default: workdir/<task>-<date-time>, new '
    'for every run; give it explicitly to --resume).')
_RESUME = flags.DEFINE_bool('resume', False,
                            'Continue the run checkpointed in --workdir.')
_OVERWRITE = flags.DEFINE_bool(
    'overwrite', False, 'Delete the outputs of the run in --workdir and '
    'start over.')
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'Multi-host: host:port of process 0; with '
    '--num_processes and --process_id calls jax.distributed.initialize.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Multi-host: number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None,
                                   'Multi-host: this process\'s index.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Multi-host: call jax.distributed.initialize, '
    'detecting the three flags above from SLURM, Open MPI or a Cloud TPU VM '
    'where they are not given.')
_CACHE_DIR = flags.DEFINE_string(
    'compilation_cache_dir', None, 'Persistent XLA compilation cache, so a '
    'rerun or --resume reads compiled programs back instead of compiling '
    'them again (default: $HYPERGRAD_CACHE_DIR or ~/.cache/hypergrad/jax; '
    '"" turns it off).')
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    'heartbeat_timeout', 60, 'Multi-host: seconds after which a process that '
    'died or hangs counts as lost; the others then stop with an error.',
    lower_bound=1)


class _QuietOrbax(logging.Filter):
  """orbax logs every file rename at INFO; keep its warnings only."""

  def filter(self, record):
    return record.levelno >= logging.WARNING or '/orbax/' not in (
        record.pathname or '')


def _config():
  try:
    config = _CONFIG.value
    config.get('task')
    return config
  except Exception as e:  # pylint: disable=broad-except
    # config_flags defers a bad --config file's error to the first access.
    raise app.UsageError(f'--config: {e}') from None


def _print_summary(summary, workdir):
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
  plots = ['schedules.png', 'validation.png'] + [
      name for name in ('sign_agreement.png',)
      if os.path.exists(os.path.join(workdir, name))]
  print(f'  outputs in {os.path.abspath(workdir)}: summary.json, '
        f'metrics.csv, {", ".join(plots)}, tensorboard/')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  for handler in logging.getLogger().handlers + logging.getLogger(
      'absl').handlers:
    handler.addFilter(_QuietOrbax())
  # pylint: disable=g-import-not-at-top
  from hypergrad.experiments import distributed as dist_lib
  if (_DISTRIBUTED.value or _COORDINATOR.value
      or _NUM_PROCESSES.value is not None or _PROCESS_ID.value is not None):
    # Before anything touches a device: every process then sees the global
    # device list, and a 'data=N' mesh may span hosts.
    dist_lib.initialize(_COORDINATOR.value, _NUM_PROCESSES.value,
                        _PROCESS_ID.value,
                        heartbeat_timeout=_HEARTBEAT_TIMEOUT.value)
  if _CACHE_DIR.value != '':  # pylint: disable=g-explicit-bool-comparison
    from hypergrad.experiments import cache
    cache.enable_compilation_cache(_CACHE_DIR.value)
  if dist_lib.process_count() == 1:
    _main()
    return
  try:
    _main()
  except BaseException as e:  # pylint: disable=broad-except
    if isinstance(e, SystemExit) and e.code in (None, 0):
      raise
    if isinstance(e, app.UsageError):
      e = SystemExit(f'error: {e}')
    # Not through JAX's shutdown barrier: see dist_lib.exit_now.
    dist_lib.exit_now(e)


def _main():
  """The run, once this process knows its peers (if any)."""
  # pylint: disable=g-import-not-at-top
  from hypergrad._src import search
  from hypergrad.experiments import checkpoint as ckpt_lib
  from hypergrad.experiments import data as data_lib
  from hypergrad.experiments import distributed as dist_lib
  try:
    from . import train
  except ImportError:  # run as a script, not as a package module
    import train  # type: ignore
  try:
    config = _checked_config(train)
    error = ''
  except app.UsageError as e:
    error = str(e)
  # A flag only some processes got wrong stops them all, with its message.
  error = dist_lib.first_error('flags', error)
  if error:
    raise dist_lib.fail_together(app.UsageError(error))
  workdir = _WORKDIR.value or os.path.join(
      'workdir', f'{config.task}-{time.strftime("%Y%m%d-%H%M%S")}')
  try:
    summary = train.train_and_evaluate(config, workdir, resume=_RESUME.value,
                                       overwrite=_OVERWRITE.value)
  except (train.ConfigError, ckpt_lib.CheckpointError,
          search.DivergenceError, data_lib.DatasetNotFoundError,
          train.RetrainDivergedError, dist_lib.ProcessesDisagreeError,
          ValueError, OSError) as e:
    # Known failure modes get their message, not a traceback.
    raise SystemExit(f'error: {e}') from None
  if dist_lib.is_primary():
    _print_summary(summary, workdir)
  else:
    # The outputs are process 0's; this line shows the schedule agrees.
    print(f'{dist_lib.label()}: done; learned schedule '
          f'{json.dumps(summary["learned_schedule"])}; outputs written by '
          f'process 0 in {os.path.abspath(workdir)}')


def _checked_config(train):
  """The config, once every flag was checked; else an ``app.UsageError``."""
  # pylint: disable-next=g-import-not-at-top
  from hypergrad.experiments import distributed as dist_lib
  config = _config()
  try:
    train.validate_config(config)
  except train.ConfigError as e:
    raise app.UsageError(str(e)) from None
  if (_RESUME.value or _OVERWRITE.value) and not _WORKDIR.value:
    raise app.UsageError('--resume and --overwrite need the --workdir of the '
                         'run.')
  if dist_lib.process_count() > 1 and not _WORKDIR.value:
    raise app.UsageError('a run of several processes needs --workdir: the '
                         'same folder for every process, on a file system '
                         'they share.')
  return config


def run():
  """Console-script entry point (``hypergrad-fds``)."""
  app.run(main)


if __name__ == '__main__':
  run()
