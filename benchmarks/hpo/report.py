"""The table's outputs: markdown, the paired comparisons, the plot, JSON.

Rows, labels, cost cells and search-iteration cells come from each
method's :class:`~benchmarks.hpo.methods.Method` record.
"""

from __future__ import annotations

import json
import os
import warnings

import jax
import numpy as np

from benchmarks import common
from benchmarks.hpo import evaluation
from benchmarks.hpo import methods as methods_lib
from benchmarks.hpo import searches
from benchmarks.hpo import settings as settings_lib
from hypergrad.experiments import blackbox

# The methods each other method is compared with, pair by pair.
LEADERS = ('fds_pop', 'fds', 'fds_zero')
# Plot line style of each family.
_STYLES = {'outer': '-', 'greedy': ':', 'blackbox': '-.', 'reference': '--'}


def jsonable(tree):
  """``tree`` with NumPy floats as Python floats."""
  return jax.tree.map(
      lambda x: float(x) if isinstance(x, (float, np.floating)) else x, tree)


def _mean_std(values):
  v = np.asarray(values, np.float64)
  return float(np.mean(v)), float(np.std(v))


def _interval(mean, half) -> str:
  return (f'{100 * mean:+.2f} [{100 * (mean - half):+.2f}, '
          f'{100 * (mean + half):+.2f}]')


def paired_differences(results, leaders=LEADERS) -> str:
  """Markdown: each leader's paired gain over every other method.

  Within an HPO seed every method is retrained from the same
  initialisations, so ``gain_a - gain_b`` is paired; the interval is the
  95% Student-t interval of its mean over seeds (above 0: ``a`` beats ``b``
  beyond seed luck).
  """
  labels = methods_lib.LABELS
  methods = results['methods']
  leaders = [a for a in leaders if a in methods]
  rows = []
  for b in methods:
    if b == 'default':
      continue
    row = [labels[b]]
    for a in leaders:
      if a == b:
        row.append('-')
        continue
      diff = [ra['paired_gain'] - rb['paired_gain']
              for ra, rb in zip(methods[a], methods[b])]
      row.append(_interval(*evaluation.confidence_interval(diff)))
    rows.append(row)
  return common.markdown_table(
      ['method b'] + [f'{labels[a]} minus b, points [95% CI]'
                      for a in leaders], rows)


def reference_gains(results) -> str:
  """Markdown: every row's paired gain over the strongest reference row.

  The reference rows (the constant default, warm-up + cosine at the usual
  lr, its peak lr tuned on a grid) are ranked by their mean validation
  loss, never by test; the first is the one compared with. Empty for a
  table without reference rows.
  """
  ref = results.get('reference')
  if not ref:
    return ''
  labels, methods = methods_lib.LABELS, results['methods']
  best = ref['strongest']
  rows = []
  for m, per_seed in methods.items():
    if m == best:
      continue
    diff = [r['paired_gain'] - rb['paired_gain']
            for r, rb in zip(per_seed, methods[best])]
    rows.append([labels[m], _interval(*evaluation.confidence_interval(diff))])
  val = ', '.join(f'{labels[m]} {np.mean(v):.4f}'
                  for m, v in ref['val_loss'].items())
  return (
      f"Paired gain over the strongest reference row, **{labels[best]}** "
      f"(the reference row of the lowest mean validation loss: {val}; "
      f"chosen on validation, not test):\n\n"
      + common.markdown_table(
          ['method', f'paired gain over {labels[best]}, points [95% CI]'],
          rows) + '\n\n')


def _fds_intervals(results) -> dict:
  # Tables written before the field was recorded used the launch config's.
  return results.get('fds_intervals') or settings_lib.config_intervals(
      settings_lib.fds_config(results['task']))


def _spaces_note(results) -> str:
  # The search ranges of the rows added by issue 26, when it has them.
  names = set(results['methods'])
  if not names & {'cosine_grid', 'default_cosine', *(
      m for m in names if m.endswith(('_sched', '_param')))}:
    return ''
  space = ', '.join(f"{k} [{lo:g}, {hi:g}]{' log' if log else ''}"
                    for k, (lo, hi, log) in blackbox.SEARCH_SPACE.items())
  param = ', '.join(f"{k} [{lo:g}, {hi:g}]{' log' if log else ''}"
                    for k, (lo, hi, log) in blackbox.PARAMETRIC_SPACE.items())
  grid = ', '.join(f'{f:g}' for f in searches.COSINE_GRID)
  return (
      f"Search spaces. Black-box rows '{methods_lib.SCHED_LABEL}': the "
      f"values FDS learns, shared intervals "
      f"{_fds_intervals(results)}, each value in the registry's range "
      f"({space}). Rows '{methods_lib.PARAM_LABEL}': peak lr, momentum and "
      f"weight decay in the registry's ranges, warm-up fraction, final "
      f"fraction of the peak and decay (cosine or linear): {param}. "
      f"Warm-up + cosine: linear warm-up over "
      f"{100 * searches.COSINE_WARMUP:g}% of the run to the peak, cosine "
      f"decay to 0, the task's momentum and weight decay; its grid: the "
      f"usual lr times {grid}, every run charged T steps, the lowest "
      f"validation loss kept.\n\n")


