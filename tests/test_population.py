"""Population hypergradients: per-member equality, aggregates, compilation,
memory, per-member data, the undecided rule and bad input."""

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hypergrad
from hypergrad._src import population as population_lib

Partial = jax.tree_util.Partial

_HPARAMS = {'lr': jnp.array([0.3, 0.2, 0.1]),
            'momentum': jnp.array([0.5]),
            'weight_decay': jnp.array([1e-2])}
_T = 12


def _data(seed=0, n=48, dim=5, dtype=jnp.float64):
  rng = np.random.RandomState(seed)
  return (jnp.asarray(rng.randn(n, dim), dtype),
          jnp.asarray(rng.randn(n), dtype))


def _step(x, y, train_idx, state, h, t):
  """SGD with momentum on a tanh regression; the batch order is the key's."""
  key = jax.random.fold_in(state['key'], t)
  idx = train_idx[jax.random.randint(key, (8,), 0, train_idx.shape[0])]

  def loss(w):
    return jnp.mean((jnp.tanh(x[idx] @ w) - y[idx]) ** 2)

  v = h['momentum'] * state['v'] + jax.grad(loss)(state['w']) \
      + h['weight_decay'] * state['w']
  return {'w': state['w'] - h['lr'] * v, 'v': v, 'key': state['key']}


def _val(x, y, val_idx, state):
  return jnp.mean((jnp.tanh(x[val_idx] @ state['w']) - y[val_idx]) ** 2)


def _states(seeds, dim=5, dtype=jnp.float64):
  """Members' initial states, stacked: own weights and own batch order."""
  one = lambda s: {'w': jnp.asarray(np.random.RandomState(s).randn(dim) * 0.5,
                                    dtype),
                   'v': jnp.zeros((dim,), dtype),
                   'key': jax.random.PRNGKey(s)}
  return jax.tree.map(lambda *a: jnp.stack(a), *[one(s) for s in seeds])


def _member(states, i):
  return jax.tree.map(lambda a: a[i], states)


def _split(seed, n=48, n_val=16):
  perm = np.random.RandomState(100 + seed).permutation(n)
  return (jnp.asarray(np.sort(perm[n_val:]), jnp.int32),
          jnp.asarray(np.sort(perm[:n_val]), jnp.int32))


def _shared_fns(x, y):
  train, val = _split(0)
  return Partial(_step, x, y, train), Partial(_val, x, y, val)


def _per_member(estimator, step_fns, loss_fns, states, hparams, num_steps):
  """Reference: one estimator call per member, in a Python loop."""
  out = []
  for i in range(jax.tree.leaves(states)[0].shape[0]):
    r = estimator(step_fns[i], loss_fns[i], _member(states, i), hparams,
                  num_steps)
    out.append((r.loss, r.hypergrads))
  losses = jnp.stack([l for l, _ in out])
  grads = jax.tree.map(lambda *g: jnp.stack(g), *[g for _, g in out])
  return losses, grads


class EqualsPerMemberTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('forward', hypergrad.forward()),
      ('forward_chunked', hypergrad.forward(chunk_size=2)),
      ('reverse', hypergrad.reverse()),
      ('reverse_checkpointed', hypergrad.reverse(checkpoint_every=4)),
  )
  def test_mean_of_member_estimates(self, estimator):
    x, y = _data()
    step_fn, loss_fn = _shared_fns(x, y)
    states = _states([0, 1, 2, 3])
    loss, grads, stats = hypergrad.population(estimator=estimator)(
        step_fn, loss_fn, states, _HPARAMS, _T)
    losses, member = _per_member(estimator, [step_fn] * 4, [loss_fn] * 4,
                                 states, _HPARAMS, _T)
    chex.assert_trees_all_close(stats.losses, losses, rtol=1e-12)
    chex.assert_trees_all_close(stats.hypergrads, member, rtol=1e-12,
                                atol=1e-15)
    chex.assert_trees_all_close(loss, jnp.mean(losses), rtol=1e-12)
    chex.assert_trees_all_close(
        grads, jax.tree.map(lambda g: jnp.mean(g, 0), member), rtol=1e-12,
        atol=1e-15)
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, _HPARAMS)
    chex.assert_shape(stats.nonfinite_step, (4,))
    np.testing.assert_array_equal(stats.nonfinite_step, -1)
    # The members really differ: a population of copies would pass above.
    assert len(set(np.asarray(stats.losses).tolist())) == 4

  def test_one_member_equals_forward_hypergrad(self):
    x, y = _data()
    step_fn, loss_fn = _shared_fns(x, y)
    states = _states([7])
    loss, grads, stats = hypergrad.population()(
        step_fn, loss_fn, states, _HPARAMS, _T)
    ref_loss, ref = hypergrad.forward_hypergrad(
        step_fn, loss_fn, _member(states, 0), _HPARAMS, _T)
    chex.assert_trees_all_close((loss, grads), (ref_loss, ref), rtol=1e-12,
                                atol=1e-15)
    # One member says nothing about the spread.
    assert np.isnan(stats.stderr['lr']).all() and np.isnan(
        stats.snr['lr']).all()
    np.testing.assert_array_equal(stats.sign_agreement['lr'], 1.0)

  def test_members_with_their_own_splits(self):
    x, y = _data()
    splits = [_split(s) for s in range(3)]
    step_fns = [Partial(_step, x, y, tr) for tr, _ in splits]
    loss_fns = [Partial(_val, x, y, va) for _, va in splits]
    states = _states([0, 1, 2])
    loss, grads, stats = hypergrad.population()(
        step_fns, loss_fns, states, _HPARAMS, _T)
    losses, member = _per_member(hypergrad.forward(), step_fns, loss_fns,
                                 states, _HPARAMS, _T)
    chex.assert_trees_all_close(stats.losses, losses, rtol=1e-12)
    chex.assert_trees_all_close(stats.hypergrads, member, rtol=1e-12,
                                atol=1e-15)
    chex.assert_trees_all_close(loss, jnp.mean(losses), rtol=1e-12)
    # Against the shared split: the splits really were used.
    _, _, shared = hypergrad.population()(
        Partial(_step, x, y, splits[0][0]), Partial(_val, x, y, splits[0][1]),
        states, _HPARAMS, _T)
    assert not np.allclose(shared.losses[1:], stats.losses[1:])

  def test_pool_bound_in_every_member_is_passed_once(self):
    x, y = _data()
    loss_fns = [Partial(_val, x, y, _split(s)[1]) for s in range(3)]
    spec, shared, batched = population_lib._member_fns(loss_fns, 3, 'loss_fn')
    assert spec.batched == (False, False, True)
    assert shared[0] is x and shared[1] is y
    chex.assert_shape(batched[0], (3, 16))

  def test_lax_map_batches_equal_vmap(self):
    x, y = _data()
    step_fn, loss_fn = _shared_fns(x, y)
    states = _states([0, 1, 2, 3, 4])
    vmapped = hypergrad.population()(step_fn, loss_fn, states, _HPARAMS, _T)
    mapped = hypergrad.population(member_batch=2)(
        step_fn, loss_fn, states, _HPARAMS, _T)
    chex.assert_trees_all_close(mapped.info.hypergrads,
                                vmapped.info.hypergrads, rtol=1e-12,
                                atol=1e-15)

  def test_float32_stays_float32(self):
    x, y = _data(dtype=jnp.float32)
    step_fn, loss_fn = _shared_fns(x, y)
    hparams = jax.tree.map(lambda h: h.astype(jnp.float32), _HPARAMS)
    loss, grads, stats = hypergrad.population(
        aggregate='trimmed_mean', min_agreement=0.5)(
        step_fn, loss_fn, _states([0, 1], dtype=jnp.float32), hparams, _T)
    chex.assert_type(loss, jnp.float32)
    chex.assert_trees_all_equal_shapes_and_dtypes(grads, hparams)
    for field in ('mean', 'stderr', 'snr', 'sign_agreement'):
      chex.assert_trees_all_equal_dtypes(getattr(stats, field), hparams)


def _np_trimmed_mean(g, trim):
  k = int(np.floor(trim * g.shape[0]))
  return np.sort(g, axis=0)[k:g.shape[0] - k].mean(axis=0)


