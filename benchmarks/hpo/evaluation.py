"""The evaluation, the same for every method: retrain from scratch, test.

Within HPO seed ``i`` every found schedule and the default are retrained
from the same initialisations (:func:`eval_inits`), so gains over the
default are paired; :func:`confidence_interval` is the 95% Student-t
interval of a mean over seeds.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.hpo import methods as methods_lib
from benchmarks.hpo import searches
from benchmarks.hpo import settings as settings_lib
import hypergrad
from hypergrad._src import schedule

# Retraining seeds of the final evaluation (never used by a search).
_EVAL_SEED_BASE = 10_000
# Two-sided 95% quantiles of Student's t by degrees of freedom (n - 1).
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447,
         7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086,
         30: 2.042}


def eval_inits(hpo_seed: int, n: int) -> list[int]:
  """The retraining initialisations of HPO seed ``hpo_seed``."""
  return [_EVAL_SEED_BASE + 100 * hpo_seed + i for i in range(n)]


def confidence_interval(values) -> tuple[float, float]:
  """Mean and half-width of the 95% t-interval of the mean."""
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if len(v) < 2:
    return (float(v.mean()) if len(v) else math.nan), math.nan
  df = len(v) - 1
  t = _T975[max(k for k in _T975 if k <= df)]
  return float(v.mean()), float(t * v.std(ddof=1) / np.sqrt(len(v)))


def schedule_key(h) -> bytes:
  """A schedule's identity: equal bytes, the same retrains."""
  return b''.join(k.encode() + np.asarray(h[k]).tobytes() for k in sorted(h))


@functools.partial(jax.jit, static_argnums=0)
def _train_many(num_steps, step_fn, init_state, hparams):
  return jax.vmap(lambda h: hypergrad.unroll(step_fn, init_state, h,
                                             num_steps))(hparams)


def _per_step(task, h, horizon):
  """A schedule as ``T`` per-step values of every kind (the same run)."""
  full = dict(task.fixed_hparams)
  full.update(h)
  return {k: np.asarray(schedule.expand(
      {k: jnp.asarray(np.asarray(full[k], task.dtype).reshape(-1))},
      horizon)[k]) for k in settings_lib.KINDS}


def evaluate(task, schedules, horizon, eval_seeds, batch):
  """Test loss and accuracy of each schedule, averaged over ``eval_seeds``.

  Schedules are expanded to per-step values and retrained ``batch`` at a
  time with one vmapped unroll (padded to ``batch``: one compilation).

  Returns:
    ``[len(schedules), 3]``: mean test loss (NaN when any retrain
    diverged, so a diverged schedule is never scored as a finite loss),
    mean test accuracy as measured (a diverged network's is a constant
    prediction's: the failure is charged to the method that chose it), and
    the number of retrains whose test loss is not finite.
  """
  step_fn = task.step_fn(task.default_split())
  expanded = [_per_step(task, h, horizon) for h in schedules]
  out = np.zeros((len(schedules), 3))
  for e in eval_seeds:
    state = task.init_state(e)
    for i in range(0, len(expanded), batch):
      group = expanded[i:i + batch]
      group = group + [group[0]] * (batch - len(group))
      stacked = {k: jnp.asarray(np.stack([g[k] for g in group]))
                 for k in settings_lib.KINDS}
      final = _train_many(horizon, step_fn, state, stacked)
      for j in range(min(batch, len(expanded) - i)):
        one = jax.tree.map(lambda x, j=j: x[j], final)
        m = task.evaluate(one, 'test')
        diverged = not np.isfinite(float(m['loss']))
        out[i + j] += (m['loss'], m['accuracy'], diverged)
  out[:, :2] /= len(eval_seeds)
  return out


def diverged_retrains(score) -> int | None:
  """How many of a schedule's retrains diverged (non-finite test loss).

  None where it is not known: a score journalled before the count was
  kept whose loss is not finite (at least one of its retrains diverged).
  """
  if len(score) > 2:
    return int(score[2])
  return 0 if math.isfinite(score[0]) else None