def _tuning_note(results) -> str:
  # --tune_greedy: where the greedy rows' meta step came from.
  if not results.get('tune_greedy'):
    return ''
  return (
      f"Greedy rows given their best setting (--tune_greedy): the meta step "
      f"was tuned on search seed {searches.TUNE_SEED} (none of the evaluated "
      f"seeds) over the grid one search's budget pays for, by final "
      f"validation loss; each evaluated seed ran the tuned meta step first, "
      f"then spent the rest of its budget on scales within a factor "
      f"{searches.TUNE_SPAN:g} of it (the tuning runs are not charged to the "
      f"evaluated seeds: like FDS's outer step sizes, a setting fixed "
      f"beforehand).\n\n")


def _diverged_seeds(per_seed) -> list[int]:
  # A seed whose returned schedule diverged on a retrain has a NaN loss.
  return [i for i, r in enumerate(per_seed)
          if not np.isfinite(r['test_loss'])]


def _loss_cell(per_seed) -> str:
  diverged = _diverged_seeds(per_seed)
  finite = [r['test_loss'] for i, r in enumerate(per_seed)
            if i not in diverged]
  if not finite:
    return f'diverged on all {len(per_seed)} seeds'
  loss = _mean_std(finite)
  cell = f'{loss[0]:.3f} ± {loss[1]:.3f}'
  if diverged:
    cell += (f' ({len(finite)} seeds; diverged on {len(diverged)} of '
             f'{len(per_seed)})')
  return cell


def divergence_note(results) -> str:
  """Markdown: the rows whose returned schedule diverged on a retrain.

  A diverged retrain (non-finite test loss) is kept in the accuracy at
  what it measured (a constant prediction), so the method that returned
  the schedule is charged for it; this note names each such row, seed and
  count, so that no mean hides one. Empty when none diverged.
  """
  labels = methods_lib.LABELS
  lines = []
  for m, per_seed in results['methods'].items():
    seeds = _diverged_seeds(per_seed)
    if not seeds:
      continue
    parts = []
    for i in seeds:
      n = per_seed[i].get('diverged_retrains')
      count = (f'{n} of {results["eval_seeds"]} retrains' if n
               else 'at least one retrain')
      parts.append(f'seed {i} ({count}, test accuracy '
                   f'{100 * per_seed[i]["test_accuracy"]:.2f}%)')
    lines.append(f'* {labels[m]}: {"; ".join(parts)}')
  if not lines:
    return ''
  return (
      'Diverged retrains (non-finite test loss): the schedule a search '
      'returned trained well from its search initialisation but not from '
      'every retrain initialisation. Such a retrain is counted at the '
      'accuracy it measured (the method that chose the schedule is charged '
      'for it) and its seed left out of the test-loss mean:\n\n'
      + '\n'.join(lines) + '\n\n')


def _row(results, m, per_seed) -> list[str]:
  method = methods_lib.METHODS[m]
  acc = _mean_std([r['test_accuracy'] for r in per_seed])
  spent = np.mean([r['spent'] for r in per_seed])
  secs = np.mean([r['seconds'] for r in per_seed])
  gain = evaluation.confidence_interval([r['paired_gain'] for r in per_seed])
  return [method.label, f'{100 * acc[0]:.2f} ± {100 * acc[1]:.2f}',
          '-' if m == 'default' else _interval(*gain),
          _loss_cell(per_seed), f'{spent:,.0f}',
          f"{spent / results['horizon']:.1f}",
          method.iterations([r['info'] for r in per_seed]),
          method.cost_cell(results['ratios']), f'{secs:.0f}']


def table(results) -> str:
  """Markdown: one row per method of ``results``."""
  rows = [_row(results, m, per_seed)
          for m, per_seed in results['methods'].items()]
  return common.markdown_table(
      ['method', 'test acc % (mean ± std)',
       'paired gain over default, points [95% CI]', 'test loss',
       'inner steps (equiv.)',
       '= runs of T', 'search iterations', 'cost of one (x T)',
       'search wall s'], rows)


def _plot_panel(ax, results, x, field, scale):
  for m, per_seed in results['methods'].items():
    method = methods_lib.METHODS[m]
    curves = scale * np.asarray([r[field] for r in per_seed], np.float64)
    if m == 'default':
      ax.axhline(np.nanmean(curves), color='k', ls='--', lw=1,
                 label=method.label)
      continue
    with warnings.catch_warnings():  # a point no seed reached: NaN
      warnings.simplefilter('ignore', RuntimeWarning)
      mean = np.nanmean(curves, axis=0)
      std = np.nanstd(curves, axis=0)
    line, = ax.plot(x, mean, _STYLES[method.family], marker='o', ms=3,
                    label=method.label)
    ax.fill_between(x, mean - std, mean + std, color=line.get_color(),
                    alpha=0.12)


