"""Tests for hypergrad.experiments.models (flax.linen MLP, LeNet, WRN)."""

import functools

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from hypergrad.experiments import data
from hypergrad.experiments import models


def _normal(shape, dtype=jnp.float32):
  # numpy, not jax.random: each new shape would cost a threefry compile.
  return jnp.asarray(np.random.default_rng(1).normal(size=shape), dtype)


def _xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()


@functools.cache
def _wrn():
  model = models.make_model('wrn-16-1', num_classes=10)
  params, state = models.init_model(model, jax.random.key(0), (32, 32, 3))
  return model, params, state


def _train_and_eval(model, ds, steps, lr, batch_size=64, seed=0):
  """Plain SGD + momentum in one jitted lax.scan; returns (acc, losses)."""
  params, state = models.init_model(model, jax.random.key(seed),
                                    ds.input_shape)
  opt = optax.sgd(lr, momentum=0.9)
  x, y = jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)
  key = jax.random.key(seed + 1)

  def step(carry, t):
    p, o, s = carry
    idx = data.batch_indices(key, t, batch_size, x.shape[0])

    def loss_fn(p):
      logits, s2 = models.apply_model(model, p, s, x[idx], train=True)
      return _xent(logits, y[idx]), s2

    (loss, s), grads = jax.value_and_grad(loss_fn, has_aux=True)(p)
    updates, o = opt.update(grads, o, p)
    return (optax.apply_updates(p, updates), o, s), loss

  @jax.jit
  def run(p, s):
    (p, _, s), losses = jax.lax.scan(step, (p, opt.init(p), s),
                                     jnp.arange(steps, dtype=jnp.int32))
    logits, _ = models.apply_model(model, p, s, jnp.asarray(ds.x_test),
                                   train=False)
    pred = jnp.argmax(logits, -1).astype(jnp.int32)  # int64 under x64
    return jnp.mean(pred == jnp.asarray(ds.y_test)), losses

  acc, losses = run(params, state)
  return float(acc), np.asarray(losses)


class ShapeTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('lenet_28x28', 'lenet', {}, (28, 28, 1)),
      ('lenet_bn_1d', 'lenet', {'batch_norm': True}, (40, 1)),
      ('mlp_digits', 'mlp', {}, (8, 8, 1)),
      ('mlp_mnist1d', 'mlp', {'widths': (32, 16), 'activation': 'tanh'},
       (40, 1)),
  )
  def test_init_apply(self, name, kw, input_shape):
    model = models.make_model(name, 10, **kw)
    params, state = models.init_model(model, jax.random.key(0), input_shape)
    x = _normal((3,) + input_shape)

    @jax.jit
    def both(params, state, x):
      return [models.apply_model(model, params, state, x, train)
              for train in (True, False)]

    for logits, new_state in both(params, state, x):
      chex.assert_shape(logits, (3, 10))
      chex.assert_type(logits, jnp.float32)
      chex.assert_tree_all_finite(logits)
      chex.assert_trees_all_equal_shapes_and_dtypes(new_state, state)
    if kw.get('batch_norm'):
      self.assertNotEmpty(jax.tree.leaves(state))
    else:
      self.assertEqual(state, {})

  def test_wrn_16_1(self):
    model, params, state = _wrn()
    self.assertEqual(models.num_params(params), 175066)
    # depth 16: 3 groups of (16 - 4) / 6 = 2 blocks, widths 16 / 32 / 64.
    blocks = sorted(k for k in params if k.startswith('group'))
    self.assertEqual(blocks, [f'group{g}_block{b}' for g in range(3)
                              for b in range(2)])
    for g, width in enumerate((16, 32, 64)):
      chex.assert_shape(params[f'group{g}_block1']['Conv_1']['kernel'],
                        (3, 3, width, width))
    self.assertLen(jax.tree.leaves(state), 2 * 13)  # 13 BatchNorms
    # Forward/backward passes: BatchNormTest.test_wrn_one_step.

  def test_make_model(self):
    wrn = models.make_model('WRN_28_10', 100)
    self.assertIsInstance(wrn, models.WideResNet)
    self.assertEqual((wrn.depth, wrn.widen_factor, wrn.num_classes),
                     (28, 10, 100))
    self.assertEqual(models.make_model('wrn', 10).depth, 16)
    self.assertIsInstance(models.make_model('lenet', 10), models.LeNet)
    self.assertEqual(models.make_model('mlp', 10, widths=(7,)).widths, (7,))
    with self.assertRaisesRegex(ValueError, "Unknown model 'resnet'.*mlp"):
      models.make_model('resnet', 10)

  def test_bad_configs(self):
    with self.assertRaisesRegex(ValueError, 'depth must be 6n \\+ 4'):
      models.init_model(models.make_model('wrn-15-1', 10), jax.random.key(0),
                        (32, 32, 3))
    with self.assertRaisesRegex(ValueError, 'Unknown activation'):
      models.init_model(models.MLP(10, activation='nope'), jax.random.key(0),
                        (4,))


