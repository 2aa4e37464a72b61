r"""FDS on Fashion-MNIST (60k/10k) with LeNet.

Data: IDX files, e.g. Debian's `apt-get install dataset-fashion-mnist` (found
automatically) or `--data_dir` pointing at a folder of IDX files or a prepared
tensorflow-datasets data_dir.

    python -m launch.fds --config fashion_mnist_lenet --workdir workdir/fmnist

Run time: ~1 h on 2 CPU cores (2,000-step horizon, 10 outer steps); a few
minutes on one GPU. Expected: test accuracy about 89-90%.
"""

try:
  from launch.configs import base
except ImportError:  # installed as hypergrad_launch
  from hypergrad_launch.configs import base


def get_config():
  c = base.get_base_config('fashion_mnist_lenet')
  c.horizon = 2000
  return c
