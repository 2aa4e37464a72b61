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
way.

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

import itertools
import re
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

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

_ACTIVATIONS = {
    'relu': nn.relu,
    'tanh': jnp.tanh,
    'sigmoid': nn.sigmoid,
    'gelu': nn.gelu,
    'elu': nn.elu,
    'softplus': nn.softplus,
    'swish': nn.swish,
}


def _activation(act: Union[str, Callable]) -> Callable:
  if callable(act):
    return act
  try:
    return _ACTIVATIONS[act]
  except KeyError:
    raise ValueError(f'Unknown activation {act!r}; valid: '
                     f'{", ".join(_ACTIVATIONS)} or a callable.') from None


CONV_IMPLS = ('auto', 'patches', 'lax')


def resolve_conv_impl(conv_impl: str) -> str:
  """``'patches'`` or ``'lax'``: how the models compute convolutions.

  ``'auto'`` picks ``'patches'`` when JAX's default backend is the CPU and
  ``'lax'`` (XLA's native convolution and ``reduce_window`` pooling)
  elsewhere. XLA:CPU runs a convolution, and above all its gradients, many
  times slower inside a ``lax.scan`` body than outside one
  (jax-ml/jax#12868), and every training unroll here is a scan; as patches
  and a matmul it runs at matmul speed there. On accelerators the native
  convolution is the fast one.

  Raises:
    ValueError: not one of :data:`CONV_IMPLS`.
  """
  if conv_impl not in CONV_IMPLS:
    raise ValueError(f'conv_impl must be one of {CONV_IMPLS}, got '
                     f'{conv_impl!r}.')
  if conv_impl == 'auto':
    return 'patches' if jax.default_backend() == 'cpu' else 'lax'
  return conv_impl


def _pads(spatial_shape, kernel, strides, padding):
  if isinstance(padding, str):
    return jax.lax.padtype_to_pads(spatial_shape, kernel, strides, padding)
  return [tuple(p) for p in padding]


def _patches(x: jax.Array, kernel: Sequence[int], strides: Sequence[int],
             padding, spatial_axis: int) -> Tuple[jax.Array, Tuple[int, ...]]:
  """Zero-padded strided slices of ``x``, one per kernel offset.

  Returns ``(stacked, out)``: the slices stacked on a new axis 0 (kernel
  offsets in row-major order, as a kernel's leading axes flatten) and the
  output spatial shape. ``x``'s spatial axes start at ``spatial_axis``.
  Slicing differentiates to pads, so the convolution's gradients stay
  matmuls and elementwise sums.
  """
  k = len(kernel)
  sp = x.shape[spatial_axis:spatial_axis + k]
  pads = [(0, 0)] * x.ndim
  pads[spatial_axis:spatial_axis + k] = _pads(sp, kernel, strides, padding)
  if any(p != (0, 0) for p in pads):
    x = jnp.pad(x, pads)
  out = tuple((x.shape[spatial_axis + i] - kernel[i]) // strides[i] + 1
              for i in range(k))
  cols = []
  for offset in itertools.product(*(range(d) for d in kernel)):
    start, limit = [0] * x.ndim, list(x.shape)
    step = [1] * x.ndim
    for i in range(k):
      start[spatial_axis + i] = offset[i]
      limit[spatial_axis + i] = offset[i] + (out[i] - 1) * strides[i] + 1
      step[spatial_axis + i] = strides[i]
    cols.append(jax.lax.slice(x, start, limit, step))
  return jnp.stack(cols), out


