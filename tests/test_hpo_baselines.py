"""Issue 26's rows of the HPO table: the same search space for the
black-box searches, strong reference schedules, tuned greedy methods."""

import json
import math

import numpy as np
import pytest

from benchmarks import hpo
from benchmarks.hpo import report
from benchmarks.hpo import searches
from hypergrad.experiments import blackbox

_NEW = ('default', 'default_cosine', 'cosine_grid', 'random_sched',
        'tpe_sched', 'hyperband_sched', 'random_param', 'tpe_param')
_TABLE = dict(horizon=40, budget=600, seeds=2, eval_points=2, eval_seeds=1,
              hyperband_reports=3, log=lambda s: None,
              measure_costs=lambda *a, **k: {'plain_seconds': 0.01,
                                             'rtho': 5.0})


def test_parametric_lr_warms_up_then_decays_to_its_final_fraction():
  lr = blackbox.parametric_lr(100, 0.4, 0.1, 'cosine', 0.25)
  np.testing.assert_allclose(lr[:10], 0.4 * np.arange(1, 11) / 10)
  assert lr[10] == pytest.approx(0.4)
  assert lr[-1] == pytest.approx(0.1)
  assert np.all(np.diff(lr[10:]) <= 1e-12)
  line = blackbox.parametric_lr(100, 1.0, 0.0, 'linear', 0.0)
  np.testing.assert_allclose(line, 1 - np.arange(100) / 99)
  with pytest.raises(ValueError, match='unknown decay'):
    blackbox.parametric_lr(10, 1.0, 0.0, 'step', 0.0)


@pytest.fixture(scope='module')
def new_rows(tmp_path_factory):
  searched = []

  def hook(event, **info):
    if event == 'search':
      searched.append((info['seed'], info['method']))
  results = hpo.run_table('digits_mlp', methods=_NEW, hook=hook, **_TABLE)
  out = tmp_path_factory.mktemp('results')
  base = hpo.write(results, str(out), 'cmd', tag='_new')
  return results, base, searched


def test_new_rows_search_the_stated_spaces_within_the_budget(new_rows):
  results, _, searched = new_rows
  assert {m for _, m in searched} == set(_NEW) - {'default'}
  for m in _NEW:
    for r in results['methods'][m]:
      assert r['spent'] <= 600, m
      assert 0 <= r['test_accuracy'] <= 1, m
  for m in ('random_sched', 'tpe_sched', 'hyperband_sched'):
    for r in results['methods'][m]:
      # FDS's own schedule: its launch config's shared intervals.
      assert {k: len(v) for k, v in r['schedule'].items()} == (
          results['fds_intervals']), m
      for k, (low, high, _) in blackbox.SEARCH_SPACE.items():
        assert all(low <= v <= high for v in r['schedule'][k]), (m, k)
  for m in ('random_param', 'tpe_param'):
    for r in results['methods'][m]:
      assert r['info']['trials'] == 15, m    # black-box: charged T a run
      best = r['info']['best']
      assert best['decay'] in blackbox.DECAYS
      for k, (low, high, _) in blackbox.PARAMETRIC_SPACE.items():
        assert low <= best[k] <= high, (m, k)
  for r in results['methods']['cosine_grid']:
    assert r['spent'] == 40 * len(searches.COSINE_GRID)
    # Peak lrs around the usual one; the task's momentum and weight decay.
    assert r['info']['peak_lr'][0] == pytest.approx(0.1)
    np.testing.assert_allclose(r['schedule']['momentum'], [0.9], rtol=1e-6)
  assert all(r['spent'] == 0 for r in results['methods']['default_cosine'])


def test_strongest_reference_is_chosen_on_validation(new_rows):
  results, base, _ = new_rows
  ref = results['reference']
  assert set(ref['val_loss']) == {'default', 'default_cosine', 'cosine_grid'}
  means = {m: np.mean(v) for m, v in ref['val_loss'].items()}
  assert ref['strongest'] == min(means, key=means.get)
  # The grid holds the usual lr, chosen by the same validation loss.
  for seed, r in enumerate(results['methods']['cosine_grid']):
    assert min(r['info']['val_loss']) == pytest.approx(
        ref['val_loss']['cosine_grid'][seed])
    assert ref['val_loss']['cosine_grid'][seed] <= (
        ref['val_loss']['default_cosine'][seed] + 1e-6)
  text = report.reference_gains(results)
  best = results['methods'][ref['strongest']]
  for m, per_seed in results['methods'].items():
    if m == ref['strongest']:
      continue
    diff = [a['test_accuracy'] - b['test_accuracy']
            for a, b in zip(per_seed, best)]
    mean, _ = hpo.confidence_interval(diff)
    (line,) = [l for l in text.splitlines()
               if l.startswith(f'| {hpo.LABELS[m]} |')]
    assert f'{100 * mean:+.2f} [' in line, m
  with open(base + '.md') as f:
    md = f.read()
  assert text in md and 'Search spaces.' in md
  with open(base + '.json') as f:
    assert json.load(f)['reference']['strongest'] == ref['strongest']


