"""Prints the path of a task's config file: ``python -m launch.configs digits_mlp``.

``--config`` takes the name itself (``hypergrad-fds --config digits_mlp``);
the path is for editing a copy.
"""

import sys

from . import NAMES
from . import path

if len(sys.argv) != 2 or sys.argv[1] not in NAMES:
  sys.exit(f'usage: python -m {__package__} NAME; NAME in {", ".join(NAMES)}')
print(path(sys.argv[1]))
