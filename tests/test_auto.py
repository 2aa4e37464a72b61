"""hypergrad.auto: forward or checkpointed reverse, chosen by cost and memory."""

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import hypergrad
from hypergrad._src import auto as auto_lib
from tests import helpers


class AutoTest(parameterized.TestCase):
  """hypergrad.auto: forward or checkpointed reverse, by cost and memory."""

  def setUp(self):
    super().setUp()
    step_fn, loss_fn, state = helpers.sgd_problem()
    hparams = {'lr': jnp.linspace(0.03, 0.1, 4), 'momentum': jnp.array([0.6])}
    self.args = (step_fn, loss_fn, state, hparams, 400)
    self.big = hypergrad.auto(memory_budget_bytes=2**40).choose(*self.args)

  def _checkpointed(self, args):
    """The choice when keeping every step's residuals is just over budget."""
    plain = hypergrad.auto(memory_budget_bytes=2**40).choose(*args)
    self.assertIsNone(plain.estimator.checkpoint_every
                      if isinstance(plain.estimator, hypergrad.Reverse)
                      else None)
    return hypergrad.auto(memory_budget_bytes=plain.reverse_bytes - 1
                          ).choose(*args)

  def test_estimates_are_consistent(self):
    c = self.big
    # Long horizon, tiny state: reverse keeps all 400 steps' residuals (they
    # fit), forward 5 tangents.
    self.assertGreater(c.reverse_bytes, c.forward_bytes)
    self.assertEqual(c.budget_bytes, 2**40)
    self.assertIn('K=5 tangents', c.reason)
    self.assertIn('T=400', c.reason)
    self.assertIn('reverse, every step kept', c.reason)
    # Both fit: the faster by the time model wins.
    faster = 'Forward' if c.forward_cost <= c.reverse_cost else 'Reverse'
    self.assertEqual(type(c.estimator).__name__, faster)
    self.assertIn('faster', c.reason)

  def test_reverse_checkpoints_when_its_tape_does_not_fit(self):
    c = self._checkpointed(self.args)
    self.assertLess(c.reverse_bytes, self.big.reverse_bytes)
    self.assertIn('checkpoints every 20 steps', c.reason)
    if isinstance(c.estimator, hypergrad.Reverse):
      self.assertEqual(c.estimator.checkpoint_every, 20)  # round(sqrt(400))

  def test_reverse_over_budget_means_forward(self):
    ckpt = self._checkpointed(self.args)
    self.assertLess(ckpt.forward_bytes, ckpt.reverse_bytes)
    budget = (ckpt.forward_bytes + ckpt.reverse_bytes) // 2
    slow = hypergrad.ProbeTimes('fake', 1e-3, 1e-2, 2e-3, 5)  # forward slower
    c = hypergrad.auto(memory_budget_bytes=budget, measure=lambda *a: slow
                       ).choose(*self.args)
    self.assertEqual(c.estimator, hypergrad.forward())
    self.assertIn('only one within the memory budget', c.reason)

  def test_forward_over_budget_means_reverse(self):
    # One tangent of a large state against a short horizon: forward's
    # tangents outweigh reverse's few checkpoints.
    step_fn, loss_fn, state = helpers.sgd_problem(dim=40, hidden=64)
    hparams = {'lr': jnp.full((30,), 0.05)}
    args = (step_fn, loss_fn, state, hparams, 36)
    ckpt = self._checkpointed(args)
    self.assertGreater(ckpt.forward_bytes, ckpt.reverse_bytes)
    c = hypergrad.auto(memory_budget_bytes=ckpt.reverse_bytes).choose(*args)
    self.assertIsInstance(c.estimator, hypergrad.Reverse)
    self.assertEqual(c.estimator.checkpoint_every, 6)  # round(sqrt(36))

  def test_chunked_forward_when_only_some_tangents_fit(self):
    # Reverse does not fit; all 5 tangents do not either, 2 at a time do.
    diff = 2 * (5 * 4 + 4) * 8  # params and velocity, float64
    budget = self.big.forward_bytes - 3 * diff
    self.assertLess(budget, self._checkpointed(self.args).reverse_bytes)
    c = hypergrad.auto(memory_budget_bytes=budget).choose(*self.args)
    self.assertEqual(c.estimator, hypergrad.forward(chunk_size=2))
    self.assertIn('2 tangents at a time', c.reason)
    self.assertLessEqual(c.forward_bytes, budget)

  def test_nothing_fits_takes_the_smaller(self):
    c = hypergrad.auto(memory_budget_bytes=1).choose(*self.args)
    self.assertIn('neither fits', c.reason)
    self.assertEqual(c.estimator, hypergrad.forward(chunk_size=1))

  @parameterized.parameters('forward', 'reverse')
  def test_preference_wins(self, prefer):
    c = hypergrad.auto(prefer=prefer).choose(*self.args)
    # 400 steps' residuals fit the default budget: no checkpoints.
    expected = (hypergrad.forward() if prefer == 'forward'
                else hypergrad.reverse())
    self.assertEqual(c.estimator, expected)
    self.assertIn('as preferred', c.reason)

  @parameterized.parameters(None, 'forward', 'reverse')
  def test_runs_as_an_estimator_and_matches(self, prefer):
    est = hypergrad.auto(prefer=prefer)
    self.assertIsInstance(est, hypergrad.Estimator)
    out = est(*self.args)
    ref = hypergrad.reverse()(*self.args)
    chex.assert_trees_all_equal_shapes_and_dtypes(out.hypergrads,
                                                  self.args[3])
    chex.assert_trees_all_close(out.hypergrads, ref.hypergrads, rtol=1e-10,
                                atol=1e-14)
    self.assertEqual(int(out.info.nonfinite_step), -1)

  @parameterized.parameters((0.5, 'Forward'), (3.0, 'Reverse'))
  def test_choice_follows_the_probe(self, tangent, chosen):
    # Reverse, its tape kept (it fits), costs 6 - 1 plain unrolls (no
    # recomputation); forward 1 + tangent * 3.5 begun.
    times = hypergrad.ProbeTimes('fake device', 1e-3, tangent * 1e-3, 6e-3, 5)
    est = hypergrad.auto(memory_budget_bytes=2**40,
                         measure=lambda *args: times)
    c = est.choose(*self.args)
    self.assertEqual(type(c.estimator).__name__, chosen)
    self.assertIs(c.probe, times)
    self.assertAlmostEqual(c.reverse_cost, 5.0)
    self.assertIn('measured on fake device', c.reason)
    self.assertIn(f'+{tangent:.2f} plain steps per tangent', c.reason)

  def test_probe_measures_this_device_once(self):
    step_fn, _, state, hparams, t = self.args
    first = auto_lib.probe(step_fn, state, hparams, t, 5)
    self.assertEqual(first.device, jax.devices()[0].device_kind)
    self.assertGreater(first.plain, 0)
    self.assertGreater(first.reverse, first.plain)
    self.assertGreaterEqual(first.tangent, 0)
    self.assertIs(auto_lib.probe(step_fn, state, hparams, t, 5), first)

  def test_step_closing_over_a_tracer_falls_back(self):
    # Such a step cannot run outside its trace: auto still chooses (from
    # CPU figures, said in the reason) and the result is exact.
    def outer(scale):
      step = lambda w, h, t: w - h['lr'] * scale * 2.0 * (w - 3.0)
      return hypergrad.auto().compute(
          step, lambda w: (w - 3.0) ** 2, jnp.zeros(()),
          {'lr': jnp.full((2,), 0.1)}, 20).hypergrads

    ref = hypergrad.reverse()(
        lambda w, h, t: w - h['lr'] * 2.0 * (w - 3.0),
        lambda w: (w - 3.0) ** 2, jnp.zeros(()), {'lr': jnp.full((2,), 0.1)},
        20).hypergrads
    chex.assert_trees_all_close(jax.jit(outer)(1.0), ref, rtol=1e-10)

  def test_thousands_of_values_choose_reverse(self):
    # One weight per training example (the hyper-cleaning setting): a
    # tangent per weight would cost thousands of plain runs.
    step_fn, loss_fn, state = helpers.sgd_problem()
    hparams = {'lr': jnp.full((2000,), 0.05)}
    c = hypergrad.auto().choose(step_fn, loss_fn, state, hparams, 2000)
    self.assertIsInstance(c.estimator, hypergrad.Reverse)
    self.assertIn('K=2000 tangents', c.reason)
    self.assertIn('reverse: faster', c.reason)
    self.assertGreater(c.forward_cost, 50 * c.reverse_cost)

  def test_per_example_weights_choose_reverse_keeping_the_tape(self):
    # Hyper-cleaning's shape: a weight per training example, the data bound
    # with Partial. The data is not per-step memory, so the whole tape of a
    # short horizon fits and reverse mode runs without checkpoints.
    rng = np.random.RandomState(0)
    n, dim = 3000, 200
    x, y = jnp.asarray(rng.randn(n, dim)), jnp.asarray(rng.randint(0, 3, n))

    def loss(x, y, params, t, h):
      del t
      logp = jax.nn.log_softmax(x @ params)
      return -jnp.mean(h['weights'] * jnp.take_along_axis(
          logp, y[:, None], axis=1)[:, 0])

    step_fn = hypergrad.sgd_momentum_step(jax.tree_util.Partial(loss, x, y),
                                          lr=0.5, loss_hparams=True)
    hparams = {'weights': hypergrad.constant_leaf(jnp.ones((n,)))}
    state = hypergrad.sgd_init(jnp.zeros((dim, 3)))
    c = hypergrad.auto().choose(step_fn, jnp.sum, state, hparams, 200)
    self.assertEqual(c.estimator, hypergrad.reverse())
    self.assertIn('K=3000 tangents', c.reason)
    self.assertIn('reverse, every step kept', c.reason)
    residual = auto_lib.step_residual_bytes(step_fn, state, hparams, 200)
    # Logits, probabilities and per-example terms (N x classes), not N x dim.
    self.assertLess(residual, x.nbytes // 5)

  def test_training_data_is_not_residual_memory(self):
    # The data a step closes over is kept once, not once per step.
    x = jnp.ones((5000, 50))
    small = auto_lib.step_residual_bytes(
        lambda w, h, t: w - h['lr'] * jnp.mean(x[:8] @ w), jnp.ones(50),
        {'lr': jnp.ones(1)}, 10)
    big = auto_lib.step_residual_bytes(
        lambda w, h, t: w - h['lr'] * jnp.mean(x @ w), jnp.ones(50),
        {'lr': jnp.ones(1)}, 10)
    self.assertLess(small, x.nbytes // 100)
    self.assertLess(big, x.nbytes // 10)

  def test_population_members_share_the_budget(self):
    # 4 vmapped members hold 4 tapes at once: each gets a quarter of the
    # budget, so a tape that fits one member's budget may not fit a share.
    plain = self.big.reverse_bytes
    one = hypergrad.auto(memory_budget_bytes=2 * plain).choose(*self.args)
    four = hypergrad.auto(memory_budget_bytes=2 * plain).sharing_memory(
        4).choose(*self.args)
    self.assertEqual(one.reverse_bytes, plain)
    self.assertEqual(four.budget_bytes, 2 * plain // 4)
    self.assertLess(four.reverse_bytes, plain)  # checkpointed
    self.assertIn('shared by 4 runs at once', four.reason)
    est = hypergrad.forward()
    self.assertIs(est.sharing_memory(4), est)

  def test_measure_must_be_callable(self):
    with pytest.raises(TypeError, match="measure='cpu'"):
      hypergrad.auto(measure='cpu')

  def test_device_budget_default_on_cpu(self):
    budget, source = auto_lib.memory_budget()
    if jax.devices()[0].memory_stats() is None:
      self.assertEqual(budget, auto_lib.DEFAULT_BUDGET_BYTES)
      self.assertIn('default', source)
    else:
      self.assertGreater(budget, 0)

  @parameterized.parameters(
      ({'prefer': 'sideways'}, 'prefer'),
      ({'memory_budget_bytes': 0}, 'memory_budget_bytes'),
      ({'memory_budget_bytes': 1.5}, 'memory_budget_bytes'),
  )
  def test_bad_options(self, kw, match):
    with pytest.raises(ValueError, match=match):
      hypergrad.auto(**kw)
