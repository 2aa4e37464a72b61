r"""Every cost benchmark in one command, one markdown report with plots.

    python -m benchmarks.run            # < 15 min on 2 CPU cores
    python -m benchmarks.run --full     # paper scale (T = 10^4 timings, ...)
    python -m benchmarks.run --sections accuracy,tasks   # a subset

Sections (each composed from the benchmark that owns it):

1. ``forward_cost``: time of a forward-mode hypergradient / time of plain
   training of the same T steps, for K = 3, 9 and 32 hyperparameter values,
   with and without skipping the intervals that have not begun
   (``benchmarks.forward_cost``).
2. ``memory``: compiled memory (and time) vs horizon for forward, reverse and
   checkpointed reverse mode (``benchmarks.memory_vs_horizon``).
3. ``accuracy``: relative error of forward- and reverse-mode hypergradients,
   computed in float32 and in float64, against central finite differences of
   the float64 loss, on a small MLP; and how often the sign agrees (FDS's
   outer step uses only the sign).
4. ``tasks``: plain-training steps per second of every task config and the
   FDS forward ratio on the MNIST-1D and Fashion-MNIST MLPs and WRN-16-1
   (``benchmarks.tasks``).

Writes ``benchmarks/results/report.md`` and ``report_*.png``.
"""

from __future__ import annotations

import os
import time
import traceback

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
from benchmarks import forward_cost
from benchmarks import memory_vs_horizon
from benchmarks import tasks as tasks_bench
import hypergrad

SECTIONS = ('forward_cost', 'memory', 'accuracy', 'tasks')

# Default (< 15 min on 2 CPU cores) and --full (paper scale) settings.
SETTINGS = {
    False: {'forward_steps': 1000, 'forward_lr_intervals': (1, 7, 30),
            'forward_repeats': 2,
            'memory_horizons': (1000, 3000, 10000), 'memory_time_max': 3000,
            'accuracy_horizons': (100, 1000),
            'task_steps': 500, 'wrn_steps': 7, 'wrn_batch': 16,
            'task_repeats': 2},
    True: {'forward_steps': 10000, 'forward_lr_intervals': (1, 7, 30),
           'forward_repeats': 3,
           'memory_horizons': (1000, 3000, 10000, 30000, 100000),
           'memory_time_max': 10000,
           'accuracy_horizons': (100, 1000, 10000),
           'task_steps': 2000, 'wrn_steps': 20, 'wrn_batch': 0,
           'task_repeats': 3},
}

_FULL = flags.DEFINE_bool('full', False, 'Paper-scale settings (hours).')
_SECTIONS = flags.DEFINE_list('sections', list(SECTIONS),
                              'Sections to run: ' + ', '.join(SECTIONS))
_RESULTS_DIR = flags.DEFINE_string(
    'results_dir', os.path.join(os.path.dirname(__file__), 'results'),
    'Where report.md and its plots go.')


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


# ---------------------------------------------------------------------------
# 1. Forward-mode cost vs K.


