"""The benchmark scripts run end to end on shrunk settings and keep their books.

Speed and memory *targets* live in ``benchmarks/``; these tests check that the
comparison is what it says: every method within the same budget, the greedy
grid filling it, every row in the table, and the accuracy section right.
"""

import json
import math
import os
import subprocess
import sys

from absl import app
import numpy as np
import pytest

from benchmarks import hpo
from benchmarks import run as run_bench
from benchmarks.hpo import cli as hpo_cli


def test_coarse_to_fine_covers_the_range_from_the_first_values():
  scales = hpo.coarse_to_fine(7, 0.03, 10.0)
  assert len(set(scales)) == 7
  assert all(0.03 <= s <= 10.0 for s in scales)
  # The first is the log-midpoint; the next two split either half.
  np.testing.assert_allclose(scales[0], math.sqrt(0.03 * 10.0))
  assert scales[1] < scales[0] < scales[2]
  np.testing.assert_allclose(sorted(np.log(scales)),
                             np.log(0.03) + np.log(10 / 0.03)
                             * np.arange(1, 8) / 8)


# The whole table at a tiny size takes ~2-4 minutes on 2 cores: the tests
# reading it are marked slow (CI's step 5 runs them); make test keeps the
# new rows' table (tests/test_hpo_baselines.py) and the journal tests.
@pytest.fixture(scope='module')
def tiny_table(tmp_path_factory):
  results = hpo.run_table(
      'digits_mlp', horizon=40, fds_outer_steps=2, seeds=1, eval_points=2,
      eval_seeds=1, repeats=1, hyperband_reports=3, log=lambda s: None)
  out = tmp_path_factory.mktemp('results')
  base = hpo.write(results, str(out), 'python -m benchmarks.hpo_table',
                         tag='_tiny')
  return results, base


