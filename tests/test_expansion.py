"""The trust report: each value's expansion, the finite-difference check, and
the outer loop holding values whose hypergradients are noise."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypergrad
from hypergrad._src import search


def _digits_problem():
  """A tanh MLP trained full-batch on 500 digits: tame at lr 0.3, chaotic at 3."""
  sklearn = pytest.importorskip('sklearn.datasets')
  x, y = sklearn.load_digits(return_X_y=True)
  x = jnp.asarray(x[:600] / 16.0, jnp.float32)
  y = jnp.asarray(y[:600])
  k1, k2 = jax.random.split(jax.random.key(0))
  params = {'w1': jax.random.normal(k1, (64, 64), jnp.float32) / 8.0,
            'w2': jax.random.normal(k2, (64, 10), jnp.float32) / 8.0}

  def xent(p, xb, yb):
    logits = jnp.tanh(xb @ p['w1']) @ p['w2']
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits),
                                         yb[:, None], 1))

  step_fn = hypergrad.sgd_momentum_step(lambda p, t: xent(p, x[:500], y[:500]))
  loss_fn = lambda s: xent(s.params, x[500:], y[500:])
  return step_fn, loss_fn, hypergrad.sgd_init(params)


T = 200


@pytest.fixture(scope='module')
def digits():
  step_fn, loss_fn, state = _digits_problem()
  plain = jax.jit(lambda h: loss_fn(hypergrad.unroll(step_fn, state, h, T)))
  return step_fn, loss_fn, state, plain


def _hparams(lr):
  return {'lr': hypergrad.constant(lr, 4, jnp.float32),
          'momentum': hypergrad.constant_leaf(0.5, jnp.float32)}


@pytest.mark.parametrize('estimator', [
    hypergrad.forward(push='rows'), hypergrad.forward(push='batch'),
    hypergrad.reverse(), hypergrad.reverse(checkpoint_every=16)],
    ids=['forward-rows', 'forward-batch', 'reverse', 'reverse-remat'])
def test_a_chaotic_run_is_flagged_and_a_tame_one_is_not(digits, estimator):
  step_fn, loss_fn, state, plain = digits
  tame = estimator(step_fn, loss_fn, state, _hparams(0.3), T)
  chaotic = estimator(step_fn, loss_fn, state, _hparams(3.0), T)
  # The structure of hparams, a ConstantLeaf included.
  chex_like = jax.tree.structure(_hparams(0.3))
  assert jax.tree.structure(tame.info.expansion) == chex_like
  tame_e = np.concatenate([np.ravel(x) for x in
                           jax.tree.leaves(tame.info.expansion)])
  chaotic_lr = np.asarray(chaotic.info.expansion['lr'])
  assert np.all(tame_e <= search.MAX_EXPANSION), tame_e
  # The early values are carried through the chaotic phase, the last one
  # only through its own quarter of the run.
  assert chaotic_lr[0] > 10 and chaotic_lr[1] > search.MAX_EXPANSION
  assert chaotic_lr[0] > chaotic_lr[-1]
  assert float(chaotic.info.expansion['momentum'].value) > 10
  assert hypergrad.check_hypergrad(plain, _hparams(0.3),
                                   tame.hypergrads).agrees
  check = hypergrad.check_hypergrad(plain, _hparams(3.0), chaotic.hypergrads)
  assert not check.agrees
  assert all(abs(r) < 0.01 for r in check.ratios), check


def test_forward_and_reverse_measure_the_same_expansion_to_a_decade(digits):
  step_fn, loss_fn, state, _ = digits
  fwd = hypergrad.forward()(step_fn, loss_fn, state, _hparams(6.0), T)
  rev = hypergrad.reverse()(step_fn, loss_fn, state, _hparams(6.0), T)
  # Two estimates of one chaotic run's expansion (a random state direction
  # forward, the loss's adjoint backward): the same decades, not digits.
  f, r = np.asarray(fwd.info.expansion['lr']), np.asarray(rev.info.expansion['lr'])
  assert f[0] > 10 and r[0] > 10
  np.testing.assert_allclose(f, r, atol=2.0)


def test_a_contracting_run_has_negative_expansion_and_chunks_agree():
  step = lambda w, h, t: w - h['lr'] * 2.0 * (w - 3.0)
  loss = lambda w: jnp.sum((w - 3.0) ** 2)
  h = {'lr': hypergrad.constant(0.1, 3)}
  one = hypergrad.forward()(step, loss, jnp.zeros(2), h, 30)
  chunked = hypergrad.forward(chunk_size=1)(step, loss, jnp.zeros(2), h, 30)
  assert np.all(np.asarray(one.info.expansion['lr']) < 0)
  np.testing.assert_allclose(one.info.expansion['lr'],
                             chunked.info.expansion['lr'], rtol=1e-5)
  # Later intervals are carried over fewer contracting steps.
  assert np.all(np.diff(np.asarray(one.info.expansion['lr'])) > 0)
  off = hypergrad.forward(expansion=False)(step, loss, jnp.zeros(2), h, 30)
  assert off.info.expansion is None
  np.testing.assert_allclose(off.hypergrads['lr'], one.hypergrads['lr'])


def test_a_population_reports_its_members_median_expansion():
  step = lambda w, h, t: w - h['lr'] * 2.0 * (w - 3.0)
  loss = lambda w: jnp.sum((w - 3.0) ** 2)
  h = {'lr': hypergrad.constant(0.1, 3)}
  pop = hypergrad.population(hypergrad.reverse())(
      step, loss, jnp.zeros((3, 2)), h, 30)
  single = hypergrad.reverse()(step, loss, jnp.zeros(2), h, 30)
  np.testing.assert_allclose(pop.info.expansion['lr'],
                             single.info.expansion['lr'], rtol=1e-5)


def test_the_outer_loop_holds_untrusted_values_and_records_them():
  h0 = {'lr': jnp.array([0.1, 0.1, 0.1])}
  grads = {'lr': jnp.array([1.0, 1.0, 1.0])}
  info = hypergrad.UnrollInfo(None, jnp.int32(-1),
                              {'lr': jnp.array([5.0, 1.0, -jnp.inf])})
  fn = lambda h, k: hypergrad.HypergradResult(jnp.float32(1.0), grads, info)
  opt = hypergrad.sign_descent({'lr': 0.01})
  state = hypergrad.outer_init(h0, opt)
  new, record = hypergrad.outer_step(fn, opt, state)
  assert record['untrusted'] == 1
  np.testing.assert_allclose(new.hparams['lr'], [0.1, 0.09, 0.09])
  free, record = hypergrad.outer_step(fn, opt, state, max_expansion=None)
  assert record['untrusted'] == 0
  np.testing.assert_allclose(free.hparams['lr'], [0.09, 0.09, 0.09])
  with pytest.raises(ValueError, match='max_expansion'):
    hypergrad.outer_step(fn, opt, state, max_expansion='2')


def test_a_failing_check_warns_with_the_remedies(digits):
  step_fn, loss_fn, state, plain = digits
  est = hypergrad.reverse()
  fn = lambda h, k: est(step_fn, loss_fn, state, h, T)
  opt = hypergrad.sign_descent({'lr': 0.1, 'momentum': 0.1})
  outer = hypergrad.outer_init(_hparams(3.0), opt)
  # divergence_factor=None: the chaotic run is judged on its check alone.
  with pytest.warns(RuntimeWarning, match='population'):
    _, record = hypergrad.outer_step(
        fn, opt, outer, divergence_factor=None,
        check_loss=lambda h, k: plain(h))
  assert not record['check'].agrees
  assert record['untrusted'] >= 2


def test_check_hypergrad_refuses_bad_steps():
  loss = lambda h: jnp.sum(h['lr'] ** 2)
  h = {'lr': jnp.array([1.0])}
  with pytest.raises(ValueError, match='rel_steps'):
    hypergrad.check_hypergrad(loss, h, h, rel_steps=(0.1, -1.0))
  with pytest.raises(ValueError, match='factor'):
    hypergrad.check_hypergrad(loss, h, h, factor=1.0)
  with pytest.raises(ValueError, match='NaN or Inf'):
    hypergrad.check_hypergrad(loss, h, {'lr': jnp.array([jnp.nan])})
  ok = hypergrad.check_hypergrad(loss, h, {'lr': jnp.array([2.0])})
  assert ok.agrees and ok.predicted == pytest.approx(2.0)


@pytest.mark.parametrize('call', ['forward_hypergrad', 'reverse', 'population'])
def test_a_non_finite_initial_state_is_refused_before_compute(call):
  step = lambda w, h, t: {'a': w['a'] - h['lr'] * w['a'], 'b': w['b']}
  loss = lambda w: jnp.sum(w['a'] ** 2)
  h = {'lr': hypergrad.constant(0.1, 2)}
  state = {'a': jnp.array([1.0, jnp.nan]), 'b': jnp.ones(2)}
  if call == 'population':
    states = jax.tree.map(lambda x: jnp.stack([x, x]), state)
    with pytest.raises(ValueError, match=r"init_states.*\['a'\]"):
      hypergrad.population()(step, loss, states, h, 10)
    return
  with pytest.raises(ValueError, match=r"init_state.*\['a'\].*1 NaN or Inf"):
    if call == 'forward_hypergrad':
      hypergrad.forward_hypergrad(step, loss, state, h, 10)
    else:
      hypergrad.reverse()(step, loss, state, h, 10)
