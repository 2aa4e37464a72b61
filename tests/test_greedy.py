"""Greedy / online estimators: HD, RTHO, truncated greedy, and their driver."""

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hypergrad
from hypergrad._src import online
from tests import helpers

# One problem object for the whole module: the same step_fn / loss_fn
# objects let jit caches be shared between tests.
_STEP, _LOSS, _STATE = helpers.sgd_problem()
_TRAIN_LOSS, _, _ = helpers.regression_problem()
_H0 = {'lr': hypergrad.constant(0.05), 'momentum': hypergrad.constant(0.5)}


def _tree_dot(a, b):
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a),
                                            jax.tree.leaves(b)))


def _no_trace(*args):
  raise AssertionError('a user function was traced before validation')


class QuadraticTest(parameterized.TestCase):
  """``lr * curvature = 1`` is optimal: greedy methods must head there."""

  @parameterized.named_parameters(
      ('hd', lambda s, l: hypergrad.hypergradient_descent(
          s, l, meta_opt=hypergrad.meta_optimizer(1e-3))),
      ('rtho_kept', lambda s, l: hypergrad.rtho(
          s, l, every=3, meta_opt=hypergrad.meta_optimizer(3e-4))),
      ('rtho_reset', lambda s, l: hypergrad.rtho(
          s, l, every=3, meta_opt=hypergrad.meta_optimizer(3e-4),
          reset_tangents=True)),
      ('truncated', lambda s, l: hypergrad.truncated_greedy(
          s, l, window=3, meta_opt=hypergrad.meta_optimizer(3e-4))),
  )
  def test_moves_learning_rate_towards_optimum(self, make):
    step_fn, loss_fn, state, best = helpers.quadratic_problem()
    method = make(step_fn, loss_fn)
    for lr0 in (0.1, 0.9):  # below and above the optimum 0.5
      _, sched = hypergrad.run_online(method, state,
                                      {'lr': hypergrad.constant(lr0)}, 15)
      final = float(sched['lr'][-1])
      assert abs(final - best) < 0.5 * abs(lr0 - best), (lr0, sched['lr'])


class HypergradientDescentTest(parameterized.TestCase):

  def test_equals_baydin_rule_with_momentum(self):
    # With the next minibatch's training loss, one-step differentiation of
    # SGD with momentum is lr += beta * g_{t+1} . v_{t+1}.
    mu, wd, beta, lr0, num_steps = 0.5, 1e-3, 0.05, 0.05, 8
    step_fn = hypergrad.sgd_momentum_step(_TRAIN_LOSS, momentum=mu,
                                          weight_decay=wd)
    method = hypergrad.hypergradient_descent(
        step_fn, _LOSS, meta_opt=hypergrad.meta_optimizer(beta),
        step_loss_fn=lambda s, t: _TRAIN_LOSS(s.params, t))
    _, sched = hypergrad.run_online(method, _STATE,
                                    {'lr': hypergrad.constant(lr0)},
                                    num_steps)
    w, v, lr, expected = _STATE.params, _STATE.velocity, lr0, []
    grad = jax.jit(jax.grad(_TRAIN_LOSS))
    for t in range(num_steps):
      g = grad(w, t)
      if t:
        lr = lr + beta * _tree_dot(g, v)
      expected.append(lr)
      v = jax.tree.map(lambda v_, g_, w_: mu * v_ + g_ + wd * w_, v, g, w)
      w = jax.tree.map(lambda w_, v_: w_ - lr * v_, w, v)
    np.testing.assert_allclose(sched['lr'], np.array(expected), rtol=1e-12)

  def test_validation_loss_by_default(self):
    method = hypergrad.hypergradient_descent(
        _STEP, _LOSS, meta_opt=hypergrad.meta_optimizer(0.1))
    values = jax.tree.map(lambda h: h[0], _H0)
    update = jax.jit(method.update)
    state = update(method.init(_STATE, _H0), 0)
    one_step = jax.jit(jax.grad(
        lambda h: _LOSS(_STEP(_STATE, h, jnp.int32(0)))))
    chex.assert_trees_all_close(state.hypergrad, one_step(values),
                                rtol=1e-12)
    state = update(state, 1)
    chex.assert_trees_all_close(
        state.hparams,
        jax.tree.map(lambda h, g: h - 0.1 * g, values, one_step(values)),
        rtol=1e-12)