def patch_conv(lhs: jax.Array, rhs: jax.Array,
               window_strides: Sequence[int],
               padding: Union[str, Sequence[Tuple[int, int]]],
               lhs_dilation: Optional[Sequence[int]] = None,
               rhs_dilation: Optional[Sequence[int]] = None,
               dimension_numbers: Any = None,
               feature_group_count: int = 1,
               precision: Any = None,
               preferred_element_type: Any = None) -> jax.Array:
  """Channels-last convolution as strided slices (patches) and one matmul.

  A drop-in for ``jax.lax.conv_general_dilated`` in flax's ``nn.Conv``
  (``nn.Conv(..., conv_general_dilated=patch_conv)``): same arguments, same
  result to round-off, for 1 to 3 spatial dimensions. Each of the
  ``prod(kernel)`` kernel offsets is a strided slice of the padded input;
  together they are contracted with the kernel in one ``dot_general``.
  Its derivatives are matmuls, pads and slices too, so the backward pass
  and forward-mode tangents through it avoid XLA:CPU's slow in-loop
  convolution (see :func:`resolve_conv_impl`).
  ``lax.conv_general_dilated_patches`` is not used: it is a convolution.

  The models use a faster layout internally (channels first, batch last:
  see :class:`LeNet`); this is the form that fits ``nn.Conv``.

  Args:
    lhs: ``(N, *spatial, C)`` inputs.
    rhs: ``(*kernel, C, F)`` kernel.
    window_strides: one stride per spatial dimension.
    padding: ``'SAME'``, ``'VALID'`` or ``(low, high)`` pairs.
    lhs_dilation: must be None or ones.
    rhs_dilation: must be None or ones.
    dimension_numbers: None or the channels-last numbers flax passes
      (``NHWC``/``HWIO``/``NHWC`` and their 1-D and 3-D forms).
    feature_group_count: must be 1.
    precision: passed to the matmul.
    preferred_element_type: passed to the matmul.

  Returns:
    ``(N, *out, F)``.

  Raises:
    NotImplementedError: dilation, feature groups or another layout.
  """
  spatial = lhs.ndim - 2
  _check_patch_conv_args(lhs, rhs, lhs_dilation, rhs_dilation,
                         dimension_numbers, feature_group_count)
  kernel = rhs.shape[:spatial]
  cols, out = _patches(lhs, kernel, tuple(window_strides), padding, 1)
  # (K, N, *out, C): contract the offsets and channels, the kernel's rows.
  w = rhs.reshape((-1,) + rhs.shape[spatial:])
  return jax.lax.dot_general(
      cols, w, (((0, cols.ndim - 1), (0, 1)), ((), ())),
      precision=precision, preferred_element_type=preferred_element_type)


def _check_patch_conv_args(lhs, rhs, lhs_dilation, rhs_dilation,
                           dimension_numbers, feature_group_count):
  spatial = lhs.ndim - 2
  if not 1 <= spatial <= 3:
    raise NotImplementedError('patch_conv supports 1 to 3 spatial dims.')
  if (any(d != 1 for d in lhs_dilation or ()) or
      any(d != 1 for d in rhs_dilation or ()) or feature_group_count != 1):
    raise NotImplementedError('patch_conv supports neither dilation nor '
                              'feature groups; use conv_impl="lax".')
  if dimension_numbers is not None:
    letters = 'DHW'[-spatial:]
    spec = ('N' + letters + 'C', letters + 'IO', 'N' + letters + 'C')
    expected = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, spec)
    if jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape,
                                      dimension_numbers) != expected:
      raise NotImplementedError(
          f'patch_conv takes channels-last layouts only, got '
          f'{dimension_numbers}; use conv_impl="lax".')


def _conv_cl(x: jax.Array, kernel: jax.Array, strides: Sequence[int],
             padding) -> jax.Array:
  """Convolution of ``(C, *spatial, N)`` inputs, ``(F, *out, N)`` outputs.

  The layout of the patches path. On CPU it beats channels-last patches by
  ~2x per training step: the matmul is ``(F, K*C) @ (K*C, out*N)`` with
  the long axis minor; each patch slice copies rows of whole batches; and
  pooling windows and their gradients index major axes, so every
  elementwise pass vectorises over the batch.
  """
  spatial = x.ndim - 2
  cols, out = _patches(x, kernel.shape[:spatial], tuple(strides), padding, 1)
  rows = cols.shape[0] * cols.shape[1]
  cols = cols.reshape((rows, -1))
  y = jax.lax.dot_general(kernel.reshape((rows, kernel.shape[-1])), cols,
                          (((0,), (0,)), ((), ())))
  return y.reshape((kernel.shape[-1],) + out + (x.shape[-1],))


class _ConvCL(nn.Module):
  """``nn.Conv``'s parameters on ``(C, *spatial, N)`` arrays (patches path).

  Same parameter names, shapes, dtypes and initialisers as ``nn.Conv``
  (kernel ``(*kernel_size, C, F)``, bias ``(F,)``), so given the same name
  (``Conv_<i>``) it initialises to the same values and reads the same
  checkpoints.
  """
  features: int
  kernel_size: Tuple[int, ...]
  strides: Tuple[int, ...]
  padding: str
  use_bias: bool
  param_dtype: Dtype
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros_init()

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param('kernel', self.kernel_init,
                        tuple(self.kernel_size) + (x.shape[0], self.features),
                        self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,),
                       self.param_dtype) if self.use_bias else None)
    x, kernel, bias = flax.linen.dtypes.promote_dtype(x, kernel, bias)
    y = _conv_cl(x, kernel, self.strides, self.padding)
    if bias is not None:
      y = y + bias.reshape((-1,) + (1,) * (y.ndim - 1))
    return y


