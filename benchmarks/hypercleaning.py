"""Data hyper-cleaning on Fashion-MNIST: 5,000 per-example weights, reverse mode.

    python -m benchmarks.hypercleaning --rtho_num_train 0     # the main table
    python -m benchmarks.hypercleaning --models '' --rtho_num_train 200
                                                     # RTHO against reverse mode
    python -m benchmarks.hypercleaning --report_only  # the .md from the .json files

For every seed: 5,000 training examples of Fashion-MNIST (Debian's
``dataset-fashion-mnist``), half given a random wrong label, 5,000 clean
validation examples, the official 10,000 test images. A model trained by
full-batch gradient descent for a fixed horizon on the weighted loss; the
weights (a ``hypergrad.ConstantLeaf`` in [0, 1]) learned by reverse-mode
hypergradients of the validation loss, Adam and the box projection. Test
accuracy of the oracle (clean examples only), the baseline (every example,
noisy labels) and hyper-cleaning (the learned weights), the share of the
baseline-to-oracle gap closed, and precision / recall / F1 of flagging
the corrupted examples (weight < 0.5), each with a 95% Student-t interval
over seeds. Writes ``benchmarks/results/hypercleaning.{md,json}``.

Real-time forward mode (RTHO, ``--rtho_num_train N``) pushes one
state-sized tangent per weight through every inner step, i.e. N
Jacobian-vector products of the full-batch step per step: at N = 5,000 that
is about 400 GFLOP per step, out of reach on a CPU. It is compared with the
full-horizon reverse-mode search on a smaller N, at equal compute (the
reverse search gets as many outer steps as fit in RTHO's measured time),
into ``hypercleaning_rtho.json``; the table of ``hypercleaning.md`` shows both.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time

from absl import app
from absl import flags
import jax
import numpy as np

from benchmarks import common
from hypergrad.experiments import hypercleaning as hc

_SEEDS = flags.DEFINE_integer('seeds', 3, 'Independent draws (data, noise).')
_MODELS = flags.DEFINE_list('models', ['softmax', 'mlp'],
                            'softmax and/or mlp.')
_NUM_TRAIN = flags.DEFINE_integer('num_train', 5000, 'Training examples N.')
_NUM_VAL = flags.DEFINE_integer('num_val', 5000, 'Clean validation examples.')
_OUT = flags.DEFINE_string('results_dir', 'benchmarks/results',
                           'Where hypercleaning.{md,json} go.')
_TAG = flags.DEFINE_string('tag', '', 'Suffix of the output files.')
_RTHO_N = flags.DEFINE_integer('rtho_num_train', 0,
                               'N of the RTHO comparison (0: skip it).')
_RTHO_EVERY = flags.DEFINE_integer('rtho_every', 10,
                                   'RTHO: inner steps between updates.')
_REPORT_ONLY = flags.DEFINE_bool('report_only', False,
                                 'Rewrite the .md from the saved .json.')

# Per model: the inner horizon, learning rate and the outer loop.
CONFIGS = {
    'softmax': hc.CleaningConfig(model='softmax', num_steps=300,
                                 inner_lr=0.05, outer_steps=15,
                                 outer_lr=0.15),
    'mlp': hc.CleaningConfig(model='mlp', num_steps=300, inner_lr=0.05,
                             outer_steps=10, outer_lr=0.2, hidden=32),
}

def _cleaning_rows(runs) -> list:
  rows = []
  for model, rs in runs.items():
    cfg = CONFIGS[model]
    name = ('softmax regression' if model == 'softmax'
            else f'MLP 784-{cfg.hidden}-10')
    rows.append([
        f'{name}, T = {cfg.num_steps}, reverse mode',
        common.fmt_interval([r['oracle'] for r in rs], 100),
        common.fmt_interval([r['baseline'] for r in rs], 100),
        common.fmt_interval([r['cleaned'] for r in rs], 100),
        common.fmt_interval([r['gap_closed'] for r in rs], 100, 0),
        common.fmt_interval([r['precision'] for r in rs], 1, 3),
        common.fmt_interval([r['recall'] for r in rs], 1, 3),
        common.fmt_interval([r['f1'] for r in rs], 1, 3),
        f'{np.mean([r["seconds_per_hypergradient"] for r in rs]):.2f}',
        # Recorded since the plain run is timed to completion (older runs
        # timed its dispatch only).
        (f'{np.mean([r["plain_seconds"] for r in rs]):.2f}'
         if all(r.get('plain_timed') for r in rs) else '-'),
        f'{cfg.outer_steps} outer steps, '
        f'{np.mean([r["search_seconds"] for r in rs]):.0f} s'])
  return rows


def _rtho_rows(rtho) -> list:
  rows = []
  for key, label in (('rtho', f'RTHO (online, a step every '
                      f'{rtho["every"]} inner steps)'),
                     ('reverse', 'reverse mode, same seconds')):
    rs = rtho[key]
    base = rtho['reverse']
    gap = [(r['cleaned'] - b['baseline']) / (b['oracle'] - b['baseline'])
           for r, b in zip(rs, base)]
    cost = (f'1 run, {np.mean([r["seconds"] for r in rs]):.0f} s'
            if key == 'rtho' else
            f'{np.mean([r["outer_steps"] for r in rs]):.0f} outer steps, '
            f'{np.mean([r["search_seconds"] for r in rs]):.0f} s')
    rows.append([
        f'softmax regression, N = {rtho["num_train"]}, {label}',
        common.fmt_interval([b['oracle'] for b in base], 100),
        common.fmt_interval([b['baseline'] for b in base], 100),
        common.fmt_interval([r["cleaned"] for r in rs], 100),
        common.fmt_interval(gap, 100, 0),
        common.fmt_interval([r['precision'] for r in rs], 1, 3),
        common.fmt_interval([r['recall'] for r in rs], 1, 3),
        common.fmt_interval([r['f1'] for r in rs], 1, 3), '-', '-', cost])
  return rows


def write_report(out_dir: str, tag: str = '') -> str:
  """``hypercleaning{tag}.md`` from the saved JSON files; returns its text."""
  base = os.path.join(out_dir, f'hypercleaning{tag}')
  main_run = rtho = None
  if os.path.exists(base + '.json'):
    with open(base + '.json') as f:
      main_run = json.load(f)
  if os.path.exists(base + '_rtho.json'):
    with open(base + '_rtho.json') as f:
      rtho = json.load(f)
  lines = ['# Data hyper-cleaning on Fashion-MNIST', '']
  rows = []
  if main_run:
    lines += [
        f'`{main_run["command"]}`: {main_run["seeds"]} seeds, '
        f'{main_run["seconds"] / 60:.1f} min on {main_run["machine"]}. N = '
        f'{main_run["num_train"]} training examples, half with a random '
        f'wrong label; {main_run["num_val"]} clean validation examples; the '
        '10,000 test images. Weights learned by reverse-mode hypergradients '
        '(Adam on the weights, projected onto [0, 1]); an example is flagged '
        'as corrupted when its weight ends below 0.5. The test accuracy of '
        'hyper-cleaning is a model retrained from the same initialisation '
        'with the best evaluated weights.', '']
    rows += _cleaning_rows(main_run['runs'])
  if rtho:
    lines += [
        f'RTHO row: `{rtho["command"]}`, {rtho["seeds"]} seeds, '
        f'{rtho["seconds"] / 60:.1f} min; N = {rtho["num_train"]} and '
        f'{rtho["num_val"]} validation examples (RTHO pushes one tangent per '
        'weight through every step), oracle and baseline of that draw; the '
        'reverse-mode search gets the outer steps that fit in the RTHO '
        'run\'s measured seconds.', '']
    rows += _rtho_rows(rtho)
  header = ['setting', 'oracle test acc %', 'baseline test acc %',
            'hyper-cleaning test acc %', 'gap closed %', 'precision',
            'recall', 'F1', 's / hypergradient', 's / plain run', 'cost']
  lines += ['Mean ± 95% Student-t half-width over seeds.', '',
            common.markdown_table(header, rows)]
  if main_run:
    lines += ['', 'Per seed (test accuracy %, F1):', '']
    for model, rs in main_run['runs'].items():
      lines.append(f'- {model}: ' + '; '.join(
          f'seed {r["seed"]}: oracle {100 * r["oracle"]:.2f}, baseline '
          f'{100 * r["baseline"]:.2f}, cleaned {100 * r["cleaned"]:.2f}, F1 '
          f'{r["f1"]:.3f}' for r in rs))
  text = '\n'.join(lines) + '\n'
  with open(base + '.md', 'w') as f:
    f.write(text)
  return text


def _machine() -> str:
  return (f'{os.cpu_count()} CPU cores ({platform.processor() or "cpu"}, jax '
          f'{jax.__version__}, backend {jax.default_backend()})')


def main(argv):
  del argv
  os.makedirs(_OUT.value, exist_ok=True)
  base = os.path.join(_OUT.value, f'hypercleaning{_TAG.value}')
  if _REPORT_ONLY.value:
    print(write_report(_OUT.value, _TAG.value))
    return
  common.enable_compilation_cache()
  command = ('python -m benchmarks.hypercleaning ' + ' '.join(
      sys.argv[1:])).strip()
  models = [m for m in _MODELS.value if m]
  if models:
    start = time.perf_counter()
    runs = {m: [] for m in models}
    for seed in range(_SEEDS.value):
      data = hc.make_data(seed, num_train=_NUM_TRAIN.value,
                          num_val=_NUM_VAL.value)
      for model in models:
        r = hc.run(data, CONFIGS[model], seed)
        r['seed'] = seed
        r['plain_timed'] = True
        r['gap_closed'] = ((r['cleaned'] - r['baseline'])
                           / (r['oracle'] - r['baseline']))
        runs[model].append(r)
        print(f'seed {seed} {model}: oracle {r["oracle"]:.4f} baseline '
              f'{r["baseline"]:.4f} cleaned {r["cleaned"]:.4f} F1 '
              f'{r["f1"]:.3f} ({r["search_seconds"]:.0f} s search)',
              flush=True)
    with open(base + '.json', 'w') as f:
      json.dump({'command': command, 'seconds': time.perf_counter() - start,
                 'seeds': _SEEDS.value, 'machine': _machine(),
                 'num_train': _NUM_TRAIN.value, 'num_val': _NUM_VAL.value,
                 'configs': {m: vars(CONFIGS[m]) for m in runs},
                 'runs': runs}, f, indent=1)
  if _RTHO_N.value:
    start = time.perf_counter()
    cfg = CONFIGS['softmax']
    out = {'rtho': [], 'reverse': []}
    num_val = min(_NUM_VAL.value, 1000)
    for seed in range(_SEEDS.value):
      data = hc.make_data(seed, num_train=_RTHO_N.value, num_val=num_val)
      r = hc.run_rtho(data, cfg, seed, every=_RTHO_EVERY.value)
      b = hc.run_reverse_for(data, cfg, seed, r['seconds'])
      out['rtho'].append(r)
      out['reverse'].append(b)
      print(f'seed {seed} N={_RTHO_N.value}: RTHO {r["cleaned"]:.4f} F1 '
            f'{r["f1"]:.3f} ({r["seconds"]:.0f} s); reverse '
            f'{b["cleaned"]:.4f} F1 {b["f1"]:.3f} ({b["outer_steps"]} outer '
            f'steps); oracle {b["oracle"]:.4f} baseline {b["baseline"]:.4f}',
            flush=True)
    with open(base + '_rtho.json', 'w') as f:
      json.dump({'command': command, 'seconds': time.perf_counter() - start,
                 'seeds': _SEEDS.value, 'machine': _machine(),
                 'num_train': _RTHO_N.value, 'num_val': num_val,
                 'every': _RTHO_EVERY.value, **out}, f, indent=1)
  print(write_report(_OUT.value, _TAG.value))


if __name__ == '__main__':
  app.run(main)
