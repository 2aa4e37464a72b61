r"""Population hypergradients: their cost and how reproducible their sign is.

On a real task (default MNIST-1D MLP, T = 1000 inner steps, 7 learning-rate
intervals + momentum + weight decay: 9 values), members are inner runs with
their own initialisation and batch order (``task.init_state(seed)``) and
their own train/validation split (``task.split(seed)``).

(a) Cost: wall time of ``hypergrad.population()`` (all members
    vectorised in one program) at S = 1, 4, 8 against S separate
    ``forward_hypergrad`` calls on the same members, best of ``--repeats``
    after a warm-up (compilation excluded).

(b) Reproducibility: a pool of ``--pool`` members' hypergradients is computed
    per schedule (in vectorised populations of ``--pool_batch``); then
    ``--draws`` times two *disjoint* populations A and B of size S are drawn
    from the pool and each is aggregated (mean, median, trimmed mean with
    trim 0.25, sign vote), optionally with the undecided rule
    (``min_agreement``). Reported per (S, aggregate, min_agreement), pooled
    over draws, both orders (A then B, B then A) and the 9 values:

    * ``decided``: share of values A's aggregate does not set to 0 (a sign
      vote is 0 on a tie even without the rule);
    * ``agree | decided``: among those, share where B's aggregate *without*
      the rule has the same sign (an independent estimate of the sign; a
      0 there, the tie of an even sign vote, counts one half);
    * ``moves against``: share of all values where A and B both decide and
      disagree (the outer step would move them in opposite directions);
    * ``agree with rest | decided``: among the values A decides, share
      whose sign matches the same aggregate (without the rule) of all the
      *other* pool members (``--pool`` - S of them): the best available
      estimate of the true sign;
    * ``signal`` (rows without the rule): share of values with
      ``|aggregate_A| / se_A >= 2``, ``se`` the standard error of the mean
      for mean / median / trimmed mean and of the mean of the signs for the
      sign vote;
    * ``agree | signal``: among those, share where B's sign matches.
    * ``agree | pool signal`` (rows without the rule): among the values
      whose median over the *whole* pool is at least 2 standard errors from
      0 (the values with a real signal, judged by every member), share
      where A's and B's aggregates have the same sign. Unlike ``signal``
      it needs no spread within A, so it covers S = 1 too.
    * ``in place | no pool signal`` and ``in place | pool signal`` (rows
      with the rule): share of the values without / with a pool signal that
      the rule leaves in place (undecided): the first should be high, the
      second low.

    S = 1 (no aggregate) is the single-hypergradient baseline.

Schedules: the task's default (lr 0.1 x 7, momentum 0.9, wd 5e-4) and a
small-lr one (lr 0.01 x 7, momentum 0.5, wd 1e-4).

    python -m benchmarks.population_signal                  # ~30 min, 2 CPUs
    python -m benchmarks.population_signal --steps 100 --pool 16 \
        --time_sizes 1,4 --draws 50 --out /tmp/pop          # quick look

Writes ``benchmarks/results/population_signal.md`` and ``.json`` (the member
hypergradients, to re-analyse without recomputing).
"""

from __future__ import annotations

import json
import os
import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import common
import hypergrad
from hypergrad.experiments import tasks as tasks_lib

_TASK = flags.DEFINE_string('task', 'mnist1d_mlp', 'Task name.')
_STEPS = flags.DEFINE_integer('steps', 1000, 'Horizon T.')
_LR_INTERVALS = flags.DEFINE_integer('lr_intervals', 7,
                                     'Learning-rate intervals.')
_TIME_SIZES = flags.DEFINE_list('time_sizes', ['1', '4', '8'],
                                'Population sizes timed in (a); empty: skip.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats (best kept).')
_MEMBER_BATCHES = flags.DEFINE_list(
    'member_batches', ['4'], 'member_batch values timed in (a) (for S above '
    'them).')
