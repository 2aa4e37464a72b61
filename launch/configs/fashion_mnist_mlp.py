r"""FDS on Fashion-MNIST (real images, 60k/10k) with an MLP 784-256-128-10, CPU.

Data: Debian's `apt-get install dataset-fashion-mnist` (found automatically),
or `--config.data_dir=DIR` pointing at a folder of IDX files or a prepared
tensorflow-datasets data_dir.

    python -m launch.fds --config fashion_mnist_mlp --workdir workdir/fmnist_mlp

Run time: ~2-3 min on 2 CPU cores (1,000-step horizon, batch 128, a forward
hypergradient ~9 s). Search: the FDS paper's setting, every value from 0 with
outer steps lr 0.1, momentum 0.1, wd 3e-4. Measured in
``benchmarks/results/hpo_fashion_mnist_mlp.md`` (5 HPO seeds, paired with the
default schedule on the same 3 retrain initialisations), this setting learns
schedules reaching 87.42 +- 0.08% test accuracy against the default's
84.99 +- 0.47% (gain +2.43 points, 95% CI [+1.71, +3.16], 10 forward-mode
outer steps as this config runs; the table's row, now run to convergence by
``hypergrad.auto()``: +2.45 [+1.69, +3.21]); starting from the default
schedule with smaller steps gained only +1.00 [+0.22, +1.78].
"""

try:
  from launch.configs import base
except ImportError:  # installed as hypergrad_launch
  from hypergrad_launch.configs import base


def get_config():
  return base.get_base_config('fashion_mnist_mlp')