def _row(score, seed, r, default_final) -> dict:
  """One method's result on ``seed``, scored against the default's."""
  def scored(h, field):
    return (float(score[(seed, schedule_key(h))][field]) if h is not None
            else math.nan)
  final = (score[(seed, schedule_key(r['final']))] if r['final'] is not None
           else (math.nan, math.nan))
  return {
      'test_loss': float(final[0]), 'test_accuracy': float(final[1]),
      'diverged_retrains': diverged_retrains(final),
      'default_test_accuracy': float(default_final[1]),
      'paired_gain': float(final[1] - default_final[1]),
      'spent': r['spent'], 'seconds': r['seconds'], 'info': r['info'],
      'curve': [scored(h, 1) for h in r['curve']],
      'curve_loss': [scored(h, 0) for h in r['curve']],
      'schedule': {k: np.asarray(v).tolist()
                   for k, v in (r['final'] or {}).items()
                   if np.size(v) <= 16}}


def table_results(run) -> dict:
  """The table's results once every seed is retrained.

  Args:
    run: a finished run (:class:`benchmarks.hpo.runner.Run`): its
      ``setup``, ``budget``, ``ratios``, ``points``, ``done`` searches,
      retrain ``score`` by (seed, schedule key), ``eval_seconds`` and the
      cost measurement's ``kept`` record.
  """
  s, default = run.setup, run.default
  no_search = {'checkpoints': [(0.0, default)], 'info': {}, 'seconds': 0.0,
               'spent': 0.0, 'curve': [default] * s.eval_points,
               'final': default}
  results = {'task': s.task_name, 'horizon': s.horizon,
             'budget': run.budget, 'seeds': s.seeds, 'ratios': run.ratios,
             'points': run.points, 'eval_seeds': s.eval_seeds,
             'fds_init': s.fds_init, 'val_objective': s.val_objective,
             'fds_step_sizes': s.config.step_sizes.to_dict(),
             'fds_intervals': settings_lib.config_intervals(s.config),
             'blackbox_lr_intervals': s.blackbox_lr_intervals,
             'tune_greedy': s.tune_greedy,
             'reverse_checkpoint_every': s.reverse_ckpt,
             'backend': f'{jax.default_backend()} '
                        f'({jax.devices()[0].device_kind})',
             'methods': {}}
  for m in s.methods:
    results['methods'][m] = [
        _row(run.score, seed,
             run.done[(seed, m)] if m != 'default' else no_search,
             run.score[(seed, schedule_key(default))])
        for seed in range(s.seeds)]
  reference = reference_choice(run)
  if reference is not None:
    results['reference'] = reference
  # Compute spent on this table, resumed pieces included (processes that
  # ran side by side add up).
  results['total_seconds'] = (
      run.kept.get('seconds', 0.0) + sum(run.eval_seconds.values())
      + sum(r['seconds'] for r in run.done.values()))
  results['search_processes'] = sorted(
      {f"shard {r['shard']} on {r['cpus']} CPU "
       f"core{'s' if r['cpus'] != 1 else ''}" for r in run.done.values()
       if 'shard' in r})
  return results


def reference_choice(run) -> dict | None:
  """The strongest reference row, chosen on validation loss (not test).

  Each reference row's returned schedule is scored, seed by seed, by the
  validation loss every black-box trial of that seed is scored by (the
  same split and initialisation); the row of the lowest mean is the one
  every gain is also reported against. None unless the table has a
  reference row besides the constant default.

  Returns:
    ``{'val_loss': {row: [per seed]}, 'strongest': row}``.
  """
  s = run.setup
  rows = [m for m in methods_lib.REFERENCE if m in s.methods]
  if not any(m != 'default' for m in rows):
    return None
  val = {}
  for m in rows:
    val[m] = [searches.validation_loss(
        run.task, run.default if m == 'default' else run.done[(seed, m)]
        ['final'], s.horizon, seed) for seed in range(s.seeds)]
  strongest = min(rows, key=lambda m: (float(np.mean(val[m])), m))
  return {'val_loss': val, 'strongest': strongest}