def _conv(conv_impl: str, features: int, kernel_size: Sequence[int], *,
          name: str, strides: Union[int, Sequence[int]] = 1,
          padding: str = 'SAME', use_bias: bool = True,
          kernel_init: Callable = nn.initializers.lecun_normal(),
          param_dtype: Dtype = jnp.float32) -> nn.Module:
  """A convolution module for the layout of ``conv_impl``.

  ``'lax'``: ``nn.Conv`` on ``(N, *spatial, C)``; ``'patches'``:
  :class:`_ConvCL` on ``(C, *spatial, N)``. Either way the module is named
  ``name`` and has the same parameters.
  """
  kernel_size = tuple(kernel_size)
  if isinstance(strides, int):
    strides = (strides,) * len(kernel_size)
  if resolve_conv_impl(conv_impl) == 'patches':
    return _ConvCL(features, kernel_size, tuple(strides), padding, use_bias,
                   param_dtype, kernel_init, name=name)
  return nn.Conv(features, kernel_size, strides=tuple(strides),
                 padding=padding, use_bias=use_bias, kernel_init=kernel_init,
                 param_dtype=param_dtype, name=name)


def _to_cl(x: jax.Array) -> jax.Array:
  """``(N, *spatial, C)`` -> ``(C, *spatial, N)``."""
  return jnp.transpose(x, (x.ndim - 1,) + tuple(range(1, x.ndim - 1)) + (0,))


_from_cl = _to_cl  # The same swap of the first and last axes.


