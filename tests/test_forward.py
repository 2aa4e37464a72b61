"""Forward-mode hypergradients: correctness, compilation, memory, bad input."""

from absl.testing import parameterized
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import hypergrad
from tests import helpers


def _fd_check(step_fn, loss_fn, state, hparams, num_steps, rtol=1e-5,
              atol=1e-8, **kw):
  loss, grads = hypergrad.forward_hypergrad(step_fn, loss_fn, state, hparams,
                                            num_steps, **kw)
  f = lambda h: helpers.reference_unroll_loss(step_fn, loss_fn, state, h,
                                              num_steps)
  chex.assert_trees_all_close(loss, f(hparams), rtol=1e-10)
  fd = helpers.finite_difference(jax.jit(f), hparams)
  chex.assert_trees_all_equal_shapes_and_dtypes(grads, hparams)
  chex.assert_trees_all_close(grads, fd, rtol=rtol, atol=atol)
  return grads


class ForwardFiniteDifferenceTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('one_interval_each', 1, 1, 1, 12),
      ('different_n_per_leaf', 3, 2, 1, 12),
      ('n_not_dividing_T', 5, 3, 2, 13),
      ('n_equals_T', 7, 1, 1, 7),
  )
  def test_sgd_schedules_match_finite_differences(self, n_lr, n_mom, n_wd, t):
    step_fn, loss_fn, state = helpers.sgd_problem()
    hparams = {'lr': jnp.linspace(0.05, 0.1, n_lr),
               'momentum': jnp.linspace(0.5, 0.8, n_mom),
               'weight_decay': jnp.full((n_wd,), 1e-2)}
    _fd_check(step_fn, loss_fn, state, hparams, t)

  def test_per_layer_values_as_prefix_pytree(self):
    step_fn, loss_fn, state = helpers.sgd_problem()
    hparams = {'lr': {'a': jnp.array([0.05, 0.08]), 'b': jnp.array([0.1])},
               'momentum': jnp.array([0.6])}
    _fd_check(step_fn, loss_fn, state, hparams, 10)

  def test_trailing_axes_per_unit(self):
    # A leaf (n, hidden) gives one learning rate per hidden unit of 'a'.
    train_loss, val_loss, params = helpers.regression_problem()
    step_fn = hypergrad.sgd_momentum_step(train_loss)
    state = hypergrad.sgd_init(params)
    hparams = {'lr': {'a': jnp.full((2, 4), 0.07), 'b': jnp.array([0.1])}}
    _fd_check(step_fn, lambda s: val_loss(s.params), state, hparams, 9)

  def test_flax_mlp_with_sgd_builder(self):
    x = jnp.asarray(np.random.RandomState(1).randn(32, 6))
    y = jnp.asarray(np.random.RandomState(2).randint(0, 3, 32))
    model = nn.Sequential([nn.Dense(8, param_dtype=jnp.float64), nn.tanh,
                           nn.Dense(3, param_dtype=jnp.float64)])
    params = model.init(jax.random.PRNGKey(0), x[:1])

    def xent(p, xb, yb):
      return optax.softmax_cross_entropy_with_integer_labels(
          model.apply(p, xb), yb).mean()

    def train_loss(p, t):
      start = (t % 4) * 8
      return xent(p, jax.lax.dynamic_slice_in_dim(x, start, 8),
                  jax.lax.dynamic_slice_in_dim(y, start, 8))

    step_fn = hypergrad.sgd_momentum_step(train_loss)
    hparams = {'lr': jnp.array([0.3, 0.2, 0.1]), 'momentum': jnp.array([0.9]),
               'weight_decay': jnp.array([1e-3])}
    _fd_check(step_fn, lambda s: xent(s.params, x, y),
              hypergrad.sgd_init(params), hparams, 11)

  def test_optax_adam_through_inject_hyperparams(self):
    train_loss, val_loss, params = helpers.regression_problem()
    opt = optax.inject_hyperparams(optax.adam)(
        learning_rate=jnp.float64(0.01), b1=jnp.float64(0.9))
    step_fn = hypergrad.optax_step(train_loss, opt)
    state = hypergrad.optax_init(opt, params)
    hparams = {'learning_rate': jnp.array([0.02, 0.01]),
               'b1': jnp.array([0.8])}
    # The optax state holds an int32 step counter: it must ride along
    # undifferentiated. optax's bias correction mixes int and float, which
    # strict promotion refuses: that is optax's choice, not ours.
    with jax.numpy_dtype_promotion('standard'):
      _fd_check(step_fn, lambda s: val_loss(s.params), state, hparams, 8,
                rtol=1e-4)

  def test_model_state_is_carried_and_differentiated(self):
    train_loss, val_loss, params = helpers.regression_problem()

    def train_loss_ms(p, ms, t):
      loss = train_loss(p, t)
      # A running average of the training loss, like batch statistics: the
      # validation loss below depends on it, so its tangent must be right.
      return loss, 0.9 * ms + 0.1 * loss

    step_fn = hypergrad.sgd_momentum_step(train_loss_ms,
                                          with_model_state=True)
    state = hypergrad.sgd_init(params, jnp.float64(0.0))
    loss_fn = lambda s: val_loss(s.params) + s.model_state
    _fd_check(step_fn, loss_fn, state, {'lr': jnp.array([0.05, 0.1])}, 10)