_POOL = flags.DEFINE_integer('pool', 48, 'Members per schedule in (b).')
_POOL_BATCH = flags.DEFINE_integer(
    'pool_batch', 8, 'Members per population call building the '
    'pool.')
_SIZES = flags.DEFINE_list('sizes', ['4', '8'], 'Population sizes in (b).')
_DRAWS = flags.DEFINE_integer('draws', 1000,
                              'Random disjoint population pairs per size.')
_MIN_AGREEMENTS = flags.DEFINE_list('min_agreements', ['0.5', '0.75'],
                                    'Undecided thresholds compared in (b).')
_SCHEDULES = flags.DEFINE_list('schedules', ['default', 'small_lr'],
                               'Schedules measured in (b).')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the draws and members.')
_REANALYSE = flags.DEFINE_bool(
    'reanalyse', False, 'Read the member hypergradients back from --out\'s '
    '.json instead of computing them (the tables only; no timing).')
_OUT = flags.DEFINE_string(
    'out', os.path.join(os.path.dirname(__file__), 'results',
                        'population_signal'),
    'Output path without extension (.md and .json are written).')

SCHEDULES = {
    'default': {'lr': 0.1, 'momentum': 0.9, 'weight_decay': 5e-4},
    'small_lr': {'lr': 0.01, 'momentum': 0.5, 'weight_decay': 1e-4},
}
AGGREGATES = ('mean', 'median', 'trimmed_mean', 'sign_vote')


def hparams_for(task, name: str, lr_intervals: int):
  values = SCHEDULES[name]
  return {k: hypergrad.constant(v, lr_intervals if k == 'lr' else 1,
                                task.dtype) for k, v in values.items()}


def members(task, seeds):
  """Per-member step and loss functions and stacked initial states."""
  splits = [task.split(int(s)) for s in seeds]
  states = [task.init_state(int(s)) for s in seeds]
  return ([task.step_fn(sp) for sp in splits],
          [task.loss_fn(sp) for sp in splits],
          jax.tree.map(lambda *x: jnp.stack(x), *states))


def flat(tree) -> np.ndarray:
  """Leaves ``(S, n, ...)`` as one ``(S, K)`` array, in leaf order."""
  leaves = jax.tree.leaves(tree)
  return np.concatenate([np.asarray(l).reshape(l.shape[0], -1)
                         for l in leaves], axis=1)


# ---------------------------------------------------------------------------
# (a) cost.


def time_population(task, hparams, steps, sizes, member_batches, repeats,
                    log):
  """Rows ``[S, how, s, s / member, / S calls]``.

  The variants of one S are timed in turn within each repeat, so that a
  burst of load on shared cores hits all of them alike; the best is kept.
  """
  rows = []
  for s in sizes:
    step_fns, loss_fns, states = members(task, range(10_000, 10_000 + s))
    per = [jax.tree.map(lambda x, i=i: x[i], states) for i in range(s)]

    def population(batch):
      return lambda: hypergrad.population(member_batch=batch)(
          step_fns, loss_fns, states, hparams, steps).info.hypergrads

    variants = {'one vmapped program': population(None)}
    for b in member_batches:
      if 1 < b < s:
        variants[f'lax.map over batches of {b}'] = population(b)
    variants[f'{s} forward_hypergrad calls'] = lambda: [
        hypergrad.forward_hypergrad(step_fns[i], loss_fns[i], per[i],
                                    hparams, steps)[1] for i in range(s)]
    for fn in variants.values():  # compile and warm up
      jax.block_until_ready(fn())
    best = dict.fromkeys(variants, float('inf'))
    for _ in range(repeats):
      for name, fn in variants.items():
        t0 = time.perf_counter()
        jax.block_until_ready(fn())
        best[name] = min(best[name], time.perf_counter() - t0)
    calls = best[f'{s} forward_hypergrad calls']
    for name, t in best.items():
      rows.append([s, name, f'{t:.2f}', f'{t / s:.2f}', f'{t / calls:.2f}'])
      log(f'  S={s} {name}: {t:.2f} s')
  return rows


