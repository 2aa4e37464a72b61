r"""Training speed of every task config, and the FDS hypergradient's cost.

For each task: steps per second of plain training (the jitted ``lax.scan``
unroll of the task's ``step_fn``, the task's batch size), the time of one
training run at the task's default horizon, and, for the MNIST-1D and
Fashion-MNIST MLPs and WRN-16-1, the forward-hypergradient ratio: time of
``forward_hypergrad`` / time of the plain unroll of the same steps, in the
FDS setting (7 lr intervals + momentum + weight decay: 9 values, 6 tangents
on average).

Embedded datasets are used as they are (``mnist1d_mlp``, ``digits_mlp``,
``mnist1d_large_mlp``, ``mnist1d_lenet``); ``fashion_mnist_mlp`` and
``fashion_mnist_lenet`` when the IDX files are present
(``/usr/share/datasets/fashion-mnist``); ``cifar10_wrn16_1`` on random data
of CIFAR-10's shape when tfds's cifar10 is not prepared (the cost of a step
does not depend on pixel values), for 7 steps only (the fewest that hold 7
lr intervals).

On CPU the models compute convolutions as image patches and a matmul
(``conv_impl='auto'``, see ``hypergrad.experiments.models``): XLA:CPU's own
convolution runs 10-40x slower inside a training scan (jax-ml/jax#12868).
LeNet on Fashion-MNIST then trains at ~110 steps/s at batch 128 on 2 cores
(8.7 steps/s with XLA's convolution). WRN-16-1 is still a GPU job: it is
timed at ``--wrn_batch`` (16) on CPU, and the time per run of T is scaled
back to batch 256 (cost per example).

Every timed unroll ends with the task's validation loss (as an FDS
hypergradient does), so few timed steps understate the steps per second.

    python -m benchmarks.tasks                 # ~5 min on 2 CPU cores
    python -m benchmarks.tasks --wrn_steps 20 --wrn_batch 0   # slow on CPU

Writes ``benchmarks/results/tasks.md``.
"""

from __future__ import annotations

import dataclasses
import os
import time

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import common
import hypergrad
from hypergrad._src import schedule
from hypergrad.experiments import data as data_lib
from hypergrad.experiments import models as models_lib
from hypergrad.experiments import tasks as tasks_lib

TASK_NAMES = ('mnist1d_mlp', 'digits_mlp', 'mnist1d_large_mlp',
              'fashion_mnist_mlp', 'mnist1d_lenet', 'fashion_mnist_lenet',
              'cifar10_wrn16_1')
RATIO_TASKS = ('mnist1d_mlp', 'fashion_mnist_mlp', 'cifar10_wrn16_1')
# Synthetic CIFAR-10 stand-in: enough examples for a few shuffled epochs.
_SYNTHETIC_EXAMPLES = 2048


