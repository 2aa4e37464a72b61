"""``python -m benchmarks.hpo``: the same as ``python -m benchmarks.hpo_table``."""

from absl import app
from absl import flags

from benchmarks.hpo import cli

# --helpshort lists the table's flags, defined in cli.
flags.adopt_module_key_flags(cli)

if __name__ == '__main__':
  app.run(cli.main)
