"""Layers of the experiment models, and where the CPU convolution is chosen.

XLA:CPU runs a convolution, and above all its gradients, many times slower
inside a ``lax.scan`` body than outside one (jax-ml/jax#12868), and every
training unroll here is a scan. So on CPU the models compute convolutions
as image patches and a matmul, and pool by reshaping, on activations laid
out ``(C, *spatial, N)``; elsewhere they use XLA's convolution on
``(N, *spatial, C)``. That choice is made once per model call by
:func:`layout` (from ``conv_impl``, see :func:`resolve_conv_impl`), and the
models go through the returned :class:`Layout` for every layer whose
arithmetic depends on it: nothing in a model body tests the layout.
Parameters are the same either way, so checkpoints carry over.

Precision follows the parameters and inputs: layers compute in the promoted
dtype of their inputs and parameters, which is why :class:`BatchNorm` is
our own rather than flax's (see its docstring).
"""

from __future__ import annotations

import itertools
from typing import Any, Callable, Optional, Sequence, Tuple, Union

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any

_ACTIVATIONS = {
    'relu': nn.relu,
    'tanh': jnp.tanh,
    'sigmoid': nn.sigmoid,
    'gelu': nn.gelu,
    'elu': nn.elu,
    'softplus': nn.softplus,
    'swish': nn.swish,
}


def activation(act: Union[str, Callable]) -> Callable:
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
  see :class:`Layout`); this is the form that fits ``nn.Conv``.

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


def conv(conv_impl: str, features: int, kernel_size: Sequence[int], *,
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


def to_patches_layout(x: jax.Array) -> jax.Array:
  """``(N, *spatial, C)`` -> ``(C, *spatial, N)``."""
  return jnp.transpose(x, (x.ndim - 1,) + tuple(range(1, x.ndim - 1)) + (0,))


# The same swap of the first and last axes.
from_patches_layout = to_patches_layout


def pool_patches_layout(x: jax.Array, kind: str,
                        window: Sequence[int]) -> jax.Array:
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


def batch_norm(x: jax.Array, train: bool, momentum: float,
                param_dtype: Dtype, axis: int = -1) -> jax.Array:
  return BatchNorm(momentum=momentum, param_dtype=param_dtype, axis=axis)(
      x, train)


class Layout:
  """How a model's activations are laid out and its layers computed.

  Attributes:
    name: ``'lax'`` (``(N, *spatial, C)``, XLA's convolution and pooling)
      or ``'patches'`` (``(C, *spatial, N)``, patches and matmuls).
    feature_axis: the axis of the features (BatchNorm normalises over the
      others).
  """

  def __init__(self, name: str):
    self.name = name
    self.feature_axis = 0 if name == 'patches' else -1

  def enter(self, x: jax.Array) -> jax.Array:
    """``(N, *spatial, C)`` inputs in this layout."""
    return to_patches_layout(x) if self.name == 'patches' else x

  def exit(self, x: jax.Array) -> jax.Array:
    """Activations of this layout as ``(N, *spatial, C)``."""
    return from_patches_layout(x) if self.name == 'patches' else x

  def conv(self, features: int, kernel_size: Sequence[int], **kw
           ) -> nn.Module:
    """A convolution module on this layout (see :func:`conv`)."""
    return conv(self.name, features, kernel_size, **kw)

  def batch_norm(self, x: jax.Array, train: bool, momentum: float,
                 param_dtype: Dtype) -> jax.Array:
    """BatchNorm over every axis but the features."""
    return batch_norm(x, train, momentum, param_dtype, self.feature_axis)

  def pool(self, x: jax.Array, kind: str, window: Sequence[int]
           ) -> jax.Array:
    """``'max'`` or ``'avg'`` pooling, stride = window, VALID."""
    if self.name == 'patches':
      return pool_patches_layout(x, kind, window)
    if kind == 'max':
      return nn.max_pool(x, window, strides=window)
    # Not nn.avg_pool: it divides by an int64, which strict promotion
    # rejects.
    x = nn.pooling.pool(x, 0., jax.lax.add, window, window, 'VALID')
    return x / float(np.prod(window))

  def global_mean(self, x: jax.Array) -> jax.Array:
    """The mean over the spatial axes, as ``(N, C)``."""
    x = jnp.mean(x, axis=tuple(range(1, x.ndim - 1)))
    return x.T if self.name == 'patches' else x


_LAYOUTS = {name: Layout(name) for name in ('lax', 'patches')}


def layout(conv_impl: str) -> Layout:
  """The :class:`Layout` of ``conv_impl`` (``'auto'``: by backend)."""
  return _LAYOUTS[resolve_conv_impl(conv_impl)]
