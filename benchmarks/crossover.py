r"""Forward mode against checkpointed reverse mode as the tangents grow.

For the MLP 64-128-128-10 of ``benchmarks/common.py`` at T = 1,000, times
``hypergrad.forward()`` and ``hypergrad.reverse(checkpoint_every=c)`` with
``c = round(sqrt(T))`` against the plain jitted unroll for K = 3, 9, 17, 33 tangents (1, 7, 15, 31
learning-rate intervals + momentum + weight decay). The three programs of a
K are compiled ahead of time and timed in interleaved rounds (best of
``--rounds``), so a burst of load on a shared machine hits them alike. The
last columns say what ``hypergrad.auto()`` chooses there from its own probe
(a few measured inner steps) and its estimates: the check that its choice
follows the measured costs on this device.

    python -m benchmarks.crossover                # ~4 min on 2 CPU cores
    python -m benchmarks.crossover --steps 300 --rounds 2   # quick look
"""

from __future__ import annotations

import math
import time

from absl import app
from absl import flags
import jax

from benchmarks import common
import hypergrad

_STEPS = flags.DEFINE_integer('steps', 1000, 'Horizon T.')
_ROUNDS = flags.DEFINE_integer('rounds', 3, 'Interleaved timing rounds.')
_LR_INTERVALS = flags.DEFINE_list('lr_intervals', ['1', '7', '15', '31'],
                                  'Learning-rate intervals; K = this + 2.')


def measure(steps: int, lr_intervals, rounds: int):
  """Rows ``[K, K begun (mean), plain ms, forward x, reverse x, faster,
  auto's estimates, auto's choice]``."""
  step_fn, loss_fn, state = common.mlp_problem()
  c = round(math.sqrt(steps))
  programs = {
      'plain': lambda s, h: loss_fn(hypergrad.unroll(step_fn, s, h, steps)),
      'forward': lambda s, h: hypergrad.forward()(
          step_fn, loss_fn, s, h, steps).hypergrads,
      'reverse': lambda s, h: hypergrad.reverse(checkpoint_every=c)(
          step_fn, loss_fn, s, h, steps).hypergrads,
  }
  rows = []
  for n in lr_intervals:
    hp = common.fds_hparams(n)
    compiled = {k: jax.jit(f).lower(state, hp).compile()
                for k, f in programs.items()}
    best = {k: math.inf for k in compiled}
    for _ in range(rounds + 1):  # the first round warms up
      for k, fn in compiled.items():
        start = time.perf_counter()
        jax.block_until_ready(fn(state, hp))
        best[k] = min(best[k], time.perf_counter() - start)
    begun = sum(1.0 - s / steps for s in hypergrad.interval_starts(n, steps))
    fwd, rev = best['forward'] / best['plain'], best['reverse'] / best['plain']
    choice = hypergrad.auto().choose(step_fn, loss_fn, state, hp, steps)
    rows.append([n + 2, f'{begun + 2:.1f}', f'{best["plain"] * 1e3:.0f}',
                 f'{fwd:.1f}', f'{rev:.1f}',
                 'forward' if fwd < rev else 'reverse',
                 f'{choice.forward_cost:.1f} / {choice.reverse_cost:.1f}',
                 type(choice.estimator).__name__.lower()])
  return rows


def main(argv):
  del argv
  common.enable_compilation_cache()
  steps = _STEPS.value
  print(f'backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), '
        f'T = {steps}, reverse checkpoint_every = {round(math.sqrt(steps))}')
  rows = measure(steps, [int(n) for n in _LR_INTERVALS.value], _ROUNDS.value)
  print(common.markdown_table(
      ['K', 'begun (mean)', 'plain ms', 'forward / plain',
       'reverse / plain', 'faster', 'auto estimates fwd / rev',
       'auto chooses'], rows))


if __name__ == '__main__':
  app.run(main)