class ForwardEqualsReverseTest(parameterized.TestCase):

  @parameterized.parameters(1, 3, 9)
  def test_equals_grad_through_reference_unroll(self, chunk):
    step_fn, loss_fn, state = helpers.sgd_problem()
    hparams = {'lr': jnp.linspace(0.02, 0.1, 7), 'momentum': jnp.array([0.8]),
               'weight_decay': jnp.array([1e-3])}
    t = 40
    ref = jax.grad(lambda h: helpers.reference_unroll_loss(
        step_fn, loss_fn, state, h, t))(hparams)
    _, fwd = hypergrad.forward_hypergrad(step_fn, loss_fn, state, hparams, t,
                                         chunk_size=chunk)
    chex.assert_trees_all_close(fwd, ref, rtol=1e-10, atol=1e-13)
    _, naive = hypergrad.forward_hypergrad(step_fn, loss_fn, state, hparams,
                                           t, skip_unstarted=False)
    chex.assert_trees_all_close(naive, ref, rtol=1e-10, atol=1e-13)


class ForwardEqualsReverseLayoutsTest(parameterized.TestCase):
  """Forward mode (one compiled body, traced interval lookup) == reverse."""

  @parameterized.named_parameters(
      ('different_n_per_leaf', 5, 2, 3, 30, None),
      ('n_not_dividing_T', 7, 3, 2, 23, None),
      ('n_equals_T', 11, 1, 1, 11, None),
      ('one_interval_each', 1, 1, 1, 9, None),
      ('chunk_smaller_than_K', 5, 2, 3, 30, 3),
      ('chunk_of_one', 4, 1, 2, 13, 1),
      ('chunk_not_dividing_K', 7, 3, 2, 23, 4),
  )
  def test_matches_reverse_to_round_off(self, n_lr, n_mom, n_wd, t, chunk):
    step_fn, loss_fn, state = helpers.sgd_problem()
    hparams = {'lr': jnp.linspace(0.03, 0.1, n_lr),
               'momentum': jnp.linspace(0.5, 0.8, n_mom),
               'weight_decay': jnp.linspace(1e-3, 1e-2, n_wd)}
    ref = hypergrad.reverse()(step_fn, loss_fn, state, hparams, t)
    for skip in (True, False):
      out = hypergrad.forward(chunk, skip_unstarted=skip)(
          step_fn, loss_fn, state, hparams, t)
      chex.assert_trees_all_equal_shapes_and_dtypes(out.hypergrads, hparams)
      chex.assert_trees_all_close(out.hypergrads, ref.hypergrads,
                                  rtol=1e-10, atol=1e-14)
      chex.assert_trees_all_close(out.loss, ref.loss, rtol=1e-12)
      chex.assert_trees_all_close(out.info.final_state, ref.info.final_state,
                                  rtol=1e-12)
      self.assertEqual(int(out.info.nonfinite_step), -1)

  def test_trailing_axes_with_chunks(self):
    train_loss, val_loss, params = helpers.regression_problem()
    step_fn = hypergrad.sgd_momentum_step(train_loss)
    loss_fn = lambda s: val_loss(s.params)
    state = hypergrad.sgd_init(params)
    hparams = {'lr': {'a': jnp.full((3, 4), 0.07), 'b': jnp.array([0.1])},
               'momentum': jnp.array([0.5, 0.6])}
    ref = hypergrad.reverse()(step_fn, loss_fn, state, hparams, 14)
    out = hypergrad.forward(chunk_size=5)(step_fn, loss_fn, state, hparams, 14)
    chex.assert_trees_all_close(out.hypergrads, ref.hypergrads, rtol=1e-10,
                                atol=1e-14)