# ---------------------------------------------------------------------------
# (b) reproducibility.


def member_pool(task, hparams, steps, num, batch, seed, log):
  """``(num, K)`` member hypergradients and their ``(num,)`` losses."""
  grads, losses = [], []
  for start in range(0, num, batch):
    seeds = range(seed + start, seed + min(start + batch, num))
    step_fns, loss_fns, states = members(task, seeds)
    t0 = time.perf_counter()
    out = hypergrad.population()(step_fns, loss_fns, states, hparams, steps)
    bad = np.asarray(out.info.nonfinite_step)
    if (bad >= 0).any():
      raise FloatingPointError(f'members {list(seeds)} diverged: {bad}')
    grads.append(flat(out.info.hypergrads))
    losses.append(np.asarray(out.info.losses))
    log(f'  members {seeds.start}..{seeds.stop - 1}: '
        f'{time.perf_counter() - t0:.1f} s')
  return np.concatenate(grads), np.concatenate(losses)


def _aggregate(g, name, min_agreement):
  """Aggregate and standard error of ``g: (S, draws, K)`` over axis 0."""
  out = hypergrad.aggregate_hypergrads({'g': jnp.asarray(g)}, name,
                                       min_agreement=min_agreement)
  agg = np.asarray(out.hypergrads['g'])
  s = g.shape[0]
  if s == 1:
    return agg, np.full_like(agg, np.nan)
  if name == 'sign_vote':
    se = np.std(np.sign(g), axis=0, ddof=1) / np.sqrt(s)
  else:
    se = np.asarray(out.stderr['g'])
  return agg, se


def _agree(x, y):
  """1 where the signs match, 0 where they differ, 1/2 where ``y`` is 0.

  A tie of the other side (an even sign vote) is a coin flip, not a
  disagreement.
  """
  return np.where(y == 0, 0.5, (np.sign(x) == np.sign(y)).astype(float))


def pool_signal(pool) -> np.ndarray:
  """``(K,)`` bool: the pool's median is at least 2 standard errors from 0."""
  med, se = _aggregate(pool[:, None, :], 'median', None)
  return np.abs(med[0]) / se[0] >= 2


def reproducibility(pool, sizes, draws, min_agreements, rng):
  """Rows of the reproducibility table for one schedule's member pool."""
  num, _ = pool.shape
  real = pool_signal(pool)
  rows = []
  for s in sizes:
    if 2 * s > num:
      raise ValueError(f'a pool of {num} members cannot hold two disjoint '
                       f'populations of {s}.')
    perms = np.stack([rng.permutation(num) for _ in range(draws)])
    ga = np.moveaxis(pool[perms[:, :s]], 1, 0)          # (S, draws, K)
    gb = np.moveaxis(pool[perms[:, s:2 * s]], 1, 0)
    rest = np.moveaxis(pool[perms[:, s:]], 1, 0)          # all but A
    names = ('single',) if s == 1 else AGGREGATES
    rules = (None,) if s == 1 else (None,) + tuple(min_agreements)
    for name in names:
      agg = 'mean' if name == 'single' else name
      raw_a, se_a = _aggregate(ga, agg, None)
      raw_b, se_b = _aggregate(gb, agg, None)
      # Both orders: A's claims checked against B, and B's against A.
      raw_x, raw_y = (np.concatenate([raw_a, raw_b]),
                      np.concatenate([raw_b, raw_a]))
      se = np.concatenate([se_a, se_b])
      truth = np.sign(_aggregate(rest, agg, None)[0])
      for rule in rules:
        a, b = (_aggregate(g, agg, rule)[0] for g in (ga, gb))
        x, y = np.concatenate([a, b]), np.concatenate([b, a])
        decided = x != 0
        # The other population's own aggregate, without the rule: an
        # independent estimate of the sign.
        agree = _agree(x, raw_y)
        against = decided & (y != 0) & (np.sign(x) != np.sign(y))
        with np.errstate(divide='ignore', invalid='ignore'):
          signal = np.abs(raw_x) / se >= 2
        pct = lambda m, of: (f'{100 * m[of].mean():.0f}' if of.any()
                             else '-')
        signal_cols = ['-', '-'] if s == 1 or rule is not None else [
            f'{100 * signal.mean():.0f}',
            pct(_agree(raw_x, raw_y), signal)]
        real_x = np.broadcast_to(real, raw_x.shape)
        signal_cols.append('-' if rule is not None
                           else pct(_agree(raw_x, raw_y), real_x))
        undecided = (x == 0).astype(float)
        signal_cols += (['-', '-'] if rule is None else
                        [pct(undecided, ~real_x), pct(undecided, real_x)])
        rows.append([s, name, '-' if rule is None else rule,
                     f'{100 * decided.mean():.0f}', pct(agree, decided),
                     f'{100 * against.mean():.0f}',
                     pct(_agree(a, truth), a != 0)] + signal_cols)
  return rows


