"""Black-box baselines through optuna: schedules, budget accounting, seeds."""

import math

import jax.numpy as jnp
import numpy as np
import pytest

from hypergrad.experiments import blackbox
from hypergrad.experiments import tasks

T = 40  # inner steps per trial: tiny, the searches are what is tested


@pytest.fixture(scope='module')
def problem():
  task = tasks.make_task('digits_mlp')
  return task.problem()


def _search(problem, **kw):
  step_fn, loss_fn, state = problem
  kw.setdefault('budget', 3 * T)
  return blackbox.blackbox_search(step_fn, loss_fn, state, T, **kw)


def _in_space(hparams, space=blackbox.SEARCH_SPACE):
  for kind, values in hparams.items():
    low, high, _ = space[kind]
    values = np.asarray(values)
    assert values.dtype == np.float32
    assert np.all((values >= low) & (values <= high)), (kind, values)


@pytest.mark.parametrize('method', ['random', 'tpe'])
def test_full_trials_spend_exactly_their_steps(problem, method):
  result = _search(problem, method=method, budget=3 * T + T // 2, seed=1)
  assert [r.state for r in result.trials] == ['complete'] * 3
  # Half a trial of budget is left unspent rather than overrun.
  assert result.inner_steps == 3 * T
  assert [r.cumulative_steps for r in result.trials] == [T, 2 * T, 3 * T]
  assert set(result.hparams) == {'lr', 'momentum', 'weight_decay'}
  assert all(v.shape == (1,) for v in result.hparams.values())
  _in_space(result.hparams)
  best = min(r.value for r in result.trials)
  assert result.best_value == best and math.isfinite(best)
  assert result.wall_time > 0


def test_hyperband_counts_pruned_steps_and_stays_in_budget(problem):
  budget = 8 * T
  result = _search(problem, method='hyperband', budget=budget, seed=0)
  edges = {stop for _, stop in blackbox.chunk_bounds(T, 9)}
  steps = [r.inner_steps for r in result.trials]
  assert result.inner_steps == sum(steps) <= budget
  # Unspent budget is less than the first chunk: nothing more could start.
  assert budget - result.inner_steps < T // 9
  for r in result.trials:
    if r.state == 'complete':
      assert r.inner_steps == T and math.isfinite(r.value)
    else:
      assert r.inner_steps < T and math.isnan(r.value)
      assert r.inner_steps in edges  # whole chunks, counted as run
  assert any(r.state == 'pruned' for r in result.trials)
  assert len(result.trials) > 8  # pruning bought extra trials
  _in_space(result.hparams)


def test_piecewise_lr_schedule_and_custom_space(problem):
  space = {'lr': (0.01, 0.5, True), 'momentum': (0.5, 0.9, False)}
  result = _search(problem, method='random', budget=2 * T, space=space,
                   intervals={'lr': 7})
  assert result.hparams['lr'].shape == (7,)
  assert result.hparams['momentum'].shape == (1,)
  assert 'weight_decay' not in result.hparams
  _in_space(result.hparams, space)
  names = set(result.study.trials[0].params)
  assert names == {f'lr_{i}' for i in range(7)} | {'momentum'}


def test_fresh_init_per_trial_and_callback(problem):
  step_fn, loss_fn, state = problem
  inits, seen = [], []

  def init(number):
    inits.append(number)
    return state

  result = blackbox.blackbox_search(step_fn, loss_fn, init, T, 2 * T,
                                    callback=seen.append)
  assert inits == [0, 1]
  assert seen == result.trials and [r.number for r in seen] == [0, 1]


def test_seeds_are_reproducible(problem):
  a = _search(problem, method='tpe', seed=3)
  b = _search(problem, method='tpe', seed=3)
  c = _search(problem, method='tpe', seed=4)
  assert [r.hparams for r in a.trials] == [r.hparams for r in b.trials]
  assert [r.value for r in a.trials] == [r.value for r in b.trials]
  assert [r.hparams for r in a.trials] != [r.hparams for r in c.trials]


def test_best_so_far_follows_the_budget(problem):
  result = _search(problem, method='random', budget=3 * T, seed=2)
  assert blackbox.best_so_far(result.trials, T - 1) is None
  first = blackbox.best_so_far(result.trials, T)
  assert first.number == 0
  assert blackbox.best_so_far(result.trials, 3 * T).value == result.best_value


def test_diverged_trials_score_inf(problem):
  # Learning rates this large blow up the tanh MLP's logits.
  result = _search(problem, method='random', budget=T,
                   space={'lr': (1e4, 1e5, True)})
  assert result.trials[0].value == math.inf


@pytest.mark.parametrize('kw, match', [
    ({'budget': 0}, 'budget=0'),
    ({'budget': -5}, 'budget=-5'),
    ({'budget': T - 1}, f'budget={T - 1}'),
    ({'budget': 2.5 * T}, 'budget=100.0'),
    ({'method': 'grid'}, "'grid'"),
    ({'space': {'lr': (0.0, 1.0, True)}}, 'low > 0'),
    ({'space': {'lr': (0.1, 0.01, False)}}, 'low < high'),
    ({'intervals': {'dropout': 2}}, 'dropout'),
    ({'intervals': {'lr': T + 1}}, f'intervals\\[\'lr\'\\]={T + 1}'),
    ({'method': 'hyperband', 'hyperband_reports': 1}, 'hyperband_reports=1'),
    ({'storage': ''}, "storage=''"),
    ({'study_name': 3}, 'study_name=3'),
])
def test_bad_input_raises_naming_the_value(problem, kw, match):
  with pytest.raises(ValueError, match=match):
    _search(problem, **kw)


def test_processes_share_one_study_through_storage(problem, tmp_path):
  # Two searches (as two processes would) with one storage and study name:
  # the second sees, and TPE learns from, the first one's trials.
  storage = f'sqlite:///{tmp_path}/study.db'
  first = _search(problem, method='tpe', seed=0, budget=2 * T,
                  storage=storage, study_name='shared')
  assert len(first.study.trials) == 2
  second = _search(problem, method='tpe', seed=1, budget=2 * T,
                   storage=storage, study_name='shared')
  assert len(second.study.trials) == 4
  assert second.inner_steps == 2 * T   # each process spends its own budget
  assert [r.number for r in second.trials] == [2, 3]
  values = [t.value for t in second.study.trials]
  assert second.study.best_value == min(values)
  # Different seeds: the processes did not draw the same configurations.
  assert first.trials[0].hparams != second.trials[0].hparams


def test_chunk_bounds_cover_the_horizon():
  bounds = blackbox.chunk_bounds(10, 3)
  assert bounds == [(0, 3), (3, 6), (6, 10)]
  assert blackbox.param_names('lr', 1) == ['lr']
  assert blackbox.param_names('lr', 2) == ['lr_0', 'lr_1']


def test_hyperband_trains_the_same_run_as_one_unroll(problem):
  # Chunked training must be the plain unroll: a trial's final loss does not
  # depend on how many reports Hyperband asked for. (The shapes and chunks
  # of the searches above: their compilations are reused.)
  step_fn, loss_fn, state = problem
  h = {'lr': jnp.full((1,), 0.1, jnp.float32),
       'momentum': jnp.full((1,), 0.9, jnp.float32),
       'weight_decay': jnp.full((1,), 5e-4, jnp.float32)}
  whole = blackbox.train_steps(step_fn, state, h, num_steps=T, start=0,
                                stop=T)
  part = state
  for start, stop in blackbox.chunk_bounds(T, 9):
    part = blackbox.train_steps(step_fn, part, h, num_steps=T, start=start,
                                 stop=stop)
  np.testing.assert_allclose(float(loss_fn(part)), float(loss_fn(whole)),
                             rtol=1e-6)
