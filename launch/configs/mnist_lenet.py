r"""FDS on MNIST with LeNet (the FDS paper's reverse-mode comparison setting).

Data: a prepared tensorflow-datasets data_dir (`--data_dir`), or a folder of
the MNIST IDX files.

    python -m launch.fds --config mnist_lenet \
        --config.data_dir=$HOME/tensorflow_datasets

Run time: a few minutes on one GPU. Expected: test accuracy about 99%.
"""

try:
  from launch.configs import base
except ImportError:  # installed as hypergrad_launch
  from hypergrad_launch.configs import base


def get_config():
  c = base.get_base_config('mnist_lenet')
  c.horizon = 2000
  return c
