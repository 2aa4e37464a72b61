r"""Warm start from the recipe: FDS refining a tuned warm-up + cosine schedule.

For each seed: the peak lr of the warm-up + cosine recipe is picked from the
6-run grid on validation (``hypergrad.experiments.references``, the main
job's strongest reference), then FDS refines the recipe as a schedule family
(``hypergrad.warmup_decay``: peak, warm-up and final fractions and
``--intervals`` residual factors, with momentum and weight decay), each outer
step the median of 4 inner runs' reverse-mode hypergradients, values split
2-2 in sign left in place. The best evaluated schedule and the recipe are
retrained from the same 3 initialisations and tested: a paired comparison
with the strongest reference, its runs charged to the same budget.

    python -m benchmarks.warm_start                          # ~8 min, 2 CPUs
    python -m benchmarks.warm_start --max_expansion 2 --tag _held

Writes ``benchmarks/results/warm_start<tag>.md`` and ``.json``.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import common
import hypergrad
from hypergrad.experiments import fds as fds_lib
from hypergrad.experiments import references
from hypergrad.experiments import tasks as tasks_lib


def _test_accuracy(task, hparams, steps, seeds):
  accs = []
  for seed in seeds:
    final = task.train(hparams, steps, init_seed=seed)
    test = task.evaluate(final, 'test')
    accs.append(test['accuracy'] if math.isfinite(test['loss']) else 0.0)
  return accs


def run_seed(task, seed: int, horizon: int, intervals: int, outer_steps: int,
             lr_step: float, population: int, max_expansion: float | None,
             retrains: int) -> dict:
  """One seed's paired comparison: the refined family against the recipe."""
  start = time.time()
  ref = references.strongest_reference(
      task, horizon, references.validation_loss(task, horizon, seed))
  default = dict(task.spec.default_hparams)
  factor = references.COSINE_GRID[int(np.argmin(ref['grid_val_loss']))]
  peak = default['lr'] * factor
  h0 = {'lr': hypergrad.warmup_decay(peak, warmup=references.COSINE_WARMUP,
                                     intervals=intervals, dtype=task.dtype),
        'momentum': hypergrad.constant(default['momentum'], dtype=task.dtype),
        'weight_decay': hypergrad.constant(default['weight_decay'],
                                           dtype=task.dtype)}
  fn = fds_lib.make_hypergrad_fn(task, hypergrad.reverse(), horizon,
                                 seed=seed, population=population,
                                 aggregate='median', min_agreement=0.5)
  # The family's parameters live on log / logit scales: unbounded.
  opt = hypergrad.sign_descent(
      {'lr': lr_step, 'momentum': 0.02, 'weight_decay': 1e-4},
      bounds={'momentum': (0.0, 0.999), 'weight_decay': (0.0, None)})
  state, records = hypergrad.fds_search(
      fn, h0, opt=opt, max_outer_steps=outer_steps, tol=0.0,
      max_expansion=max_expansion)
  seeds = [10**6 + 1000 * seed + i for i in range(retrains)]
  learned = _test_accuracy(task, state.best_hparams, horizon, seeds)
  recipe = _test_accuracy(task, ref['schedules']['cosine_grid'], horizon,
                          seeds)
  best = state.best_hparams
  return {
      'seed': seed, 'peak': peak, 'best_step': state.best_step,
      'held': [r['untrusted'] for r in records],
      'val_loss': [r['val_loss'] for r in records],
      'learned': float(np.mean(learned)), 'reference': float(np.mean(recipe)),
      'gain': float(np.mean(learned) - np.mean(recipe)),
      'learned_lr': np.asarray(hypergrad.expand(
          {'lr': best['lr']}, horizon)['lr'])[::horizon // 10].tolist(),
      'momentum': float(best['momentum'][0]),
      'weight_decay': float(best['weight_decay'][0]),
      'seconds': time.time() - start}


def table(rows: list[dict]) -> str:
  gains = np.array([r['gain'] for r in rows]) * 100
  mean, half = common.t_interval(gains)
  lo, hi = mean - half, mean + half
  lines = ['| seed | recipe peak | learned % | reference % | paired gain | '
           'best at outer step | values held per step |',
           '|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['seed']} | {r['peak']:g} | {100 * r['learned']:.2f} "
                 f"| {100 * r['reference']:.2f} | {100 * r['gain']:+.2f} | "
                 f"{r['best_step']} | {r['held']} |")
  lines.append('')
  lines.append(f'Mean paired gain {gains.mean():+.2f} points, 95% interval '
               f'[{lo:+.2f}, {hi:+.2f}], {len(rows)} seeds; ahead on '
               f'{int(np.sum(gains > 0))} of {len(rows)}.')
  return '\n'.join(lines)


def _define_flags() -> dict:
  # Defined when run as a script only: importing the module (its test, the
  # HPO table's process) defines no flags that could clash.
  return {
      'task': flags.DEFINE_string('task', 'mnist1d_large_mlp', 'Task name.'),
      'horizon': flags.DEFINE_integer('horizon', 1000, 'Inner steps T.'),
      'seeds': flags.DEFINE_list('seeds', ['0', '1', '2', '3'], 'Seeds.'),
      'intervals': flags.DEFINE_integer(
          'intervals', 5, 'Residual intervals of the family.'),
      'outer_steps': flags.DEFINE_integer('outer_steps', 8, 'Outer steps.'),
      'lr_step': flags.DEFINE_float(
          'lr_step', 0.1, 'Sign-descent step of the family parameters '
          '(log / logit scale).'),
      'population': flags.DEFINE_integer('population', 4,
                                         'Inner runs per step.'),
      'max_expansion': flags.DEFINE_float(
          'max_expansion', 0.0, 'Hold values above this expansion (0: off).'),
      'retrains': flags.DEFINE_integer('retrains', 3,
                                       'Retrain initialisations.'),
      'tag': flags.DEFINE_string('tag', '', 'Suffix of the result files.'),
      'out': flags.DEFINE_string('out', os.path.join('benchmarks', 'results'),
                                 'Folder of the result files.'),
  }


def write(rows: list[dict], out: str, title: str, command: str) -> str:
  """The table, to ``<out>.md`` (with its command) and the rows to ``<out>.json``."""
  text = table(rows)
  os.makedirs(os.path.dirname(out) or '.', exist_ok=True)
  with open(out + '.md', 'w') as f:
    f.write(f'# {title}\n\n`{command}`\n\n{text}\n')
  with open(out + '.json', 'w') as f:
    json.dump(rows, f, indent=1)
  return text


def main(argv, f):
  del argv
  v = {k: x.value for k, x in f.items()}
  task = tasks_lib.make_task(v['task'])
  rows = []
  for seed in v['seeds']:
    rows.append(run_seed(task, int(seed), v['horizon'], v['intervals'],
                         v['outer_steps'], v['lr_step'], v['population'],
                         v['max_expansion'] or None, v['retrains']))
    print(json.dumps({k: rows[-1][k] for k in ('seed', 'learned',
                                               'reference', 'gain')}),
          flush=True)
  command = 'python -m benchmarks.warm_start ' + ' '.join(
      f'--{k}={",".join(x) if isinstance(x, list) else x}'
      for k, x in v.items() if k not in ('tag', 'out'))
  print(write(rows, os.path.join(v['out'], f'warm_start{v["tag"]}'),
              f'Warm start from the recipe ({v["task"]}, T = {v["horizon"]})',
              command))


if __name__ == '__main__':
  _flags = _define_flags()
  jax.config.config_with_absl()
  app.run(functools.partial(main, f=_flags))