class AggregateTest(parameterized.TestCase):

  def _member_grads(self, s=8, seed=0):
    rng = np.random.RandomState(seed)
    # Heavy tails, as measured near the optimum of a real task.
    return {'lr': jnp.asarray(rng.standard_cauchy((s, 7))),
            'wd': jnp.asarray(rng.standard_cauchy((s, 1)) * 100.0)}

  @parameterized.parameters(1, 2, 5, 8)
  def test_aggregates_match_numpy(self, s):
    g = self._member_grads(s)
    refs = {
        'mean': lambda a: a.mean(0),
        'median': lambda a: np.median(a, 0),
        'trimmed_mean': lambda a: _np_trimmed_mean(a, 0.25),
        'sign_vote': lambda a: np.sign(a).mean(0),
    }
    for name, ref in refs.items():
      out = hypergrad.aggregate_hypergrads(g, name)
      chex.assert_trees_all_close(
          out.hypergrads, jax.tree.map(lambda a: ref(np.asarray(a)), g),
          rtol=1e-12)
    out = hypergrad.aggregate_hypergrads(g, 'trimmed_mean', trim=0.4)
    chex.assert_trees_all_close(
        out.hypergrads,
        jax.tree.map(lambda a: _np_trimmed_mean(np.asarray(a), 0.4), g),
        rtol=1e-12)

  def test_statistics_match_numpy(self):
    g = self._member_grads(8)
    out = hypergrad.aggregate_hypergrads(g)
    for k, a in g.items():
      a = np.asarray(a)
      se = a.std(0, ddof=1) / np.sqrt(8)
      np.testing.assert_allclose(out.mean[k], a.mean(0), rtol=1e-12)
      np.testing.assert_allclose(out.stderr[k], se, rtol=1e-12)
      np.testing.assert_allclose(out.snr[k], np.abs(a.mean(0)) / se,
                                 rtol=1e-12)
      np.testing.assert_allclose(out.sign_agreement[k],
                                 np.abs(np.sign(a).mean(0)), rtol=1e-12)
      assert not np.asarray(out.undecided[k]).any()

  def test_population_aggregate_is_aggregate_of_its_members(self):
    x, y = _data()
    step_fn, loss_fn = _shared_fns(x, y)
    states = _states(range(5))
    for name in hypergrad.AGGREGATES:
      _, grads, stats = hypergrad.population(aggregate=name, min_agreement=0.5)(
          step_fn, loss_fn, states, _HPARAMS, _T)
      ref = hypergrad.aggregate_hypergrads(stats.hypergrads, name,
                                           min_agreement=0.5)
      chex.assert_trees_all_close(grads, ref.hypergrads, rtol=1e-12)
      chex.assert_trees_all_equal(stats.undecided, ref.undecided)

  def test_undecided_values_are_exactly_zero(self):
    g = {'h': jnp.array([[1.0, 2.0, -1.0, 3.0],
                         [2.0, -2.0, -1.0, 1.0],
                         [3.0, 5.0, 1.0, -1.0],
                         [4.0, -1.0, -2.0, 1.0]])}
    for name in hypergrad.AGGREGATES:
      out = hypergrad.aggregate_hypergrads(g, name, min_agreement=0.5)
      np.testing.assert_array_equal(out.sign_agreement['h'],
                                    [1.0, 0.0, 0.5, 0.5])
      np.testing.assert_array_equal(out.undecided['h'],
                                    [False, True, False, False])
      assert out.hypergrads['h'][1] == 0.0
      assert out.hypergrads['h'][0] > 0 and out.hypergrads['h'][2] < 0

  def test_nan_member_is_not_hidden(self):
    g = {'h': jnp.array([[1.0, 1.0], [np.nan, 1.0], [1.0, 1.0]])}
    for name in hypergrad.AGGREGATES:
      out = hypergrad.aggregate_hypergrads(g, name, min_agreement=0.9)
      assert np.isnan(out.hypergrads['h'][0]), name
      assert out.hypergrads['h'][1] != 0, name

  def test_new_aggregate_options_do_not_recompile_the_unroll(self):
    x, y = _data()
    step_fn, _ = _shared_fns(x, y)
    counted = chex.assert_max_traces(
        lambda s: _val(x, y, jnp.arange(16), s), n=2)
    states = _states([0, 1, 2])
    for name, trim, agree in (('mean', 0.25, None), ('median', 0.1, 0.5),
                              ('trimmed_mean', 0.3, 0.9)):
      hypergrad.population(aggregate=name, trim=trim, min_agreement=agree)(
          step_fn, counted, states, _HPARAMS, _T)


