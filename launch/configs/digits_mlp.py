r"""FDS on scikit-learn's digits with an MLP 64-128-10 (tanh), on CPU.

    python -m launch.fds --config digits_mlp --workdir workdir/digits_mlp

Run time: ~2 min on 2 CPU cores. Expected: test accuracy about 97%, level with
the default schedule's (digits is easy; it is a smoke test of the pipeline).
"""

try:
  from launch.configs import base
except ImportError:  # installed as hypergrad_launch
  from hypergrad_launch.configs import base


def get_config():
  c = base.get_base_config('digits_mlp')
  c.horizon = 500
  c.val_fraction = 0.1
  return c