def plot(results, path):
  """Test accuracy and test loss of the returned schedule vs budget."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  T = results['horizon']
  x = np.asarray(results['points']) / T
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.6))
  for ax, field, scale, ylabel in (
      (axes[0], 'curve', 100, 'test accuracy %'),
      (axes[1], 'curve_loss', 1, 'test cross-entropy (the objective)')):
    _plot_panel(ax, results, x, field, scale)
    ax.set_xlabel(f'budget (training runs of T = {T} inner steps, '
                  'cost-weighted)')
    ax.set_ylabel(ylabel)
    ax.grid(True, alpha=0.3)
  axes[0].legend(fontsize=7, ncol=2)
  fig.suptitle(f"{results['task']}: schedule returned at each budget, "
               f"retrained and tested (mean ± std over {results['seeds']} "
               'seeds)', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _header(r, command) -> str:
  ratios = ', '.join(f'{k} {v:.2f}' for k, v in r['ratios'].items()
                     if k != 'plain_seconds')
  objective = r.get('val_objective',
                    settings_lib.OBJECTIVE_BEFORE_THE_FIELD)
  return (
      f"# HPO at equal budget: {r['task']}\n\n"
      f"Produced by `{command}` in {r['total_seconds'] / 60:.1f} min on "
      f"{r['backend']}, {os.cpu_count()} CPU cores (shared: timings are "
      f"noisy){_processes_note(r)}.\n\n"
      f"Horizon T = {r['horizon']} inner steps; budget {r['budget']:,} "
      f"inner-step equivalents per method and seed "
      f"({r['budget'] / r['horizon']:.1f} training runs). Measured cost of "
      f"one run relative to plain training (plain T steps = "
      f"{r['ratios']['plain_seconds']:.2f} s): {ratios}. Test accuracy: "
      f"schedule retrained from scratch for T steps, mean over "
      f"{r['eval_seeds']} initialisations, then mean ± std over "
      f"{r['seeds']} HPO seeds. Paired gain: within each HPO seed the "
      f"default schedule is retrained from the same initialisations; the "
      f"interval is the 95% Student-t interval of the mean gain over HPO "
      f"seeds (an interval above 0: a gain that is not seed luck). "
      f"Validation objective of every method: {objective}. "
      f"Black-box objective: validation loss at "
      f"the end of training; black-box lr pieces: "
      f"{r['blackbox_lr_intervals']}. FDS/reverse init: {r['fds_init']}, "
      f"outer step sizes {r['fds_step_sizes']}"
      f"{_intervals_note(r)}; "
      f"reverse checkpointing: {r['reverse_checkpoint_every']}. Search wall "
      f"time includes compilation on the first seed.\n\n")


def write(results, out_dir, command, tag=''):
  """Writes ``hpo_<task><tag>.{md,json,png}`` under ``out_dir``.

  Returns:
    The path of the three files without the extension.
  """
  os.makedirs(out_dir, exist_ok=True)
  base = os.path.join(out_dir, f"hpo_{results['task']}{tag}")
  r = results
  text = (
      f"{_header(r, command)}"
      f"{table(r)}\n\n{divergence_note(r)}"
      f"Paired method against method (the same HPO seeds and retrain "
      f"initialisations; an interval above 0: the first method wins beyond "
      f"seed luck):\n\n{paired_differences(r)}\n\n"
      f"{reference_gains(r)}{_spaces_note(r)}{_tuning_note(r)}"
      f"{_merged_note(r)}"
      f"![accuracy vs budget]({os.path.basename(base)}.png)\n")
  with open(base + '.md', 'w') as f:
    f.write(text)
  with open(base + '.json', 'w') as f:
    json.dump(jsonable(r), f, indent=1, default=float)
  plot(r, base + '.png')
  return base


def _processes_note(r) -> str:
  # Shards ran side by side: their minutes add up, the wall time is less.
  shards = r.get('search_processes') or []
  if len(shards) < 2:
    return ''
  return (f"; the searches were shared among {len(shards)} processes "
          f"({'; '.join(shards)}), whose compute the minutes add up (they "
          f"ran side by side: the wall time was less); the costs were "
          f"measured once, by one process while the others waited")


def _intervals_note(r) -> str:
  # Tables written before the field was recorded used the launch config's.
  if 'fds_intervals' not in r:
    return ''
  return f", shared intervals {r['fds_intervals']}"


def _merged_note(r) -> str:
  if not r.get('merged'):
    return ''
  lines = [f"* `{m['command']}` ({', '.join(m['methods'])}; "
           f"{m['total_seconds'] / 60:.1f} min, plain T steps = "
           f"{m['plain_seconds']:.2f} s)" for m in r['merged']]
  return ('Rows replaced later, at the same budget, seeds and retrain '
          'initialisations (the default schedule retrained to the same '
          'accuracies):\n\n' + '\n'.join(lines) + '\n\n')