class CompilationAndMemoryTest(parameterized.TestCase):

  def test_new_values_and_inits_do_not_retrace(self):
    x, y = _data()
    step_fn, _ = _shared_fns(x, y)
    # Traced twice per compilation: the structural check, then the
    # estimate. A third trace means a recompilation.
    counted = chex.assert_max_traces(
        lambda s: _val(x, y, jnp.arange(16), s), n=2)
    losses = []
    for k, lr in enumerate((0.3, 0.2, 0.1)):
      hparams = {**_HPARAMS, 'lr': jnp.full((3,), lr)}
      out = hypergrad.population()(
          step_fn, counted, _states([3 * k, 3 * k + 1, 3 * k + 2]), hparams, _T)
      losses.append(float(out.loss))
    assert len(set(losses)) == 3

  def test_new_member_splits_do_not_retrace(self):
    traces = []

    def val(x, y, idx, state):
      traces.append(1)
      return _val(x, y, idx, state)

    x, y = _data()
    step_fn, _ = _shared_fns(x, y)
    counts, losses = [], []
    for k in range(3):
      loss_fns = [Partial(val, x, y, _split(3 * k + i)[1]) for i in range(3)]
      out = hypergrad.population()(
          step_fn, loss_fns, _states(range(3)), _HPARAMS, _T)
      counts.append(len(traces))
      losses.append(float(out.loss))
    assert counts[0] == counts[-1], counts
    assert len(set(losses)) == 3

  def _nbytes(self, num_members, num_steps, estimator=None):
    rng = np.random.RandomState(0)
    x = jnp.asarray(rng.randn(64, 32), jnp.float32)

    def step(s, h, t):
      del t
      g = jax.grad(lambda w: jnp.mean(jnp.tanh(x @ w) ** 2))(s['w'])
      v = h['momentum'] * s['v'] + g
      return {'w': s['w'] - h['lr'] * v, 'v': v}

    loss = lambda s: jnp.mean(jnp.tanh(x @ s['w']))
    hparams = {'lr': jnp.full((4,), 0.1, jnp.float32),
               'momentum': jnp.full((1,), 0.5, jnp.float32)}
    states = {'w': jnp.ones((num_members, 32, 32), jnp.float32),
              'v': jnp.zeros((num_members, 32, 32), jnp.float32)}
    f = jax.jit(lambda s, h: hypergrad.population(estimator=estimator)(
        step, loss, s, h, num_steps))
    m = f.lower(states, hparams).compile().memory_analysis()
    return m.temp_size_in_bytes + m.output_size_in_bytes

  def test_memory_constant_in_horizon(self):
    small, large = self._nbytes(4, 100), self._nbytes(4, 5000)
    assert large <= 1.1 * small, (small, large)

  def test_memory_linear_in_members(self):
    m1, m2, m4, m8 = (self._nbytes(s, 100) for s in (1, 2, 4, 8))
    # Each member adds one member's state and tangents: doubling S doubles
    # the memory, up to a small fixed part. (A population of one may need
    # less: XLA drops the batch axis of size 1 and fuses more.)
    for small, large in ((m2, m4), (m4, m8)):
      assert 1.8 * small <= large <= 2.2 * small, (m1, m2, m4, m8)
    assert m1 <= m2 <= 2.5 * m1, (m1, m2, m4, m8)

  def test_lax_map_bounds_memory_by_the_batch(self):
    def nbytes(batch):
      rng = np.random.RandomState(0)
      w = jnp.asarray(rng.randn(8, 32, 32), jnp.float32)
      step = lambda s, h, t: s - h['lr'] * jnp.tanh(s)
      f = jax.jit(lambda s, h: hypergrad.population(member_batch=batch)(
          step, lambda s: jnp.mean(s ** 2), s, h, 50))
      m = f.lower(w, {'lr': jnp.full((4,), 0.1, jnp.float32)}).compile()
      return m.memory_analysis().temp_size_in_bytes

    assert nbytes(2) < 0.5 * nbytes(None), (nbytes(2), nbytes(None))