def _pool_cl(x: jax.Array, kind: str, window: Sequence[int]) -> jax.Array:
  """Max or average pooling of ``(C, *spatial, N)``, stride = window, VALID.

  A reshape and a reduction over the window axes: like ``nn.max_pool``
  (which differentiates through XLA's select-and-scatter, slow in a scan
  on CPU) it drops trailing rows that do not fill a window. Where several
  entries of a window attain its max, the gradient is split between them
  (``nn.max_pool`` gives it to one); after a ReLU such ties are zeros,
  whose gradient the ReLU zeroes anyway.
  """
  window = tuple(window)
  out = tuple(d // w for d, w in zip(x.shape[1:-1], window))
  x = x[(slice(None),) + tuple(slice(0, o * w) for o, w in zip(out, window))]
  split = x.shape[:1]
  for o, w in zip(out, window):
    split += (o, w)
  x = x.reshape(split + x.shape[-1:])
  axes = tuple(range(2, 2 * len(window) + 1, 2))
  return jnp.max(x, axes) if kind == 'max' else jnp.mean(x, axes)

class BatchNorm(nn.Module):
  """Batch normalisation over all axes but the feature axis, dtype-faithful.

  Like ``flax.linen.BatchNorm`` (same variable names: params ``scale``,
  ``bias``; ``batch_stats`` ``mean``, ``var``; biased variance), but it
  computes in the input's dtype (float32 for half-precision inputs) and
  keeps each running statistic in its own dtype. flax's module promotes
  reductions with ``jnp.promote_types(dtype, float32)`` and casts ``scale``
  to the declared ``param_dtype``, which breaks float64 runs under strict
  dtype promotion and can change the dtype of a ``lax.scan`` carry.

  Attributes:
    momentum: running average ``new = momentum * old + (1 - momentum) *
      batch``.
    epsilon: added to the variance.
    param_dtype: dtype of ``scale``/``bias`` and of the running statistics
      at init.
    axis: the feature axis (the models' patches path keeps features first).

  Example:
    >>> bn = BatchNorm()
    >>> variables = bn.init(jax.random.key(0), jnp.ones((4, 3)), train=False)
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  param_dtype: Dtype = jnp.float32
  axis: int = -1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    """Normalises inputs with batch (train) or running statistics."""
    axis = self.axis % x.ndim
    features = x.shape[axis]
    axes = tuple(i for i in range(x.ndim) if i != axis)
    ra_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros(
        (features,), self.param_dtype))
    ra_var = self.variable('batch_stats', 'var', lambda: jnp.ones(
        (features,), self.param_dtype))
    scale = self.param('scale', nn.initializers.ones, (features,),
                       self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (features,),
                      self.param_dtype)
    dtype = x.dtype if jnp.finfo(x.dtype).bits >= 32 else jnp.float32
    xc = x.astype(dtype)
    if train:
      mean = jnp.mean(xc, axes)
      var = jnp.mean(jnp.square(xc - jnp.expand_dims(mean, axes)), axes)
      if not self.is_initializing():
        m = self.momentum
        ra_mean.value = m * ra_mean.value + (1 - m) * mean.astype(
            ra_mean.value.dtype)
        ra_var.value = m * ra_var.value + (1 - m) * var.astype(
            ra_var.value.dtype)
    else:
      mean, var = ra_mean.value.astype(dtype), ra_var.value.astype(dtype)
    mul = jax.lax.rsqrt(var + self.epsilon) * scale.astype(dtype)
    shape = (-1,) + (1,) * (x.ndim - 1 - axis)
    mean, mul = mean.reshape(shape), mul.reshape(shape)
    bias = bias.astype(dtype).reshape(shape)
    return ((xc - mean) * mul + bias).astype(x.dtype)


def _batch_norm(x: jax.Array, train: bool, momentum: float,
                param_dtype: Dtype, axis: int = -1) -> jax.Array:
  return BatchNorm(momentum=momentum, param_dtype=param_dtype, axis=axis)(
      x, train)


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
      x = _batch_norm(x, train, module.bn_momentum, module.param_dtype)
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
    return _dense_head(self, x, self.widths, _activation(self.activation),
                       train)


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
    act = _activation(self.activation)
    spatial = x.ndim - 2
    window = (2,) * spatial
    patches = resolve_conv_impl(self.conv_impl) == 'patches'
    if patches:
      x = _to_cl(x)
    for i, f in enumerate(self.features):
      x = _conv(self.conv_impl, f, (self.kernel_size,) * spatial,
                name=f'Conv_{i}', padding='SAME',
                use_bias=not self.batch_norm, param_dtype=self.param_dtype)(x)
      if self.batch_norm:
        x = _batch_norm(x, train, self.bn_momentum, self.param_dtype,
                        axis=0 if patches else -1)
      x = act(x)
      if patches:
        x = _pool_cl(x, self.pooling, window)
      elif self.pooling == 'max':
        x = nn.max_pool(x, window, strides=window)
      else:
        # Not nn.avg_pool: it divides by an int64, which strict promotion
        # rejects.
        x = nn.pooling.pool(x, 0., jax.lax.add, window, window, 'VALID')
        x = x / float(np.prod(window))
    if patches:
      x = _from_cl(x)  # The Dense head flattens (N, *spatial, C).
    return _dense_head(self, x, self.hidden, act, train)


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
    # The patches path keeps features on axis 0: see _conv_cl.
    axis = 0 if resolve_conv_impl(self.conv_impl) == 'patches' else -1
    bn = lambda h: nn.relu(_batch_norm(  # pylint: disable=g-long-lambda
        h, train, self.bn_momentum, self.param_dtype, axis))
    conv = lambda f, k, s, i: _conv(  # pylint: disable=g-long-lambda
        self.conv_impl, f, (k, k), name=f'Conv_{i}', strides=s,
        padding='SAME' if k > 1 else 'VALID', use_bias=False,
        kernel_init=_conv_init, param_dtype=self.param_dtype)
    pre = bn(x)
    y = conv(self.features, 3, self.strides, 0)(pre)
    y = conv(self.features, 3, 1, 1)(bn(y))
    if x.shape[axis] != self.features or self.strides != 1:
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
    patches = resolve_conv_impl(self.conv_impl) == 'patches'
    if patches:
      x = _to_cl(x)
    x = _conv(self.conv_impl, 16, (3, 3), name='Conv_0', padding='SAME',
              use_bias=False, kernel_init=_conv_init,
              param_dtype=self.param_dtype)(x)
    for group, (width, stride) in enumerate(
        ((16 * k, 1), (32 * k, 2), (64 * k, 2))):
      for b in range(blocks):
        x = _WideBlock(width, stride if b == 0 else 1, self.bn_momentum,
                       self.param_dtype, self.conv_impl,
                       name=f'group{group}_block{b}')(x, train)
    x = nn.relu(_batch_norm(x, train, self.bn_momentum, self.param_dtype,
                            0 if patches else -1))
    # Global average pooling: over H, W of (N, H, W, C) or (C, H, W, N).
    x = jnp.mean(x, axis=(1, 2))
    if patches:
      x = x.T
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