@pytest.mark.slow
def test_hpo_table_every_method_within_one_budget(tiny_table):
  results, _ = tiny_table
  budget = results['budget']
  # The default budget is FDS's: 2 outer steps at its measured cost.
  assert budget == math.ceil(2 * results['ratios']['fds'] * 40)
  assert set(results['methods']) == set(hpo.METHODS)
  for m, per_seed in results['methods'].items():
    (r,) = per_seed
    assert r['spent'] <= budget + 1e-6, m
    assert 0.0 <= r['test_accuracy'] <= 1.0 and math.isfinite(
        r['test_loss']), m
  default = results['methods']['default'][0]
  assert default['spent'] == 0
  # FDS-population is charged a whole population's cost from the outer
  # step where it begins, one run's before.
  ratios = results['ratios']
  assert ratios['fds_pop'] > 1.5 * ratios['fds_pop_single'], ratios
  # FDS from init 0 is charged what its estimator (auto, one inner run)
  # costs, step by step.
  assert ratios['fds_zero'] == ratios['fds_pop_single'], ratios
  (zero,) = results['methods']['fds_zero']
  steps = zero['info']['outer_steps']
  assert zero['spent'] == pytest.approx(steps * ratios['fds_zero'] * 40)
  for m in hpo.GREEDY:
    (r,) = results['methods'][m]
    runs = len(r['info']['runs'])
    # The automatic grid fills the budget: one more run would overrun it.
    assert runs == max(int(budget // (results['ratios'][m] * 40)), 1), m
    assert r['spent'] + results['ratios'][m] * 40 > budget, m
  for m in hpo.BLACKBOX:
    (r,) = results['methods'][m]
    assert budget - r['spent'] < 40, m   # no full trial left unpaid


@pytest.mark.slow
def test_hpo_table_writes_table_plot_and_json(tiny_table):
  results, base = tiny_table
  for ext in ('.md', '.png', '.json'):
    assert os.path.getsize(base + ext) > 0
  text = open(base + '.md').read()
  assert 'python -m benchmarks.hpo_table' in text
  for label in hpo.LABELS.values():
    assert label in text, label
  assert hpo.table(results).count('\n') == len(hpo.METHODS) + 1


def test_accuracy_section_agrees_with_finite_differences():
  rows = run_bench.hypergradient_accuracy(horizons=(30,), widths=(4, 8, 3))
  assert len(rows) == 4
  for steps, name, dtype, rel, _, sign, fwd_rev in rows:
    assert steps == 30 and name in ('forward', 'reverse')
    assert rel < (1e-6 if dtype == 'float64' else 1e-3), (name, dtype, rel)
    assert sign == 1.0
    assert fwd_rev < (1e-12 if dtype == 'float64' else 1e-4)


def test_report_sections_are_read_back_by_title(tmp_path):
  path = tmp_path / 'report.md'
  path.write_text('# hypergrad cost benchmarks\n\nintro\n\n'
                  '## Memory vs horizon\n\n| a |\n\n_1.0 min._\n\n'
                  '## Steps per second per task\n\ntext\n')
  sections = run_bench._read_sections(str(path))
  assert list(sections) == ['Memory vs horizon', 'Steps per second per task']
  assert sections['Memory vs horizon'] == (
      '## Memory vs horizon\n\n| a |\n\n_1.0 min._\n')
  assert run_bench._read_sections(str(tmp_path / 'absent.md')) == {}
  # Every section the report can hold is found under its own title.
  assert {t for t, _ in run_bench.RUNNERS.values()} >= set(sections)


@pytest.mark.slow
def test_hpo_table_gains_are_paired_with_the_default(tiny_table):
  results, _ = tiny_table
  (default,) = results['methods']['default']
  assert default['paired_gain'] == 0.0   # the same inits: exactly paired
  for m, (r,) in results['methods'].items():
    assert r['default_test_accuracy'] == default['test_accuracy'], m
    assert r['paired_gain'] == pytest.approx(
        r['test_accuracy'] - default['test_accuracy']), m


def test_confidence_interval_is_student_t():
  # n = 5, mean 2, sample sd 1: half-width t_{0.975, 4} / sqrt(5).
  mean, half = hpo.confidence_interval([1.0, 1.5, 2.0, 2.5, 3.0])
  assert mean == pytest.approx(2.0)
  sd = np.std([1.0, 1.5, 2.0, 2.5, 3.0], ddof=1)
  assert half == pytest.approx(2.776 * sd / np.sqrt(5))
  assert math.isnan(hpo.confidence_interval([1.0])[1])


def test_device_split_benchmark_runs_and_reports_speed_ups():
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run(
      [sys.executable, '-m', 'benchmarks.device_split', '--steps', '20',
       '--repeats', '1', '--lr_intervals', '3', '--members', '2',
       '--devices', '2'],
      cwd=root, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert '2 devices, T = 20' in proc.stdout
  rows = [l for l in proc.stdout.splitlines() if l.startswith('| forward')
          or l.startswith('| population')]
  assert len(rows) == 2, proc.stdout
  for row in rows:
    assert float(row.split('|')[-2]) > 0


def test_forward_flop_floor_counts_a_tangent_as_a_hessian_vector_product():
  from benchmarks import forward_cost  # pylint: disable=g-import-not-at-top
  (row9, row32) = forward_cost.flop_floor(1000, [7, 30])
  # 7 lr intervals begin evenly: 4 lr tangents + momentum + wd on average.
  assert [row9[0], row9[1], row32[0], row32[1]] == [9, '6.0', 32, '17.5']
  # A tangent of a tanh MLP step costs more than a plain step (the
  # product rule doubles its matmuls, the input layer's excepted) and less
  # than two.
  per_tangent = float(row9[2])
  assert 1.5 < per_tangent < 2.0 and row32[2] == row9[2]
  assert float(row9[3]) == pytest.approx(1 + 6.0 * per_tangent, abs=0.06)


def test_pool_signal_column_counts_only_values_with_a_real_signal():
  # A subprocess: population_signal and hpo_table both define --task.
  script = """
import numpy as np
from benchmarks import population_signal as ps
rng = np.random.RandomState(0)
# Value 0: a clear positive signal; values 1, 2: noise with median 0.
noise = rng.randn(40, 2)
pool = np.concatenate([3.0 + 0.5 * rng.randn(40, 1),
                       noise - np.median(noise, 0)], 1)
assert ps.pool_signal(pool).tolist() == [True, False, False]
rows = ps.reproducibility(pool, [1, 4], 50, [0.5], rng)
single = next(r for r in rows if r[0] == 1)
# Two single runs agree on value 0 every time, whatever the noise does.
assert single[-3] == '100', single
rule_rows = [r for r in rows if r[2] != '-']
assert rule_rows and all(r[-3] == '-' for r in rule_rows), rule_rows
# The rule never leaves the real signal in place, and leaves some noise.
median = next(r for r in rule_rows if r[1] == 'median')
assert median[-1] == '0' and float(median[-2]) > 10, median
print('ok')
"""
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, '-c', script], cwd=root,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0 and 'ok' in proc.stdout, proc.stderr[-2000:]


@pytest.mark.slow
def test_paired_differences_are_differences_of_paired_gains(tiny_table):
  results, base = tiny_table
  text = hpo.paired_differences(results)
  assert 'minus b' in text and 'Paired method against method' in open(
      base + '.md').read()
  # A made-up table of two seeds: a - b = 1 and 3 points, mean 2.
  fake = {'methods': {
      'default': [{'paired_gain': 0.0}] * 2,
      'fds_pop': [{'paired_gain': 0.05}, {'paired_gain': 0.04}],
      'rtho': [{'paired_gain': 0.04}, {'paired_gain': 0.01}]}}
  mean, half = hpo.confidence_interval([0.01, 0.03])
  rtho_row = [l for l in hpo.paired_differences(fake).splitlines()
              if l.startswith('| RTHO')]
  assert rtho_row == [f'| RTHO (greedy) | {100 * mean:+.2f} '
                      f'[{100 * (mean - half):+.2f}, '
                      f'{100 * (mean + half):+.2f}] |']


@pytest.mark.slow
def test_merge_keeps_old_rows_and_refuses_unpaired_tables(tiny_table):
  results, _ = tiny_table
  new = {**results, 'total_seconds': 1.0,
         'methods': {'default': results['methods']['default'],
                     'fds_pop': [dict(results['methods']['fds_pop'][0],
                                      paired_gain=0.5)]},
         'ratios': {'plain_seconds': 0.1, 'fds_pop': 9.0}}
  merged = hpo.merge_results(results, new, 'cmd --merge')
  assert list(merged['methods']) == list(results['methods'])
  assert merged['methods']['fds_pop'][0]['paired_gain'] == 0.5
  assert merged['methods']['rtho'] == results['methods']['rtho']
  assert merged['ratios']['fds_pop'] == 9.0
  assert merged['ratios']['fds'] == results['ratios']['fds']
  assert merged['merged'][0]['command'] == 'cmd --merge'
  with pytest.raises(ValueError, match='budget'):
    hpo.merge_results(results, {**new, 'budget': 1}, 'cmd')
  # Rows that descended another validation objective are not comparable
  # (a table from before the field used plain cross-entropy).
  with pytest.raises(ValueError, match='val_objective'):
    hpo.merge_results(
        {k: v for k, v in results.items() if k != 'val_objective'},
        {**new, 'val_objective': 'calibrated_cross_entropy'}, 'cmd')
  moved = [dict(results['methods']['default'][0], test_accuracy=0.123)]
  with pytest.raises(ValueError, match='not be paired'):
    hpo.merge_results(
        results, {**new, 'methods': {'default': moved}}, 'cmd')


@pytest.mark.slow
def test_merge_refuses_other_intervals_while_old_outer_rows_stay(
    tiny_table):
  results, _ = tiny_table
  finer = {**results['fds_intervals'], 'lr': 5}
  new = {**results, 'total_seconds': 1.0, 'fds_intervals': finer,
         'methods': {'default': results['methods']['default'],
                     'fds_pop': results['methods']['fds_pop']},
         'ratios': {'plain_seconds': 0.1, 'fds_pop': 9.0}}
  # The table's fds, fds_zero and reverse rows searched other schedules.
  with pytest.raises(ValueError, match='shared intervals'):
    hpo.merge_results(results, new, 'cmd')
  # Replacing every outer-loop row is one setting again.
  every = {m: results['methods'][m] for m in
           ('default',) + hpo.OUTER}
  merged = hpo.merge_results(results, {**new, 'methods': every}, 'cmd')
  assert merged['fds_intervals'] == finer
  # A table from before the field: its launch config's intervals.
  old = {k: v for k, v in results.items() if k != 'fds_intervals'}
  with pytest.raises(ValueError, match='shared intervals'):
    hpo.merge_results(old, new, 'cmd')
  same = {**new, 'fds_intervals': hpo.config_intervals(
      hpo.fds_config('digits_mlp'))}
  assert hpo.merge_results(old, same, 'cmd')['fds_intervals'] == (
      same['fds_intervals'])


@pytest.mark.slow
def test_fds_intervals_set_the_searched_schedule(tiny_table):
  results, base = tiny_table
  assert results['fds_intervals'] == hpo.config_intervals(
      hpo.fds_config('digits_mlp'))
  assert f"shared intervals {results['fds_intervals']}" in open(
      base + '.md').read()
  finer = hpo.run_table(
      'digits_mlp', horizon=40, budget=1, seeds=1, eval_points=1,
      eval_seeds=1, repeats=1, methods=('default', 'fds_zero'),
      fds_intervals={'lr': 3.0, 'weight_decay': 2.0}, log=lambda s: None)
  assert finer['fds_intervals'] == {'lr': 3, 'momentum': 1,
                                    'weight_decay': 2}
  # With no budget for a step, the search returns its initial schedule.
  (r,) = finer['methods']['fds_zero']
  assert [len(r['schedule'][k]) for k in ('lr', 'momentum',
                                          'weight_decay')] == [3, 1, 2]


@pytest.mark.parametrize('bad', [{'lr': 0.0}, {'lr': 2.5}, {'lr': 41.0},
                                 {'lr': math.nan}, {'beta': 2.0}])
def test_bad_fds_intervals_refused_before_compute(bad):
  name = next(iter(bad))
  with pytest.raises(ValueError, match=f'bad FDS interval count {name}='):
    hpo.run_table('digits_mlp', horizon=40, budget=1, seeds=1,
                        methods=('default', 'fds'), fds_intervals=bad,
                        log=pytest.fail)


@pytest.mark.parametrize('text', ['lr', 'lr=fast', 'lr=0.1,=', 'lr=0.1,x'])
def test_bad_override_entries_name_the_entry(text):
  with pytest.raises(app.UsageError, match='--fds_intervals: bad entry'):
    hpo_cli.parse_overrides(text, 'fds_intervals')
  assert hpo_cli.parse_overrides(' lr=20 , weight_decay=3', 'x') == {
      'lr': 20.0, 'weight_decay': 3.0}


@pytest.mark.slow
def test_table_descends_the_objective_it_names(tiny_table):
  results, base = tiny_table
  assert results['val_objective'] == 'cross_entropy'
  assert 'Validation objective of every method: cross_entropy' in open(
      base + '.md').read()
  calibrated = hpo.run_table(
      'digits_mlp', horizon=40, fds_outer_steps=2, seeds=1, eval_points=1,
      eval_seeds=1, repeats=1, methods=('default', 'fds'),
      val_objective='calibrated_cross_entropy', log=lambda s: None)
  assert calibrated['val_objective'] == 'calibrated_cross_entropy'
  # The same first inner run (seed, split, initialisation), scored after
  # its best temperature: lower than its plain cross-entropy.
  plain = results['methods']['fds'][0]['info']['val_loss'][0]
  scaled = calibrated['methods']['fds'][0]['info']['val_loss'][0]
  assert scaled < plain, (scaled, plain)


def test_outer_spend_charges_each_step_its_own_cost():
  assert hpo.outer_spend([10.0], 35.0) == [10.0, 20.0, 30.0]
  # Two cheap steps, then dear ones: the budget pays for what it can.
  assert hpo.outer_spend([1.0, 1.0, 10.0], 23.0) == [1.0, 2.0, 12.0,
                                                          22.0]
  assert hpo.outer_spend([5.0], 4.0) == []


# A table small enough to run three times, at fixed costs so that runs in
# separate calls are comparable (measured costs differ run to run).
_FIXED_COSTS = {'plain_seconds': 0.01, 'fds_pop': 100.0,
                'fds_pop_single': 30.0, 'rtho': 5.0}
_JOURNAL_TABLE = dict(
    horizon=40, budget=2000, seeds=2, eval_points=2, eval_seeds=1,
    hyperband_reports=3, methods=('default', 'fds_pop', 'rtho', 'random'),
    log=lambda s: None, measure_costs=lambda *a, **k: dict(_FIXED_COSTS))


def _same_rows(a, b):
  keys = ('test_accuracy', 'test_loss', 'default_test_accuracy', 'curve',
          'schedule', 'spent', 'info')
  assert list(a['methods']) == list(b['methods'])
  for m in a['methods']:
    for ra, rb in zip(a['methods'][m], b['methods'][m]):
      assert {k: ra[k] for k in keys} == {k: rb[k] for k in keys}, m


@pytest.fixture(scope='module')
def unbroken_table():
  return hpo.run_table('digits_mlp', **_JOURNAL_TABLE)


def _recorder(ran=None, fail=False, kill=None, retrain=True):
  """A ``run_table`` hook: records each search run (by the family's search
  function), fails on any with ``fail``, is killed at ``kill=(seed,
  method)``, and fails on a retrain unless ``retrain``."""

  def hook(event, **info):
    if event == 'search':
      name = f"run_{hpo.METHODS[info['method']].family}"
      if fail:
        pytest.fail(f'{name} ran again')
      if (info['seed'], info['method']) == kill:
        raise KeyboardInterrupt
      if ran is not None:
        ran.append(name)
    if event == 'retrain' and not retrain:
      pytest.fail('retrained again')
  return hook


# Slow (with its unbroken table ~2 min on a core): make test skips it, CI
# runs it.
@pytest.mark.slow
def test_killed_table_resumes_from_its_journal_with_nothing_lost(
    tmp_path, unbroken_table):
  journal = str(tmp_path / 'journal')
  with pytest.raises(KeyboardInterrupt):
    # Killed during seed 1's RTHO.
    hpo.run_table('digits_mlp', journal_dir=journal,
                  **dict(_JOURNAL_TABLE, hook=_recorder(kill=(1, 'rtho'))))
  finished = sorted(f for f in os.listdir(journal) if f.startswith('search'))
  assert finished == ['search_s0_fds_pop.json', 'search_s0_random.json',
                      'search_s0_rtho.json', 'search_s1_fds_pop.json']
  # The rerun measures no costs and runs only what was left.
  ran = []
  resumed = hpo.run_table('digits_mlp', journal_dir=journal, **dict(
      _JOURNAL_TABLE, hook=_recorder(ran),
      measure_costs=lambda *a, **k: pytest.fail('costs measured again')))
  assert ran == ['run_greedy', 'run_blackbox']
  # The same table as a run never killed, at the same costs.
  _same_rows(resumed, unbroken_table)
  # Once complete, the journal alone gives the table: nothing is retrained.
  _same_rows(hpo.run_table('digits_mlp', journal_dir=journal, **dict(
      _JOURNAL_TABLE, hook=_recorder(fail=True, retrain=False))), resumed)


# Slow (~1 min on a core): make test skips it, CI runs it.
@pytest.mark.slow
def test_shards_split_the_searches_and_add_up_to_the_table(
    tmp_path, unbroken_table):
  journal = str(tmp_path / 'journal')
  ran = {}
  for shard in ((0, 2), (1, 2)):
    ran[shard] = []
    assert hpo.run_table('digits_mlp', journal_dir=journal, shard=shard,
                         **dict(_JOURNAL_TABLE,
                                hook=_recorder(ran[shard]))) is None
  # 2 seeds x 3 searched methods, every other one each.
  assert len(ran[(0, 2)]) == len(ran[(1, 2)]) == 3
  # The command without --shard only assembles (both seeds were retrained
  # by the shard that finished them).
  table = hpo.run_table('digits_mlp', journal_dir=journal, **dict(
      _JOURNAL_TABLE, hook=_recorder(fail=True, retrain=False)))
  _same_rows(table, unbroken_table)
  assert [p.split(' on ')[0] for p in table['search_processes']] == [
      'shard 0/2', 'shard 1/2']


def test_journal_of_other_settings_refused_before_any_compute(tmp_path):
  journal = str(tmp_path / 'journal')

  class Stop(Exception):
    pass

  def stop(event, **info):
    if event == 'load_task':
      raise Stop
  # The journal is bound to its settings before the data loads.
  with pytest.raises(Stop):
    hpo.run_table('digits_mlp', journal_dir=journal,
                  **dict(_JOURNAL_TABLE, hook=stop))

  def no_load(event, **info):
    if event == 'load_task':
      pytest.fail('data loaded')
  other = dict(_JOURNAL_TABLE, horizon=80, eval_seeds=3, hook=no_load)
  with pytest.raises(hpo.journal_lib.SettingsMismatch,
                     match=r'eval_seeds=1 \(here 3\), horizon=40 '
                           r'\(here 80\)'):
    hpo.run_table('digits_mlp', journal_dir=journal, **other)


@pytest.mark.parametrize('shard', [(2, 2), (-1, 2), (0, 0)])
def test_bad_shard_refused(shard, tmp_path):
  with pytest.raises(ValueError, match='bad shard'):
    hpo.run_table('digits_mlp', journal_dir=str(tmp_path),
                        shard=shard, **_JOURNAL_TABLE)


def test_shards_need_a_journal():
  with pytest.raises(ValueError, match='journal'):
    hpo.run_table('digits_mlp', shard=(0, 2), **_JOURNAL_TABLE)


@pytest.mark.parametrize('text', ['2', '0/x', '2/2', 'a/b/c'])
def test_bad_shard_flag_names_the_value(text):
  with pytest.raises(app.UsageError, match='--shard'):
    hpo_cli.parse_shard(text)


def test_journal_keeps_schedules_bit_for_bit(tmp_path):
  rng = np.random.default_rng(0)
  for dtype in (np.float32, np.float64):
    h = {'lr': rng.lognormal(size=7).astype(dtype),
         'momentum': np.asarray(0.9, dtype)}
    back = hpo.journal_lib.decode_hparams(
        json.loads(json.dumps(hpo.journal_lib.encode_hparams(h))),
        dtype)
    assert hpo.schedule_key(back) == hpo.schedule_key(h)


def test_forward_cost_per_tangent_table_and_a_task_without_its_data():
  from benchmarks import forward_cost  # pylint: disable=g-import-not-at-top
  rows = forward_cost.per_tangent(30, [1, 2], 1)
  assert [r[0] for r in rows] == [1, 2] and all(len(r) == 4 for r in rows)
  # Both pushes cost something per tangent: a plain loop optimised away
  # (its result unused) would make every figure hundreds of plain steps.
  for r in rows:
    assert all(0.2 < float(v) < 60 for v in r[1:]), rows
  with pytest.raises(ValueError, match="--task='svhn_lenet'"):
    forward_cost.problem('svhn_lenet')
