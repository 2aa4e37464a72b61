"""``--merge``: a rerun's rows put into an existing table, kept paired."""

from __future__ import annotations

import re

import numpy as np

from benchmarks.hpo import methods as methods_lib
from benchmarks.hpo import settings as settings_lib

_OUTER = methods_lib.OUTER


def _check_paired(old: dict, new: dict) -> None:
  for key in ('task', 'horizon', 'budget', 'seeds', 'eval_seeds',
              'val_objective'):
    if old[key] != new[key]:
      raise ValueError(f'cannot merge: {key} is {new[key]!r} here and '
                       f'{old[key]!r} in the existing table.')
  if 'default' in new['methods']:
    was = [r['test_accuracy'] for r in old['methods']['default']]
    now = [r['test_accuracy'] for r in new['methods']['default']]
    if not np.allclose(was, now, rtol=0, atol=1e-6):
      raise ValueError(f'cannot merge: the default schedule retrained to '
                       f'{now} here and {was} in the existing table; the '
                       f'gains would not be paired.')
  was = old.get('fds_intervals') or settings_lib.config_intervals(
      settings_lib.fds_config(old['task']))
  kept = [m for m in old['methods'] if m in _OUTER and m not in new['methods']]
  if any(m in _OUTER for m in new['methods']) and kept and new.get(
      'fds_intervals', was) != was:
    raise ValueError(
        f'cannot merge: FDS shared intervals are {new["fds_intervals"]} '
        f'here and {was} in the existing table, whose {", ".join(kept)} '
        f'rows keep them; write a table of its own with --tag.')


def merge_results(old: dict, new: dict, command: str) -> dict:
  """``old``'s table with ``new``'s rows put in (same seeds, same budget).

  Refused unless both ran the same task, horizon, budget, HPO seeds and
  retrain initialisations, and the default schedule retrained to the same
  test accuracies in both (so every gain stays paired).
  """
  old = {'val_objective': settings_lib.OBJECTIVE_BEFORE_THE_FIELD, **old}
  _check_paired(old, new)
  out = dict(old)
  if any(m in _OUTER for m in new['methods']):
    # The outer-loop rows now come from this run's FDS settings.
    for key in ('fds_init', 'fds_step_sizes', 'fds_intervals',
                'reverse_checkpoint_every'):
      if key in new:
        out[key] = new[key]
  if any(m in methods_lib.GREEDY for m in new['methods']):
    # The greedy rows now come from this run's --tune_greedy.
    out['tune_greedy'] = bool(new.get('tune_greedy'))
  if 'reference' in new:
    # Chosen among the reference rows this run retrained.
    out['reference'] = new['reference']
  methods = dict(old['methods'])
  methods.update(new['methods'])
  out['methods'] = {m: methods[m] for m in methods_lib.NAMES
                    if m in methods}
  out['ratios'] = {**old['ratios'], **{k: v for k, v in new['ratios'].items()
                                       if k != 'plain_seconds'}}
  out['merged'] = list(old.get('merged', [])) + [{
      'command': command, 'methods': sorted(new['methods']),
      'total_seconds': new['total_seconds'],
      'plain_seconds': new['ratios']['plain_seconds']}]
  return out


def produced_by(json_path: str) -> str | None:
  """The command in the ``Produced by`` line of a table's markdown."""
  try:
    with open(json_path[:-len('.json')] + '.md') as f:
      text = f.read()
  except OSError:
    return None
  match = re.search(r'Produced by `([^`]*)`', text)
  return match.group(1) if match else None
