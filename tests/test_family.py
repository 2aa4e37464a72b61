"""Schedule families: exact hypergradients w.r.t. a family's parameters."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypergrad

T = 60


def _problem():
  kx, kv = jax.random.split(jax.random.key(1))
  x = jax.random.normal(kx, (64, 4), jnp.float64)
  xv = jax.random.normal(kv, (32, 4), jnp.float64)
  w_true = jnp.array([1.0, -2.0, 0.5, 0.3], jnp.float64)
  y, yv = jnp.tanh(x @ w_true), jnp.tanh(xv @ w_true)

  def train_loss(w, t):
    idx = (jnp.arange(16, dtype=jnp.int32) + 16 * (t % 4)) % 64
    return jnp.mean((jnp.tanh(x[idx] @ w) - y[idx]) ** 2)

  step_fn = hypergrad.sgd_momentum_step(train_loss)
  loss_fn = lambda s: jnp.mean((jnp.tanh(xv @ s.params) - yv) ** 2)
  return step_fn, loss_fn, hypergrad.sgd_init(jnp.zeros(4, jnp.float64))


def _hparams(decay='cosine'):
  # A warm-up fraction off the grid of steps (0.2 * 60 is a whole step,
  # where the family has a kink and finite differences a one-sided slope).
  return {'lr': hypergrad.warmup_decay(0.5, warmup=0.23, final=0.1,
                                       decay=decay, intervals=3,
                                       dtype=jnp.float64),
          'momentum': hypergrad.constant(0.5, dtype=jnp.float64)}


def test_the_family_is_the_recipe():
  lr = hypergrad.warmup_decay(2.0, warmup=0.25, final=0.1, intervals=2)
  v = np.asarray(hypergrad.expand({'lr': lr}, 8)['lr'])
  np.testing.assert_allclose(v[:2], [1.0, 2.0], rtol=1e-5)  # the warm-up
  np.testing.assert_allclose(v[2], 2.0, rtol=1e-5)  # the peak
  assert np.all(np.diff(v[2:]) < 0)  # then a decay towards 0.1 of the peak
  final = 2.0 * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 5 / 6)))
  np.testing.assert_allclose(v[-1], final, rtol=1e-5)
  linear = hypergrad.warmup_decay(1.0, warmup=0.5, final=0.0,
                                  decay='linear')
  np.testing.assert_allclose(
      hypergrad.expand({'lr': linear}, 4)['lr'], [0.5, 1.0, 1.0, 0.5],
      atol=1e-3)


@pytest.mark.parametrize('decay', ['cosine', 'linear'])
@pytest.mark.parametrize('estimator', [
    hypergrad.forward(push='rows'), hypergrad.forward(push='batch'),
    hypergrad.forward(chunk_size=2), hypergrad.reverse()],
    ids=['rows', 'batch', 'chunks', 'reverse'])
def test_hypergradients_match_float64_finite_differences(estimator, decay):
  step_fn, loss_fn, state = _problem()
  h = _hparams(decay)
  result = estimator(step_fn, loss_fn, state, h, T)
  assert isinstance(result.hypergrads['lr'], hypergrad.WarmupDecay)
  chex.assert_trees_all_equal_shapes_and_dtypes(result.hypergrads, h)
  loss = jax.jit(lambda hp: loss_fn(hypergrad.unroll(step_fn, state, hp, T)))
  fd = hypergrad.finite_difference(loss, h, eps=1e-6)
  chex.assert_trees_all_close(result.hypergrads, fd, rtol=1e-6, atol=1e-9)
  # Every parameter matters here: the test would not pass on zeros.
  assert all(np.all(np.abs(np.asarray(g)) > 1e-6)
             for g in jax.tree.leaves(fd['lr']))


def test_new_family_values_do_not_recompile():
  step_fn, loss_fn, state = _problem()

  @jax.jit
  @chex.assert_max_traces(n=1)
  def fn(h):
    return hypergrad.forward().compute(step_fn, loss_fn, state, h, T)

  for peak in (0.3, 0.5, 0.7):
    h = {'lr': hypergrad.warmup_decay(peak, intervals=3, dtype=jnp.float64),
         'momentum': hypergrad.constant(0.5, dtype=jnp.float64)}
    fn(h)


def test_an_outer_loop_steps_the_family_parameters():
  step_fn, loss_fn, state = _problem()
  est = hypergrad.forward()
  fn = lambda h, k: est(step_fn, loss_fn, state, h, T)
  h = {'lr': hypergrad.warmup_decay(0.05, intervals=2, dtype=jnp.float64)}
  # The default bounds (lr >= 0) leave the family's log-scale values alone.
  out, records = hypergrad.fds_search(
      fn, h, opt=hypergrad.sign_descent({'lr': 0.3}), max_outer_steps=6)
  assert all(float(r['hparams']['lr'].log_peak[0]) != 0.0 for r in records)
  assert out.best_loss < records[0]['val_loss']
  assert float(out.best_hparams['lr'].log_peak[0]) > np.log(0.05)


@pytest.mark.parametrize('kwargs, match', [
    (dict(peak=0.0), 'peak'), (dict(peak=0.1, warmup=1.0), 'warmup'),
    (dict(peak=0.1, final=1.0), 'final'), (dict(peak=0.1, decay='step'),
                                           'decay'),
    (dict(peak=0.1, intervals=0), 'intervals')])
def test_bad_family_arguments_are_refused(kwargs, match):
  with pytest.raises(ValueError, match=match):
    hypergrad.warmup_decay(**kwargs)


def test_the_warm_start_benchmark_refines_the_recipe_and_pairs_it(tmp_path):
  pytest.importorskip('flax')
  from benchmarks import warm_start  # pylint: disable=g-import-not-at-top
  from hypergrad.experiments import tasks as tasks_lib  # pylint: disable=g-import-not-at-top
  task = tasks_lib.make_task('digits_mlp')
  row = warm_start.run_seed(task, 0, horizon=40, intervals=2, outer_steps=2,
                            lr_step=0.1, population=2, max_expansion=2.0,
                            retrains=1)
  assert len(row['val_loss']) == 2 and len(row['held']) == 2
  assert row['gain'] == pytest.approx(row['learned'] - row['reference'])
  assert 0 < row['reference'] <= 1
  text = warm_start.write([row, row], str(tmp_path / 'ws'), 'title', 'cmd')
  assert 'Mean paired gain' in text
  assert 'Mean paired gain' in (tmp_path / 'ws.md').read_text()
