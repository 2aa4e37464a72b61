r"""FDS on MNIST-1D generated larger (20,000 / 5,000 signals), MLP 128-128, CPU.

The standard MNIST-1D task holds out 5% of 3,800 training signals, so its
validation loss (190 signals) is noisy; here the generator makes 25,000
signals and the same 5% is 950. Everything else as ``mnist1d_mlp``.

    python -m launch.fds --config launch/configs/mnist1d_large_mlp.py \
        --workdir workdir/mnist1d_large

Run time: ~2-3 min on 2 CPU cores (generation ~10 s). Expected, from
``benchmarks/results/hpo_mnist1d_large_mlp.md`` (5 HPO seeds, paired with
the default schedule on the same 3 retrain initialisations): learned
schedules reach 83.11 +- 1.20% test accuracy against the default's
78.03 +- 0.15% (gain +5.08 points, 95% CI [+3.22, +6.94]).
"""

try:
  from launch.configs import mnist1d_mlp
except ImportError:  # installed as hypergrad_launch
  from hypergrad_launch.configs import mnist1d_mlp


def get_config():
  c = mnist1d_mlp.get_config()
  c.task = 'mnist1d_large_mlp'
  return c