class RTHOTest(parameterized.TestCase):

  @parameterized.parameters(False, True)
  def test_equals_forward_mode_over_windows(self, reset):
    # Windows [0, 3), [3, 6): the update at step 6 is the forward
    # hypergradient with respect to the schedule (h_0, h_1), summed over both
    # windows (kept tangents) or for the last one only (reset).
    eta = 0.05
    method = hypergrad.rtho(_STEP, _LOSS, every=3,
                            meta_opt=hypergrad.meta_optimizer(eta),
                            reset_tangents=reset)
    update = jax.jit(method.update)
    state = method.init(_STATE, _H0)
    used = []
    for t in range(7):
      state = update(state, t)
      used.append(state.hparams)
      if t == 3:
        first_update = state.hypergrad
    h0, h1 = used[0], used[3]
    _, g1 = hypergrad.forward_hypergrad(_STEP, _LOSS, _STATE, _H0, 3)
    chex.assert_trees_all_close(first_update,
                                jax.tree.map(lambda g: g[0], g1), rtol=1e-10)
    chex.assert_trees_all_close(
        h1, jax.tree.map(lambda h, g: h - eta * g[0], h0, g1), rtol=1e-12)
    two = jax.tree.map(lambda a, b: jnp.stack([a, b]), h0, h1)
    _, g2 = hypergrad.forward_hypergrad(_STEP, _LOSS, _STATE, two, 6)
    want = jax.tree.map((lambda g: g[1]) if reset else
                        (lambda g: g.sum(0)), g2)
    chex.assert_trees_all_close(state.hypergrad, want, rtol=1e-10)


class TruncatedGreedyTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('forward', hypergrad.forward()), ('reverse', hypergrad.reverse()),
      ('reverse_checkpointed', hypergrad.reverse(3)))
  def test_whole_horizon_window_is_one_non_greedy_step(self, estimator):
    eta, num_steps = 0.1, 8
    method = hypergrad.truncated_greedy(
        _STEP, _LOSS, window=num_steps,
        meta_opt=hypergrad.meta_optimizer(eta), estimator=estimator)
    final, sched = hypergrad.run_online(method, _STATE, _H0, num_steps)
    _, g = hypergrad.forward_hypergrad(_STEP, _LOSS, _STATE, _H0, num_steps)
    stepped = jax.tree.map(lambda h, g_: h - eta * g_, _H0, g)
    chex.assert_trees_all_close(
        sched, jax.tree.map(lambda h: jnp.broadcast_to(h, (num_steps,)),
                            stepped), rtol=1e-10)
    chex.assert_trees_all_close(
        final, hypergrad.unroll(_STEP, _STATE, stepped, num_steps),
        rtol=1e-10)

  def test_windows_look_ahead_from_their_own_step(self):
    # Window 4 over 10 steps: look-aheads from steps 0, 4 and 8 (the last one
    # runs past the end of the run), each seeing the right step indices.
    eta, k, num_steps = 0.1, 4, 10
    method = hypergrad.truncated_greedy(
        _STEP, _LOSS, window=k, meta_opt=hypergrad.meta_optimizer(eta))
    _, sched = hypergrad.run_online(method, _STATE, _H0, num_steps)

    @jax.jit
    def look_ahead(h, s, t0):
      def loss(h):
        end = jax.lax.fori_loop(0, k, lambda i, s: _STEP(s, h, t0 + i), s)
        return _LOSS(end)
      return jax.grad(loss)(h)

    step = jax.jit(_STEP)
    s, h, expected = _STATE, jax.tree.map(lambda x: x[0], _H0), []
    for t in range(num_steps):
      if t % k == 0:
        g = look_ahead(h, s, jnp.int32(t))
        h = jax.tree.map(lambda h_, g_: h_ - eta * g_, h, g)
      expected.append(h)
      s = step(s, h, jnp.int32(t))
    chex.assert_trees_all_close(
        sched, jax.tree.map(lambda *x: jnp.stack(x), *expected), rtol=1e-10)


class InterfaceTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('hd', lambda: hypergrad.hypergradient_descent(
          _STEP, _LOSS, meta_opt=hypergrad.meta_optimizer(0.1)),
       True, False),
      ('rtho', lambda: hypergrad.rtho(
          _STEP, _LOSS, every=2, meta_opt=hypergrad.meta_optimizer(0.1)),
       True, True),
      ('truncated', lambda: hypergrad.truncated_greedy(
          _STEP, _LOSS, window=3, meta_opt=hypergrad.meta_optimizer(0.1),
          estimator=hypergrad.reverse()),
       False, False),
  )
  def test_schedule_replays_the_run(self, make, starts_at_h0, has_tangents):
    method = make()
    assert isinstance(method, online.OnlineMethod)
    state = method.init(_STATE, _H0)
    # One state type for every method; only RTHO fills the tangents.
    assert type(state) is online.OnlineState
    self.assertEqual(bool(jax.tree.leaves(state.tangents)), has_tangents)
    chex.assert_trees_all_equal_shapes_and_dtypes(
        state.hparams, jax.tree.map(lambda h: h[0], _H0))
    num_steps = 9
    final, sched = hypergrad.run_online(method, _STATE, _H0, num_steps)
    chex.assert_trees_all_equal_shapes_and_dtypes(
        sched, jax.tree.map(lambda h: jnp.zeros((num_steps,), h.dtype), _H0))
    if starts_at_h0:
      chex.assert_trees_all_close(jax.tree.map(lambda x: x[0], sched),
                                  jax.tree.map(lambda h: h[0], _H0))
    assert float(jnp.ptp(sched['lr'])) > 0  # the values really moved
    # The schedule is a valid n = T schedule: replaying it reproduces the run.
    chex.assert_trees_all_close(
        final, hypergrad.unroll(_STEP, _STATE, sched, num_steps), rtol=1e-12)

  def test_run_online_new_values_do_not_retrace(self):
    # chex keys trace counts on the call stack and the source: start afresh.
    chex.clear_trace_counter()
    counted_loss = chex.assert_max_traces(_LOSS, n=2)  # init check + update
    method = hypergrad.hypergradient_descent(
        _STEP, counted_loss, meta_opt=hypergrad.meta_optimizer(0.1))
    for lr in (0.05, 0.07):
      hypergrad.run_online(method, _STATE, {'lr': hypergrad.constant(lr)}, 5)

  @parameterized.parameters('hd', 'rtho', 'truncated')
  def test_new_meta_step_sizes_do_not_retrace(self, name):
    # Tuning a greedy method sweeps its meta step size: one compilation per
    # structure of the rates of hypergrad.meta_optimizer (one float, or one
    # per named hyperparameter), since they are pytree leaves of meta_opt.
    traces = []

    def step(w, h, t):
      traces.append(t)
      return _STEP(w, h, t)

    def run(meta_lr):
      meta_opt = hypergrad.meta_optimizer(meta_lr)
      if name == 'hd':
        method = hypergrad.hypergradient_descent(step, _LOSS,
                                                 meta_opt=meta_opt)
      elif name == 'rtho':
        method = hypergrad.rtho(step, _LOSS, meta_opt=meta_opt, every=2)
      else:
        method = hypergrad.truncated_greedy(step, _LOSS, meta_opt=meta_opt,
                                            window=2)
      final, _ = hypergrad.run_online(method, _STATE, _H0, 6)
      return np.asarray(jax.tree.leaves(final)[0]).copy()

    finals = []
    for sweep in ((0.01, 0.03), ({'lr': 0.05, 'momentum': 0.01},
                                 {'lr': 0.2, 'momentum': 0.02})):
      finals.append(run(sweep[0]))
      count = len(traces)
      finals.append(run(sweep[1]))
      self.assertEqual(len(traces), count, sweep)
    # Every meta step size really was used.
    for a, b in zip(finals, finals[1:]):
      self.assertFalse(np.array_equal(a, b))

  def test_new_data_bound_with_partial_does_not_retrace(self):
    traces = []

    def step(x, w, h, t):
      traces.append(t)
      xb = jax.lax.dynamic_slice_in_dim(x, (t % 2) * 4, 4)
      return w - h['lr'] * jax.grad(lambda v: jnp.mean((xb @ v - 1.0)**2))(w)

    def loss(x, w):
      return jnp.mean((x @ w - 1.0) ** 2)

    rng = np.random.RandomState(0)
    counts, finals = [], []
    for _ in range(3):
      # A new split of the data: a new method object with the same
      # configuration; the data travel as arguments, nothing recompiles.
      x = jnp.asarray(rng.randn(8, 3))
      method = hypergrad.truncated_greedy(
          jax.tree_util.Partial(step, x), jax.tree_util.Partial(loss, x),
          window=2, meta_opt=hypergrad.meta_optimizer(
              {'lr': 0.1}, bounds={'lr': (0.0, 1.0)}))
      final, _ = hypergrad.run_online(method, jnp.zeros(3),
                                      {'lr': hypergrad.constant(0.1)}, 4)
      counts.append(len(traces))
      finals.append(float(final[0]))
    self.assertEqual(counts[0], counts[-1])
    self.assertLen(set(finals), 3)  # the new data really was used

  def test_integer_state_leaves(self):
    # optax adam carries an int32 count; truncated greedy adds its own int32
    # window start to the look-ahead state.
    opt = optax.inject_hyperparams(optax.adam)(
        learning_rate=jnp.float64(0.01))
    step_fn = hypergrad.optax_step(_TRAIN_LOSS, opt)
    state = hypergrad.optax_init(opt, _STATE.params)
    h0 = {'learning_rate': hypergrad.constant(0.02)}
    with jax.numpy_dtype_promotion('standard'):
      meta_opt = hypergrad.meta_optimizer(1e-3)
      for method in (hypergrad.rtho(step_fn, _LOSS, every=2,
                                    meta_opt=meta_opt),
                     hypergrad.truncated_greedy(step_fn, _LOSS, window=3,
                                                meta_opt=meta_opt,
                                                estimator=hypergrad.reverse(2)
                                                )):
        final, sched = hypergrad.run_online(method, state, h0, 6)
        chex.assert_tree_all_finite((final.params, sched))
        assert float(jnp.ptp(sched['learning_rate'])) > 0
        assert int(final.opt_state.count) == 6


