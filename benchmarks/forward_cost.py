r"""Cost of a forward-mode hypergradient relative to plain training.

For an MLP 64-128-128-10 (tanh, batch 64) trained by SGD with momentum, prints
time(forward_hypergrad) / time(plain jitted training unroll of the same steps)
for K = 9 tangents (7 lr intervals + momentum + weight decay, the FDS default)
and K = 32 (30 + 1 + 1), for the interval-skipping scheme and the naive one
(every tangent carried from step 0), and the compiled peak memory at
T = 1,000 and T = 10,000.

Targets (issue 2): ratio <= 9 for K = 9 and <= 49 for K = 32; memory at
T = 10,000 within 10% of T = 1,000.

    python -m benchmarks.forward_cost            # ~2 min on 2 CPU cores
    python -m benchmarks.forward_cost --steps 300 --repeats 1   # quick look
"""

from __future__ import annotations

from absl import app
from absl import flags
import jax

from benchmarks import common
import hypergrad


def measure(steps: int, lr_intervals, repeats: int):
  """Rows ``[K, plain ms, forward ms, ratio, naive ms, naive ratio]``."""
  step_fn, loss_fn, state = common.mlp_problem()
  plain = jax.jit(lambda s, h: loss_fn(hypergrad.unroll(step_fn, s, h, steps)))
  rows = []
  for n in lr_intervals:
    hp = common.fds_hparams(n)
    # Plain training is short and the ratio's denominator: time it more
    # often, or one slow repeat on a shared machine moves every ratio.
    t_plain = common.best_time(lambda: plain(state, hp), 3 * repeats)
    row = [n + 2, f'{t_plain * 1e3:.0f}']
    for skip in (True, False):
      fwd = lambda: hypergrad.forward_hypergrad(
          step_fn, loss_fn, state, hp, steps, skip_unstarted=skip)
      t = common.best_time(fwd, repeats)
      row += [f'{t * 1e3:.0f}', f'{t / t_plain:.1f}']
    rows.append(row)
  return rows


def memory(horizons, lr_intervals=7):
  """``[(T, compiled bytes of forward_hypergrad)]``."""
  step_fn, loss_fn, state = common.mlp_problem()
  hp = common.fds_hparams(lr_intervals)
  out = []
  for steps in horizons:
    fn = lambda s, h, steps=steps: hypergrad.forward_hypergrad(
        step_fn, loss_fn, s, h, steps)
    out.append((steps, common.compiled_memory(fn, state, hp)))
  return out


def _define_flags():
  # Defined only when run as a script: benchmarks.run imports this module
  # next to memory_vs_horizon, whose flags have the same names.
  flags.DEFINE_integer('steps', 1000, 'Horizon T for the timings.')
  flags.DEFINE_integer('repeats', 3, 'Timed repeats (best is kept).')
  flags.DEFINE_list('lr_intervals', ['7', '30'],
                    'Learning-rate intervals; K = this + 2.')
  flags.DEFINE_list('memory_steps', ['1000', '10000'],
                    'Horizons for the memory comparison.')


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  steps = FLAGS.steps
  print(f'backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), '
        f'T = {steps}')
  rows = measure(steps, [int(k) for k in FLAGS.lr_intervals], FLAGS.repeats)
  print(common.markdown_table(
      ['K', 'plain ms', 'forward ms', 'ratio', 'naive ms', 'naive ratio'],
      rows))
  mem = memory([int(s) for s in FLAGS.memory_steps])
  print(common.markdown_table(
      ['T', 'compiled bytes (forward, K=9)'],
      [(s, f'{b:,}') for s, b in mem]))
  base = mem[0][1]
  growth = 100.0 * (mem[-1][1] - base) / base
  print(f'memory growth from T={mem[0][0]} to T={mem[-1][0]}: {growth:+.1f}%')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
