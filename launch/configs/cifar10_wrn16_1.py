r"""FDS on CIFAR-10 with WRN-16-1, batch 256, augmentation: the paper's setting.

About 50 epochs (10^4 inner steps) per hypergradient; learns 7 lr pieces,
momentum and weight decay from 0.

Data: a prepared tensorflow-datasets data_dir with `cifar10` (`--config.data_dir`).

    python -m launch.fds --config cifar10_wrn16_1 \
        --config.data_dir=$HOME/tensorflow_datasets \
        --workdir workdir/cifar10

Run time: hours on one GPU (one hypergradient costs about as much as 5-8
plain training runs of 50 epochs). Expected (FDS paper): test accuracy about
86-88%, well above greedy methods and random search at equal budget.
"""

try:
  from launch.configs import base
except ImportError:  # installed as hypergrad_launch
  from hypergrad_launch.configs import base


def get_config():
  c = base.get_base_config('cifar10_wrn16_1')
  c.horizon = 10000
  return c