def _timing(task, steps, saved, sections, record, log):
  """Section (a), measured, or read back with ``--reanalyse``."""
  sizes = [int(s) for s in _TIME_SIZES.value if s]
  if saved is not None:
    if saved.get('timing_section'):
      sections.append(saved['timing_section'])
      record['timing'] = saved['timing']
      record['timing_section'] = saved['timing_section']
  elif sizes:
    log('(a) cost, default schedule')
    load = os.getloadavg()[0]
    rows = time_population(task, hparams_for(task, 'default',
                                             _LR_INTERVALS.value),
                           steps, sizes,
                           [int(b) for b in _MEMBER_BATCHES.value if b],
                           _REPEATS.value, log)
    record['timing_section'] = (
        f'## (a) Cost: one vectorised population vs S separate calls\n\n'
        f'Default schedule; best of {_REPEATS.value} after a warm-up '
        f'(variants interleaved), compilation excluded; load average '
        f'{load:.1f} before timing, on {os.cpu_count()} '
        f'cores.\n\n' + common.markdown_table(
            ['S', 'how', 's', 's / member', '/ S calls'], rows) + '\n')
    sections.append(record['timing_section'])
    record['timing'] = rows



def _schedule_section(task, name, steps, saved, sizes, rules, rng, record,
                      log) -> str:
  """Section (b) for schedule ``name``: its member pool and the table."""
  log(f'(b) member pool, schedule {name}')
  hparams = hparams_for(task, name, _LR_INTERVALS.value)
  if saved is not None:
    pool = np.asarray(saved['schedules'][name]['member_hypergrads'])
    losses = np.asarray(saved['schedules'][name]['member_losses'])
  else:
    pool, losses = member_pool(task, hparams, steps, _POOL.value,
                               _POOL_BATCH.value, _SEED.value, log)
  rows = reproducibility(pool, [1] + sizes, _DRAWS.value, rules, rng)
  med = np.median(pool, axis=0)
  agreement = np.abs(np.sign(pool).mean(axis=0))
  keys = [f'{k}[{i}]' for k, v in hparams.items() for i in range(v.size)]
  real = pool_signal(pool)
  pool_rows = [[k, f'{m:+.3g}', f'{np.mean(pool[:, j]):+.3g}',
                f'{np.std(pool[:, j], ddof=1) / np.sqrt(len(pool)):.3g}',
                f'{a:.2f}', 'yes' if real[j] else 'no']
               for j, (k, m, a) in enumerate(zip(keys, med, agreement))]
  values = ', '.join(f'{k} {v}' for k, v in SCHEDULES[name].items())
  section = (
      f'## (b) Sign reproducibility, schedule `{name}` ({values})\n\n'
      f'Pool of {len(pool)} members (validation loss '
      f'{losses.mean():.3f} +- {losses.std():.3f}); {_DRAWS.value} draws '
      f'of two disjoint populations per S. Percentages of hyperparameter '
      f'values (see the module docstring for each column).\n\n'
      + common.markdown_table(
          ['S', 'aggregate', 'min_agreement', 'decided %',
           'agree / decided %', 'moves against %',
           'agree with rest / decided %', 'signal %', 'agree / signal %',
           'agree / pool signal %', 'in place / no pool signal %',
           'in place / pool signal %'],
          rows)
      + f'\n\nThe pool itself (all {len(pool)} members):\n\n'
      + common.markdown_table(
          ['value', 'median', 'mean', 'std. error', 'sign agreement',
           'pool signal'],
          pool_rows) + '\n')
  record['schedules'][name] = {'hparams': SCHEDULES[name],
                               'member_hypergrads': pool.tolist(),
                               'member_losses': losses.tolist(),
                               'value_names': keys, 'table': rows}
  return section