def _noisy_problem(signal, sigma, num_steps=20, eta=0.2):
  """A linear-quadratic inner problem with controlled per-member noise.

  The inner run moves ``w`` towards the hyperparameters ``theta`` (one value
  per coordinate): ``w <- w - eta (w - theta)``, so from ``w_0 = 0``,
  ``w_T = kappa theta`` with ``kappa = 1 - (1 - eta)^T``. The outer loss
  ``0.5 ||w_T - y||^2`` has a member-specific target ``y = kappa theta_0 +
  signal + sigma z``, ``z ~ N(0, 1)`` drawn from the member's key, so member
  hypergradients are ``g = -kappa (signal + sigma z)``: expected value
  ``-kappa signal``, exactly zero where ``signal`` is.
  """
  theta0 = jnp.linspace(0.5, 1.5, signal.shape[0])
  kappa = 1.0 - (1.0 - eta) ** num_steps

  def step(state, h, t):
    del t
    return {**state, 'w': state['w'] - eta * (state['w'] - h['theta'])}

  def loss(state):
    z = jax.random.normal(state['key'], signal.shape, jnp.float64)
    y = kappa * theta0 + signal + sigma * z
    return 0.5 * jnp.sum((state['w'] - y) ** 2)

  def states(num, seed):
    keys = jax.random.split(jax.random.PRNGKey(seed), num)
    return {'w': jnp.zeros((num,) + signal.shape), 'key': keys}

  return step, loss, states, {'theta': theta0[None, :]}, kappa


class UndecidedTest(parameterized.TestCase):

  @parameterized.parameters('mean', 'median', 'trimmed_mean', 'sign_vote')
  def test_signal_kept_and_noise_undecided(self, aggregate):
    signal = jnp.array([2.0, -2.0, 0.0, 0.0, 1.5, 0.0])
    step, loss, states, hparams, _ = _noisy_problem(signal, sigma=1.0)
    _, grads, stats = hypergrad.population(aggregate=aggregate,
                                           min_agreement=0.5)(
        step, loss, states(64, 0), hparams, 20)
    g = np.asarray(grads['theta'][0])
    has_signal = np.asarray(signal) != 0
    # d loss / d theta = -kappa (signal + noise): the opposite sign.
    np.testing.assert_array_equal(np.sign(g[has_signal]),
                                  -np.sign(signal[has_signal]))
    np.testing.assert_array_equal(g[~has_signal], 0.0)
    np.testing.assert_array_equal(stats.undecided['theta'][0], ~has_signal)
    # Without the rule the zero-signal values would get a (random) sign.
    assert np.all(np.asarray(stats.mean['theta'][0])[~has_signal] != 0)
    assert np.all(np.asarray(stats.snr['theta'][0])[has_signal] > 4)

  def test_single_member_signs_are_coin_flips(self):
    # The motivation: one member gets the zero-signal values' signs wrong
    # about half the time, and even some signal values' signs.
    signal = jnp.array([0.5, 0.0] * 8)
    step, loss, states, hparams, _ = _noisy_problem(signal, sigma=1.0)
    _, _, stats = hypergrad.population()(
        step, loss, states(16, 1), hparams, 20)
    signs = np.sign(np.asarray(stats.hypergrads['theta'][:, 0, 0::2]))
    assert 0.05 < np.mean(signs > 0) < 0.6  # correct sign is negative

  def test_sign_descent_leaves_undecided_values_in_place(self):
    signal = jnp.array([2.0, -2.0, 0.0, 0.0])
    step, loss, states, hparams, _ = _noisy_problem(signal, sigma=1.0)
    opt = hypergrad.sign_descent(0.1)
    opt_state = opt.init(hparams)
    h = hparams
    for k in range(2):  # a new population each step, as the outer loop does
      _, grads, stats = hypergrad.population(min_agreement=0.5)(
          step, loss, states(64, k), h, 20)
      updates, opt_state = opt.update(grads, opt_state, h)
      new = optax.apply_updates(h, updates)
      moved = np.asarray(new['theta'][0] - h['theta'][0])
      np.testing.assert_array_equal(moved[2:], 0.0)
      np.testing.assert_allclose(moved[:2], [0.1, -0.1], rtol=1e-12)
      h = new
    # No value's step was halved: an undecided value is not a sign flip.
    sizes = opt_state[0].step_sizes['theta']
    np.testing.assert_array_equal(sizes, 0.1)
    # ...and the zero-signal values count as settled.
    assert bool(np.all(stats.undecided['theta'][0][2:]))
    tiny = {'theta': jnp.array([[1e-4, 1e-4, 0.0, 0.0]])}
    assert hypergrad.settled(tiny, h, opt_state, hypergrads=grads)

  def test_outer_loop_with_population(self):
    signal = jnp.array([2.0, -2.0, 0.0])
    step, loss, states, hparams, _ = _noisy_problem(signal, sigma=0.5)

    def fn(h, k):
      return hypergrad.population(min_agreement=0.5)(
          step, loss, states(64, k), h, 20)

    state, records = hypergrad.fds_search(
        fn, hparams, opt=hypergrad.sign_descent(0.1), max_outer_steps=3)
    assert all(r['accepted'] for r in records)
    assert all(r['nonfinite_step'] == -1 for r in records)
    assert state.hparams['theta'][0, 2] == hparams['theta'][0, 2]


