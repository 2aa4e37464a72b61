"""Tests for hypergrad.experiments.models (flax.linen MLP, LeNet, WRN)."""

import functools

from absl.testing import parameterized
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hypergrad.experiments import data
from hypergrad.experiments import layers
from hypergrad.experiments import models
from hypergrad.experiments import tasks
from tests import helpers


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


def _train_and_eval_step(model, params, state, x):
  """Gradients, logits and new statistics of a train step, then eval logits."""

  @jax.jit
  def run(params, state):
    def loss(p):
      logits, new_state = models.apply_model(model, p, state, x, True)
      return jnp.sum(jnp.sin(logits)), (logits, new_state)
    (_, aux), grads = jax.value_and_grad(loss, has_aux=True)(params)
    evaluated = models.apply_model(model, params, aux[1], x, False)[0]
    return params, aux, grads, evaluated

  return run(params, state)


def _tree_close(a, b, tol=1e-12):
  chex.assert_trees_all_equal_structs(a, b)
  chex.assert_trees_all_close(a, b, rtol=tol, atol=tol)


class ConvImplTest(parameterized.TestCase):
  """The CPU path ('patches') computes what XLA's convolution computes."""

  @parameterized.named_parameters(
      # (input shape, features, kernel, strides, padding)
      ('lenet_conv0', (3, 28, 28, 1), 6, (5, 5), 1, 'SAME'),
      ('lenet_conv1', (3, 14, 14, 6), 16, (5, 5), 1, 'SAME'),
      ('lenet_1d_mnist1d', (3, 40, 1), 6, (5,), 1, 'SAME'),
      ('lenet_1d_conv1', (3, 20, 6), 16, (5,), 1, 'SAME'),
      ('wrn_3x3', (2, 8, 8, 16), 16, (3, 3), 1, 'SAME'),
      ('wrn_3x3_stride2', (2, 8, 8, 16), 32, (3, 3), 2, 'SAME'),
      ('wrn_1x1_stride2', (2, 8, 8, 16), 32, (1, 1), 2, 'VALID'),
      ('odd_sizes', (2, 7, 9, 2), 4, (3, 2), (2, 3), 'SAME'),
      ('valid_even_kernel_1d', (2, 9, 3), 4, (4,), 3, 'VALID'),
  )
  def test_conv_matches_lax_conv_with_gradients(self, shape, features,
                                                kernel, strides, padding):
    x = _normal(shape, jnp.float64)
    kw = dict(strides=strides, padding=padding, param_dtype=jnp.float64)
    ref = layers.conv('lax', features, kernel, name='Conv_0', **kw)
    # The layout the models use on CPU, and the nn.Conv drop-in.
    fast = layers.conv('patches', features, kernel, name='Conv_0', **kw)
    drop_in = nn.Conv(features, kernel, conv_general_dilated=models.patch_conv,
                      **kw)
    params = ref.init(jax.random.key(0), x)
    # Same names, shapes and initial values: checkpoints carry over.
    _tree_close(fast.init(jax.random.key(0), layers.to_patches_layout(x)),
                params, 0)
    apply_fast = lambda p, x: layers.from_patches_layout(
        fast.apply(p, layers.to_patches_layout(x)))
    y_ref, vjp_ref = jax.vjp(ref.apply, params, x)
    cotangent = _normal(y_ref.shape, jnp.float64)
    for fn in (apply_fast, drop_in.apply):
      y, vjp = jax.vjp(fn, params, x)
      _tree_close(y, y_ref)
      _tree_close(vjp(cotangent), vjp_ref(cotangent))

  @parameterized.named_parameters(
      ('max_2d', 'max', (3, 8, 8, 6)),
      ('max_2d_odd_crops', 'max', (3, 7, 9, 2)),
      ('max_1d', 'max', (3, 40, 6)),
      ('avg_2d', 'avg', (3, 8, 8, 6)),
      ('avg_1d_odd', 'avg', (3, 5, 4)),
  )
  def test_pool_matches_flax_with_gradients(self, kind, shape):
    x = _normal(shape, jnp.float64)  # continuous values: no tied maxima
    window = (2,) * (len(shape) - 2)
    flax_pool = nn.max_pool if kind == 'max' else nn.avg_pool

    def ref(x):
      # flax's avg_pool divides by an int64 window size.
      with jax.numpy_dtype_promotion('standard'):
        return flax_pool(x, window, strides=window)

    fast = lambda x: layers.from_patches_layout(
        layers.pool_patches_layout(layers.to_patches_layout(x), kind, window))
    y_ref, vjp_ref = jax.vjp(ref, x)
    y, vjp = jax.vjp(fast, x)
    _tree_close(y, y_ref)
    cotangent = _normal(y.shape, jnp.float64)
    _tree_close(vjp(cotangent), vjp_ref(cotangent))

  @parameterized.named_parameters(
      ('lenet_28x28', 'lenet', {}, (28, 28, 1)),
      ('lenet_bn_tanh_1d', 'lenet',
       {'batch_norm': True, 'activation': 'tanh', 'features': (3, 4),
        'hidden': (8,)}, (40, 1)),
      ('lenet_avg_rgb', 'lenet', {'pooling': 'avg', 'hidden': (8,)},
       (12, 12, 3)),
  )
  def test_models_match_lax_with_gradients(self, name, kw, input_shape):
    """Logits, BatchNorm statistics and gradients as with conv_impl='lax'."""
    x = _normal((4,) + input_shape, jnp.float64)
    out = {}
    for impl in ('lax', 'patches'):
      model = models.make_model(name, 10, conv_impl=impl, **kw)
      params, state = models.init_model(model, jax.random.key(0),
                                        input_shape, dtype=jnp.float64)
      out[impl] = _train_and_eval_step(model, params, state, x)
    _tree_close(out['patches'][0], out['lax'][0], 0)  # identical init
    _tree_close(out['patches'][1:], out['lax'][1:], 1e-10)

  @parameterized.named_parameters(('stride_2_projection', 8, 2),
                                  ('identity', 4, 1))
  def test_wrn_block_matches_lax_with_gradients(self, features, strides):
    x = _normal((4, 8, 8, 4), jnp.float64)
    out = {}
    for impl in ('lax', 'patches'):
      block = models._WideBlock(features, strides, 0.9, jnp.float64, impl)
      xin = layers.to_patches_layout(x) if impl == 'patches' else x
      variables = block.init(jax.random.key(0), xin, train=False)

      @jax.jit
      def run(params, xin, block=block, state=variables['batch_stats']):
        def loss(p, xin):
          y, new = block.apply({'params': p, 'batch_stats': state}, xin,
                               train=True, mutable=['batch_stats'])
          y = layers.from_patches_layout(y) if impl == 'patches' else y
          return jnp.sum(jnp.sin(y)), (y, new)
        return jax.grad(loss, (0, 1), has_aux=True)(params, xin)

      (g_params, g_x), aux = run(variables['params'], xin)
      out[impl] = (variables['params'], aux, g_params,
                   layers.from_patches_layout(g_x) if impl == 'patches'
                   else g_x)
    convs = [k for k in out['lax'][0] if k.startswith('Conv_')]
    self.assertLen(convs, 3 if strides == 2 else 2)  # projection or not
    _tree_close(out['patches'][0], out['lax'][0], 0)
    _tree_close(out['patches'][1:], out['lax'][1:], 1e-10)

  def test_wrn_matches_lax(self):
    """The whole WRN wiring (stem, groups, head) on the patches path."""
    x = _normal((2, 8, 8, 3), jnp.float64)
    out = {}
    for impl in ('lax', 'patches'):
      model = models.make_model('wrn-10-1', 10, conv_impl=impl)
      params, state = models.init_model(model, jax.random.key(0), (8, 8, 3),
                                        dtype=jnp.float64)
      out[impl] = params, jax.jit(functools.partial(
          models.apply_model, model, train=True))(params, state, x)
    _tree_close(out['patches'][0], out['lax'][0], 0)
    _tree_close(out['patches'][1], out['lax'][1], 1e-10)

  def test_auto_is_patches_on_cpu_and_bad_values_fail(self):
    self.assertEqual(models.resolve_conv_impl('auto'),
                     'patches' if jax.default_backend() == 'cpu' else 'lax')
    self.assertEqual(models.resolve_conv_impl('lax'), 'lax')
    with self.assertRaisesRegex(ValueError, "conv_impl must be one of.*'x'"):
      models.init_model(models.LeNet(10, conv_impl='x'), jax.random.key(0),
                        (8, 8, 1))

  def test_patch_conv_rejects_what_it_does_not_implement(self):
    x, w = jnp.ones((1, 6, 6, 2)), jnp.ones((3, 3, 2, 4))
    with self.assertRaisesRegex(NotImplementedError, 'dilation'):
      models.patch_conv(x, w, (1, 1), 'SAME', rhs_dilation=(2, 2))
    with self.assertRaisesRegex(NotImplementedError, 'channels-last'):
      models.patch_conv(x, w, (1, 1), 'SAME',
                        dimension_numbers=('NCHW', 'OIHW', 'NCHW'))


class LeNetHypergradientTest(parameterized.TestCase):

  # Slow (LeNet finite differences, ~40 s on a core): make test skips it,
  # CI runs it.
  @pytest.mark.slow
  def test_forward_hypergradient_matches_finite_differences(self):
    """Through a task's unroll of a small LeNet on digits, in float64."""
    task = tasks.make_task(
        'digits_mlp', model='lenet', dtype=jnp.float64, batch_size=16,
        model_kwargs=(('features', (3, 4)), ('hidden', (8,)),
                      ('conv_impl', 'patches')))
    helpers.check_task_hypergrad(task, num_steps=6)
