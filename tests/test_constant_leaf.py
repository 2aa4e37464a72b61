"""Hyperparameters that are not schedules: hypergrad.ConstantLeaf end to end."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hypergrad
from hypergrad._src import forward as forward_lib
from hypergrad._src import schedule

N, T = 6, 30


def _problem(dtype=jnp.float64):
  """Weighted least squares: two corrupted targets, weights (N,), a (2, 2) coupling."""
  kx, kv = jax.random.split(jax.random.key(0))
  x = jax.random.normal(kx, (N, 3), dtype)
  w_true = jnp.array([1.0, -1.0, 0.5], dtype)
  y = x @ w_true + jnp.array([0, 0, 0, 5.0, 0, -4.0], dtype)
  x_val = jax.random.normal(kv, (8, 3), dtype)
  y_val = x_val @ w_true

  def train_loss(w, t, h):
    del t
    pred = x @ w
    # The coupling mixes two views of the prediction: a matrix leaf.
    mixed = jnp.stack([pred, 0.5 * pred]).T @ h['coupling'][:, 0]
    return jnp.mean(h['weights'] * (mixed - y) ** 2)

  step_fn = hypergrad.sgd_momentum_step(train_loss, momentum=0.5,
                                        loss_hparams=True)
  loss_fn = lambda s: jnp.mean((x_val @ s.params - y_val) ** 2)
  init = hypergrad.sgd_init(jnp.zeros(3, dtype))
  hparams = {'lr': hypergrad.constant(0.05, 2, dtype=dtype),
             'weights': hypergrad.constant_leaf(
                 jnp.linspace(0.5, 1.0, N, dtype=dtype)),
             'coupling': hypergrad.constant_leaf(
                 jnp.array([[1.0, 0.2], [0.1, 0.9]], dtype))}
  return step_fn, loss_fn, init, hparams


def test_hparams_at_gives_the_value_and_tangents_start_at_step_0():
  _, _, _, hparams = _problem()
  h = hypergrad.hparams_at(hparams, 17, T)
  assert h['weights'].shape == (N,) and h['coupling'].shape == (2, 2)
  assert h['lr'].shape == ()
  dirs = forward_lib.directions(hparams, T)
  assert len(dirs) == 2 + N + 4
  lr_leaf = [d for d in dirs if d.interval == 1]
  assert all(d.start == 0 for d in dirs if d not in lr_leaf)
  assert [d.start for d in lr_leaf] == [T // 2]
  assert schedule.num_intervals(hparams)['weights'] == 1


@pytest.mark.parametrize('estimator', [
    hypergrad.reverse(), hypergrad.reverse(checkpoint_every=7),
    hypergrad.forward(), hypergrad.forward(chunk_size=3)],
                         ids=['reverse', 'reverse_c7', 'forward',
                              'forward_chunk3'])
def test_hypergradients_match_float64_finite_differences(estimator):
  step_fn, loss_fn, init, hparams = _problem()
  result = estimator(step_fn, loss_fn, init, hparams, T)
  assert isinstance(result.hypergrads['weights'], hypergrad.ConstantLeaf)
  assert result.hypergrads['weights'].value.shape == (N,)
  assert result.hypergrads['coupling'].value.shape == (2, 2)
  loss = jax.jit(lambda h: loss_fn(hypergrad.unroll(step_fn, init, h, T)))
  fd = hypergrad.finite_difference(loss, hparams)
  for got, want in zip(jax.tree.leaves(result.hypergrads),
                       jax.tree.leaves(fd)):
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-9)


def test_forward_equals_reverse_and_auto_reports_the_values():
  step_fn, loss_fn, init, hparams = _problem()
  fwd = hypergrad.forward(chunk_size=5)(step_fn, loss_fn, init, hparams, T)
  rev = hypergrad.reverse()(step_fn, loss_fn, init, hparams, T)
  for a, b in zip(jax.tree.leaves(fwd.hypergrads),
                  jax.tree.leaves(rev.hypergrads)):
    np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12)
  choice = hypergrad.auto().choose(step_fn, loss_fn, init, hparams, T)
  assert f'K={2 + N + 4} tangents' in choice.reason
  got = hypergrad.auto()(step_fn, loss_fn, init, hparams, T)
  np.testing.assert_allclose(got.hypergrads['weights'].value,
                             rev.hypergrads['weights'].value, rtol=1e-9)


def test_population_aggregate_keeps_the_wrapper():
  step_fn, loss_fn, init, hparams = _problem()
  states = jax.tree.map(lambda x: jnp.stack([x, x + 0.1]), init)
  result = hypergrad.population(estimator=hypergrad.reverse())(
      step_fn, loss_fn, states, hparams, T)
  assert result.hypergrads['weights'].value.shape == (N,)
  assert result.info.sign_agreement['coupling'].value.shape == (2, 2)


def test_flat_vector_as_schedule_is_refused_naming_constant_leaf():
  step_fn, loss_fn, init, _ = _problem()
  run = lambda h, steps: hypergrad.reverse()(step_fn, loss_fn, init, h, steps)
  weights = jnp.ones(5000)
  with pytest.raises(ValueError, match=r'more than num_steps=500.*constant_leaf'):
    run({'weights': weights}, 500)
  with pytest.raises(ValueError,
                     match=r'n=5000 intervals of about 2 steps.*constant_leaf'):
    run({'weights': weights}, 10_000)
  # One value per step is a schedule, and a ConstantLeaf may be a scalar.
  schedule.validate_hparams({'lr': jnp.ones(2000)}, 2000)
  schedule.validate_hparams({'s': hypergrad.constant_leaf(0.5)}, 10)
  with pytest.raises(ValueError, match='non-finite'):
    schedule.validate_hparams(
        {'w': hypergrad.constant_leaf(jnp.array([1.0, jnp.nan]))}, 10)
  with pytest.raises(TypeError, match='floating'):
    schedule.validate_hparams(
        {'w': hypergrad.ConstantLeaf(jnp.array([1, 2]))}, 10)


def test_weights_of_another_length_than_the_data_fail_before_compute():
  step_fn, loss_fn, init, hparams = _problem()
  bad = {**hparams, 'weights': hypergrad.constant_leaf(jnp.ones(N + 1))}
  with pytest.raises(ValueError, match=r"step_fn fails on the hyperparameters "
                     r"of step 0.*'weights'.*float64\[7\]"):
    hypergrad.reverse()(step_fn, loss_fn, init, bad, T)


def test_optax_step_loss_sees_the_hyperparameters():
  x, y = jnp.ones((4, 3)), jnp.arange(4.0)
  opt = optax.inject_hyperparams(optax.sgd)(learning_rate=0.1)
  weighted = lambda w, t, h: jnp.mean(h['weights'] * (x @ w - y) ** 2)
  step_fn = hypergrad.optax_step(weighted, opt, loss_hparams=True)
  init = hypergrad.optax_init(opt, jnp.zeros(3))
  hparams = {'weights': hypergrad.constant_leaf(jnp.ones(4)),
             'learning_rate': hypergrad.constant(0.1)}
  loss_fn = lambda s: jnp.sum(s.params ** 2)
  g = hypergrad.reverse()(step_fn, loss_fn, init, hparams, 5).hypergrads
  assert g['weights'].value.shape == (4,)
  with pytest.raises(KeyError, match='loss_hparams=True'):
    hypergrad.optax_step(lambda w, t: jnp.sum(w), opt)(
        init, {'weights': jnp.ones(4)}, 0)


def _hyperclean_search(opt, steps, state=None):
  step_fn, loss_fn, init, hparams = _problem()
  hparams = {'weights': hparams['weights'], 'coupling': hparams['coupling']}
  fixed = {'lr': hypergrad.constant(0.05, dtype=jnp.float64)}

  def fn(h, k):
    del k
    out = hypergrad.reverse()(step_fn, loss_fn, init, {**h, **fixed}, T)
    return out._replace(hypergrads={name: out.hypergrads[name] for name in h})

  # optax.adam's bias correction mixes its int32 count with a Python float.
  with jax.numpy_dtype_promotion('standard'):
    return hypergrad.fds_search(fn, hparams, opt=opt, max_outer_steps=steps,
                                tol=0.0, state=state)


def _simplex_rows(x):
  """Each row onto the probability simplex: optax's projection, row by row."""
  # optax's projection mixes int and float arrays: standard promotion.
  with jax.numpy_dtype_promotion('standard'):
    return jax.vmap(optax.projections.projection_simplex)(x)


