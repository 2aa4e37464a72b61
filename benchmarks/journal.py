"""A benchmark's finished pieces on disk, so a killed run resumes.

A long table (hours on CPU) is a list of independent pieces: the measured
costs, one search per method and seed, the retrains of one seed. Each is
written here, atomically, the moment it finishes; a rerun of the same
command loads the finished ones and runs only the rest, so a run killed
mid-way loses at most the piece in flight. Several processes may share one
journal (``hpo_table --shard``): a piece is one file, and the few
read-modify-write steps hold a file lock that the system releases if the
holder dies.

The journal is bound to the settings that produced it: opening it with other
settings is refused, naming each that differs, before any compute.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
from typing import Any, Iterator

import numpy as np

_SETTINGS = 'settings'


class SettingsMismatch(ValueError):
  """The journal holds a run made with other settings."""


class Journal:
  """Finished pieces of one run, one JSON file each, under ``path``."""

  def __init__(self, path: str, settings: dict):
    self.path = path
    os.makedirs(path, exist_ok=True)
    settings = json.loads(json.dumps(settings))  # as it reads back
    with self.lock():
      old = self.load(_SETTINGS)
      if old is None:
        self.save(_SETTINGS, settings)
      else:
        differ = [f'{key}={old.get(key)!r} (here {settings.get(key)!r})'
                  for key in sorted(set(old) | set(settings))
                  if old.get(key) != settings.get(key)]
        if differ:
          raise SettingsMismatch(
              f'{path} holds a run with {", ".join(differ)}: rerun with '
              f'its settings to resume it, or delete it to start again.')

  def _file(self, name: str) -> str:
    return os.path.join(self.path, name + '.json')

  def load(self, name: str) -> Any:
    """The piece ``name``, or None if it has not finished."""
    try:
      with open(self._file(name)) as f:
        return json.load(f)
    except FileNotFoundError:
      return None

  def save(self, name: str, value: Any) -> None:
    """Writes ``name`` whole or not at all (a kill leaves no half file)."""
    tmp = self._file(name) + f'.{os.getpid()}.tmp'
    with open(tmp, 'w') as f:
      json.dump(value, f)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, self._file(name))

  @contextlib.contextmanager
  def lock(self, name: str = 'journal', wait: bool = True
           ) -> Iterator[bool]:
    """Holds the lock ``name``.

    Yields False, holding nothing, if ``wait`` is off and another process
    holds it (the caller then leaves that work to it).
    """
    with open(os.path.join(self.path, name + '.lock'), 'w') as f:
      try:
        fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
      except BlockingIOError:
        yield False
        return
      try:
        yield True
      finally:
        fcntl.flock(f, fcntl.LOCK_UN)

  @staticmethod
  def delete(path: str) -> None:
    """Removes the journal at ``path`` (nothing if there is none)."""
    shutil.rmtree(path, ignore_errors=True)


def encode_hparams(h: dict) -> dict:
  """A schedule as JSON: each value's shape and its numbers."""
  return {k: {'shape': list(np.shape(v)),
              'values': np.asarray(v).reshape(-1).tolist()}
          for k, v in h.items()}


def decode_hparams(encoded: dict, dtype) -> dict:
  """:func:`encode_hparams` undone, bit for bit at ``dtype``."""
  return {k: np.asarray(v['values'], dtype).reshape(v['shape'])
          for k, v in encoded.items()}