class MetaStepTest(parameterized.TestCase):

  def test_rules_bounds_and_per_name_rates(self):
    h = {'lr': jnp.array(0.1), 'momentum': jnp.array([0.9, 0.5])}
    g = {'lr': jnp.array(-4.0), 'momentum': jnp.array([-3.0, 4.0])}
    rates = {'lr': 0.01, 'momentum': 0.1}

    def step(rate, rule, bounds, grads=g):
      opt = hypergrad.meta_optimizer(rate, rule, bounds)
      return online.meta_apply(opt, opt.init(h), h, grads)[0]

    chex.assert_trees_all_close(
        step(rates, 'sgd', None), {'lr': 0.14, 'momentum': jnp.array([1.2,
                                                                       0.1])})
    chex.assert_trees_all_close(
        step(rates, 'sign', None), {'lr': 0.11, 'momentum': jnp.array([1.0,
                                                                        0.4])})
    chex.assert_trees_all_close(
        step(0.5, 'normalized', None), {'lr': 0.6,
                                        'momentum': jnp.array([1.2, 0.1])})
    clipped = step(rates, 'sgd', hypergrad.SGD_BOUNDS)
    chex.assert_trees_all_close(
        clipped, {'lr': 0.14, 'momentum': jnp.array([0.999, 0.1])})
    zero = step(rates, 'normalized', (0., 1.),
                jax.tree.map(jnp.zeros_like, g))
    chex.assert_trees_all_equal(zero, h)
    chex.assert_trees_all_equal_dtypes(clipped, h)

  @parameterized.parameters('hd', 'rtho', 'truncated')
  def test_default_is_sgd_at_1e_3(self, name):
    factory, kw = {'hd': (hypergrad.hypergradient_descent, {}),
                   'rtho': (hypergrad.rtho, {'every': 2}),
                   'truncated': (hypergrad.truncated_greedy, {'window': 2})
                   }[name]
    _, default = hypergrad.run_online(factory(_STEP, _LOSS, **kw), _STATE,
                                      _H0, 5)
    _, explicit = hypergrad.run_online(
        factory(_STEP, _LOSS, meta_opt=hypergrad.meta_optimizer(1e-3), **kw),
        _STATE, _H0, 5)
    chex.assert_trees_all_equal(default, explicit)
    self.assertGreater(float(jnp.ptp(default['lr'])), 0.0)

  def test_any_optax_meta_optimizer(self):
    # A user's own meta optimiser: Adam on HD's one-step hypergradient.
    with jax.numpy_dtype_promotion('standard'):
      method = hypergrad.hypergradient_descent(
          _STEP, _LOSS, meta_opt=optax.adam(1e-2))
      _, sched = hypergrad.run_online(method, _STATE, _H0, 6)
    chex.assert_tree_all_finite(sched)
    self.assertGreater(float(jnp.ptp(sched['lr'])), 0.0)


