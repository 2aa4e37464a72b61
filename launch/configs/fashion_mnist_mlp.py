r"""FDS on Fashion-MNIST (real images, 60k/10k) with an MLP 784-256-128-10, CPU.

Data: Debian's `apt-get install dataset-fashion-mnist` (found automatically),
or `--config.data_dir=DIR` pointing at a folder of IDX files or a prepared
tensorflow-datasets data_dir.

    python -m launch.fds --config launch/configs/fashion_mnist_mlp.py --workdir workdir/fmnist_mlp

Run time: ~5 min on 2 CPU cores (1,000-step horizon, batch 128). Expected: see
``benchmarks/results/hpo_fashion_mnist_mlp.md``; the default schedule reaches
about 86% test accuracy in 1,000 steps.
"""

try:
  from launch.configs import base
except ImportError:  # installed as hypergrad_launch
  from hypergrad_launch.configs import base


def get_config():
  c = base.get_base_config('fashion_mnist_mlp')
  c.init.update({'lr': 0.1, 'momentum': 0.9, 'weight_decay': 5e-4})
  c.step_sizes.update({'lr': 0.05, 'momentum': 0.02, 'weight_decay': 3e-4})
  return c
