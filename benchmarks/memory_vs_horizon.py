r"""Peak memory and time of forward vs reverse (checkpointed or not) hypergradients.

For the MLP 64-128-128-10 of ``benchmarks.common`` (SGD with momentum, batch
64) and the FDS hyperparameters (7 learning-rate intervals, momentum, weight
decay: K = 9 values), at horizons T = 1e3, 3e3, 1e4:

* forward:             ``forward_hypergrad`` (K tangents, memory flat in T);
* reverse:             ``reverse()`` (stores every step: linear in T);
* reverse, sqrt ckpt:  ``reverse(checkpoint_every=round(sqrt(T)))``
  (about 2 sqrt(T) stored steps).

Memory is XLA's compiled account (arguments + outputs + temporaries - aliased,
as ``common.compiled_memory``), so it costs a compilation, not a run, and is
measured at every T. Time is the best wall time of the compiled executable
(compilation excluded), measured for T <= --time_max_steps. Writes
``benchmarks/results/memory_vs_horizon.md`` and ``.png``.

    python -m benchmarks.memory_vs_horizon                 # ~4 min, 2 CPU cores
    python -m benchmarks.memory_vs_horizon --steps 300,1000 --repeats 1
"""

from __future__ import annotations

import math
import os
import time

from absl import app
from absl import flags
import jax

from benchmarks import common
import hypergrad

_STEPS = flags.DEFINE_list('steps', ['1000', '3000', '10000'], 'Horizons T.')
_REPEATS = flags.DEFINE_integer('repeats', 1, 'Timed repeats (best is kept).')
_TIME_MAX = flags.DEFINE_integer(
    'time_max_steps', 10000, 'Time only horizons up to this T (memory is '
    'measured at all of them).')
_LR_INTERVALS = flags.DEFINE_integer('lr_intervals', 7,
                                     'Learning-rate intervals; K = this + 2.')
_OUT = flags.DEFINE_string(
    'out', os.path.join(os.path.dirname(__file__), 'results',
                        'memory_vs_horizon'),
    'Output path without extension (.md and .png are written).')

METHODS = ('forward', 'reverse', 'reverse, sqrt ckpt')


def _estimator(method, step_fn, loss_fn, steps):
  """The estimator value each row measures, as ``fn(state, hparams)``."""
  estimator = {
      'forward': hypergrad.forward(),
      'reverse': hypergrad.reverse(),
      'reverse, sqrt ckpt': hypergrad.reverse(round(math.sqrt(steps))),
  }[method]
  return lambda s, h: estimator(step_fn, loss_fn, s, h, steps)


def _bytes(compiled) -> int:
  # The formula of common.compiled_memory, on an executable we also time, so
  # that each configuration is compiled once.
  stats = compiled.memory_analysis()
  return int(stats.temp_size_in_bytes + stats.argument_size_in_bytes
             + stats.output_size_in_bytes - stats.alias_size_in_bytes)


def measure(horizons, repeats, time_max_steps, lr_intervals):
  """Rows ``(T, method, bytes, compile_s, run_s or None)``."""
  step_fn, loss_fn, state = common.mlp_problem()
  hp = common.fds_hparams(lr_intervals)
  plain = {}
  rows = []
  for steps in horizons:
    if steps <= time_max_steps:
      train = jax.jit(lambda s, h, steps=steps: loss_fn(
          hypergrad.unroll(step_fn, s, h, steps)))
      plain[steps] = common.best_time(lambda: train(state, hp), repeats)
    for method in METHODS:
      start = time.perf_counter()
      compiled = jax.jit(_estimator(method, step_fn, loss_fn, steps)).lower(
          state, hp).compile()
      compile_s = time.perf_counter() - start
      run_s = None
      if steps <= time_max_steps:
        run_s = common.best_time(lambda: compiled(state, hp), repeats)
      rows.append((steps, method, _bytes(compiled), compile_s, run_s))
      print(f'T={steps:>6} {method:<20} {_bytes(compiled) / 2**20:9.2f} MiB'
            f'  compile {compile_s:5.1f} s'
            + (f'  run {run_s:7.3f} s' if run_s is not None else ''),
            flush=True)
  return rows, plain