class BadInputTest(parameterized.TestCase):

  @parameterized.parameters(-1e-3, 0.0, float('nan'), float('inf'), True)
  def test_bad_meta_lr(self, rate):
    # Refused when the meta optimiser is built, before any method exists.
    with pytest.raises(ValueError, match=f'meta_lr={rate!r}'):
      hypergrad.meta_optimizer(rate)

  def test_bad_meta_lr_by_name(self):
    with pytest.raises(ValueError, match=r"meta_lr\['momentum'\]=-0.5"):
      hypergrad.meta_optimizer({'lr': 1e-3, 'momentum': -0.5})

  @parameterized.parameters((1e-3,), ('sign',), ({'lr': 1e-3},),
                            ((0.0, 1.0),))
  def test_meta_opt_must_be_a_transformation(self, bad):
    # The old meta_lr / meta_update / bounds values passed as meta_opt.
    for factory, kw in ((hypergrad.hypergradient_descent, {}),
                        (hypergrad.rtho, {}),
                        (hypergrad.truncated_greedy, {'window': 2})):
      with pytest.raises(TypeError, match=r'meta_opt must be an optax.*'
                         r'hypergrad\.meta_optimizer\('):
        factory(_no_trace, _no_trace, meta_opt=bad, **kw)

  def test_meta_opt_factory_not_called(self):
    with pytest.raises(TypeError, match='meta_opt must be an optax.*adam'):
      hypergrad.rtho(_no_trace, _no_trace, meta_opt=optax.adam)

  def test_meta_lr_names_must_match_hparams(self):
    method = hypergrad.hypergradient_descent(
        _STEP, _LOSS, meta_opt=hypergrad.meta_optimizer({'lr': 1e-3}))
    with pytest.raises(ValueError, match=r"missing \['momentum'\]"):
      method.init(_STATE, _H0)

  @parameterized.parameters(
      (hypergrad.truncated_greedy, 'window'), (hypergrad.rtho, 'every'))
  def test_window_longer_than_run(self, factory, arg):
    method = factory(_no_trace, _no_trace, **{arg: 12})
    with pytest.raises(ValueError, match=f'{arg}=12 .*num_steps=10'):
      hypergrad.run_online(method, _STATE, _H0, 10)

  @parameterized.parameters(
      (hypergrad.truncated_greedy, {'window': 0}, 'window=0'),
      (hypergrad.rtho, {'every': -2}, 'every=-2'),
      (hypergrad.truncated_greedy, {'window': 2, 'meta_steps': 0},
       'meta_steps=0'),
  )
  def test_bad_arguments_at_construction(self, factory, kw, message):
    with pytest.raises(ValueError, match=message):
      factory(_no_trace, _no_trace, **kw)

  @parameterized.parameters(
      ({'meta_update': 'adam'}, "meta_update='adam'"),
      ({'bounds': {'lr': (1.0, 0.0)}}, r"bounds\['lr'\]"),
  )
  def test_bad_meta_optimizer_at_construction(self, kw, message):
    with pytest.raises(ValueError, match=message):
      hypergrad.meta_optimizer(1e-3, **kw)

  def test_old_meta_arguments_are_gone(self):
    # One meta optimiser argument: meta_lr, meta_update and bounds go
    # through hypergrad.meta_optimizer.
    for old in ('meta_lr', 'meta_update', 'bounds'):
      with pytest.raises(TypeError, match=old):
        hypergrad.rtho(_no_trace, _no_trace, **{old: None})

  def test_estimator_must_be_a_value_not_a_string(self):
    with pytest.raises(TypeError, match="estimator value.*'reverse'"):
      hypergrad.truncated_greedy(_no_trace, _no_trace, window=2,
                                 estimator='reverse')

  def test_more_than_one_interval(self):
    method = hypergrad.rtho(_no_trace, _no_trace)
    with pytest.raises(ValueError, match=r"leaf \['lr'\] has shape \(3,\)"):
      hypergrad.run_online(method, _STATE, {'lr': jnp.full((3,), 0.1)}, 20)

  def test_not_a_method(self):
    with pytest.raises(TypeError, match='OnlineMethod'):
      hypergrad.run_online(_no_trace, _STATE, _H0, 10)
