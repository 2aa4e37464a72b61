"""Ownership of a run's output folder: one process at a time, nothing overwritten.

:class:`WorkdirLock` holds an exclusive ``flock`` on ``<workdir>/.lock`` for
the life of a run. The kernel releases it when the process dies, however it
dies (a SIGKILL included), so a lock is never stale; a second process is
refused at once with the holder's process id. :func:`prepare` decides what a
run may do with a folder that already holds outputs: continue it (resume),
start over (overwrite, which removes the old outputs first), or neither.

A run of several processes is locked by its process 0 alone; the lock file
also holds a random token of the run (:attr:`WorkdirLock.token`), which the
other processes read back (:func:`lock_token`) to check that they share
process 0's workdir (the same path on a shared file system) and its run.

:func:`writing` makes an ``OSError`` raised while writing an output name the
file: a full disk's (``ENOSPC``, raised by ``write`` or ``close``) names none.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import secrets
import shutil
from typing import Iterator

# Everything a run writes; a folder holding any of these holds a run.
OUTPUTS = ('config.json', 'metrics.csv', 'summary.json', 'schedules.png',
           'validation.png', 'sign_agreement.png', 'checkpoints',
           'tensorboard')
LOCK_NAME = '.lock'


class WorkdirError(RuntimeError):
  """The workdir cannot be used as asked (busy, unwritable, holds a run)."""


class WorkdirLock:
  """An exclusive lock on a workdir, released when the process ends.

  Example:
    >>> with WorkdirLock('/tmp/run'):
    ...   pass  # write outputs
  """

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self._fd = None
    self._created = False
    self.token = None

  def acquire(self) -> WorkdirLock:
    _check_not_a_file(self.workdir)
    self._created = not os.path.exists(self.workdir)
    try:
      os.makedirs(self.workdir, exist_ok=True)
      fd = os.open(os.path.join(self.workdir, LOCK_NAME),
                   os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
      raise WorkdirError(f'cannot use workdir {self.workdir}: '
                         f'{e.strerror or e}.') from None
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      holder = (os.read(fd, 64).decode(errors='replace').strip()
                .split('\n')[0] or 'unknown')
      os.close(fd)
      if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
        raise WorkdirError(
            f'workdir {self.workdir} is in use by another run (process '
            f'{holder}); wait for it to finish or choose another '
            '--workdir.') from None
      raise WorkdirError(f'cannot lock workdir {self.workdir}: '
                         f'{e.strerror or e}.') from None
    self.token = secrets.token_hex(16)
    os.ftruncate(fd, 0)
    os.write(fd, f'{os.getpid()}\n{self.token}\n'.encode())
    self._fd = fd
    return self

  def release(self) -> None:
    """Unlocks; a folder this lock created and nothing else used goes too."""
    if self._fd is None:
      return
    lock_path = os.path.join(self.workdir, LOCK_NAME)
    if self._created and os.listdir(self.workdir) == [LOCK_NAME]:
      os.remove(lock_path)
      os.rmdir(self.workdir)
    fcntl.flock(self._fd, fcntl.LOCK_UN)
    os.close(self._fd)
    self._fd = None
    self.token = None

  def __enter__(self):
    return self.acquire()

  def __exit__(self, *exc):
    self.release()


def _check_not_a_file(workdir: str) -> None:
  """Refuses a workdir that is, or lies inside, a file.

  ``os.makedirs`` would only say "File exists" or "Not a directory".
  """
  path = workdir
  while not os.path.isdir(path):
    if os.path.lexists(path):
      where = '' if path == workdir else f': {path}'
      raise WorkdirError(f'--workdir {workdir}{where} is a file, not a '
                         'directory.')
    parent = os.path.dirname(path)
    if parent == path:
      return
    path = parent


@contextlib.contextmanager
def writing(path: str, what: str = '') -> Iterator[None]:
  """Names ``path`` in an ``OSError`` raised inside, where it names no file.

  A full disk (``ENOSPC``) or a failed device (``EIO``) is reported by the
  ``write`` or ``close`` of a file, whose error names no path: the error
  raised instead reads ``cannot write [what ]PATH: No space left on
  device``, with the same ``errno``. An error that names its file already
  (``open`` refused, say) goes through unchanged.

  Args:
    path: the file or folder being written.
    what: what it is, before the path in the message (e.g. ``checkpoint``).
  """
  try:
    yield
  except OSError as e:
    if e.filename is not None:
      raise
    error = OSError(f'cannot write {what + " " if what else ""}'
                    f'{os.path.abspath(path)}: {e.strerror or e}')
    error.errno = e.errno
    raise error from e


def lock_token(workdir: str) -> str | None:
  """The token of the run holding ``workdir``'s lock file (None: none seen).

  Read without locking: the other processes of a multi-process run call it
  while their process 0 holds the lock.
  """
  try:
    with open(os.path.join(workdir, LOCK_NAME)) as f:
      lines = f.read().split('\n')
  except OSError:
    return None
  return (lines[1].strip() or None) if len(lines) > 1 else None


def existing_outputs(workdir: str) -> list[str]:
  """The run outputs present in ``workdir`` (empty if none or no folder)."""
  return [n for n in OUTPUTS if os.path.exists(os.path.join(workdir, n))]


def prepare(workdir: str, *, resume: bool, overwrite: bool) -> None:
  """Checks what a new run may do with ``workdir``; clears it for overwrite.

  Call with the workdir locked.

  Raises:
    WorkdirError: ``resume`` and ``overwrite`` together; ``resume`` where no
      run was started (no checkpoint, no config.json); a folder holding a
      run without either flag.
  """
  if resume and overwrite:
    raise WorkdirError('--resume and --overwrite exclude each other.')
  found = existing_outputs(workdir)
  if resume:
    # A run killed before its first checkpoint left its config.json: it is
    # resumed from its start. An empty or mistyped folder holds no run.
    checkpointed = 'checkpoints' in found and any(
        n.isdigit() for n in os.listdir(os.path.join(workdir, 'checkpoints')))
    if not checkpointed and 'summary.json' in found:
      raise WorkdirError(
          f'--resume: {os.path.abspath(workdir)} holds a finished run whose '
          'checkpoints are gone: nothing to resume; --overwrite starts over.')
    if not checkpointed and 'config.json' not in found:
      raise WorkdirError(
          f'--resume: {os.path.abspath(workdir)} holds no checkpointed run '
          'to resume (check the --workdir path).')
    return
  if found and not overwrite:
    raise WorkdirError(
        f'{os.path.abspath(workdir)} already holds a run ({", ".join(found)});'
        ' pass --resume to continue it, --overwrite to start over, or choose '
        'another --workdir.')
  for name in found:
    path = os.path.join(workdir, name)
    if os.path.isdir(path):
      shutil.rmtree(path)
    else:
      os.remove(path)
