"""The command line of the HPO table (``python -m benchmarks.hpo_table``).

Importing this module defines the flags; the entry points import it, the
rest of the package does not (so another benchmark's flags never clash).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app
from absl import flags

from benchmarks import common
from benchmarks import journal as journal_lib
from benchmarks.hpo import merge
from benchmarks.hpo import methods as methods_lib
from benchmarks.hpo import report
from benchmarks.hpo import runner
from hypergrad.experiments import tasks as tasks_lib

# The command a table records, whichever entry point ran it.
COMMAND = 'python -m benchmarks.hpo_table'

_TASK = flags.DEFINE_string('task', 'mnist1d_mlp', 'Task name.')
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'Prepared datasets.')
_HORIZON = flags.DEFINE_integer('horizon', 0,
                                'Inner steps T per run (0: the preset).')
_BUDGET = flags.DEFINE_integer(
    'budget', 0, 'Inner-step equivalents per method and seed (0: '
    '--fds_outer_steps FDS outer steps at the measured cost).')
_FDS_STEPS = flags.DEFINE_integer('fds_outer_steps', 10,
                                  'Default budget, in FDS outer steps.')
_SEEDS = flags.DEFINE_integer('seeds', 5, 'Independent HPO runs per method.')
_METHODS = flags.DEFINE_list('methods', list(methods_lib.NAMES),
                             'Methods to run.')
_EVAL_POINTS = flags.DEFINE_integer(
    'eval_points', 5, 'Budget fractions at which the curve is evaluated.')
_EVAL_SEEDS = flags.DEFINE_integer(
    'eval_seeds', 3, 'Retraining initialisations per found schedule; the '
    'same ones for every method and the default within an HPO seed.')
_EVAL_BATCH = flags.DEFINE_integer(
    'eval_batch', 0, 'Schedules retrained at once (vmapped); 0: the preset '
    'or 16.')
_BB_LR_INTERVALS = flags.DEFINE_integer(
    'blackbox_lr_intervals', 1, 'Learning-rate pieces of the black-box '
    'search space (1: constant; FDS uses 7).')
_HB_REPORTS = flags.DEFINE_integer('hyperband_reports', 9,
                                   'Hyperband chunks per trial (resource).')
_GREEDY_SCALES = flags.DEFINE_list(
    'greedy_scales', [],
    'Greedy meta-step grid: the largest total drift of lr (and momentum) '
    'over the run; weight decay drifts 3e-3 times as far (FDS step ratio). '
    'Empty: as many scales as the budget pays for, log-spaced over '
    '[0.03, 10], coarse to fine.')
_TUNE_GREEDY = flags.DEFINE_bool(
    'tune_greedy', False, 'Tune the greedy methods\' meta step on a seed '
    'of its own (1000, none of the evaluated ones) with the budget of one '
    'search (the --greedy_scales grid, or the automatic one); each '
    'evaluated seed then runs the tuned meta step first and spends the rest '
    'of its budget on a grid within a factor 4 of it.')
_FDS_INIT = flags.DEFINE_enum(
    'fds_init', 'config', ['config', 'default'], 'FDS/reverse initial '
    'schedule: the launch config\'s or the task\'s default.')
_FDS_STEP_SIZES = flags.DEFINE_string(
    'fds_step_sizes', '', 'Override of the config\'s initial outer step '
    'sizes, e.g. momentum=0.02,lr=0.05.')
_FDS_INTERVALS = flags.DEFINE_string(
    'fds_intervals', '', 'Override of the config\'s shared intervals per '
    'hyperparameter of FDS, FDS-population and reverse mode (the paper\'s '
    'setting too), e.g. lr=20,weight_decay=3.')
_REVERSE_CKPT = flags.DEFINE_integer(
    'reverse_checkpoint_every', -1, 'Reverse-mode block length (0: none; '
    '-1: the preset).')
_REPEATS = flags.DEFINE_integer('cost_repeats', 3, 'Timed repeats of the '
                                'cost ratios (best is kept).')
_OUT_DIR = flags.DEFINE_string(
    'out_dir', os.path.join(os.path.dirname(os.path.dirname(__file__)),
                            'results'),
    'Output folder.')
_VAL_OBJECTIVE = flags.DEFINE_enum(
    'val_objective', '', ['', *tasks_lib.VAL_OBJECTIVES],
    'The validation loss every method descends or scores ('
    'hypergrad.experiments.tasks.VAL_OBJECTIVES); empty: the launch '
    'config\'s (cross_entropy unless it says otherwise).')
_TAG = flags.DEFINE_string('tag', '', 'Suffix of the output file names.')
_JOURNAL = flags.DEFINE_string(
    'journal_dir', None, 'Where finished searches and retrains are kept '
    'while the table runs, so that the same command resumes a killed run '
    '(default: <out_dir>/hpo_<task><tag>.partial; removed once the table is '
    'written).')
_SHARD = flags.DEFINE_string(
    'shard', '', 'i/n: run every n-th search from the i-th, sharing the '
    'journal with the other shards (run them side by side, e.g. each under '
    '`taskset -c i`), then the same command without --shard writes the '
    'table.')
_RESTART = flags.DEFINE_bool(
    'restart', False, 'Delete the journal of an earlier run of this table '
    'first instead of resuming it.')
_MERGE = flags.DEFINE_bool(
    'merge', False, 'Run only --methods and put their rows into the '
    'existing table of the task (its budget, seeds and retrain '
    'initialisations; the default schedule must retrain to the same '
    'accuracies), keeping its other rows.')


def parse_overrides(text: str, flag: str) -> dict:
  """``'lr=0.05,momentum=0.02'`` as ``{'lr': 0.05, 'momentum': 0.02}``."""
  out = {}
  for item in filter(None, (t.strip() for t in text.split(','))):
    name, eq, value = item.partition('=')
    try:
      if not eq:
        raise ValueError
      out[name.strip()] = float(value)
    except ValueError:
      raise app.UsageError(f'--{flag}: bad entry {item!r}; expected '
                           f'name=number, e.g. lr=0.1.') from None
  return out


def parse_shard(text: str) -> tuple[int, int]:
  """``'1/2'`` as ``(1, 2)``; ``''`` as ``(0, 1)`` (the whole table)."""
  if not text:
    return 0, 1
  i, slash, n = text.partition('/')
  try:
    if not slash:
      raise ValueError
    index, count = int(i), int(n)
  except ValueError:
    raise app.UsageError(f'--shard: bad value {text!r}; expected i/n, e.g. '
                         f'0/2.') from None
  if not 0 <= index < count:
    raise app.UsageError(f'--shard {text}: want 0 <= i < n.')
  return index, count


def _old_table(path: str) -> dict | None:
  """With ``--merge``: the table to merge into (it must exist)."""
  if not _MERGE.value:
    return None
  if not os.path.exists(path):
    raise app.UsageError(f'--merge: no table to merge into at {path}.')
  with open(path) as f:
    return json.load(f)


def _run_from_flags(budget, methods, journal_dir):
  return runner.run_table(
      _TASK.value, horizon=_HORIZON.value, budget=budget,
      fds_outer_steps=_FDS_STEPS.value, seeds=_SEEDS.value,
      methods=methods, eval_points=_EVAL_POINTS.value,
      eval_seeds=_EVAL_SEEDS.value, eval_batch=_EVAL_BATCH.value,
      blackbox_lr_intervals=_BB_LR_INTERVALS.value,
      hyperband_reports=_HB_REPORTS.value,
      greedy_scales=[float(s) for s in _GREEDY_SCALES.value],
      tune_greedy=_TUNE_GREEDY.value,
      fds_init=_FDS_INIT.value, val_objective=_VAL_OBJECTIVE.value,
      fds_step_sizes=parse_overrides(_FDS_STEP_SIZES.value,
                                     'fds_step_sizes'),
      fds_intervals=parse_overrides(_FDS_INTERVALS.value, 'fds_intervals'),
      reverse_checkpoint_every=_REVERSE_CKPT.value, repeats=_REPEATS.value,
      data_dir=_DATA_DIR.value, journal_dir=journal_dir,
      shard=parse_shard(_SHARD.value), log=lambda s: print(s, flush=True))


def main(argv):
  del argv
  common.enable_compilation_cache()
  name = f'hpo_{_TASK.value}{_TAG.value}'
  path = os.path.join(_OUT_DIR.value, name + '.json')
  old = _old_table(path)
  budget = _BUDGET.value or (old['budget'] if old is not None else 0)
  parse_shard(_SHARD.value)  # a bad value refused before the journal goes
  journal_dir = _JOURNAL.value or os.path.join(_OUT_DIR.value,
                                               name + '.partial')
  if _RESTART.value:
    journal_lib.Journal.delete(journal_dir)
  methods = _METHODS.value
  if old is not None and 'default' not in methods:
    methods = ['default'] + list(methods)  # to check the pairing
  results = _run_from_flags(budget, methods, journal_dir)
  if results is None:
    return  # a shard: the table is written by the command without --shard
  command = (COMMAND + ' ' + ' '.join(sys.argv[1:])).strip()
  if old is not None:
    results = merge.merge_results(old, results, command)
    command = old.get('command') or merge.produced_by(path) or command
  results['command'] = command
  base = report.write(results, _OUT_DIR.value, command, _TAG.value)
  print(report.table(results))
  print(report.divergence_note(results), end='')
  print(f'wrote {base}.md, .png and .json')
  journal_lib.Journal.delete(journal_dir)
