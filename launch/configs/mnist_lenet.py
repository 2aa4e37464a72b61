r"""FDS on MNIST with LeNet (the FDS paper's reverse-mode comparison setting).

Data: a prepared tensorflow-datasets data_dir (`--data_dir`), or a folder of
the MNIST IDX files.

    python -m launch.fds --task mnist_lenet --data_dir ~/tensorflow_datasets

Run time: a few minutes on one GPU. Expected: test accuracy about 99%.
"""

from launch.configs import base


def get_config():
  c = base.get_base_config('mnist_lenet')
  c.horizon = 2000
  return c
