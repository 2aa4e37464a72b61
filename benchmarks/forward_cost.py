r"""Cost of a forward-mode hypergradient relative to plain training.

For an MLP 64-128-128-10 (tanh, batch 64) trained by SGD with momentum, prints
for K = 9 tangents (7 lr intervals + momentum + weight decay, the FDS default)
and K = 32 (30 + 1 + 1):

* the compile time (trace, lower and compile) of the forward hypergradient,
  with each tangent push (``'rows'``, CPU's default, and ``'batch'``,
  the accelerators'), and of the plain jitted training unroll of the same
  steps;
* time(forward) / time(plain unroll) for each push, and for the naive
  scheme (every tangent carried from step 0, the platform's push);

the arithmetic floor of exact forward mode (:func:`flop_floor`: XLA's
flop count of a tangent push against a plain step); and the compiled peak
memory at T = 1,000 and T = 10,000.

Targets: compile time at most 4x the plain unroll's; run ratio <= 12 for
K = 9 and <= 33 for K = 32 (issue 25: at the flop floor); memory at
T = 10,000 within 10% of T = 1,000 (issue 2). Results:
``benchmarks/results/forward_push.md``.

The persistent compilation cache is on (``common.enable_compilation_cache``):
a second run reads the programs back and its compile times drop accordingly.
``--nocompilation_cache`` measures cold compiles every time.

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
  """Rows ``[K, plain ms, rows ms, ratio, batch ms, ratio, naive ms, ratio]``.
  """
  step_fn, loss_fn, state = common.mlp_problem()
  plain = jax.jit(lambda s, h: loss_fn(hypergrad.unroll(step_fn, s, h, steps)))
  rows = []
  for n in lr_intervals:
    hp = common.fds_hparams(n)
    # Plain training is short and the ratio's denominator: time it more
    # often, or one slow repeat on a shared machine moves every ratio.
    t_plain = common.best_time(lambda: plain(state, hp), 3 * repeats)
    row = [n + 2, f'{t_plain * 1e3:.0f}']
    for push, skip in (('rows', True), ('batch', True), (None, False)):
      est = hypergrad.forward(skip_unstarted=skip, push=push)
      fwd = lambda: est(step_fn, loss_fn, state, hp, steps).hypergrads
      t = common.best_time(fwd, repeats)
      row += [f'{t * 1e3:.0f}', f'{t / t_plain:.1f}']
    rows.append(row)
  return rows


def flop_floor(steps: int, lr_intervals):
  """Rows ``[K, begun, tangent / plain flops, floor ratio]``.

  Exact forward mode pushes every begun tangent through the step's
  linearisation each step: a Hessian-vector product's arithmetic, whatever
  the implementation. XLA's flop count of one inner step with ``G``
  tangents, less the plain step's, over ``G``, gives a tangent's cost in
  plain steps; with ``begun`` tangents on average over the horizon, no exact
  forward mode runs faster than ``1 + begun * that`` plain unrolls unless
  it computes a tangent at a higher rate than the plain step.
  """
  # pylint: disable=g-import-not-at-top
  from hypergrad._src import forward as forward_lib
  from hypergrad._src import schedule
  from hypergrad._src import tangents
  from hypergrad._src import unroll
  step_fn, _, state = common.mlp_problem()
  split = unroll.split_state(state)
  step, _ = tangents.step_pieces(step_fn, split)
  t = jax.numpy.int32(1)
  rows = []
  for n in lr_intervals:
    hp = common.fds_hparams(n)
    h = schedule.hparams_at(hp, t, steps)
    plain = common.compiled_flops(lambda d, r, h=h: step(d, r, h, t),
                                  split.diff, split.rest)
    g = 4
    dh = jax.tree.map(lambda x: jax.numpy.zeros((g,) + x.shape, x.dtype), h)
    pushed = common.compiled_flops(
        lambda d, r, z, h=h, dh=dh: tangents.push_batch(step, d, r, h, t, z,
                                                       dh),
        split.diff, split.rest, tangents.zeros(g, split.diff))
    per_tangent = (pushed - plain) / plain / g
    begun = sum(steps - d.start for d in forward_lib.directions(hp, steps)
                ) / steps
    rows.append([n + 2, f'{begun:.1f}', f'{per_tangent:.2f}',
                 f'{1 + begun * per_tangent:.1f}'])
  return rows


def compile_times(steps: int, lr_intervals):
  """Rows ``[K, plain s, rows s, rows / plain, batch s, batch / plain]``."""
  step_fn, loss_fn, state = common.mlp_problem()
  # The first compile of a process also pays for XLA's one-time set-up:
  # spend it on a 2-step unroll so that it is in neither column.
  common.compile_time(
      lambda s, h: loss_fn(hypergrad.unroll(step_fn, s, h, 2)), state,
      common.fds_hparams(1))
  rows = []
  for n in lr_intervals:
    hp = common.fds_hparams(n)
    t_plain = common.compile_time(
        lambda s, h: loss_fn(hypergrad.unroll(step_fn, s, h, steps)), state,
        hp)
    row = [n + 2, f'{t_plain:.2f}']
    for push in ('rows', 'batch'):
      est = hypergrad.forward(push=push)
      t_fwd = common.compile_time(
          lambda s, h: est.compute(step_fn, loss_fn, s, h, steps).hypergrads,
          state, hp)
      row += [f'{t_fwd:.2f}', f'{t_fwd / t_plain:.1f}']
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
  flags.DEFINE_bool('compilation_cache', True,
                    'Use the persistent compilation cache (a rerun then '
                    'reads compiled programs back).')


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  folder = (common.enable_compilation_cache() if FLAGS.compilation_cache
            else None)
  steps = FLAGS.steps
  ns = [int(k) for k in FLAGS.lr_intervals]
  print(f'backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), '
        f'T = {steps}, compilation cache: {folder or "off"}')
  # Compiled first, so nothing else has warmed a cache for these programs.
  print(common.markdown_table(
      ['K', 'plain compile s', 'rows compile s', 'rows / plain',
       'batch compile s', 'batch / plain'], compile_times(steps, ns)))
  rows = measure(steps, ns, FLAGS.repeats)
  print(common.markdown_table(
      ['K', 'plain ms', 'rows ms', 'rows ratio', 'batch ms', 'batch ratio',
       'naive ms', 'naive ratio'], rows))
  print(common.markdown_table(
      ['K', 'begun tangents (mean)', 'tangent / plain step flops',
       'exact forward floor (x plain)'], flop_floor(steps, ns)))
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
