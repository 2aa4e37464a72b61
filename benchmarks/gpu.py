r"""Forward mode on an accelerator: one script, the figures issue 25 asks for.

For an MLP 64-128-128-10 and WRN-16-1 (CIFAR-10's shape; random pixels when
tfds's cifar10 is not prepared: a step's cost does not depend on them), both
at batch 256 in the FDS setting (K = 9: 7 lr intervals, momentum, weight
decay), prints:

* plain training steps per second (the jitted ``lax.scan`` unroll);
* forward / plain and checkpointed reverse / plain (``checkpoint_every =
  round(sqrt(T))``), each the best of ``--repeats`` runs over ``--steps``
  inner steps, and the compile time of each program;
* the wall time of one ``--long_steps`` (10^4) step forward hypergradient,
  compile and run apart;
* what ``hypergrad.auto()`` chooses there and why (its measured probe).

On a GPU the forward program pushes a batch of tangents (``push=None``
lowers to the batch push off CPU); ``--push rows`` or ``batch`` forces one.

    python -m benchmarks.gpu                       # < 10 min on one H100/H200
    python -m benchmarks.gpu --tiny                # a CPU check, ~1 min

Writes ``benchmarks/results/gpu_<device>.md`` (``--out`` to change).
"""

from __future__ import annotations

import math
import os
import re
import time

from absl import app
from absl import flags
import jax

from benchmarks import common
import hypergrad

PROBLEMS = ('mlp', 'wrn')


def _compiled(fn, *args):
  start = time.perf_counter()
  executable = jax.jit(fn).lower(*args).compile()
  return executable, time.perf_counter() - start


def _best(executable, args, repeats: int) -> float:
  best = math.inf
  for _ in range(max(repeats, 1)):
    start = time.perf_counter()
    jax.block_until_ready(executable(*args))
    best = min(best, time.perf_counter() - start)
  return best


def problem(name: str, batch: int, tiny: bool = False):
  """``(step_fn, loss_fn, state, hparams)`` of a benchmark problem, K = 9."""
  if name == 'mlp':
    step_fn, loss_fn, state = common.mlp_problem(
        batch_size=batch, num_examples=max(4 * batch, 256))
    return step_fn, loss_fn, state, common.fds_hparams(7)
  if name == 'wrn':
    from benchmarks import tasks  # pylint: disable=g-import-not-at-top
    task, _ = tasks.load_task('cifar10_wrn16_1', batch_size=batch)
    step_fn, loss_fn, state = task.problem()
    return step_fn, loss_fn, state, tasks.fds_hparams(task, 7)
  raise ValueError(f'problem must be one of {PROBLEMS}, got {name!r}.')


def measure(name: str, steps: int, long_steps: int, batch: int,
            repeats: int = 3, push: str | None = None) -> dict:
  """One row of the table: speeds, ratios, compile times, the long run."""
  step_fn, loss_fn, state, hp = problem(name, batch)
  fwd_est = hypergrad.forward(push=push)
  rev_est = hypergrad.reverse(checkpoint_every=max(1, round(math.sqrt(steps))))
  programs = {
      'plain': lambda s, h: loss_fn(hypergrad.unroll(step_fn, s, h, steps)),
      'forward': lambda s, h: fwd_est.compute(step_fn, loss_fn, s, h, steps
                                              ).hypergrads,
      'reverse': lambda s, h: rev_est.compute(step_fn, loss_fn, s, h, steps
                                              ).hypergrads,
  }
  row = {'problem': name, 'batch': batch, 'steps': steps,
         'device': jax.devices()[0].device_kind}
  for key, fn in programs.items():
    executable, row[f'{key}_compile_s'] = _compiled(fn, state, hp)
    row[f'{key}_s'] = _best(executable, (state, hp), repeats)
  row['steps_per_second'] = steps / row['plain_s']
  row['forward_ratio'] = row['forward_s'] / row['plain_s']
  row['reverse_ratio'] = row['reverse_s'] / row['plain_s']
  long_fn = lambda s, h: fwd_est.compute(step_fn, loss_fn, s, h, long_steps
                                         ).hypergrads
  executable, row['long_compile_s'] = _compiled(long_fn, state, hp)
  row['long_s'] = _best(executable, (state, hp), 1)
  row['long_steps'] = long_steps
  choice = hypergrad.auto().choose(step_fn, loss_fn, state, hp, long_steps)
  row['auto'] = type(choice.estimator).__name__
  row['auto_reason'] = choice.reason
  return row


HEADER = ['problem', 'batch', 'plain steps/s', 'forward / plain',
          'reverse (ckpt) / plain', 'compile plain / fwd / rev s',
          'hypergradient of T steps: compile + run s', 'auto at that T']


def table(rows) -> str:
  return common.markdown_table(HEADER, [[
      r['problem'], r['batch'], f"{r['steps_per_second']:.0f}",
      f"{r['forward_ratio']:.2f}", f"{r['reverse_ratio']:.2f}",
      f"{r['plain_compile_s']:.1f} / {r['forward_compile_s']:.1f} / "
      f"{r['reverse_compile_s']:.1f}",
      f"T = {r['long_steps']:,}: {r['long_compile_s']:.1f} + "
      f"{r['long_s']:.1f}", r['auto']] for r in rows])


def _define_flags():
  flags.DEFINE_list('problems', list(PROBLEMS), 'Problems to time.')
  flags.DEFINE_integer('steps', 500, 'Horizon of the timed ratios.')
  flags.DEFINE_integer('long_steps', 10_000,
                       'Horizon of the one long hypergradient.')
  flags.DEFINE_integer('batch', 256, 'Batch size of both problems.')
  flags.DEFINE_integer('repeats', 3, 'Timed repeats (best kept).')
  flags.DEFINE_enum('push', None, ['batch', 'rows'],
                    'Force a tangent push (default: by platform).')
  flags.DEFINE_bool('tiny', False, 'A quick check at small sizes (CPU).')
  flags.DEFINE_string('out', None, 'Markdown output (default '
                      'benchmarks/results/gpu_<device>.md).')


def main(argv):
  del argv
  FLAGS = flags.FLAGS  # pylint: disable=invalid-name
  steps, long_steps, batch = FLAGS.steps, FLAGS.long_steps, FLAGS.batch
  if FLAGS.tiny:
    steps, long_steps, batch = 20, 100, 8
  device = jax.devices()[0]
  print(f'backend: {jax.default_backend()} ({device.device_kind}), '
        f'jax {jax.__version__}', flush=True)
  rows = []
  for name in FLAGS.problems:
    start = time.perf_counter()
    rows.append(measure(name, steps, long_steps, batch, FLAGS.repeats,
                        FLAGS.push))
    print(f'{name}: {time.perf_counter() - start:.0f} s; auto: '
          f"{rows[-1]['auto_reason']}", flush=True)
  text = table(rows)
  print(text)
  out = FLAGS.out or os.path.join(
      os.path.dirname(__file__), 'results',
      f"gpu_{re.sub(r'[^A-Za-z0-9]+', '_', device.device_kind).lower()}.md")
  with open(out, 'w', encoding='utf-8') as f:
    f.write(f'# Forward mode on {device.device_kind}\n\n'
            f'`python -m benchmarks.gpu` (T = {steps} for the ratios), '
            f'jax {jax.__version__}.\n\n{text}\n\n')
    for r in rows:
      f.write(f"- {r['problem']}: auto at T = {r['long_steps']:,}: "
              f"{r['auto_reason']}\n")
  print(f'wrote {out}')


if __name__ == '__main__':
  _define_flags()
  app.run(main)
