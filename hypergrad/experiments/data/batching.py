"""On-device minibatching (a keyed Feistel permutation per epoch) and augmentation."""

from __future__ import annotations

from typing import Tuple

import jax
import jax.numpy as jnp

_FEISTEL_ROUNDS = 6


def _mix(x: jax.Array, round_key: jax.Array) -> jax.Array:
  """A uint32 avalanche hash (murmur3's finaliser) of ``x`` keyed by a word."""
  x = x ^ round_key
  x = (x ^ (x >> 16)) * jnp.uint32(0x85EBCA6B)
  x = (x ^ (x >> 13)) * jnp.uint32(0xC2B2AE35)
  return x ^ (x >> 16)


def _permute(key: jax.Array, i: jax.Array, n: int) -> jax.Array:
  """``perm(i)`` for a keyed pseudo-random permutation ``perm`` of ``[0, n)``.

  A balanced Feistel network is a bijection of ``[0, 4**h)``, ``4**h >= n``;
  cycle-walking (re-encrypting values that land in ``[n, 4**h)``) restricts
  it to a bijection of ``[0, n)`` (Black & Rogaway 2002). The cost is a few
  integer operations per *requested* index, where drawing the whole
  permutation (``jax.random.permutation``) sorts ``n`` keys at every step:
  on a 3,800-example MNIST-1D epoch that sort was 80% of a training step.
  """
  half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
  mask = jnp.uint32((1 << half) - 1)
  round_keys = jax.random.bits(key, (_FEISTEL_ROUNDS,), jnp.uint32)

  def encrypt(x):
    left, right = x >> half, x & mask
    for r in range(_FEISTEL_ROUNDS):
      left, right = right, left ^ (_mix(right, round_keys[r]) & mask)
    return (left << half) | right

  # The walk ends: a bijection's orbit from an in-range value comes back in.
  y = encrypt(i.astype(jnp.uint32))
  y = jax.lax.while_loop(
      lambda y: jnp.any(y >= n),
      lambda y: jnp.where(y >= n, encrypt(y), y), y)
  return y.astype(jnp.int32)


def batch_indices(key: jax.Array, t: jax.Array, batch_size: int,
                  num_examples: int) -> jax.Array:
  """Indices of minibatch ``t`` of shuffled epochs, computed inside jit.

  Epoch ``e = t // (num_examples // batch_size)`` is a pseudo-random
  permutation of the examples keyed by ``jax.random.fold_in(key, e)``; batch
  ``t`` is positions ``[p * batch_size, (p + 1) * batch_size)`` of it,
  ``p = t % steps_per_epoch``. Only those ``batch_size`` entries are computed
  (a keyed Feistel permutation, not a sort of the whole epoch), so a step
  pays for its batch, not for the dataset. The last
  ``num_examples % batch_size`` positions of each epoch are never reached, so
  every batch is full (and has a static shape); each epoch drops different
  examples.

  Args:
    key: PRNG key fixing the whole sequence of batches.
    t: scalar int step index; may be traced (e.g. a ``lax.scan`` counter).
    batch_size: static batch size, ``1 <= batch_size <= num_examples``.
    num_examples: static number of training examples, ``< 2**31``.

  Returns:
    int32 ``(batch_size,)`` indices into the training set, distinct within
    an epoch.

  Example:
    >>> key = jax.random.key(0)
    >>> idx = jax.jit(batch_indices, static_argnums=(2, 3))(key, 7, 32, 1000)
    >>> idx.shape
    (32,)
  """
  batch_size, num_examples = int(batch_size), int(num_examples)
  if not 1 <= batch_size <= num_examples:
    raise ValueError(
        f'batch_size must be in [1, num_examples={num_examples}], got '
        f'{batch_size}.')
  if num_examples >= 2**31:
    raise ValueError(f'num_examples={num_examples} must be below 2**31.')
  steps_per_epoch = num_examples // batch_size
  t = jnp.asarray(t, jnp.int32)
  epoch = t // steps_per_epoch
  position = t % steps_per_epoch
  slots = position * batch_size + jnp.arange(batch_size, dtype=jnp.int32)
  return _permute(jax.random.fold_in(key, epoch), slots, num_examples)


def get_batch(x: jax.Array, y: jax.Array, key: jax.Array, t: jax.Array,
              batch_size: int) -> Tuple[jax.Array, jax.Array]:
  """Minibatch ``t`` of ``(x, y)`` as chosen by :func:`batch_indices`.

  Args:
    x: ``(N, ...)`` inputs, ideally already on the device.
    y: ``(N,)`` labels.
    key: PRNG key of the batch sequence.
    t: scalar int step index (may be traced).
    batch_size: static batch size.

  Returns:
    ``(x_batch, y_batch)`` of shapes ``(batch_size, ...)`` and
    ``(batch_size,)``.

  Example:
    >>> xb, yb = get_batch(ds.x_train, ds.y_train, key, t, 128)  # doctest: +SKIP
  """
  idx = batch_indices(key, t, batch_size, x.shape[0])
  return jnp.take(x, idx, axis=0), jnp.take(y, idx, axis=0)


def augment(key: jax.Array, images: jax.Array, pad: int = 4,
            flip: bool = True, mode: str = 'reflect') -> jax.Array:
  """Random-crop-with-padding and horizontal-flip augmentation, per example.

  Each image is padded by ``pad`` pixels on every side and a random
  ``H x W`` window is cropped (a shift of up to ``pad`` pixels each way),
  then flipped left-right with probability 1/2. Deterministic given ``key``;
  jit-able; draws independently per example (``vmap``).

  Padding: ``mode='reflect'`` (default, as in the WRN paper) mirrors the
  border; ``mode='constant'`` pads zeros, which for normalised inputs is the
  dataset's mean colour. Flips suit CIFAR-10; for SVHN digits pass
  ``flip=False``.

  Args:
    key: PRNG key.
    images: ``(N, H, W, C)`` images (any float dtype).
    pad: maximum shift in pixels; 0 disables cropping.
    flip: whether to apply random horizontal flips.
    mode: ``'reflect'`` or ``'constant'``.

  Returns:
    Augmented images, same shape and dtype as ``images``.

  Example:
    >>> xb = augment(jax.random.key(1), xb)  # doctest: +SKIP
  """
  if images.ndim != 4:
    raise ValueError(f'augment expects (N, H, W, C) images, got shape '
                     f'{images.shape}.')
  if mode not in ('reflect', 'constant'):
    raise ValueError(f"mode must be 'reflect' or 'constant', got {mode!r}.")
  pad = int(pad)
  _, h, w, c = images.shape

  def one(k, img):
    k_crop, k_flip = jax.random.split(k)
    if pad > 0:
      padded = jnp.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode=mode)
      dy, dx = jax.random.randint(k_crop, (2,), 0, 2 * pad + 1)
      img = jax.lax.dynamic_slice(padded, (dy, dx, 0), (h, w, c))
    if flip:
      img = jnp.where(jax.random.bernoulli(k_flip), img[:, ::-1, :], img)
    return img

  keys = jax.random.split(key, images.shape[0])
  return jax.vmap(one)(keys, images)
