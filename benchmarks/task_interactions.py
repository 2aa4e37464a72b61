"""Learning task interactions on digits: a learned 10 x 10 coupling matrix.

    python -m benchmarks.task_interactions            # ~2 min on 2 CPU cores

Ten one-vs-rest tasks of scikit-learn's digits, each a logistic regression
on its own 10 positive and 10 negative examples, coupled by
``sum_jk A_jk ||w_j - w_k||^2`` (Franceschi et al. 2017's task interactions);
``A`` (a ``hypergrad.ConstantLeaf``) learned by reverse-mode hypergradients
of the validation loss (300 examples), Adam projected onto symmetric
non-negative matrices (zero diagonal). Test accuracy (360 images, the class of the highest
task score) of independent tasks, the best fixed all-equal coupling and the
learned matrix, with 95% Student-t intervals over seeds. Writes
``benchmarks/results/task_interactions.{md,json,png}``.
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app
from absl import flags
import numpy as np

from benchmarks import common
from hypergrad.experiments import plotting
from hypergrad.experiments import task_interactions as ti

_SEEDS = flags.DEFINE_integer('seeds', 5, 'Independent draws of the tasks.')
_PER_TASK = flags.DEFINE_integer('per_task', 10,
                                 'Positives (and negatives) per task.')
_OUT = flags.DEFINE_string('results_dir', 'benchmarks/results',
                           'Where task_interactions.{md,json,png} go.')


def plot(matrices, path: str) -> None:
  plotting.plot_matrix(
      np.mean(np.asarray(matrices), axis=0), path,
      f'learned interaction matrix A (mean of {len(matrices)} seeds)',
      'task (digit)')


def main(argv):
  del argv
  common.enable_compilation_cache()
  start = time.perf_counter()
  config = ti.InteractionConfig()
  runs = []
  for seed in range(_SEEDS.value):
    r = ti.run(ti.make_data(seed, per_task=_PER_TASK.value), config)
    r['seed'] = seed
    runs.append(r)
    print(f'seed {seed}: independent {r["independent"]:.4f} all-equal '
          f'(c={r["best_c"]:g}) {r["all_equal"]:.4f} learned '
          f'{r["learned"]:.4f}', flush=True)
  seconds = time.perf_counter() - start
  command = ('python -m benchmarks.task_interactions ' + ' '.join(
      sys.argv[1:])).strip()
  fmt = common.fmt_interval
  rows = []
  for key, label in (('independent', 'independent tasks (A = 0)'),
                     ('all_equal', 'fixed all-equal coupling (best c of the '
                      'grid)'),
                     ('learned', 'learned interaction matrix')):
    diff = ([r['learned'] - r[key] for r in runs] if key != 'learned'
            else None)
    rows.append([label, fmt([r[key] for r in runs], 100),
                 fmt([r[f'val_loss_{key}'] for r in runs], 1, 3),
                 fmt(diff, 100) if diff else '-'])
  lines = [
      '# Learning task interactions on digits', '',
      f'`{command}`: {_SEEDS.value} seeds, {seconds / 60:.1f} min on '
      f'{os.cpu_count()} CPU cores. Ten one-vs-rest tasks, each a logistic '
      f'regression on its own {_PER_TASK.value} positive and '
      f'{_PER_TASK.value} negative examples (64 pixels and a bias), '
      f'{config.num_steps} full-batch gradient steps (lr {config.inner_lr}, '
      f'L2 {config.l2}) on sum_j L_j(w_j) + sum_jk A_jk ||w_j - w_k||^2; A '
      f'learned by reverse-mode hypergradients of the validation loss (300 '
      f'examples), {config.outer_steps} Adam steps ({config.outer_lr}) '
      'projected onto symmetric non-negative matrices with zero diagonal, from the best '
      f'all-equal c of {list(config.grid[1:])}. Test accuracy on the 360 '
      'test digits (the class of the highest task score), mean ± 95% '
      'Student-t half-width over seeds.', '',
      common.markdown_table(
          ['coupling', 'test acc %', 'validation loss',
           'learned minus it (paired), points'], rows),
      '', '![learned matrix](task_interactions.png)', '',
      'Per seed (test accuracy %): ' + '; '.join(
          f'seed {r["seed"]}: independent {100 * r["independent"]:.2f}, '
          f'all-equal (c = {r["best_c"]:g}) {100 * r["all_equal"]:.2f}, '
          f'learned {100 * r["learned"]:.2f}' for r in runs)]
  text = '\n'.join(lines) + '\n'
  print(text)
  os.makedirs(_OUT.value, exist_ok=True)
  base = os.path.join(_OUT.value, 'task_interactions')
  with open(base + '.md', 'w') as f:
    f.write(text)
  with open(base + '.json', 'w') as f:
    json.dump({'command': command, 'seconds': seconds,
               'config': {k: list(v) if isinstance(v, tuple) else v
                          for k, v in vars(config).items()},
               'runs': runs}, f, indent=1)
  plot([r['matrix'] for r in runs], base + '.png')


if __name__ == '__main__':
  app.run(main)
