"""Small flax.linen classifiers for hypergradient experiments.

* :class:`MLP`: configurable widths and activation, optional BatchNorm.
* :class:`LeNet`: LeNet-5-style CNN; 2-D on ``(N, H, W, C)`` images (28x28,
  32x32, 8x8 ...) and 1-D on ``(N, L, C)`` signals such as MNIST-1D.
* :class:`WideResNet`: pre-activation WRN-``depth``-``k`` (WRN-16-1 as in
  the FDS paper).

Every model is called as ``model.apply(variables, x, train=...)``; BatchNorm
uses batch statistics when ``train=True`` and running averages otherwise.
:func:`init_model` / :func:`apply_model` expose a pure functional interface
where the BatchNorm statistics (``model_state``) are plain arrays that can
ride in a ``lax.scan`` carry under ``jax.jvp``.

On CPU the convolutional models compute convolutions as image patches and
a matmul and pool by reshaping (``conv_impl='auto'``, see
:func:`resolve_conv_impl`): XLA:CPU's own convolution is 10-40x slower
inside the ``lax.scan`` of a training unroll. Parameters are the same either
way. The layers, and that choice, live in :mod:`hypergrad.experiments.layers`:
a model asks :func:`~hypergrad.experiments.layers.layout` once and builds
every convolution, pooling and BatchNorm through the layout it returns.

Precision follows the parameters and inputs: layers compute in the promoted
dtype of their inputs and parameters (flax's ``dtype=None``; nothing is cast
to float32), so with ``jax_enable_x64`` on, ``init_model(...,
dtype=jnp.float64)`` and float64 inputs give a float64 model end to end. This
holds under ``jax_numpy_dtype_promotion='strict'`` too, which is why
:class:`BatchNorm` is our own rather than flax's.

Example:
  >>> model = make_model('wrn-16-1', num_classes=10)
  >>> params, state = init_model(model, jax.random.key(0), (32, 32, 3))
  >>> x = jnp.zeros((8, 32, 32, 3))
  >>> logits, state = apply_model(model, params, state, x, train=True)
  >>> logits.shape
  (8, 10)
"""

from __future__ import annotations

import re
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp

from hypergrad.experiments import layers
from hypergrad.experiments.layers import CONV_IMPLS

# The layers' public names, importable from here as before.
from hypergrad.experiments.layers import BatchNorm
from hypergrad.experiments.layers import patch_conv
from hypergrad.experiments.layers import resolve_conv_impl

__all__ = [
    'BatchNorm',
    'CONV_IMPLS',
    'LeNet',
    'MLP',
    'MODEL_NAMES',
    'WideResNet',
    'apply_model',
    'init_model',
    'make_model',
    'num_params',
    'patch_conv',
    'resolve_conv_impl',
]


PyTree = Any
Dtype = Any

MODEL_NAMES = ('mlp', 'lenet', 'wrn', 'wrn-<depth>-<k>')


def _dense_head(module, x: jax.Array, widths: Sequence[int], act: Callable,
                train: bool) -> jax.Array:
  """Flatten, hidden Dense (+ BatchNorm) + activation layers, then logits.

  Called from a ``@nn.compact`` method: the layers are ``module``'s
  submodules, named in creation order as if written inline.
  """
  x = x.reshape((x.shape[0], -1))
  for width in widths:
    x = nn.Dense(width, use_bias=not module.batch_norm,
                 param_dtype=module.param_dtype)(x)
    if module.batch_norm:
      x = layers.batch_norm(x, train, module.bn_momentum, module.param_dtype)
    x = act(x)
  return nn.Dense(module.num_classes, param_dtype=module.param_dtype)(x)


