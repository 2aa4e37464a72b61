"""One FDS config per task, found by name: ``launch/configs/<task>.py``.

``hypergrad-fds --config digits_mlp`` (or ``python -m launch.fds --config
digits_mlp``) runs the config of that name, wherever the package is
installed; a path to a config file works too.
"""

from __future__ import annotations

import difflib
import os
import re

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


def name_of(value: str) -> str:
  """The name of the config a ``--config`` value loads (else the value)."""
  file = value.split(':', 1)[0]
  base = os.path.basename(file)
  if (os.path.dirname(os.path.abspath(file)) == DIR and base.endswith('.py')
      and base[:-3] in NAMES):
    return base[:-3]
  return value


def _paths(config, prefix: str = '') -> list[str]:
  """Every field of ``config``, nested ones as ``group.field``."""
  out = []
  for key in config.keys():
    out.append(prefix + key)
    if hasattr(config[key], 'keys'):
      out += _paths(config[key], f'{prefix}{key}.')
  return out


def _suggestion(field: str, config, group: str, node) -> str:
  """`` did you mean --config.X?``: the field most like ``field``, if any.

  A field of the same words in any order (``lr_intervals``:
  ``intervals.lr``), else one of ``group``'s (``node``'s) fields spelled
  like the unknown last part.
  """
  words = lambda path: sorted(re.split(r'[._]', path))
  close = [p for p in _paths(config) if words(p) == words(field)]
  if not close:
    close = [f'{group}.{k}' if group else k for k in difflib.get_close_matches(
        field.rsplit('.', 1)[-1], list(node.keys()), n=1, cutoff=0.7)]
  return f' did you mean --config.{close[0]}?' if close else ''


def field_error(config, field: str, name: str) -> str | None:
  """Why ``--config.<field>`` names no field of ``config``; None if it does.

  Args:
    config: the loaded config (a ``ConfigDict``).
    field: the override's dotted path, e.g. ``intervals.lr``.
    name: the config's name, for the message.
  """
  node, parts = config, field.split('.')
  for i, part in enumerate(parts):
    group = '.'.join(parts[:i])
    if not hasattr(node, 'keys'):
      return (f'--config.{field}: {group} is a value of config {name}, not '
              'a group of fields.')
    if part not in node.keys():
      fields = ', '.join(sorted(node.keys()))
      return (f'--config.{field}: no such field in config {name};'
              f'{_suggestion(".".join(parts[:i + 1]), config, group, node)} '
              f'{"fields of " + group if group else "fields"}: {fields}.')
    node = node[part]
  return None
