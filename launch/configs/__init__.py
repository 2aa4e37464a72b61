"""One FDS config per task, found by name: ``launch/configs/<task>.py``.

``hypergrad-fds --config digits_mlp`` (or ``python -m launch.fds --config
digits_mlp``) runs the config of that name, wherever the package is
installed; a path to a config file works too.
"""

from __future__ import annotations

import os

DIR = os.path.dirname(os.path.abspath(__file__))
# Every task config: the modules here but the shared base.
NAMES = tuple(sorted(f[:-3] for f in os.listdir(DIR)
                     if f.endswith('.py') and not f.startswith('_')
                     and f != 'base.py'))


def path(name: str) -> str:
  """The file of the task config ``name`` (one of :data:`NAMES`)."""
  if name not in NAMES:
    raise ValueError(f'no task config {name!r}; known: {", ".join(NAMES)}.')
  return os.path.join(DIR, name + '.py')


def resolve(value: str) -> str:
  """A ``--config`` value with a config's name replaced by its file.

  ``NAME`` or ``NAME:ARGS`` (``config_flags``' argument syntax) become the
  path of that config; a path, or anything else, is left for
  ``config_flags`` to load or refuse.
  """
  name, colon, rest = value.partition(':')
  if name in NAMES and not os.path.exists(value):
    return path(name) + colon + rest
  return value