class MLP(nn.Module):
  """Multi-layer perceptron on flattened inputs.

  Attributes:
    num_classes: number of output logits.
    widths: hidden layer widths.
    activation: name (``'relu'``, ``'tanh'``, ...) or callable.
    batch_norm: BatchNorm after each hidden Dense, before the activation.
    bn_momentum: BatchNorm running-average momentum.
    param_dtype: dtype of the parameters at init.

  Example:
    >>> model = MLP(num_classes=10, widths=(128, 128), activation='tanh')
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 40, 1)),
    ...                        train=False)
  """
  num_classes: int
  widths: Sequence[int] = (128, 128)
  activation: Union[str, Callable] = 'relu'
  batch_norm: bool = False
  bn_momentum: float = 0.9
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps ``(N, ...)`` inputs to ``(N, num_classes)`` logits."""
    return _dense_head(self, x, self.widths,
                       layers.activation(self.activation), train)


class LeNet(nn.Module):
  """LeNet-5-style CNN: two conv-pool stages then three Dense layers.

  Convolutions use 'SAME' padding so any input of at least 4 pixels per
  spatial dimension works (28x28 MNIST, 32x32 CIFAR, 8x8 digits). The
  number of spatial dimensions is taken from the input: ``(N, H, W, C)``
  gives 2-D convolutions, ``(N, L, C)`` (MNIST-1D) gives 1-D ones.

  Attributes:
    num_classes: number of output logits.
    features: channels of the two conv layers.
    hidden: widths of the hidden Dense layers.
    kernel_size: conv kernel extent per spatial dimension.
    activation: name or callable.
    pooling: ``'max'`` or ``'avg'`` (2x downsampling per stage).
    batch_norm: BatchNorm after each conv and hidden Dense.
    bn_momentum: BatchNorm running-average momentum.
    param_dtype: dtype of the parameters at init.
    conv_impl: how convolutions and pooling are computed: ``'auto'``
      (patches and matmuls on CPU, XLA's convolution elsewhere),
      ``'patches'`` or ``'lax'``; see :func:`resolve_conv_impl`. Parameters
      are the same either way.

  Example:
    >>> model = LeNet(num_classes=10)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
    ...                        train=False)
  """
  num_classes: int
  features: Sequence[int] = (6, 16)
  hidden: Sequence[int] = (120, 84)
  kernel_size: int = 5
  activation: Union[str, Callable] = 'relu'
  pooling: str = 'max'
  batch_norm: bool = False
  bn_momentum: float = 0.9
  param_dtype: Dtype = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps ``(N, H, W, C)`` or ``(N, L, C)`` inputs to ``(N, num_classes)``."""
    if x.ndim < 3:
      raise ValueError(
          f'LeNet expects (N, ..., C) inputs with at least one spatial '
          f'dimension, got shape {x.shape}; add a channel axis.')
    if self.pooling not in ('max', 'avg'):
      raise ValueError(f"pooling must be 'max' or 'avg', got {self.pooling!r}.")
    act = layers.activation(self.activation)
    spatial = x.ndim - 2
    window = (2,) * spatial
    lay = layers.layout(self.conv_impl)
    x = lay.enter(x)
    for i, f in enumerate(self.features):
      x = lay.conv(f, (self.kernel_size,) * spatial, name=f'Conv_{i}',
                   padding='SAME', use_bias=not self.batch_norm,
                   param_dtype=self.param_dtype)(x)
      if self.batch_norm:
        x = lay.batch_norm(x, train, self.bn_momentum, self.param_dtype)
      x = lay.pool(act(x), self.pooling, window)
    # The Dense head flattens (N, *spatial, C).
    return _dense_head(self, lay.exit(x), self.hidden, act, train)


_conv_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')


class _WideBlock(nn.Module):
  """Pre-activation basic block: BN-ReLU-conv3x3-BN-ReLU-conv3x3 + shortcut."""
  features: int
  strides: int
  bn_momentum: float
  param_dtype: Dtype
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x, train: bool):
    lay = layers.layout(self.conv_impl)
    bn = lambda h: nn.relu(lay.batch_norm(  # pylint: disable=g-long-lambda
        h, train, self.bn_momentum, self.param_dtype))
    conv = lambda f, k, s, i: lay.conv(  # pylint: disable=g-long-lambda
        f, (k, k), name=f'Conv_{i}', strides=s,
        padding='SAME' if k > 1 else 'VALID', use_bias=False,
        kernel_init=_conv_init, param_dtype=self.param_dtype)
    pre = bn(x)
    y = conv(self.features, 3, self.strides, 0)(pre)
    y = conv(self.features, 3, 1, 1)(bn(y))
    if x.shape[lay.feature_axis] != self.features or self.strides != 1:
      # As in the reference WRN, the projection sees the pre-activated input.
      x = conv(self.features, 1, self.strides, 2)(pre)
    return x + y


