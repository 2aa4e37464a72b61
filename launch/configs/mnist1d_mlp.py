r"""FDS on MNIST-1D with an MLP 40-128-128-10 (ReLU), on CPU.

Learns a 7-piece learning-rate schedule, a momentum and a weight decay over a
horizon of 1,000 inner steps (batch 128, 32 epochs of the 3,800 training
signals), 10 outer steps at most, then retrains from scratch and tests.

    python -m launch.fds --task mnist1d_mlp --workdir workdir/mnist1d_mlp

Run time: ~4 min on 2 CPU cores. Expected: test accuracy about 70% with the
learned schedule (see the summary printed at the end), next to the plain
default schedule's (lr 0.1, momentum 0.9, wd 5e-4) about 67%.
"""

from launch.configs import base


def get_config():
  c = base.get_base_config('mnist1d_mlp')
  c.horizon = 1000
  return c