def _table(rows, plain):
  header = ['T', 'method', 'c', 'compiled MiB', f'MiB / MiB at T={rows[0][0]}',
            'time s', 'x plain training']
  base = {m: b for t, m, b, _, _ in rows if t == rows[0][0]}
  out = []
  for steps, method, nbytes, _, run_s in rows:
    c = round(math.sqrt(steps)) if method == 'reverse, sqrt ckpt' else '-'
    timing = ['-', '-'] if run_s is None else [
        f'{run_s:.2f}', f'{run_s / plain[steps]:.1f}']
    out.append([steps, method, c, f'{nbytes / 2**20:.2f}',
                f'{nbytes / base[method]:.2f}'] + timing)
  return common.markdown_table(header, out)


def _plot(rows, path):
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  fig, (ax_mem, ax_time) = plt.subplots(1, 2, figsize=(11, 4.2))
  for method, marker in zip(METHODS, 'osd'):
    pts = [(t, b / 2**20, r) for t, m, b, _, r in rows if m == method]
    ax_mem.plot([p[0] for p in pts], [p[1] for p in pts], marker=marker,
                label=method)
    timed = [p for p in pts if p[2] is not None]
    ax_time.plot([p[0] for p in timed], [p[2] for p in timed], marker=marker,
                 label=method)
  ts = sorted({r[0] for r in rows})
  rev = {t: b / 2**20 for t, m, b, _, _ in rows if m == 'reverse'}
  ck = {t: b / 2**20 for t, m, b, _, _ in rows if m == 'reverse, sqrt ckpt'}
  # Reference slopes through the first point of each reverse curve.
  ax_mem.plot(ts, [rev[ts[0]] * t / ts[0] for t in ts], 'k:', lw=1,
              label='slope 1 (linear)')
  ax_mem.plot(ts, [ck[ts[0]] * math.sqrt(t / ts[0]) for t in ts], 'k--',
              lw=1, label='slope 1/2 (sqrt)')
  for ax, title, unit in ((ax_mem, 'compiled memory', 'MiB'),
                          (ax_time, 'wall time per hypergradient', 's')):
    ax.set_xscale('log')
    ax.set_yscale('log')
    ax.set_xlabel('horizon T (inner steps)')
    ax.set_ylabel(unit)
    ax.set_title(title)
    ax.grid(True, which='both', alpha=0.3)
  ax_mem.legend(fontsize=8)
  ax_time.legend(fontsize=8)
  fig.suptitle(f'MLP 64-128-128-10, SGD momentum, K=9 hyperparameters '
               f'({jax.default_backend()})', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv):
  del argv
  common.enable_compilation_cache()
  horizons = [int(s) for s in _STEPS.value]
  device = f'{jax.default_backend()} ({jax.devices()[0].device_kind})'
  print(f'backend: {device}')
  rows, plain = measure(horizons, _REPEATS.value, _TIME_MAX.value,
                        _LR_INTERVALS.value)
  table = _table(rows, plain)
  print(table)
  os.makedirs(os.path.dirname(_OUT.value), exist_ok=True)
  k = _LR_INTERVALS.value + 2
  with open(_OUT.value + '.md', 'w') as f:
    f.write(
        f'# Memory and time vs horizon\n\n'
        f'MLP 64-128-128-10 (tanh, batch 64), SGD with momentum, K = {k} '
        f'hyperparameter values ({_LR_INTERVALS.value} lr intervals + '
        f'momentum + weight decay), float32, backend {device}, '
        f'{os.cpu_count()} CPU cores (timings on shared cores are noisy). '
        f'Memory: XLA '
        f'compiled bytes (arguments + outputs + temporaries). Time: best of '
        f'{_REPEATS.value} run(s) of the compiled executable; "x plain '
        f'training" divides by a jitted training unroll of the same T '
        f'steps. Reverse with checkpointing uses c = round(sqrt(T)).\n\n'
        f'Produced by `python -m benchmarks.memory_vs_horizon`.\n\n'
        f'{table}\n')
  _plot(rows, _OUT.value + '.png')
  print(f'wrote {_OUT.value}.md and .png')


if __name__ == '__main__':
  app.run(main)