class NonFiniteTest(parameterized.TestCase):

  def test_diverging_member_is_located(self):
    step = lambda s, h, t: s * (1.0 + h['lr']) ** 8
    states = jnp.array([1.0, 1e300, 2.0])
    out = hypergrad.population()(
        step, lambda s: s ** 2, states, {'lr': jnp.array([0.5, 0.5])}, 40)
    steps = np.asarray(out.info.nonfinite_step)
    assert steps[0] == -1 and steps[2] == -1 and steps[1] >= 0
    assert not np.isfinite(float(out.loss))
    # The outer loop reports the earliest member's step (a later step, so
    # it rejects the step instead of raising).
    h = {'lr': jnp.array([0.5, 0.5])}
    opt = hypergrad.sign_descent(0.1)
    state = hypergrad.outer_init(h, opt)._replace(step=1, initial_loss=1.0)
    _, record = hypergrad.outer_step(lambda h, k: out, opt, state)
    assert not record['accepted'] and record['nonfinite_step'] == steps[1]
    chex.assert_shape(out.info.final_state, (3,))


class BadInputTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    x, y = _data()
    self.step_fn, self.loss_fn = _shared_fns(x, y)
    self.x, self.y = x, y
    self.states = _states([0, 1])

  def _call(self, hparams=None, states=None, **kw):
    step_fn = kw.pop('step_fn', self.step_fn)
    loss_fn = kw.pop('loss_fn', self.loss_fn)
    num_steps = kw.pop('num_steps', _T)
    return hypergrad.population(**kw)(
        step_fn, loss_fn, self.states if states is None else states,
        _HPARAMS if hparams is None else hparams, num_steps)

  @parameterized.parameters(np.nan, np.inf, -np.inf)
  def test_nonfinite_hparams_refused(self, bad):
    with pytest.raises(ValueError, match=r"\['lr'\].*non-finite"):
      self._call({**_HPARAMS, 'lr': jnp.array([0.1, bad, 0.1])})

  def test_state_leaf_without_population_axis(self):
    states = {**self.states, 'v': jnp.zeros(())}
    with pytest.raises(ValueError, match=r"\['v'\].*population axis"):
      self._call(states=states)

  def test_inconsistent_population_size(self):
    states = {**self.states, 'v': jnp.zeros((3, 5))}
    with pytest.raises(ValueError, match=r"\['v'\] has 3 members"):
      self._call(states=states)

  def test_empty_population(self):
    states = jax.tree.map(lambda a: a[:0], self.states)
    with pytest.raises(ValueError, match='S >= 1'):
      self._call(states=states)

  def test_wrong_number_of_member_functions(self):
    with pytest.raises(ValueError, match='3 functions for 2 members'):
      self._call(loss_fn=[self.loss_fn] * 3)

  def test_member_functions_must_be_one_function(self):
    other = Partial(lambda x, y, i, s: _val(x, y, i, s), self.x, self.y,
                    jnp.arange(16))
    with pytest.raises(ValueError, match=r'loss_fn\[1\] is not the same'):
      self._call(loss_fn=[self.loss_fn, other])

  def test_member_arrays_must_agree_in_shape(self):
    fns = [Partial(_val, self.x, self.y, jnp.arange(16)),
           Partial(_val, self.x, self.y, jnp.arange(12))]
    with pytest.raises(ValueError, match=r'loss_fn\[1\] binds argument'):
      self._call(loss_fn=fns)

  @parameterized.named_parameters(
      ('estimator_string', {'estimator': 'forward'}, TypeError,
       'estimator value'),
      ('aggregate', {'aggregate': 'mode'}, ValueError, 'aggregate'),
      ('trim_half', {'trim': 0.5}, ValueError, 'trim'),
      ('trim_bool', {'trim': True}, ValueError, 'trim'),
      ('agreement', {'min_agreement': 1.5}, ValueError, 'min_agreement'),
      ('agreement_nan', {'min_agreement': float('nan')}, ValueError,
       'min_agreement'),
      ('member_batch', {'member_batch': 0}, ValueError, 'member_batch'),
      ('num_steps', {'num_steps': 0}, ValueError, 'num_steps'),
  )
  def test_bad_options(self, kw, error, match):
    with pytest.raises(error, match=match):
      self._call(**kw)

  def test_step_fn_changing_the_state_is_named(self):
    bad = lambda s, h, t: {**s, 'w': s['w'][:2]}
    with pytest.raises(ValueError, match=r"\['w'\]"):
      self._call(step_fn=bad)

  def test_aggregate_hypergrads_needs_member_axis(self):
    with pytest.raises(ValueError, match='leading member axis'):
      hypergrad.aggregate_hypergrads({'lr': jnp.float64(1.0)})
    with pytest.raises(ValueError, match='number of members'):
      hypergrad.aggregate_hypergrads({'a': jnp.ones((2, 1)),
                                      'b': jnp.ones((3, 1))})


