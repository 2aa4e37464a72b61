"""The launch job's workdir: claiming it, its config record and checkpoints.

``train_and_evaluate`` claims the workdir (:func:`claim`: locked for the run,
prepared by process 0, agreed on by every process) before any compute, opens
its checkpoints (:func:`open_checkpointer`), continues the run found there
(:func:`restore`, with ``--resume``) and records the config
(:func:`write_config`). The files themselves are
``hypergrad.experiments.workdir`` (lock, prepare) and
``hypergrad.experiments.checkpoint`` (orbax checkpoints).
"""

from __future__ import annotations

import json
import os
from typing import Callable

from absl import logging

from hypergrad.experiments import checkpoint as ckpt_lib
from hypergrad.experiments import distributed as dist_lib
from hypergrad.experiments import workdir as workdir_lib

try:
  from . import validation
except ImportError:  # run as a script, not as a package module
  import validation  # type: ignore

ConfigError = validation.ConfigError

# A fault-injection seam for tests, None in a run: when set, the checkpoints
# report each phase of their writing to it, ``on_checkpoint_write(phase,
# path)`` (``OuterCheckpointer``'s ``on_write``), so a test can kill a run of
# ``launch.fds`` while it writes a checkpoint (tests/test_checkpoint.py).
on_checkpoint_write: Callable[[str, str], None] | None = None


def claim(workdir, resume, overwrite, config_json):
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
    error = _check_same_claim(workdir, resume, overwrite, config_json, lock,
                              error)
  if error:
    lock.release()
    # All processes know it: none waits for another in a collective.
    raise dist_lib.fail_together(ConfigError(error))
  return lock


def _check_same_claim(workdir, resume, overwrite, config_json, lock, error):
  """The first process's refusal, or this one's, for every process."""
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
  return dist_lib.first_error('workdir/check', error)


def open_checkpointer(workdir) -> ckpt_lib.OuterCheckpointer:
  """The checkpoints of the run in ``workdir`` (``workdir/checkpoints``)."""
  return ckpt_lib.OuterCheckpointer(os.path.join(workdir, 'checkpoints'),
                                    on_write=on_checkpoint_write)


def restore(checkpointer, state, workdir, config_json):
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


def write_config(workdir, config_json):
  """Records the run's config in ``workdir/config.json`` (process 0)."""
  if dist_lib.is_primary():
    path = os.path.join(workdir, 'config.json')
    with workdir_lib.writing(path), open(path, 'w') as f:
      f.write(config_json)
