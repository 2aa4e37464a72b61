r"""FDS hyperparameter optimisation from the command line.

    python -m launch.fds                      # larger MNIST-1D MLP, ~1 min on 2 CPU cores
    python -m launch.fds --config digits_mlp --config.outer_steps=5
    python -m launch.fds --config cifar10_wrn16_1 \
        --config.data_dir=~/tensorflow_datasets
    python -m launch.fds --workdir workdir/run1 --resume    # continue a killed run
    hypergrad-fds --config digits_mlp         # the same script, pip-installed

``--config NAME`` picks a task's config by name (the file
``launch/configs/<NAME>.py``, whose docstring gives the command, run time
and expected result; default: ``mnist1d_large_mlp``, MNIST-1D generated
larger); a path to a config file works too (``--config
launch/configs/digits_mlp.py``, or a copy of one edited).
``--config.<field>=value`` overrides any of its fields (see
``launch/train.py``). A pip install runs the same script as
``hypergrad-fds``, with the same names.

A workdir holding a run is never overwritten: ``--resume`` continues it,
``--overwrite`` starts it over. It is locked while a run uses it.

A bad flag, config field or value, workdir or checkpoint stops the job
before any compute with one line, ``error: ...``, the last it prints, and
exit status 1.

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

import importlib.util
import json
import logging
import os
import re
import sys
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

try:
  from . import configs as configs_lib
except ImportError:  # run as a script, not as a package module
  import configs as configs_lib  # type: ignore

__doc__ += f"""
Task configs (``--config NAME``): {', '.join(configs_lib.NAMES)}.
"""

_DEFAULT_CONFIG = configs_lib.path('mnist1d_large_mlp')


def _config_error(e: Exception, value: str) -> app.UsageError:
  """The error of ``--config value``, which failed to load with ``e``."""
  known = (f'a task config is named by one of {", ".join(configs_lib.NAMES)}'
           ', or a file')
  file = value.split(':', 1)[0]
  if not os.path.exists(file):
    return app.UsageError(f'--config {file}: No such file or directory, and '
                          f'no task config of that name ({known}).')
  return app.UsageError(f'--config {file}: {e} ({known})')


def _error_line(message) -> str:
  """``error: message`` on one line (ml_collections' messages span several)."""
  return 'error: ' + ' '.join(str(message).split())


def _load_config(value: str):
  """The config of ``--config value`` (a file, ``:ARGS`` to ``get_config``).

  Loaded as config_flags loads it, for the message of a flag it refused.
  """
  file, *args = value.split(':', 1)
  spec = importlib.util.spec_from_file_location('_fds_config', file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*args)


def _override_error(argv: list[str], e: Exception) -> str:
  """What is wrong with ``argv``'s ``--config.<field>`` flags, given ``e``."""
  value = _DEFAULT_CONFIG
  fields = []
  for i, arg in enumerate(argv[1:], 1):
    if arg == '--':
      break
    if re.match(r'--?config=', arg):
      value = arg.split('=', 1)[1]
    elif re.match(r'--?config$', arg) and i + 1 < len(argv):
      value = argv[i + 1]
    elif re.match(r'--?(no)?config\.', arg):
      fields.append(arg.split('=', 1)[0].split('.', 1)[1])
  value = configs_lib.resolve(value)
  try:
    config = _load_config(value)
    for field in fields:
      error = configs_lib.field_error(config, field,
                                      configs_lib.name_of(value))
      if error:
        return error
  except Exception as load_error:  # pylint: disable=broad-except
    return str(_config_error(load_error, value))
  return f'--config: {type(e).__name__}: {e}'


# Without --config, config_flags loads the default config and applies the
# --config.<field> flags here, at its definition: an unknown field stops the
# job here, with its error line.
try:
  _CONFIG = config_flags.DEFINE_config_file(
      'config', _DEFAULT_CONFIG,
      f'A task config\'s name ({", ".join(configs_lib.NAMES)}) or a config '
      'file (default: mnist1d_large_mlp, MNIST-1D generated larger).',
      lock_config=True)
except Exception as e:  # pylint: disable=broad-except
  raise SystemExit(_error_line(_override_error(sys.argv, e))) from None

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
    value = config_flags.get_config_filename(flags.FLAGS['config'])
    raise _config_error(e, value) from None


def main(argv):
  try:
    _main_checked(argv)
  except app.UsageError as e:
    # One line, not absl's usage text (the module docstring and every flag)
    # before it.
    raise SystemExit(_error_line(e)) from None


def _main_checked(argv):
  """``main``, a bad flag raising ``app.UsageError``."""
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
      e = SystemExit(_error_line(e))
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
    train.print_summary(summary, workdir)
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


_HELP = ('-h', '-?', '-help', '--help', '--helpshort', '--helpfull')


def _with_config_paths(argv: list[str]) -> list[str]:
  """``argv`` with a config's name after ``--config`` as its file."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith('--config='):
      out[i] = '--config=' + configs_lib.resolve(arg[len('--config='):])
    elif arg == '--config' and i + 1 < len(out):
      out[i + 1] = configs_lib.resolve(out[i + 1])
  return out


def _print_help(full: bool) -> None:
  """This docstring and the flags; absl's own ``--help`` exits 1."""
  print(__doc__)
  if full:
    print(flags.FLAGS.get_help())
  else:
    # Keyed by the module's name, or by sys.argv[0] when run as __main__.
    module = flags.FLAGS.find_module_defining_flag('workdir')
    print(flags.FLAGS.module_help(module))


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing, a bad flag or config field one ``error:`` line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    message = f'{e} (--help lists the flags)'
  except Exception as e:  # pylint: disable=broad-except
    # config_flags lets a ConfigDict's error through: an unknown field's is
    # an AttributeError or a KeyError naming only its last part.
    message = _override_error(argv, e)
  raise SystemExit(_error_line(message))


def run(argv: list[str] | None = None):
  """Console-script entry point (``hypergrad-fds``)."""
  argv = sys.argv if argv is None else argv
  asked = [a for a in argv[1:] if a.split('=')[0] in _HELP]
  if asked:
    _print_help(full=any(a.startswith('--helpfull') for a in asked))
    sys.exit(0)
  app.run(main, argv=_with_config_paths(argv), flags_parser=_parse_flags)


if __name__ == '__main__':
  run()