def _constrained_opt():
  return hypergrad.pytree_chain(optax.adam(0.05), hypergrad.projection({
      'weights': hypergrad.box(0.0, 1.0),
      'coupling': _simplex_rows}))


def test_outer_loop_with_adam_and_projections_stays_feasible_and_cleans():
  state, records = _hyperclean_search(_constrained_opt(), 40)
  w = state.hparams['weights'].value
  c = state.hparams['coupling'].value
  assert bool(jnp.all((w >= 0) & (w <= 1)))
  np.testing.assert_allclose(jnp.sum(c, axis=1), 1.0, rtol=1e-12)
  assert bool(jnp.all(c >= 0))
  # The two corrupted examples (3 and 5) end with the lowest weights.
  assert set(np.argsort(np.asarray(w))[:2]) == {3, 5}
  assert state.best_loss < records[0]['val_loss'] / 2


def test_projection_of_another_shape_is_refused_at_init():
  _, _, _, hparams = _problem()
  bad = hypergrad.pytree_chain(optax.adam(0.1), hypergrad.projection(
      {'weights': lambda v: v[:3]}))
  with pytest.raises(ValueError, match=r"\['weights'\]\.value must return "
                     r'the shape and dtype it is given, float64\[6\]'):
    hypergrad.outer_init(hparams, bad)
  with pytest.raises(ValueError, match='unknown hyperparameter'):
    hypergrad.outer_init(hparams, hypergrad.projection(
        {'nope': hypergrad.box(0, 1)}))