class EstimatorValueTest(parameterized.TestCase):
  """A population is an estimator value wherever one is taken."""

  def test_population_is_an_estimator_with_one_result_type(self):
    x, y = _data()
    step_fn, loss_fn = _shared_fns(x, y)
    est = hypergrad.population(aggregate='median')
    assert isinstance(est, hypergrad.Estimator)
    out = est(step_fn, loss_fn, _states([0, 1, 2]), _HPARAMS, _T)
    assert isinstance(out, hypergrad.HypergradResult)
    assert isinstance(out.info, hypergrad.PopulationStats)
    same = hypergrad.population(aggregate='median')(
        step_fn, loss_fn, _states([0, 1, 2]), _HPARAMS, _T)
    chex.assert_trees_all_close(out.hypergrads, same.hypergrads, rtol=0)
    # Equal options, equal values: one compilation key, hashable.
    assert est == hypergrad.population(aggregate='median')
    assert hash(est) == hash(hypergrad.population(aggregate='median'))

  def test_traceable_compute_equals_call(self):
    x, y = _data()
    step_fn, loss_fn = _shared_fns(x, y)
    est = hypergrad.population(min_agreement=0.5)
    states = _states([0, 1, 2])
    called = est(step_fn, loss_fn, states, _HPARAMS, _T)
    traced = jax.jit(lambda s, h: est.compute(step_fn, loss_fn, s, h, _T))(
        states, _HPARAMS)
    chex.assert_trees_all_close(traced.hypergrads, called.hypergrads,
                                rtol=1e-12, atol=1e-15)
    chex.assert_trees_all_close(traced.info.losses, called.info.losses,
                                rtol=1e-12)

  def test_nested_or_single_run_uses_refused(self):
    with pytest.raises(TypeError, match='not a population'):
      hypergrad.population(hypergrad.population())
    with pytest.raises(TypeError, match='not a population'):
      hypergrad.truncated_greedy(lambda s, h, t: s, lambda s: s, window=2,
                                 estimator=hypergrad.population())
    with pytest.raises(ValueError, match='aggregate must be one of'):
      hypergrad.population(aggregate='mode')