def synthetic_dataset(name: str, input_shape, num_examples: int,
                      num_classes: int = 10, seed: int = 0
                      ) -> data_lib.Dataset:
  """Random data with a real dataset's shapes (for timing only)."""
  rng = np.random.RandomState(seed)
  x = rng.randn(num_examples, *input_shape).astype(np.float32)
  y = rng.randint(0, num_classes, num_examples).astype(np.int32)
  n_val = max(num_examples // 20, 1)
  channels = input_shape[-1]
  return data_lib.Dataset(
      x_train=x[n_val:], y_train=y[n_val:], x_val=x[:n_val], y_val=y[:n_val],
      x_test=x[:n_val], y_test=y[:n_val], num_classes=num_classes, name=name,
      input_shape=tuple(input_shape),
      mean=np.zeros((channels,), np.float32),
      std=np.ones((channels,), np.float32),
      train_index=np.arange(n_val, num_examples),
      val_index=np.arange(n_val))


def load_task(name: str, data_dir: str | None = None,
              batch_size: int | None = None):
  """``(task, data_source)``; WRN-16-1 falls back to synthetic CIFAR-10.

  Args:
    name: a task name.
    data_dir: prepared datasets.
    batch_size: override of the task's batch size (None: the task's).

  Returns ``(None, reason)`` for a task whose data is absent.
  """
  overrides = {} if batch_size is None else {'batch_size': batch_size}
  try:
    return tasks_lib.make_task(name, data_dir=data_dir, **overrides), 'real'
  except data_lib.DatasetNotFoundError as e:
    if name != 'cifar10_wrn16_1':
      return None, f'no data ({str(e).splitlines()[0][:80]})'
  spec = dataclasses.replace(tasks_lib.TASKS[name], **overrides)
  dataset = synthetic_dataset('cifar10', (32, 32, 3), _SYNTHETIC_EXAMPLES)
  return tasks_lib.Task(name, spec, dataset), 'random 32x32x3'


def fds_hparams(task, num_steps: int) -> dict:
  """The FDS setting at the task's default values: 7 + 1 + 1 values."""
  values = dict(task.spec.default_hparams)
  n_lr = min(7, num_steps)
  return {'lr': schedule.constant(values['lr'], n_lr, task.dtype),
          'momentum': schedule.constant(values['momentum'], 1, task.dtype),
          'weight_decay': schedule.constant(values['weight_decay'], 1,
                                            task.dtype)}


def _compiled(fn, *args):
  """``(executable, compile seconds)``: timing runs never include a compile."""
  start = time.perf_counter()
  executable = jax.jit(fn).lower(*args).compile()
  return executable, time.perf_counter() - start


def _best(executable, args, repeats: int) -> float:
  times = []
  for _ in range(max(repeats, 1)):
    start = time.perf_counter()
    jax.block_until_ready(executable(*args))
    times.append(time.perf_counter() - start)
  return min(times)


def time_task(task, steps: int, repeats: int, with_ratio: bool) -> dict:
  """Plain-training speed and, optionally, the forward-hypergradient ratio.

  Both programs are compiled ahead of time and timed ``repeats`` times
  (best kept): no warm-up run is needed, which matters where a step takes
  seconds.
  """
  step_fn, loss_fn, state = task.problem()
  hp = fds_hparams(task, steps)
  args = (step_fn, loss_fn, state, hp)
  plain, compile_s = _compiled(
      lambda sf, lf, s, h: lf(hypergrad.unroll(sf, s, h, steps)), *args)
  t_plain = _best(plain, args, repeats)
  out = {'steps': steps, 'plain_seconds': t_plain,
         'steps_per_second': steps / t_plain, 'compile_seconds': compile_s,
         'params': models_lib.num_params(state.opt.params)}
  if with_ratio:
    fwd, _ = _compiled(lambda sf, lf, s, h: hypergrad.forward_hypergrad(
        sf, lf, s, h, steps), *args)
    t_fwd = _best(fwd, args, repeats)
    out.update(forward_seconds=t_fwd, forward_ratio=t_fwd / t_plain)
  return out


def measure(names=TASK_NAMES, steps: int = 500, wrn_steps: int = 7,
            repeats: int = 2, ratio_tasks=RATIO_TASKS,
            data_dir: str | None = None, wrn_batch: int = 0,
            log=print) -> list[dict]:
  """One row per task: speed, default-horizon run time, FDS ratio.

  ``wrn_batch`` > 0 times WRN-16-1 at that batch size instead of 256 (on
  CPU, where a step at 256 takes ~30 s: see the module docstring).
  """
  rows = []
  for name in names:
    wrn = name == 'cifar10_wrn16_1'
    task, source = load_task(name, data_dir,
                             wrn_batch if wrn and wrn_batch else None)
    if task is None:
      rows.append({'task': name, 'source': source})
      log(f'{name}: skipped, {source}')
      continue
    # WRN-16-1 takes --wrn_steps; every other task --task_steps (>= 7, the
    # fewest that hold 7 lr intervals).
    n = wrn_steps if wrn else max(steps, 7)
    # One timed run where a step takes seconds: the spread is small there.
    r = 1 if wrn else repeats
    row = {'task': name, 'source': source,
           'batch_size': task.spec.batch_size,
           'horizon': task.spec.horizon}
    try:
      row.update(time_task(task, n, r, name in ratio_tasks))
    except Exception as e:  # pylint: disable=broad-except
      # Say which task failed and keep timing the others.
      rows.append({'task': name, 'source': f'failed: {type(e).__name__}: '
                                           f'{str(e)[:80]}'})
      log(f'{name}: failed, {e!r}')
      continue
    # At the task's own batch size: per-example cost carries over.
    row['run_seconds'] = (task.spec.horizon / row['steps_per_second']
                          * tasks_lib.TASKS[name].batch_size
                          / task.spec.batch_size)
    rows.append(row)
    log(f"{name}: {row['steps_per_second']:.1f} steps/s"
        + (f", forward ratio {row['forward_ratio']:.2f}"
           if 'forward_ratio' in row else ''))
  return rows


def table(rows) -> str:
  out = []
  for r in rows:
    if 'steps_per_second' not in r:
      out.append([r['task'], r['source']] + ['-'] * 7)
      continue
    ratio = (f"{r['forward_ratio']:.2f}" if 'forward_ratio' in r else '-')
    run = r['run_seconds']
    run = f'{run:.1f} s' if run < 3600 else f'{run / 3600:.1f} h'
    out.append([r['task'], r['source'], f"{r['params']:,}", r['batch_size'],
                r['steps'], f"{r['steps_per_second']:.1f}",
                f"{r['horizon']:,}", run, ratio])
  return common.markdown_table(
      ['task', 'data', 'params', 'batch', 'steps timed', 'steps / s',
       'default T', 'one run of T', 'forward / plain (K=9)'], out)


def notes(repeats: int) -> str:
  """What the table measures, for the reports."""
  return (f'Plain training (jitted scan unroll, compiled ahead of time) on '
          f'{describe()} (shared: timings are noisy); best of {repeats} '
          f'timed runs (WRN-16-1: one run). "forward / plain": time of '
          f'forward_hypergrad over the same steps with 7 lr intervals + '
          f'momentum + weight decay. "one run of T": a training run at '
          f"the task's default horizon and batch size. On CPU the conv "
          f'tasks compute convolutions as image patches and a matmul '
          f"(conv_impl='auto'): XLA:CPU's own convolution runs 10-40x "
          f'slower inside a scan (jax-ml/jax#12868). WRN-16-1 is timed at '
          f'the batch shown, on random data when cifar10 is not prepared.')


def describe() -> str:
  return (f'{jax.default_backend()} ({jax.devices()[0].device_kind}), '
          f'{os.cpu_count()} CPU cores')


_STEPS = flags.DEFINE_integer('task_steps', 500,
                              'Inner steps timed for the MLP tasks.')
_WRN_STEPS = flags.DEFINE_integer('wrn_steps', 7,
                                  'Inner steps timed for WRN-16-1 (>= 7).')
_WRN_BATCH = flags.DEFINE_integer(
    'wrn_batch', 16, 'WRN-16-1 batch size for the timing (0: the task\'s '
    '256; on CPU a step at 256 takes ~30 s).')
_TASK_REPEATS = flags.DEFINE_integer('task_repeats', 2,
                                     'Timed repeats (best is kept).')
_TASK_OUT = flags.DEFINE_string(
    'task_out', os.path.join(os.path.dirname(__file__), 'results', 'tasks.md'),
    'Markdown output.')


def main(argv):
  del argv
  common.enable_compilation_cache()
  print(f'backend: {describe()}')
  rows = measure(steps=_STEPS.value, wrn_steps=_WRN_STEPS.value,
                 repeats=_TASK_REPEATS.value, wrn_batch=_WRN_BATCH.value)
  text = table(rows)
  print(text)
  os.makedirs(os.path.dirname(_TASK_OUT.value), exist_ok=True)
  with open(_TASK_OUT.value, 'w') as f:
    f.write(f'# Task speed\n\n{notes(_TASK_REPEATS.value)}\n\n'
            f'Produced by `python -m benchmarks.tasks`.\n\n{text}\n')
  print(f'wrote {_TASK_OUT.value}')


if __name__ == '__main__':
  app.run(main)
