"""The HPO table's entry point; the code is in :mod:`benchmarks.hpo`.

``python -m benchmarks.hpo_table --help`` lists the flags; the package's
docstring describes the methods, the budget and the evaluation.
"""

from absl import app
from absl import flags

from benchmarks import hpo
from benchmarks.hpo import cli

__doc__ = hpo.__doc__  # what --help prints
# --helpshort lists the table's flags, defined in cli.
flags.adopt_module_key_flags(cli)

if __name__ == '__main__':
  app.run(cli.main)
