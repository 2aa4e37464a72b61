r"""FDS on SVHN (cropped digits) with LeNet.

Data: a prepared tensorflow-datasets data_dir with `svhn_cropped`
(`--data_dir`).

    python -m launch.fds --config svhn_lenet \
        --config.data_dir=$HOME/tensorflow_datasets

Run time: ~10-20 min on one GPU. Expected: test accuracy about 88-90%.
"""

try:
  from launch.configs import base
except ImportError:  # installed as hypergrad_launch
  from hypergrad_launch.configs import base


def get_config():
  c = base.get_base_config('svhn_lenet')
  c.horizon = 4000
  return c