class WideResNet(nn.Module):
  """Pre-activation Wide-ResNet WRN-``depth``-``widen_factor``.

  A 3x3 conv with 16 channels, then three groups of ``(depth - 4) / 6``
  basic blocks with ``16k``, ``32k``, ``64k`` channels (strides 1, 2, 2),
  then BN-ReLU, global average pooling and a Dense classifier. WRN-16-1
  (the FDS paper's model) has 2 blocks per group and ~0.18M parameters.

  Attributes:
    num_classes: number of output logits.
    depth: total depth; ``depth - 4`` must be divisible by 6.
    widen_factor: the width multiplier ``k``.
    bn_momentum: BatchNorm running-average momentum.
    param_dtype: dtype of the parameters at init.
    conv_impl: ``'auto'``, ``'patches'`` or ``'lax'``, as for
      :class:`LeNet`.

  Example:
    >>> model = WideResNet(num_classes=10, depth=16, widen_factor=1)
    >>> variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)),
    ...                        train=False)
  """
  num_classes: int
  depth: int = 16
  widen_factor: int = 1
  bn_momentum: float = 0.9
  param_dtype: Dtype = jnp.float32
  conv_impl: str = 'auto'

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Maps ``(N, H, W, C)`` images to ``(N, num_classes)`` logits."""
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(
          f'WideResNet depth must be 6n + 4 with n >= 1 (10, 16, 22, 28, '
          f'...), got {self.depth}.')
    if x.ndim != 4:
      raise ValueError(f'WideResNet expects (N, H, W, C) images, got shape '
                       f'{x.shape}.')
    blocks = (self.depth - 4) // 6
    k = self.widen_factor
    lay = layers.layout(self.conv_impl)
    x = lay.conv(16, (3, 3), name='Conv_0', padding='SAME', use_bias=False,
                 kernel_init=_conv_init,
                 param_dtype=self.param_dtype)(lay.enter(x))
    for group, (width, stride) in enumerate(
        ((16 * k, 1), (32 * k, 2), (64 * k, 2))):
      for b in range(blocks):
        x = _WideBlock(width, stride if b == 0 else 1, self.bn_momentum,
                       self.param_dtype, self.conv_impl,
                       name=f'group{group}_block{b}')(x, train)
    x = nn.relu(lay.batch_norm(x, train, self.bn_momentum, self.param_dtype))
    # Global average pooling.
    x = lay.global_mean(x)
    return nn.Dense(self.num_classes, param_dtype=self.param_dtype)(x)


def make_model(name: str, num_classes: int, **kw) -> nn.Module:
  """Builds a model by name.

  Args:
    name: ``'mlp'``, ``'lenet'``, ``'wrn'`` (WRN-16-1 unless ``depth`` /
      ``widen_factor`` are given) or ``'wrn-<depth>-<k>'`` e.g.
      ``'wrn-16-1'``, ``'wrn-28-10'``. Case-insensitive; ``_`` works for
      ``-``.
    num_classes: number of output logits.
    **kw: further attributes of the model class, e.g. ``widths=(256,)``,
      ``activation='tanh'``, ``batch_norm=True``.

  Returns:
    An unbound flax module.

  Raises:
    ValueError: unknown name.

  Example:
    >>> mlp = make_model('mlp', 10, widths=(64,), activation='tanh')
    >>> wrn = make_model('wrn-16-2', 10)
  """
  key = name.lower().replace('_', '-') if isinstance(name, str) else name
  if key == 'mlp':
    return MLP(num_classes=num_classes, **kw)
  if key == 'lenet':
    return LeNet(num_classes=num_classes, **kw)
  if key in ('wrn', 'wideresnet', 'wide-resnet'):
    return WideResNet(num_classes=num_classes, **kw)
  m = re.fullmatch(r'wrn-(\d+)-(\d+)', key) if isinstance(key, str) else None
  if m:
    return WideResNet(num_classes=num_classes, depth=int(m.group(1)),
                      widen_factor=int(m.group(2)), **kw)
  raise ValueError(f'Unknown model {name!r}; valid names: '
                   f'{", ".join(MODEL_NAMES)}.')


def init_model(model: nn.Module, key: jax.Array, input_shape: Sequence[int],
               dtype: Optional[Dtype] = None) -> Tuple[PyTree, PyTree]:
  """Initialises parameters and BatchNorm statistics.

  Args:
    model: a flax module taking ``(x, train)``.
    key: PRNG key.
    input_shape: shape of ONE example, without the batch axis, e.g.
      ``(32, 32, 3)`` or ``Dataset.input_shape``.
    dtype: if given, parameters and statistics are cast to it (e.g.
      ``jnp.float64`` with ``jax_enable_x64`` on); otherwise they have the
      model's ``param_dtype`` (float32 by default).

  Returns:
    ``(params, model_state)``: the ``params`` collection and the
    ``batch_stats`` collection (``{}`` for models without BatchNorm), both
    plain pytrees of arrays. Values are those of ``model.init`` (compiled
    without backend optimisation, so they may differ in the last bit).

  Example:
    >>> params, state = init_model(LeNet(10), jax.random.key(0), (28, 28, 1))
  """
  # The dummy input matches the parameters so strict dtype promotion holds.
  x = jnp.zeros((1,) + tuple(input_shape),
                getattr(model, 'param_dtype', jnp.float32))
  lowered = jax.jit(lambda k: model.init(k, x, train=False)).lower(key)
  try:
    # Init runs once but holds one threefry call per parameter, which XLA's
    # CPU backend is slow to optimise (WRN-16-1: ~8 s); unoptimised it
    # compiles ~4x faster and runs in milliseconds anyway.
    compiled = lowered.compile({'xla_backend_optimization_level': 0})
  except Exception:  # pylint: disable=broad-except
    compiled = lowered.compile()  # Backends that reject the option.
  variables = compiled(key)
  params = variables['params']
  state = variables.get('batch_stats', {})
  if dtype is not None:
    cast = lambda a: a.astype(dtype)
    params, state = jax.tree.map(cast, params), jax.tree.map(cast, state)
  return params, state


def apply_model(model: nn.Module, params: PyTree, model_state: PyTree,
                x: jax.Array, train: bool) -> Tuple[jax.Array, PyTree]:
  """Pure forward pass returning logits and the new BatchNorm statistics.

  With ``train=True`` BatchNorm normalises with batch statistics and the
  running averages are updated (``mutable=['batch_stats']``); with
  ``train=False`` the running averages are used and ``model_state`` is
  returned unchanged. The new statistics keep the dtypes of ``model_state``
  so they can be a ``lax.scan`` carry even when inputs have another dtype.

  Args:
    model: a flax module taking ``(x, train)``.
    params: its ``params`` collection.
    model_state: its ``batch_stats`` collection (``{}`` or ``()`` if none).
    x: ``(N, *input_shape)`` inputs.
    train: static Python bool.

  Returns:
    ``(logits, new_model_state)``: ``(N, num_classes)`` logits and the
    statistics, same structure as ``model_state``.

  Example:
    >>> model = make_model('lenet', 10, batch_norm=True)
    >>> params, state = init_model(model, jax.random.key(0), (28, 28, 1))
    >>> xb = jnp.zeros((16, 28, 28, 1))
    >>> logits, state = apply_model(model, params, state, xb, train=True)
    >>> logits.shape, sorted(state)
    ((16, 10), ['BatchNorm_0', 'BatchNorm_1', 'BatchNorm_2', 'BatchNorm_3'])
  """
  has_state = bool(jax.tree.leaves(model_state))
  variables = {'params': params}
  if has_state:
    variables['batch_stats'] = model_state
  if not train or not has_state:
    return model.apply(variables, x, train=train), model_state
  logits, updates = model.apply(variables, x, train=True,
                                mutable=['batch_stats'])
  new_state = updates['batch_stats']
  if isinstance(model_state, flax.core.FrozenDict):
    new_state = flax.core.freeze(new_state)
  new_state = jax.tree.map(lambda new, old: new.astype(old.dtype),
                           new_state, model_state)
  return logits, new_state


def num_params(params: PyTree) -> int:
  """Number of scalars in a parameter pytree.

  Example:
    >>> key = jax.random.key(0)
    >>> num_params(init_model(make_model('wrn-16-1', 10), key, (32, 32, 3))[0])
    175066
  """
  return sum(int(p.size) for p in jax.tree.leaves(params))