def section_forward_cost(s, out_dir):
  steps, ns = s['forward_steps'], s['forward_lr_intervals']
  rows = forward_cost.measure(steps, list(ns), s['forward_repeats'])
  table = common.markdown_table(
      ['K', 'plain ms', 'rows ms', 'rows ratio', 'batch ms', 'batch ratio',
       'naive ms', 'naive ratio'], rows)
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  ks = [r[0] for r in rows]
  ax.plot(ks, [float(r[3]) for r in rows], 'o-',
          label='forward, row push (CPU default)')
  ax.plot(ks, [float(r[5]) for r in rows], 'd-',
          label='forward, batch push (GPU/TPU default)')
  ax.plot(ks, [float(r[7]) for r in rows], 's--', label='naive (all from 0)')
  ax.plot(ks, [k + 1 for k in ks], 'k:', lw=1, label='K + 1')
  ax.set_xlabel('K (hyperparameter values = tangents)')
  ax.set_ylabel('time / plain training')
  ax.set_title(f'forward hypergradient cost, T = {steps}', fontsize=10)
  ax.grid(True, alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  png = 'report_forward_cost.png'
  fig.savefig(os.path.join(out_dir, png), dpi=120)
  plt.close(fig)
  text = (
      f'MLP 64-128-128-10 (tanh, batch 64) of `benchmarks/common.py`, SGD '
      f'with momentum, T = {steps}; K = lr intervals + 2 (momentum, weight '
      f'decay). "ratio": the forward hypergradient / jitted plain unroll of '
      f'the same steps (best of {s["forward_repeats"]}), with each tangent '
      f'push; "naive": every tangent carried from step 0 '
      f'(`skip_unstarted=False`). Sharing intervals and skipping unstarted '
      f'ones is what keeps the FDS setting (K = 9) cheap.\n\n{table}\n\n![forward cost]({png})\n')
  return text


# ---------------------------------------------------------------------------
# 2. Memory vs horizon.


def section_memory(s, out_dir):
  rows, plain = memory_vs_horizon.measure(
      list(s['memory_horizons']), 1, s['memory_time_max'], 7)
  # pylint: disable=protected-access
  table = memory_vs_horizon._table(rows, plain)
  png = 'report_memory.png'
  memory_vs_horizon._plot(rows, os.path.join(out_dir, png))
  # pylint: enable=protected-access
  return (
      f'MLP 64-128-128-10 (batch 64), K = 9 (7 lr intervals + momentum + '
      f'weight decay). Memory: XLA compiled bytes (arguments + outputs + '
      f'temporaries), measured at every T; time: one run, for T <= '
      f'{s["memory_time_max"]}. Forward mode is flat in T, reverse mode '
      f'linear, checkpointed reverse (c = sqrt(T)) ~sqrt(T).\n\n{table}\n\n'
      f'![memory vs horizon]({png})\n')


# ---------------------------------------------------------------------------
# 3. Hypergradient accuracy vs float64 finite differences.


def _flat(tree) -> np.ndarray:
  return np.concatenate([np.ravel(np.asarray(x, np.float64))
                         for x in jax.tree.leaves(tree)])


def hypergradient_accuracy(horizons, widths=(16, 32, 10), lr: float = 0.05):
  """Rows ``(T, estimator, dtype, norm rel err, max rel err, sign agree,
  forward-vs-reverse rel diff)``.

  The problem is ``common.mlp_problem`` (tanh MLP, SGD with momentum) with
  the FDS hyperparameters (7 lr intervals, momentum 0.9, wd 5e-4); the
  reference is the central difference of the float64 loss (eps 1e-6). The
  last column compares the two estimators in the same dtype: where it is far
  below the error against finite differences, that error is the finite
  difference's own.
  """
  rows = []
  with jax.enable_x64(True):
    for steps in horizons:
      problems = {d: common.mlp_problem(widths, batch_size=32,
                                        num_examples=256, dtype=d)
                  for d in (jnp.float32, jnp.float64)}
      hps = {d: {'lr': hypergrad.constant(lr, 7, d),
                 'momentum': hypergrad.constant(0.9, 1, d),
                 'weight_decay': hypergrad.constant(5e-4, 1, d)}
             for d in problems}
      step_fn, loss_fn, state = problems[jnp.float64]
      loss64 = jax.jit(lambda h, steps=steps, step_fn=step_fn,
                       loss_fn=loss_fn, state=state: loss_fn(
                           hypergrad.unroll(step_fn, state, h, steps)))
      ref = _flat(hypergrad.finite_difference(loss64, hps[jnp.float64]))
      for dtype, (step_fn, loss_fn, state) in problems.items():
        grads = {name: _flat(fn(step_fn, loss_fn, state, hps[dtype],
                                steps)[1])
                 for name, fn in (('forward', hypergrad.forward_hypergrad),
                                  ('reverse', hypergrad.reverse()))}
        agree = float(np.linalg.norm(grads['forward'] - grads['reverse'])
                      / np.linalg.norm(grads['reverse']))
        for name, g in grads.items():
          err = np.abs(g - ref)
          rows.append((steps, name, jnp.dtype(dtype).name,
                       float(np.linalg.norm(g - ref) / np.linalg.norm(ref)),
                       float(np.max(err / np.maximum(np.abs(ref), 1e-12))),
                       float(np.mean(np.sign(g) == np.sign(ref))), agree))
  return rows


def section_accuracy(s, out_dir):
  rows = hypergradient_accuracy(s['accuracy_horizons'])
  table = common.markdown_table(
      ['T', 'estimator', 'dtype', '‖g − g_FD‖ / ‖g_FD‖',
       'max per-value rel. err', 'sign agreement',
       '‖g_fwd − g_rev‖ / ‖g_rev‖'],
      [(t, n, d, f'{a:.1e}', f'{b:.1e}', f'{c:.0%}', f'{e:.1e}')
       for t, n, d, a, b, c, e in rows])
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(5.5, 3.8))
  for name, marker in (('forward', 'o'), ('reverse', 's')):
    for dtype, style in (('float32', '-'), ('float64', '--')):
      pts = [(r[0], r[3]) for r in rows if r[1] == name and r[2] == dtype]
      ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker=marker,
              label=f'{name}, {dtype}')
  ax.set_xscale('log')
  ax.set_yscale('log')
  ax.set_xlabel('horizon T')
  ax.set_ylabel('relative error vs float64 FD')
  ax.set_title('hypergradient accuracy (MLP 16-32-10, K = 9)', fontsize=10)
  ax.grid(True, which='both', alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  png = 'report_accuracy.png'
  fig.savefig(os.path.join(out_dir, png), dpi=120)
  plt.close(fig)
  return (
      'Tanh MLP 16-32-10 on random data (batch 32 of 256), SGD with '
      'momentum, K = 9 hyperparameter values (7 lr intervals at 0.05, '
      'momentum 0.9, weight decay 5e-4). Reference: central finite '
      'differences (eps = 1e-6) of the float64 validation loss. Each '
      'estimator runs the whole unroll in the given dtype. "max per-value": '
      'the worst single value, relative to its own size (large when a '
      'hypergradient is near 0); "sign agreement": share of values whose '
      'sign matches the reference (what a sign step uses); the last column '
      'compares the two estimators with each other in the same dtype: where '
      'it is far below their error against finite differences, the finite '
      'difference (truncation and rounding, ~1e-10 relative at best) is the '
      'larger error.\n\n'
      f'{table}\n\n![accuracy]({png})\n')


# ---------------------------------------------------------------------------
# 4. Tasks.


def section_tasks(s, out_dir):
  del out_dir
  rows = tasks_bench.measure(steps=s['task_steps'], wrn_steps=s['wrn_steps'],
                             repeats=s['task_repeats'],
                             wrn_batch=s['wrn_batch'])
  return (f'{tasks_bench.notes(s["task_repeats"])}\n\n'
          f'{tasks_bench.table(rows)}\n')


RUNNERS = {'forward_cost': ('Forward-mode cost vs number of '
                            'hyperparameters', section_forward_cost),
           'memory': ('Memory vs horizon', section_memory),
           'accuracy': ('Hypergradient accuracy vs float64 finite '
                        'differences', section_accuracy),
           'tasks': ('Steps per second per task', section_tasks)}


def _read_sections(path: str) -> dict[str, str]:
  """The ``## title`` sections of an existing report, by title."""
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    text = f.read()
  sections = {}
  for chunk in text.split('\n## ')[1:]:
    title = chunk.split('\n', 1)[0].strip()
    sections[title] = '## ' + chunk.rstrip('\n') + '\n'
  return sections


def main(argv):
  del argv
  common.enable_compilation_cache()
  unknown = [x for x in _SECTIONS.value if x not in SECTIONS]
  if unknown:
    raise app.UsageError(f'unknown sections {unknown}; known: '
                         f'{", ".join(SECTIONS)}.')
  settings = SETTINGS[_FULL.value]
  out_dir = _RESULTS_DIR.value
  os.makedirs(out_dir, exist_ok=True)
  device = tasks_bench.describe()
  print(f'backend: {device}', flush=True)
  start = time.time()
  command = 'python -m benchmarks.run' + (' --full' if _FULL.value else '')
  if set(_SECTIONS.value) != set(SECTIONS):
    command += ' --sections ' + ','.join(_SECTIONS.value)
  path = os.path.join(out_dir, 'report.md')
  # A subset re-run replaces its own sections and keeps the others.
  kept = _read_sections(path) if set(_SECTIONS.value) != set(SECTIONS) else {}
  done = {}
  for name in SECTIONS:
    if name not in _SECTIONS.value:
      continue
    title, runner = RUNNERS[name]
    t0 = time.time()
    print(f'== {title}', flush=True)
    try:
      body = runner(settings, out_dir)
    except Exception as e:  # pylint: disable=broad-except
      # One broken section must not cost the others' results.
      traceback.print_exc()
      body = f'**Failed**: `{type(e).__name__}: {e}`\n'
    seconds = time.time() - t0
    print(body, flush=True)
    done[title] = (f'## {title}\n\n{body}\n_{seconds / 60:.1f} min, '
                   f'`{command}`._\n')
    parts = [done.get(RUNNERS[n][0]) or kept.get(RUNNERS[n][0])
             for n in SECTIONS]
    # Rewritten after every section, so a long run is readable as it goes.
    with open(path, 'w') as f:
      f.write(
          f'# hypergrad cost benchmarks\n\nProduced by `python -m '
          f'benchmarks.run` (each section names the command that last '
          f'made it; this one took {(time.time() - start) / 60:.1f} min) on '
          f'{device} (shared with other jobs: timings are noisy, ratios '
          f'steadier than seconds).\n\n' + '\n'.join(p for p in parts if p))
  print(f'wrote {path}')


if __name__ == '__main__':
  app.run(main)
