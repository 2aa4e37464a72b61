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
flop count of a tangent push against a plain step); what one tangent costs
in plain steps in each push's loop body alone, by number of tangents
(:func:`per_tangent`: how far from that floor XLA runs a tangent); and the
compiled peak memory at T = 1,000 and T = 10,000.

``--task fashion_mnist_mlp`` (or another task config's name) measures the
same on that task's step instead of the MLP above (its data must be
present; the memory table stays the MLP's).

Targets: compile time at most 4x the plain unroll's; run ratio <= 12 for
K = 9 and <= 33 for K = 32 (issue 25: at the flop floor); memory at
T = 10,000 within 10% of T = 1,000 (issue 2). Results:
``benchmarks/results/forward_push.md``.

The persistent compilation cache is on (``common.enable_compilation_cache``):
a second run reads the programs back and its compile times drop accordingly.
``--nocompilation_cache`` measures cold compiles every time.

    python -m benchmarks.forward_cost            # ~2 min on 2 CPU cores
    python -m benchmarks.forward_cost --steps 300 --repeats 1   # quick look
    python -m benchmarks.forward_cost --task fashion_mnist_mlp --lr_intervals 7
"""

from __future__ import annotations

from absl import app
from absl import flags
import jax

from benchmarks import common
import hypergrad


def problem(task: str = ''):
  """``(step_fn, loss_fn, init_state)``: the MLP above, or a task config's.

  Raises:
    ValueError: ``task`` names a task whose data is not prepared.
  """
  if not task:
    return common.mlp_problem()
  # pylint: disable=g-import-not-at-top
  from benchmarks import tasks as tasks_bench
  loaded, source = tasks_bench.load_task(task)
  if loaded is None:
    raise ValueError(f'--task={task!r}: {source}')
  return loaded.problem()


def measure(steps: int, lr_intervals, repeats: int, problem_=None):
  """Rows ``[K, plain ms, rows ms, ratio, batch ms, ratio, naive ms, ratio]``.

  ``problem_``: ``(step_fn, loss_fn, init_state)``; None: the MLP.
  """
  step_fn, loss_fn, state = problem_ or common.mlp_problem()
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


def flop_floor(steps: int, lr_intervals, problem_=None):
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
  step_fn, _, state = problem_ or common.mlp_problem()
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


def per_tangent(steps: int, sizes, repeats: int, problem_=None):
  """Rows ``[tangents, rows, rows checked, batch]``: plain steps per tangent.

  The loop body alone, over ``steps`` inner steps at fixed hyperparameters:
  the primal step with ``n`` tangents pushed as rows (the step linearised
  once, its linear map applied row by row, :func:`tangents.push_rows`) or as
  one batch (a ``vmap`` of ``jvp`` fused with the primal step,
  :func:`tangents.push_batch`), against the plain step's loop. No masking,
  no schedule look-up: set against :func:`flop_floor`'s tangent cost, it
  says how far from its arithmetic XLA runs a tangent, whatever the plan
  around it. ``rows checked`` also keeps the per-row finiteness check that
  ``forward`` runs to report the first non-finite step (in the other two
  columns it is computed and dropped, so XLA removes it): the difference is
  what divergence detection costs per tangent.
  """
  # pylint: disable=g-import-not-at-top
  from hypergrad._src import schedule
  from hypergrad._src import tangents
  from hypergrad._src import unroll
  step_fn, _, state = problem_ or common.mlp_problem()
  split = unroll.split_state(state)
  step, _ = tangents.step_pieces(step_fn, split)
  h = schedule.hparams_at(common.fds_hparams(1), jax.numpy.int32(0), steps)

  def loop(body):
    def scan_body(carry, _):
      d, r, z, t, ok = carry
      d, r, z, finite = body(d, r, z, t)
      return (d, r, z, t + 1, ok & finite), None
    # The state leaves too, and the check: what a loop does not return, XLA
    # does not compute.
    return jax.jit(lambda d, r, z: jax.lax.scan(
        scan_body, (d, r, z, jax.numpy.int32(0), jax.numpy.bool_(True)),
        None, steps)[0])

  def timed(body, n):
    fn = loop(body)
    args = (split.diff, split.rest, tangents.zeros(n, split.diff))
    return common.best_time(lambda: fn(*args), repeats)

  def plain_body(d, r, z, t):
    d, r = step(d, r, h, t)
    return d, r, z, True

  def rows_body(d, r, z, t, checked=False):
    new_d, new_r, lin = tangents.linearize(step, d, r, h, t)
    count = jax.numpy.int32(z[0].shape[0]) + 0 * t  # traced, as in forward
    z, finite = tangents.push_rows(lin, z, count, lambda i: jax.tree.map(
        lambda x: 0.01 * jax.numpy.ones_like(x), h))
    return new_d, new_r, z, (finite & unroll.all_finite(new_d)
                             if checked else True)

  def batch_body(d, r, z, t):
    dh = jax.tree.map(lambda x: jax.numpy.full(
        (z[0].shape[0],) + x.shape, 0.01, x.dtype), h)
    return tangents.push_batch(step, d, r, h, t, z, dh) + (True,)

  t_plain = timed(plain_body, 0)
  out = []
  for n in sizes:
    out.append([n] + [f'{(timed(body, n) / t_plain - 1) / n:.2f}'
                      for body in (rows_body,
                                   lambda *a: rows_body(*a, checked=True),
                                   batch_body)])
  return out


def compile_times(steps: int, lr_intervals, problem_=None):
  """Rows ``[K, plain s, rows s, rows / plain, batch s, batch / plain]``."""
  step_fn, loss_fn, state = problem_ or common.mlp_problem()
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
  flags.DEFINE_string('task', '', 'A task config to measure instead of the '
                      'MLP (its data must be present), e.g. fashion_mnist_mlp.')
  flags.DEFINE_list('per_tangent', ['1', '2', '3', '6', '9', '16'],
                    'Tangent counts for the per-tangent table (empty: none).')
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
  task = problem(FLAGS.task)  # before any compile: a missing dataset fails fast
  print(f'backend: {jax.default_backend()} ({jax.devices()[0].device_kind}), '
        f'T = {steps}, problem: {FLAGS.task or "MLP 64-128-128-10"}, '
        f'compilation cache: {folder or "off"}')
  # Compiled first, so nothing else has warmed a cache for these programs.
  print(common.markdown_table(
      ['K', 'plain compile s', 'rows compile s', 'rows / plain',
       'batch compile s', 'batch / plain'],
      compile_times(steps, ns, task)))
  rows = measure(steps, ns, FLAGS.repeats, task)
  print(common.markdown_table(
      ['K', 'plain ms', 'rows ms', 'rows ratio', 'batch ms', 'batch ratio',
       'naive ms', 'naive ratio'], rows))
  print(common.markdown_table(
      ['K', 'begun tangents (mean)', 'tangent / plain step flops',
       'exact forward floor (x plain)'], flop_floor(steps, ns, task)))
  sizes = [int(n) for n in FLAGS.per_tangent]
  if sizes:
    print(common.markdown_table(
        ['tangents', 'rows: plain steps / tangent',
         'rows with the finiteness check', 'batch: plain steps / tangent'],
        per_tangent(min(steps, 300), sizes, FLAGS.repeats, task)))
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