def test_simplex_and_positive_definite_projections():
  p = _simplex_rows(jnp.array([[0.2, 0.3, 0.9], [-1.0, 2.0, 0.5]]))
  np.testing.assert_allclose(p, [[0.2 - 0.4 / 3, 0.3 - 0.4 / 3, 0.9 - 0.4 / 3],
                                 [0.0, 1.0, 0.0]],
                             atol=1e-12)
  a = hypergrad.positive_definite(0.1)(jnp.array([[1.0, 3.0], [1.0, 1.0]]))
  np.testing.assert_allclose(a, a.T)
  assert float(jnp.linalg.eigvalsh(a).min()) >= 0.1 - 1e-12
  pd = jnp.array([[2.0, 0.5], [0.5, 1.0]])
  np.testing.assert_allclose(hypergrad.positive_definite(0.1)(pd), pd,
                             atol=1e-12)


def test_reparametrised_constant_leaf():
  step_fn, loss_fn, init, hparams = _problem()
  raw_step = hypergrad.reparametrize(step_fn, {
      'weights': jax.nn.sigmoid,
      'coupling': lambda a: jax.nn.softmax(a, axis=-1)})
  raw = {**hparams, 'weights': hypergrad.constant_leaf(jnp.zeros(N)),
         'coupling': hypergrad.constant_leaf(jnp.zeros((2, 2)))}
  g = hypergrad.reverse()(raw_step, loss_fn, init, raw, T).hypergrads
  loss = jax.jit(lambda h: loss_fn(hypergrad.unroll(raw_step, init, h, T)))
  fd = hypergrad.finite_difference(loss, raw)
  np.testing.assert_allclose(g['weights'].value, fd['weights'].value,
                             rtol=1e-6, atol=1e-10)


def test_default_optimizer_says_to_pass_opt():
  with pytest.raises(ValueError, match=r"\['weights'\] have none\. Pass opt="):
    hypergrad.fds_search(lambda h, k: None,
                         {'weights': hypergrad.constant_leaf(jnp.ones(3))})


def test_divergence_error_summarises_large_leaves():
  hparams = {'weights': hypergrad.constant_leaf(jnp.ones(5000))}
  fn = lambda h, k: (jnp.float64(jnp.nan), h)
  with pytest.raises(hypergrad.DivergenceError) as e:
    hypergrad.fds_search(fn, hparams, opt=optax.sgd(0.1))
  assert len(str(e.value)) < 600
  assert 'float64[5000]: min 1, mean 1, max 1' in str(e.value)


def test_score_hook_picks_the_best_state():
  # Validation loss falls every step, but the score prefers step 1.
  fn = lambda h, k: (jnp.float64(10.0 - k), {'lr': jnp.ones(1)})
  state, records = hypergrad.fds_search(
      fn, {'lr': hypergrad.constant(1.0)}, opt=optax.sgd(0.01),
      max_outer_steps=4, tol=0.0, score=lambda out, loss: abs(loss - 9.0))
  assert state.best_step == 1 and state.best_score == 0.0
  assert state.best_loss == 9.0 and records[1]['score'] == 0.0
  state, _ = hypergrad.fds_search(
      fn, {'lr': hypergrad.constant(1.0)}, opt=optax.sgd(0.01),
      max_outer_steps=4, tol=0.0)
  assert state.best_step == 3 and state.best_score == 7.0


def test_checkpoint_resume_of_a_constrained_search(tmp_path):
  ckpt_lib = pytest.importorskip('hypergrad.experiments.checkpoint')
  reference, _ = _hyperclean_search(_constrained_opt(), 6)
  opt = _constrained_opt()
  first, records = _hyperclean_search(opt, 3)
  ckpt = ckpt_lib.OuterCheckpointer(str(tmp_path / 'checkpoints'))
  ckpt.save(first, records)
  _, _, _, hparams = _problem()
  template = hypergrad.outer_init({'weights': hparams['weights'],
                                   'coupling': hparams['coupling']}, opt)
  restored, restored_records = ckpt.restore_latest(template)
  ckpt.close()
  assert isinstance(restored.hparams['weights'], hypergrad.ConstantLeaf)
  assert len(restored_records) == 3
  resumed, _ = _hyperclean_search(opt, 6, state=restored)
  for a, b in zip(jax.tree.leaves(resumed), jax.tree.leaves(reference)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert resumed.best_step == reference.best_step


def test_rtho_learns_a_constant_leaf_online():
  step_fn, loss_fn, init, hparams = _problem()
  hparams = {'weights': hparams['weights'], 'coupling': hparams['coupling']}
  fixed_lr_step = lambda s, h, t: step_fn(s, {**h, 'lr': 0.05}, t)
  method = hypergrad.rtho(
      fixed_lr_step, loss_fn, every=5,
      meta_opt=hypergrad.pytree_chain(optax.sgd(0.05), hypergrad.projection(
          {'weights': hypergrad.box(0.0, 1.0)})))
  _, used = hypergrad.run_online(method, init, hparams, T)
  assert used['weights'].shape == (T, N)
  assert used['coupling'].shape == (T, 2, 2)
  moved = np.asarray(used['weights'][-1] - used['weights'][0])
  # The corrupted examples' weights fall the most.
  assert set(np.argsort(moved)[:2]) == {3, 5}