class TrainTest(parameterized.TestCase):

  @parameterized.named_parameters(
      # (dataset, model, steps, lr, min test accuracy); chance is 10%.
      # Measured on CPU: ~59%, ~98%, ~97%.
      ('mlp_mnist1d', 'mnist1d', models.MLP(10, widths=(128, 128)), 500,
       0.05, 0.45),
      ('mlp_bn_tanh_digits', 'digits',
       models.MLP(10, widths=(64,), activation='tanh', batch_norm=True), 300,
       0.05, 0.85),
      ('lenet_digits', 'digits', models.LeNet(10), 200, 0.05, 0.85),
  )
  def test_beats_chance(self, dataset, model, steps, lr, min_acc):
    acc, losses = _train_and_eval(model, data.load_dataset(dataset), steps, lr)
    self.assertLess(losses[-20:].mean(), 0.7 * losses[:20].mean())
    self.assertGreater(acc, min_acc)


class BatchNormTest(parameterized.TestCase):

  def setUp(self):
    super().setUp()
    self.model = models.MLP(10, widths=(16,), batch_norm=True)
    self.params, self.state = models.init_model(
        self.model, jax.random.key(0), (5,))
    self.x = 3.0 + 2.0 * _normal((32, 5))

  def test_running_stats_update_and_are_used_in_eval(self):
    m, p, s0, x = self.model, self.params, self.state, self.x
    train_logits, s1 = models.apply_model(m, p, s0, x, train=True)
    for a, b in zip(jax.tree.leaves(s0), jax.tree.leaves(s1)):
      self.assertFalse(np.allclose(a, b))
    eval0, same = models.apply_model(m, p, s0, x, train=False)
    self.assertIs(same, s0)
    eval1, _ = models.apply_model(m, p, s1, x, train=False)
    self.assertFalse(np.allclose(eval0, eval1))  # eval reads running stats
    self.assertFalse(np.allclose(train_logits, eval1))  # train: batch stats
    # Training-mode outputs ignore the running statistics.
    junk = jax.tree.map(lambda a: a + 5.0, s0)
    train_junk, _ = models.apply_model(m, p, junk, x, train=True)
    np.testing.assert_allclose(train_logits, train_junk, rtol=1e-6)

  def test_wrn_one_step(self):
    model, params, state = _wrn()
    x = _normal((8, 32, 32, 3))
    y = jnp.arange(8, dtype=jnp.int32)

    def loss_fn(p, s):
      logits, s2 = models.apply_model(model, p, s, x, train=True)
      return _xent(logits, y), (logits, s2)

    @jax.jit
    def sgd_step(p, s):
      (loss, (logits, s2)), g = jax.value_and_grad(loss_fn, has_aux=True)(
          p, s)
      return loss, logits, s2, jax.tree.map(lambda a, b: a - 0.1 * b, p, g)

    loss0, logits, state1, params1 = sgd_step(params, state)
    loss1 = sgd_step(params1, state)[0]  # same batch, same compiled step
    chex.assert_shape(logits, (8, 10))
    chex.assert_tree_all_finite(logits)
    self.assertLess(float(loss1), float(loss0))
    chex.assert_trees_all_equal_shapes_and_dtypes(state1, state)
    self.assertFalse(np.allclose(state['BatchNorm_0']['mean'],
                                 state1['BatchNorm_0']['mean']))


class PurityTest(parameterized.TestCase):

  def test_jvp_through_scan_with_batch_stats_float64(self):
    """Forward-mode d(val loss)/d(lr) through a scan carrying BN stats."""
    with jax.enable_x64(True):
      ds = data.load_dataset('digits')
      model = models.MLP(10, widths=(16,), batch_norm=True)
      params, state = models.init_model(model, jax.random.key(0),
                                        ds.input_shape, dtype=jnp.float64)
      chex.assert_type(jax.tree.leaves((params, state)), jnp.float64)
      x = jnp.asarray(ds.x_train, jnp.float64)
      y = jnp.asarray(ds.y_train)
      xv = jnp.asarray(ds.x_val, jnp.float64)
      yv = jnp.asarray(ds.y_val)
      key = jax.random.key(1)

      def val_loss(lr):
        def step(carry, t):
          p, v, s = carry
          idx = data.batch_indices(key, t, 32, x.shape[0])

          def loss_fn(p):
            logits, s2 = models.apply_model(model, p, s, x[idx], train=True)
            return _xent(logits, y[idx]), s2

          g, s2 = jax.grad(loss_fn, has_aux=True)(p)
          chex.assert_trees_all_equal_shapes_and_dtypes(s2, s)
          s = s2
          v = jax.tree.map(lambda v, g: 0.9 * v + g, v, g)
          p = jax.tree.map(lambda p, v: p - lr * v, p, v)
          return (p, v, s), None

        zeros = jax.tree.map(jnp.zeros_like, params)
        (p, _, s), _ = jax.lax.scan(step, (params, zeros, state),
                                    jnp.arange(5, dtype=jnp.int32))
        logits, _ = models.apply_model(model, p, s, xv, train=False)
        chex.assert_type(logits, jnp.float64)
        return _xent(logits, yv)

      lr = jnp.asarray(0.1, jnp.float64)
      f = jax.jit(lambda lr: jax.jvp(val_loss, (lr,), (jnp.ones_like(lr),)))
      _, tangent = f(lr)
      eps = 1e-5
      fd = (f(lr + eps)[0] - f(lr - eps)[0]) / (2 * eps)
      np.testing.assert_allclose(tangent, fd, rtol=1e-5)