class SkipUnstartedTest(parameterized.TestCase):

  def test_unbegun_tangents_are_not_pushed(self):
    # At step 4 the step's derivative is 0 * inf: any tangent pushed through
    # it turns NaN, a zero one included. The second lr interval begins at
    # step 5, so its tangent is only exact if it was not pushed at step 4.
    def step_fn(w, h, t):
      u = jnp.where(t == 4, 0.0, 1.0) * w
      return w + h['lr'] * jnp.sqrt(u)

    args = (step_fn, lambda w: jnp.sum(w ** 2), jnp.ones(2),
            {'lr': jnp.array([0.1, 0.2])}, 10)
    out = hypergrad.forward()(*args)
    self.assertEqual(int(out.info.nonfinite_step), 4)
    self.assertTrue(np.isnan(out.hypergrads['lr'][0]))
    ref = hypergrad.reverse()(*args)
    np.testing.assert_allclose(out.hypergrads['lr'][1],
                               ref.hypergrads['lr'][1], rtol=1e-12)
    naive = hypergrad.forward(skip_unstarted=False)(*args)
    self.assertTrue(np.isnan(naive.hypergrads['lr'][1]))

  def test_progress_reported_once_per_chunk(self):
    step_fn, loss_fn, state = helpers.sgd_problem()
    hparams = {'lr': jnp.array([0.05, 0.1, 0.07]),
               'momentum': jnp.array([0.5])}
    for chunk, copies in ((None, 1), (2, 2)):
      seen = []
      progress = hypergrad.Progress(seen.append, every=3)
      hypergrad.forward(chunk)(step_fn, loss_fn, state, hparams, 10,
                               progress=progress)
      jax.effects_barrier()
      self.assertEqual(sorted(seen), sorted([0, 3, 6, 9] * copies))


class OneCompiledUnrollTest(parameterized.TestCase):

  @parameterized.parameters(None, 3)
  def test_compiles_one_unroll_whatever_the_intervals(self, chunk):
    # The old scheme traced (and compiled) one scan body per interval
    # boundary; the row push traces the step the same number of times for 1
    # or 9 learning-rate intervals, and for one chunk or several (the batch
    # push's few batch sizes: tests/test_forward_push.py).
    step_fn, loss_fn, state = helpers.sgd_problem()
    counts = []
    for n in (1, 9):
      traces = []

      def counted(s, h, t, traces=traces):
        traces.append(t)
        return step_fn(s, h, t)

      for lr in (0.05, 0.07):  # new values: no retrace
        hypergrad.forward(chunk, push='rows')(counted, loss_fn, state,
                                             {'lr': jnp.full((n,), lr),
                                              'momentum': jnp.array([0.5])},
                                             18)
        counts.append(len(traces))
    self.assertEqual(counts[0], counts[1])  # n = 1, new values
    self.assertEqual(counts[2], counts[3])  # n = 9, new values
    self.assertEqual(counts[0], counts[2])
    self.assertLessEqual(counts[0], 3)


class CompilationTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_jit_and_no_jit_agree(self):
    step_fn, loss_fn, state = helpers.sgd_problem()
    hparams = {'lr': jnp.array([0.05, 0.1]), 'momentum': jnp.array([0.5])}
    fn = self.variant(lambda s, h: hypergrad.forward_hypergrad(
        step_fn, loss_fn, s, h, 10))
    loss, grads = fn(state, hparams)
    ref_loss, ref = hypergrad.forward_hypergrad(step_fn, loss_fn, state,
                                                hparams, 10)
    chex.assert_trees_all_close((loss, grads), (ref_loss, ref), rtol=1e-12)

  def test_new_values_do_not_retrace(self):
    step_fn, loss_fn, state = helpers.sgd_problem()
    # loss_fn is traced twice per compilation: once by the structural check,
    # once by the final gradient. A third trace means a recompilation.
    counted_loss = chex.assert_max_traces(loss_fn, n=2)
    for lr in (0.05, 0.07, 0.09):
      hparams = {'lr': jnp.full((3,), lr), 'momentum': jnp.array([0.5])}
      hypergrad.forward_hypergrad(step_fn, counted_loss, state, hparams, 20)

  def test_new_data_bound_with_partial_does_not_retrace(self):
    traces = []

    def step(x, y, w, h, t):
      traces.append(t)
      i = (t % 4) * 8
      xb = jax.lax.dynamic_slice_in_dim(x, i, 8)
      yb = jax.lax.dynamic_slice_in_dim(y, i, 8)
      return w - h['lr'] * jax.grad(lambda v: jnp.mean((xb @ v - yb)**2))(w)

    def loss(x, y, w):
      return jnp.mean((x @ w - y) ** 2)

    rng = np.random.RandomState(0)
    counts, losses = [], []
    for _ in range(3):
      # A new split of the data each outer step, as the FDS outer loop does.
      x, y = jnp.asarray(rng.randn(32, 3)), jnp.asarray(rng.randn(32))
      value, _ = hypergrad.forward_hypergrad(
          jax.tree_util.Partial(step, x, y), jax.tree_util.Partial(loss, x, y),
          jnp.zeros(3), {'lr': jnp.array([0.1, 0.05])}, 8)
      counts.append(len(traces))
      losses.append(float(value))
    self.assertEqual(counts[0], counts[-1])
    self.assertLen(set(losses), 3)  # the new data really was used

  def test_float32_stays_float32(self):
    step_fn, loss_fn, state = helpers.sgd_problem(dtype=jnp.float32)
    hparams = {'lr': jnp.array([0.05, 0.1], jnp.float32),
               'momentum': jnp.array([0.5], jnp.float32)}
    loss, grads = hypergrad.forward_hypergrad(step_fn, loss_fn, state,
                                              hparams, 12)
    chex.assert_type(loss, jnp.float32)
    chex.assert_trees_all_equal_dtypes(grads, hparams)
    step64, loss64, state64 = helpers.sgd_problem(dtype=jnp.float64)
    _, grads64 = hypergrad.forward_hypergrad(
        step64, loss64, state64,
        jax.tree.map(lambda h: h.astype(jnp.float64), hparams), 12)
    chex.assert_trees_all_close(
        grads, jax.tree.map(lambda g: g.astype(jnp.float32), grads64),
        rtol=1e-3, atol=1e-5)


class MemoryTest(parameterized.TestCase):

  def test_compiled_memory_constant_in_horizon(self):
    step_fn, loss_fn, state = helpers.sgd_problem(dtype=jnp.float32)
    hparams = {'lr': jnp.full((4,), 0.05, jnp.float32),
               'momentum': jnp.array([0.5], jnp.float32)}

    def nbytes(t):
      f = jax.jit(lambda s, h: hypergrad.forward_hypergrad(
          step_fn, loss_fn, s, h, t))
      m = f.lower(state, hparams).compile().memory_analysis()
      return m.temp_size_in_bytes + m.output_size_in_bytes

    small, large = nbytes(100), nbytes(5000)
    assert large <= 1.1 * small, (small, large)

  def test_reverse_through_plain_scan_does_grow(self):
    # The same measurement sees linear growth when states are stored: the
    # constant-memory test above is not vacuous.
    step_fn, loss_fn, state = helpers.sgd_problem(dtype=jnp.float32)
    hparams = {'lr': jnp.full((4,), 0.05, jnp.float32)}

    def nbytes(t):
      f = jax.jit(jax.grad(lambda h: loss_fn(hypergrad.unroll(
          step_fn, state, h, t))))
      return f.lower(hparams).compile().memory_analysis().temp_size_in_bytes

    assert nbytes(5000) > 5 * nbytes(100)


class BadInputTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.step_fn, self.loss_fn, self.state = helpers.sgd_problem()

  def _call(self, hparams, num_steps=10, step_fn=None, loss_fn=None, **kw):
    return hypergrad.forward_hypergrad(step_fn or self.step_fn,
                                       loss_fn or self.loss_fn, self.state,
                                       hparams, num_steps, **kw)

  @parameterized.parameters(0, -3)
  def test_non_positive_num_steps(self, t):
    with pytest.raises(ValueError, match=f'num_steps={t}'):
      self._call({'lr': jnp.array([0.1])}, t)

  def test_float_num_steps(self):
    with pytest.raises(TypeError, match='num_steps must be a Python int'):
      self._call({'lr': jnp.array([0.1])}, 10.0)

  def test_more_intervals_than_steps(self):
    with pytest.raises(ValueError, match=r"\['lr'\] has n=11 intervals"):
      self._call({'lr': jnp.full((11,), 0.1)}, 10)

  def test_zero_intervals(self):
    with pytest.raises(ValueError, match='n=0'):
      self._call({'lr': jnp.zeros((0,))})

  def test_integer_leaf(self):
    with pytest.raises(TypeError, match=r"\['momentum'\] has dtype int"):
      self._call({'lr': jnp.array([0.1]), 'momentum': jnp.array([1, 2])})

  def test_scalar_leaf(self):
    with pytest.raises(ValueError, match='leading interval axis'):
      self._call({'lr': jnp.float64(0.1)})

  def test_step_fn_changing_structure(self):
    bad = lambda s, h, t: self.step_fn(s, h, t).params
    with pytest.raises(ValueError, match='same pytree structure'):
      self._call({'lr': jnp.array([0.1])}, step_fn=bad)

  def test_step_fn_changing_shape(self):
    def bad(s, h, t):
      s = self.step_fn(s, h, t)
      return s._replace(params={**s.params, 'b': s.params['b'][:2]})
    with pytest.raises(ValueError, match=r"changes state leaf .*'b'"):
      self._call({'lr': jnp.array([0.1])}, step_fn=bad)

  def test_non_scalar_loss(self):
    with pytest.raises(ValueError, match='real scalar'):
      self._call({'lr': jnp.array([0.1])}, loss_fn=lambda s: s.params['b'])

  @parameterized.parameters(0, -1, 2.5)
  def test_bad_chunk_size(self, chunk):
    with pytest.raises(ValueError, match='chunk_size'):
      self._call({'lr': jnp.array([0.1])}, chunk_size=chunk)

  def test_unknown_sgd_hyperparameter(self):
    with pytest.raises(KeyError, match='nesterov'):
      self._call({'lr': jnp.array([0.1]), 'nesterov': jnp.array([0.1])})


class NonFiniteTest(parameterized.TestCase):

  @parameterized.parameters(float('nan'), float('inf'), -float('inf'))
  def test_nonfinite_hyperparameters_refused_before_compute(self, bad):
    calls = []
    step_fn = lambda w, h, t: calls.append(t) or w - h['lr'] * w
    hparams = {'lr': jnp.array([0.1, bad])}
    for estimator in (hypergrad.forward(), hypergrad.reverse()):
      with pytest.raises(ValueError, match=r"leaf \['lr'\].*non-finite"):
        estimator(step_fn, jnp.sum, jnp.ones(2), hparams, 10)
    for factory in (hypergrad.hypergradient_descent, hypergrad.rtho):
      with pytest.raises(ValueError, match=r"leaf \['lr'\].*non-finite"):
        hypergrad.run_online(factory(step_fn, jnp.sum), jnp.ones(2),
                             {'lr': jnp.array([bad])}, 10)
    self.assertEqual(calls, [])  # nothing traced, nothing computed

  @parameterized.parameters(hypergrad.forward(), hypergrad.reverse(),
                            hypergrad.reverse(checkpoint_every=5))
  def test_first_nonfinite_step_reported(self, estimator):
    def step_fn(w, h, t):
      w = w - h['lr'] * w
      return jnp.where(t >= 7, w * jnp.nan, w)  # state goes NaN at step 7

    loss, _, info = estimator(step_fn, lambda w: jnp.sum(w ** 2), jnp.ones(3),
                              {'lr': jnp.array([0.1, 0.2])}, 12)
    self.assertFalse(np.isfinite(float(loss)))
    self.assertEqual(int(info.nonfinite_step), 7)

  def test_finite_run_reports_minus_one_and_final_state(self):
    step_fn, loss_fn, state = helpers.sgd_problem()
    hparams = {'lr': jnp.array([0.05, 0.1])}
    loss, _, info = hypergrad.forward()(step_fn, loss_fn, state, hparams, 10)
    self.assertEqual(int(info.nonfinite_step), -1)
    chex.assert_trees_all_close(
        info.final_state, hypergrad.unroll(step_fn, state, hparams, 10))
    chex.assert_trees_all_close(loss, loss_fn(info.final_state))

  def test_tangent_blow_up_with_finite_state_is_caught(self):
    # d sqrt(w)/dw is infinite at w = 0 (set at step 4): the state stays
    # finite, the tangent of step 4's output does not, and the hypergradient
    # would silently be garbage.
    def step_fn(w, h, t):
      w = jnp.where(t == 4, 0.0, w)
      return w + h['lr'] * jnp.sqrt(w)

    _, _, info = hypergrad.forward()(
        step_fn, lambda w: jnp.sum(w), jnp.ones(2), {'lr': jnp.array([0.1])},
        8)
    self.assertEqual(int(info.nonfinite_step), 4)