def main(argv):
  del argv
  device = f'{jax.default_backend()} ({jax.devices()[0].device_kind})'
  log = lambda msg: print(msg, flush=True)
  log(f'backend: {device}')
  steps = _STEPS.value
  task = tasks_lib.make_task(_TASK.value)
  start = time.perf_counter()
  saved = None
  if _REANALYSE.value:
    with open(_OUT.value + '.json') as f:
      saved = json.load(f)
    if saved['task'] != _TASK.value or saved['steps'] != steps:
      raise app.UsageError(
          f'--reanalyse: {_OUT.value}.json holds task {saved["task"]}, '
          f'T = {saved["steps"]}; asked for {_TASK.value}, T = {steps}.')
  sections = [
      f'# Population hypergradients: cost and sign reproducibility\n\n'
      f'Task `{_TASK.value}`, T = {steps}, {_LR_INTERVALS.value} lr '
      f'intervals + momentum + weight decay ({_LR_INTERVALS.value + 2} '
      f'values), float32, forward mode, backend {device}, '
      f'{os.cpu_count()} CPU cores (shared: timings are noisy). Each member '
      f'has its own initialisation, batch order and train/validation split '
      f'(`task.init_state(seed)`, `task.split(seed)`).\n\n'
      f'Produced by `python -m benchmarks.population_signal '
      f'--task {_TASK.value} --schedules {",".join(_SCHEDULES.value)} '
      f'--steps {steps} --pool {_POOL.value} --draws {_DRAWS.value} '
      f'--sizes {",".join(_SIZES.value)} '
      f'--time_sizes {",".join(_TIME_SIZES.value)} '
      f'--member_batches {",".join(_MEMBER_BATCHES.value)} '
      f'--repeats {_REPEATS.value}`.\n']
  record = {'task': _TASK.value, 'steps': steps, 'device': device,
            'schedules': {}}

  _timing(task, steps, saved, sections, record, log)

  rng = np.random.RandomState(_SEED.value)
  sizes = [int(s) for s in _SIZES.value]
  rules = [float(m) for m in _MIN_AGREEMENTS.value]
  for name in _SCHEDULES.value:
    sections.append(_schedule_section(task, name, steps, saved, sizes, rules,
                                      rng, record, log))
  wall = (saved['wall_seconds'] if saved and 'wall_seconds' in saved
          else time.perf_counter() - start)
  record['wall_seconds'] = wall
  sections.append(f'Total wall time {wall:.0f} s'
                  + (' (member hypergradients read back from the .json '
                     'with --reanalyse)' if saved else '') + '.\n')
  text = '\n'.join(sections)
  print(text)
  os.makedirs(os.path.dirname(_OUT.value) or '.', exist_ok=True)
  with open(_OUT.value + '.md', 'w') as f:
    f.write(text)
  with open(_OUT.value + '.json', 'w') as f:
    json.dump(record, f)
  log(f'wrote {_OUT.value}.md and .json')


if __name__ == '__main__':
  app.run(main)
