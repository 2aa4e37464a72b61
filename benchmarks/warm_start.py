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

_TASK = flags.DEFINE_string('task', 'mnist1d_large_mlp', 'Task name.')
_HORIZON = flags.DEFINE_integer('horizon', 1000, 'Inner steps T.')
_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2', '3'], 'Seeds.')
_INTERVALS = flags.DEFINE_integer('intervals', 5,
                                  'Residual intervals of the family.')
_OUTER = flags.DEFINE_integer('outer_steps', 8, 'Outer steps.')
_LR_STEP = flags.DEFINE_float('lr_step', 0.1,
                              'Sign-descent step of the family parameters '
                              '(log / logit scale).')
_POPULATION = flags.DEFINE_integer('population', 4, 'Inner runs per step.')
_MAX_EXPANSION = flags.DEFINE_float(
    'max_expansion', 0.0, 'Hold values above this expansion (0: off).')
_RETRAINS = flags.DEFINE_integer('retrains', 3, 'Retrain initialisations.')
_TAG = flags.DEFINE_string('tag', '', 'Suffix of the result files.')
_OUT = flags.DEFINE_string('out', os.path.join('benchmarks', 'results'),
                           'Folder of the result files.')


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
  split = task.default_split()
  loss_fn = task.loss_fn(split)

  def val_loss(hparams):
    loss = float(loss_fn(task.train(hparams, horizon, init_seed=seed,
                                    split=split)))
    return loss if math.isfinite(loss) else math.inf

  ref = references.strongest_reference(task, horizon, val_loss)
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


def main(argv):
  del argv
  task = tasks_lib.make_task(_TASK.value)
  rows = []
  for seed in _SEEDS.value:
    rows.append(run_seed(task, int(seed), _HORIZON.value, _INTERVALS.value,
                         _OUTER.value, _LR_STEP.value, _POPULATION.value,
                         _MAX_EXPANSION.value or None, _RETRAINS.value))
    print(json.dumps({k: rows[-1][k] for k in ('seed', 'learned',
                                               'reference', 'gain')}),
          flush=True)
  write(rows)


def write(rows: list[dict]) -> None:
  """The table to stdout and ``<out>/warm_start<tag>.{md,json}``."""
  text = table(rows)
  print(text)
  os.makedirs(_OUT.value, exist_ok=True)
  base = os.path.join(_OUT.value, f'warm_start{_TAG.value}')
  command = ('python -m benchmarks.warm_start ' + ' '.join(
      f'--{f.name}={f.value}' for f in (_TASK, _HORIZON, _INTERVALS, _OUTER,
                                        _LR_STEP, _POPULATION,
                                        _MAX_EXPANSION, _RETRAINS)))
  with open(base + '.md', 'w') as f:
    f.write(f'# Warm start from the recipe ({_TASK.value}, T = '
            f'{_HORIZON.value})\n\n`{command} --seeds '
            f'{",".join(_SEEDS.value)}`\n\n{text}\n')
  with open(base + '.json', 'w') as f:
    json.dump(rows, f, indent=1)


if __name__ == '__main__':
  jax.config.config_with_absl()
  app.run(main)