def test_existing_columns_unchanged_and_old_tables_have_no_new_section(
    new_rows):
  results, _, _ = new_rows
  header = hpo.table(results).splitlines()[0]
  assert header == (
      '| method | test acc % (mean ± std) | paired gain over default, '
      'points [95% CI] | test loss | inner steps (equiv.) | = runs of T | '
      'search iterations | cost of one (x T) | search wall s |')
  old = {k: v for k, v in results.items() if k != 'reference'}
  old['methods'] = {m: results['methods'][m] for m in ('default',
                                                       'random_sched')}
  assert report.reference_gains(old) == ''


def test_merge_keeps_the_reference_choice_of_the_rerun(new_rows):
  results, _, _ = new_rows
  old = {k: v for k, v in results.items() if k != 'reference'}
  old['methods'] = {'default': results['methods']['default']}
  merged = hpo.merge_results(old, results, 'cmd --merge')
  assert merged['reference'] == results['reference']
  assert list(merged['methods']) == list(_NEW)


def test_tuned_greedy_is_tuned_on_a_seed_not_evaluated():
  table = hpo.run_table('digits_mlp', methods=('default', 'rtho'),
                        tune_greedy=True, **_TABLE)
  assert table['tune_greedy'] is True
  infos = [r['info'] for r in table['methods']['rtho']]
  assert searches.TUNE_SEED >= table['seeds']
  tuned = infos[0]['tuned_scale']
  runs = infos[0]['tune_runs']
  assert tuned == min(runs, key=lambda r: r['val_loss'])['scale']
  for info in infos:
    assert info['tuned_scale'] == tuned
    scales = [r['scale'] for r in info['runs']]
    # The tuned meta step first, then distinct scales around it.
    assert scales[0] == tuned and len(set(scales)) == len(scales)
    assert all(tuned / searches.TUNE_SPAN <= s <= tuned * searches.TUNE_SPAN
               for s in scales)
  spent = [r['spent'] for r in table['methods']['rtho']]
  assert all(s <= 600 and math.isfinite(s) for s in spent)
  assert 'tuned on seed 1000' in hpo.table(table)
  # Merged into a table of untuned rows, the note comes with them.
  old = dict(table, tune_greedy=False)
  assert hpo.merge_results(old, table, 'cmd')['tune_greedy'] is True


def test_a_diverged_retrain_is_counted_named_and_never_a_finite_loss(
    tmp_path):
  # Issue 26's Fashion-MNIST rerun: a search returned a schedule that
  # diverged on 2 of its 3 retrains. Here a real retrain diverges too.
  from benchmarks.hpo import evaluation
  from hypergrad.experiments import tasks as tasks_lib
  task = tasks_lib.make_task('digits_mlp', seed=0)
  good = {'lr': np.full((1,), 0.1)}
  wild = {'lr': np.full((1,), 1e9)}
  scores = evaluation.evaluate(task, [good, wild], 60, [0, 1], 2)
  assert scores.shape == (2, 3)
  assert np.isfinite(scores[0, 0]) and scores[0, 2] == 0
  assert np.isnan(scores[1, 0]) and scores[1, 2] == 2
  assert 0 <= scores[1, 1] <= 1  # what it measured, charged to the method
  assert evaluation.diverged_retrains(scores[1]) == 2
  assert evaluation.diverged_retrains((math.nan, 0.1)) is None  # old score

  def row(loss, acc, n):
    return {'test_loss': loss, 'test_accuracy': acc, 'paired_gain': 0.0,
            'diverged_retrains': n, 'spent': 0.0, 'seconds': 0.0,
            'info': {'trials': 1}}
  results = {'horizon': 20, 'eval_seeds': 3, 'ratios': {},
             'methods': {'default': [row(0.3, 0.9, 0)] * 2,
                         'random_param': [row(0.3, 0.9, 0),
                                          row(math.nan, 0.36, 2)]}}
  text = report.table(results)
  line = [l for l in text.splitlines() if 'warm-up + decay' in l][0]
  assert '0.300 ± 0.000 (1 seeds; diverged on 1 of 2)' in line
  assert 'nan' not in text
  note = report.divergence_note(results)
  assert 'seed 1 (2 of 3 retrains, test accuracy 36.00%)' in note
  assert report.divergence_note(
      {'methods': {'default': [row(0.3, 0.9, 0)]}}) == ''
