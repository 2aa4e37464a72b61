"""Prints the path of a task's config file: ``python -m launch.configs digits_mlp``.

For pip users, whose configs live in the installed package:
``hypergrad-fds --config=$(python -m hypergrad_launch.configs digits_mlp)``.
"""

import os
import sys

_DIR = os.path.dirname(os.path.abspath(__file__))
_NAMES = sorted(f[:-3] for f in os.listdir(_DIR)
                if f.endswith('.py') and not f.startswith('_') and f != 'base.py')

if len(sys.argv) != 2 or sys.argv[1] not in _NAMES:
  sys.exit(f'usage: python -m {__package__} NAME; NAME in {", ".join(_NAMES)}')
print(os.path.join(_DIR, sys.argv[1] + '.py'))
