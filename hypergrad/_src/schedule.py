"""Hyperparameter schedules shared over contiguous intervals of the horizon.

A schedule leaf is an array of shape ``(n, ...)``: ``n`` values, each shared over
one of ``n`` contiguous intervals of a run of ``num_steps`` inner steps. At inner
step ``t`` the value in force is ``leaf[(t * n) // num_steps]``. With ``n`` not
dividing ``num_steps`` the intervals differ in length by at most one step.

Sharing a value over an interval is what keeps forward mode affordable (one
tangent per value, not per step) and what averages hypergradient noise over the
interval (Micaelli & Storkey 2021).

A hyperparameter that is *not* a schedule (one weight per training example,
an interaction matrix between tasks) is wrapped in :class:`ConstantLeaf`: a
value of any shape, in force at every step. Internally it is a schedule of
one interval (``value[None]``), so every estimator handles it; the step sees
``value`` itself and hypergradients come back wrapped the same way.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

PyTree = Any

# `t * n` is computed in int32 inside the unroll.
_MAX_STEP_PRODUCT = 2**31 - 1
# A schedule with more intervals than this is almost certainly something else
# (a vector of per-example weights read as one value per few steps), unless it
# holds exactly one value per step: refused, naming ConstantLeaf.
MAX_SCHEDULE_INTERVALS = 1000


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class ConstantLeaf:
  """A hyperparameter constant over the run, of any shape: not a schedule.

  Wrap a leaf of ``hparams`` in it (or build one with
  :func:`hypergrad.constant_leaf`) to declare that it has no interval axis:
  per-example weights ``(N,)``, an interaction matrix ``(T, T)``, a scalar.
  ``step_fn`` receives ``value`` unchanged at every step; hypergradients,
  outer updates and optimiser states keep the wrapper around the same-shaped
  array. It is a pytree node with the single child ``value``, so ``jit``,
  ``vmap``, optax and ``jax.tree.map`` see through it.

  Attributes:
    value: a floating array of any shape.
  """
  value: Any


def is_family(x) -> bool:
  """Whether ``x`` is a schedule family node (:func:`hypergrad.warmup_decay`)."""
  return getattr(x, 'is_schedule_family', False) is True


def _per_step_node(x) -> bool:
  return is_constant_leaf(x) or is_family(x)


def is_constant_leaf(x) -> bool:
  """Whether ``x`` is a :class:`ConstantLeaf` (an ``is_leaf`` predicate)."""
  return isinstance(x, ConstantLeaf)


def constant_leaf(value, dtype=None) -> ConstantLeaf:
  """A hyperparameter of any shape, constant over the run (not a schedule).

  Example:
    >>> w = constant_leaf(jnp.ones(5000))      # one weight per example
    >>> hparams = {'lr': constant(0.1), 'weights': w}
    >>> hparams_at(hparams, 3, 100)['weights'].shape
    (5000,)
  """
  if dtype is None:
    dtype = jnp.asarray(value).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      dtype = jnp.result_type(float)
  return ConstantLeaf(jnp.asarray(value, dtype=dtype))


def as_schedules(hparams: PyTree) -> PyTree:
  """``hparams`` with every :class:`ConstantLeaf` as a one-interval schedule.

  ``ConstantLeaf(v)`` becomes the plain leaf ``v[None]``: what estimators'
  ``compute`` work on (a constant is exactly a schedule of one interval,
  whose tangents all begin at step 0). Undo with :func:`like_hparams`.
  """
  return jax.tree.map(
      lambda h: jnp.expand_dims(h.value, 0) if is_constant_leaf(h) else h,
      hparams, is_leaf=is_constant_leaf)


def like_hparams(tree: PyTree, hparams: PyTree) -> PyTree:
  """The inverse of :func:`as_schedules`: ``tree`` in the structure of ``hparams``.

  Args:
    tree: a pytree like ``as_schedules(hparams)`` (e.g. its hypergradients).
    hparams: the pytree that may hold :class:`ConstantLeaf` nodes.
  """
  flags = [is_constant_leaf(h) for h in
           jax.tree.leaves(hparams, is_leaf=is_constant_leaf)]
  if not any(flags):
    return tree
  leaves = [x[0] if c else x for x, c in zip(jax.tree.leaves(tree), flags)]
  return jax.tree.unflatten(jax.tree.structure(hparams), leaves)


def schedule_shapes(hparams: PyTree) -> list[tuple[int, ...]]:
  """The ``(n, ...)`` shape of every leaf as a schedule (a constant: ``(1, ...)``).

  In ``jax.tree.leaves`` order; no arrays are touched.
  """
  return [(1,) + tuple(np.shape(h.value)) if is_constant_leaf(h)
          else tuple(np.shape(h))
          for h in jax.tree.leaves(hparams, is_leaf=is_constant_leaf)]


def interval_index(t, n: int, num_steps: int):
  """Index of the shared interval in force at inner step ``t``.

  Args:
    t: int or traced int32 scalar, the inner step, ``0 <= t < num_steps``.
    n: number of intervals of the schedule.
    num_steps: the horizon ``T``.

  Returns:
    ``(t * n) // num_steps``, of the same kind as ``t``.
  """
  return (t * n) // num_steps


def interval_starts(n: int, num_steps: int) -> np.ndarray:
  """First inner step of each of the ``n`` intervals: ``ceil(i * T / n)``.

  Returns:
    int64 array of shape ``(n,)``; entry ``i`` is the smallest ``t`` with
    ``interval_index(t, n, T) == i``.
  """
  i = np.arange(n, dtype=np.int64)
  return (i * num_steps + n - 1) // n


def num_intervals(hparams: PyTree) -> PyTree:
  """The ``n`` of every leaf: the pytree of leading-axis sizes (1 for a constant)."""
  return jax.tree.map(
      lambda h: 1 if is_constant_leaf(h) else int(np.shape(h)[0]), hparams,
      is_leaf=is_constant_leaf)


def hparams_at(hparams: PyTree, t, num_steps: int) -> PyTree:
  """The hyperparameters in force at inner step ``t``.

  Args:
    hparams: pytree of schedule leaves of shape ``(n, ...)`` and
      :class:`ConstantLeaf` nodes.
    t: int or traced int32 step.
    num_steps: the horizon ``T``.

  Returns:
    The same pytree with each leaf's leading axis indexed at
    ``(t * n) // T``: leaves of shape ``(...)``; a :class:`ConstantLeaf`
    becomes its ``value`` (no wrapper: the step sees a plain array), a
    schedule family its value at ``t``.
  """
  def at(h):
    if is_constant_leaf(h):
      return h.value
    if is_family(h):
      return h.at(t, num_steps)
    return h[interval_index(t, h.shape[0], num_steps)]
  return jax.tree.map(at, hparams, is_leaf=_per_step_node)


def expand(hparams: PyTree, num_steps: int) -> PyTree:
  """Per-step values of every schedule: leaves of shape ``(T, ...)``.

  Useful for plotting and for greedy methods that keep one value per step.
  A :class:`ConstantLeaf` has no time axis and is returned as it is.
  """
  t = np.arange(num_steps)

  def per_step(h):
    if is_constant_leaf(h):
      return h
    if is_family(h):
      return h.at(jnp.asarray(t, jnp.int32), num_steps)
    return jnp.asarray(h)[interval_index(t, h.shape[0], num_steps)]
  return jax.tree.map(per_step, hparams, is_leaf=_per_step_node)


def constant(value, n: int = 1, dtype=None) -> jax.Array:
  """A schedule of ``n`` intervals all holding ``value``.

  Example:
    >>> hparams = {'lr': constant(0.1, 7), 'momentum': constant(0.9)}
    >>> hparams['lr'].shape
    (7,)
  """
  if n < 1:
    raise ValueError(f'A schedule needs n >= 1 intervals, got n={n}.')
  if dtype is None:
    dtype = jnp.asarray(value).dtype
    if not jnp.issubdtype(dtype, jnp.floating):
      dtype = jnp.result_type(float)
  # An explicit dtype gives a strongly typed array: a weak-typed schedule
  # would silently take the dtype of whatever it meets.
  value = jnp.asarray(value, dtype=dtype)
  return jnp.broadcast_to(value, (n,) + value.shape)


def resample(schedule, n: int) -> jax.Array:
  """Re-expresses a schedule on ``n`` intervals (nearest interval midpoint).

  Lets the outer loop refine a coarse schedule (e.g. 1 -> 7 intervals).
  """
  schedule = jnp.asarray(schedule)
  m = schedule.shape[0]
  mids = (np.arange(n) + 0.5) / n
  return schedule[np.minimum((mids * m).astype(np.int64), m - 1)]


@dataclasses.dataclass(frozen=True)
class Segment:
  """A stretch ``[start, stop)`` of the horizon where no leaf changes interval.

  Attributes:
    start: first inner step of the segment.
    stop: one past the last inner step.
    intervals: for each hparams leaf (in ``jax.tree.leaves`` order), the index
      of its interval in force throughout the segment.
  """
  start: int
  stop: int
  intervals: tuple[int, ...]


def segments(hparams: PyTree, num_steps: int) -> list[Segment]:
  """Splits the horizon at every interval boundary of every leaf.

  Within a segment every hyperparameter is constant, so the unroll can index
  the schedules statically (no gather per step) and forward mode knows exactly
  which tangents have begun.

  Returns:
    Segments in order, covering ``[0, num_steps)``.
  """
  ns = [shape[0] for shape in schedule_shapes(hparams)]
  cuts = {0, num_steps}
  for n in ns:
    cuts.update(int(s) for s in interval_starts(n, num_steps))
  cuts = sorted(cuts)
  out = []
  for start, stop in zip(cuts[:-1], cuts[1:]):
    out.append(Segment(start, stop,
                       tuple(int(interval_index(start, n, num_steps))
                             for n in ns)))
  return out


def validate_num_steps(num_steps) -> int:
  """Checks the horizon is a positive Python int; returns it."""
  if isinstance(num_steps, (bool, np.bool_)) or not isinstance(
      num_steps, (int, np.integer)):
    raise TypeError(
        f'num_steps must be a Python int (it sets the unroll length), got '
        f'{num_steps!r} of type {type(num_steps).__name__}.')
  if num_steps <= 0:
    raise ValueError(f'num_steps must be >= 1, got num_steps={num_steps}.')
  return int(num_steps)


def _check_numeric(name: str, leaf):
  """``(dtype, shape)`` of a leaf that must be a floating array."""
  if not hasattr(leaf, 'dtype') and not isinstance(leaf, (int, float, list,
                                                           tuple)):
    raise TypeError(f'hparams leaf {name} is not an array: {leaf!r}.')
  try:
    dtype = jnp.result_type(leaf)
    shape = np.shape(leaf)
  except (TypeError, ValueError) as e:  # e.g. object, str or struct arrays
    raise TypeError(f'hparams leaf {name} is not a numeric array: '
                    f'{type(leaf).__name__} ({e}).') from None
  if not jnp.issubdtype(dtype, jnp.floating):
    raise TypeError(
        f'hparams leaf {name} has dtype {dtype}; hyperparameters must be '
        f'floating point to be differentiated.')
  return dtype, tuple(shape)


def _as_checked_array(name: str, leaf):
  try:
    array = jnp.asarray(leaf)
  except (TypeError, ValueError) as e:  # e.g. a jax.ShapeDtypeStruct
    raise TypeError(f'hparams leaf {name} is not a concrete array: '
                    f'{type(leaf).__name__} ({e}).') from None
  # A NaN or Inf value would only show as a NaN hypergradient after the
  # whole unroll; values under a trace cannot be inspected and are left.
  if not isinstance(array, jax.core.Tracer):
    bad = ~np.isfinite(np.asarray(array))
    if bad.any():
      where = tuple(int(i) for i in np.argwhere(bad)[0])
      raise ValueError(
          f'hparams leaf {name} holds a non-finite value '
          f'{np.asarray(array)[where]} at index {where}; every '
          'hyperparameter value must be finite.')
  return array


_DECLARE_CONSTANT = (
    'A hyperparameter that is not a schedule (one weight per training '
    'example, a matrix) is declared constant over the run with '
    'hypergrad.constant_leaf(value) (a hypergrad.ConstantLeaf): any shape, '
    'no interval axis.')


def validate_hparams(hparams: PyTree, num_steps: int) -> PyTree:
  """Checks a hyperparameter pytree against the sharing contract.

  Every schedule leaf must be a floating array of shape ``(n, ...)`` with
  ``1 <= n <= num_steps``, and ``n <= MAX_SCHEDULE_INTERVALS`` unless
  ``n == num_steps`` (one value per step); a :class:`ConstantLeaf` holds a
  floating array of any shape. Raised before any compute, naming the bad
  leaf.

  Returns:
    ``hparams`` with leaves converted to ``jax.Array``.

  Raises:
    TypeError: a non-floating leaf, or a leaf that is not array-like.
    ValueError: an empty pytree, a 0-d schedule leaf, ``n == 0``,
      ``n > num_steps``, a schedule of more than ``MAX_SCHEDULE_INTERVALS``
      intervals that is not one value per step (the message says how to
      declare a constant leaf), an empty leaf, or a NaN or Inf value.
  """
  num_steps = validate_num_steps(num_steps)
  leaves_with_path, treedef = jax.tree_util.tree_flatten_with_path(
      hparams, is_leaf=is_constant_leaf)
  if not leaves_with_path:
    raise ValueError('hparams has no leaves: nothing to differentiate.')
  arrays = []
  for path, leaf in leaves_with_path:
    name = jax.tree_util.keystr(path) or '<root>'
    if is_constant_leaf(leaf):
      _, shape = _check_numeric(name, leaf.value)
      if 0 in shape:
        raise ValueError(
            f'hparams leaf {name} is a ConstantLeaf of shape {shape}: no '
            'values to differentiate.')
      arrays.append(ConstantLeaf(_as_checked_array(name, leaf.value)))
      continue
    _, shape = _check_numeric(name, leaf)
    if len(shape) == 0:
      raise ValueError(
          f'hparams leaf {name} is a scalar; give it a leading interval axis '
          f'of size n (e.g. hypergrad.constant(value, n=1)), or declare it '
          f'hypergrad.constant_leaf(value).')
    n = shape[0]
    if n == 0:
      raise ValueError(f'hparams leaf {name} has n=0 intervals; need n >= 1.')
    if n > num_steps:
      raise ValueError(
          f'hparams leaf {name} has n={n} intervals, more than '
          f'num_steps={num_steps} inner steps (read as a schedule: shape '
          f'{shape}). ' + _DECLARE_CONSTANT)
    if n > MAX_SCHEDULE_INTERVALS and n != num_steps:
      raise ValueError(
          f'hparams leaf {name} of shape {shape} would be read as a schedule '
          f'of n={n} intervals of about {num_steps / n:.3g} steps each over '
          f'num_steps={num_steps}. Schedules of more than '
          f'{MAX_SCHEDULE_INTERVALS} intervals are refused unless they hold '
          f'one value per step (n == num_steps). ' + _DECLARE_CONSTANT)
    if 0 in shape[1:]:
      raise ValueError(
          f'hparams leaf {name} has shape {shape}: no values to '
          f'differentiate (a zero-size trailing axis).')
    if n * num_steps > _MAX_STEP_PRODUCT:
      raise ValueError(
          f'hparams leaf {name}: n * num_steps = {n * num_steps} overflows '
          f'the int32 step arithmetic.')
    arrays.append(_as_checked_array(name, leaf))
  return jax.tree.unflatten(treedef, arrays)


def leaf_names(tree: PyTree) -> Sequence[str]:
  """Readable names of the leaves, in ``jax.tree.leaves`` order.

  A :class:`ConstantLeaf`'s array is named by its path plus ``.value``.
  """
  return [jax.tree_util.keystr(p) or '<root>'
          for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]
