"""Keeping hyperparameters in a set: an optax transformation that projects.

:func:`projection` maps ``h + u`` onto a set per named hyperparameter
(:func:`box`, :func:`positive_definite`, ``optax.projections``' own, or any
shape-preserving function); :func:`clip_to_bounds` is the outer optimisers'
clip to each kind's valid range, whose state says which values are pinned.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hypergrad._src import registry
from hypergrad._src import schedule
from hypergrad._src import validation

PyTree = Any
Partial = jax.tree_util.Partial


class ProjectState(NamedTuple):
  """State of :func:`clip_to_bounds`.

  Attributes:
    pinned: pytree of bools like the hyperparameters: the last update pushed
      the value against a bound of its valid range.
  """
  pinned: PyTree


# ---------------------------------------------------------------------------
# Projection onto the valid ranges.


def _project_init(params):
  return ProjectState(jax.tree.map(lambda h: jnp.zeros(jnp.shape(h), bool),
                                   params))


class _ProjectUpdate(NamedTuple):
  bounds: Any  # (lo, hi) for every value, or a tuple of (name, (lo, hi))

  def __call__(self, updates, state, params=None):
    del state
    if params is None:
      raise ValueError('clip_to_bounds needs the current hyperparameters: call '
                       'update(updates, state, params).')
    if isinstance(self.bounds[0], tuple):
      if not isinstance(params, Mapping):
        raise ValueError('bounds is a mapping by name, but the '
                         'hyperparameters are not a mapping of named kinds.')
      by_name = dict(self.bounds)
      # Kinds absent from the mapping are unbounded, so that one mapping of
      # bounds fits any subset of an optimiser's hyperparameters.
      unbounded = (-math.inf, math.inf)
      per_leaf = {}
      for k, p in params.items():
        # A schedule family's parameters live on log / logit scales: a
        # kind's valid range bounds its values, not them.
        b = unbounded if schedule.is_family(p) else by_name.get(k, unbounded)
        per_leaf[k] = jax.tree.map(lambda _, b=b: b, p)
    else:
      per_leaf = jax.tree.map(lambda _: self.bounds, params)
    moved = jax.tree.map(lambda h, u: h + u, params, updates)
    new = jax.tree.map(lambda m, b: jnp.clip(m, b[0], b[1]).astype(m.dtype),
                       moved, per_leaf, is_leaf=lambda x: isinstance(x, tuple))
    out = jax.tree.map(lambda n, h: (n - h).astype(h.dtype), new, params)
    return out, ProjectState(jax.tree.map(lambda a, b: a != b, moved, new))


def clip_to_bounds(bounds=None) -> optax.GradientTransformation:
  """Keeps ``params + updates`` inside each kind's valid range.

  Args:
    bounds: ``(lo, hi)`` for every value, or a mapping from hyperparameter
      name to ``(lo, hi)`` (``None`` in a pair: unbounded); default: the
      registry's valid ranges (:data:`hypergrad.SGD_BOUNDS` and the adam
      family's). Names absent from the mapping are unbounded.

  Returns:
    An optax ``GradientTransformation`` with state :class:`ProjectState`;
    its ``update`` needs ``params``.

  Raises:
    ValueError: a malformed pair, or ``lo > hi``; at construction.
  """
  if bounds is None:
    bounds = registry.ALL_BOUNDS
  if isinstance(bounds, Mapping):
    static = tuple((k, validation.check_bounds(v, f'bounds[{k!r}]'))
                   for k, v in bounds.items())
    if not static:
      raise ValueError('bounds is an empty mapping.')
  else:
    static = validation.check_bounds(bounds, 'bounds')
  return optax.GradientTransformation(Partial(_project_init),
                                      Partial(_ProjectUpdate(static)))


# ---------------------------------------------------------------------------
# Projections onto constraint sets of any shape (boxes, the positive-definite
# cone; optax.projections has the simplex, balls and more), for
# hyperparameters that are not schedules.


class _Box(NamedTuple):
  lo: float
  hi: float

  def __call__(self, x):
    return optax.projections.projection_box(x, self.lo, self.hi).astype(
        x.dtype)


def box(lo=None, hi=None):
  """Euclidean projection onto ``[lo, hi]`` elementwise (None: unbounded).

  ``optax.projections.projection_box`` with its bounds fixed, as a hashable
  value: a :func:`projection` built from it twice compiles once.

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> hypergrad.box(0.0, 1.0)(jnp.array([-0.5, 0.25, 2.0])).tolist()
    [0.0, 0.25, 1.0]
  """
  lo, hi = validation.check_bounds((lo, hi), 'box')
  return _Box(lo, hi)


class _PositiveDefinite(NamedTuple):
  min_eig: float

  def __call__(self, x):
    # Symmetrise, then clip the eigenvalues from below: the nearest (in
    # Frobenius norm) symmetric matrix with every eigenvalue >= min_eig.
    sym = 0.5 * (x + jnp.swapaxes(x, -1, -2))
    eig, vec = jnp.linalg.eigh(sym)
    eig = jnp.maximum(eig, jnp.asarray(self.min_eig, eig.dtype))
    return ((vec * eig[..., None, :]) @ jnp.swapaxes(vec, -1, -2)).astype(
        x.dtype)


def positive_definite(min_eig: float = 1e-3):
  """Projection of a square matrix onto ``{A = A^T, eig(A) >= min_eig}``.

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> a = hypergrad.positive_definite(0.1)(jnp.array([[1.0, 2.0],
    ...                                                  [2.0, 1.0]]))
    >>> bool(jnp.linalg.eigvalsh(a).min() >= 0.1 - 1e-6)
    True
  """
  return _PositiveDefinite(validation.check_positive(min_eig, 'min_eig'))


class _ProjectionInit(NamedTuple):
  projections: tuple  # ((name, fn), ...): static, so fn need not be an array

  def __call__(self, params):
    return _projection_init(dict(self.projections), params)


class _ProjectionUpdate(NamedTuple):
  projections: tuple

  def __call__(self, updates, state, params=None):
    return _projection_update(dict(self.projections), updates, state, params)


def _projection_init(projections, params):
  # Checked here, where the outer loop starts (before any hypergradient): a
  # projection must return the shape and dtype it was given.
  if not isinstance(params, Mapping):
    raise ValueError('projections are given by hyperparameter name, but the '
                     'hyperparameters are not a mapping of named kinds.')
  unknown = sorted(set(projections) - set(params))
  if unknown:
    raise ValueError(f'projections name unknown hyperparameter(s) {unknown}; '
                     f'the hyperparameters are {sorted(params)}.')
  for name, fn in projections.items():
    for path, leaf in jax.tree_util.tree_flatten_with_path(params[name])[0]:
      where = f'[{name!r}]{jax.tree_util.keystr(path)}'
      want = jax.ShapeDtypeStruct(jnp.shape(leaf), jnp.result_type(leaf))
      try:
        got = jax.eval_shape(lambda v, fn=fn: fn(v), want)
      except Exception as e:  # pylint: disable=broad-except
        raise ValueError(f'the projection of hyperparameter {where} fails on '
                         f'its value {want.dtype}{list(want.shape)}: '
                         f'{type(e).__name__}: {e}') from e
      if (not isinstance(got, jax.ShapeDtypeStruct) or got.shape != want.shape
          or got.dtype != want.dtype):
        raise ValueError(
            f'the projection of hyperparameter {where} must return the shape '
            f'and dtype it is given, {want.dtype}{list(want.shape)}; it '
            f'returns {got}.')
  return optax.EmptyState()


def _projection_update(projections, updates, state, params=None):
  if params is None:
    raise ValueError('projection needs the current hyperparameters: call '
                     'update(updates, state, params).')
  out = dict(updates)
  for name, fn in projections.items():
    out[name] = jax.tree.map(
        lambda h, u, fn=fn: (fn(h + u) - h).astype(h.dtype), params[name],
        updates[name])
  return out, state


def projection(projections: Mapping[str, Any]
               ) -> optax.GradientTransformation:
  """Keeps each named hyperparameter in a set: ``h + u`` projected onto it.

  Chain it after any optax transformation (``hypergrad.pytree_chain(optax.adam(0.1),
  hypergrad.projection({'weights': hypergrad.box(0, 1)}))``): the update
  becomes ``P(h + u) - h``, so ``optax.apply_updates`` lands on ``P(h + u)``.
  Each projection is applied to every array of its hyperparameter (a
  :class:`hypergrad.ConstantLeaf`'s value, or a schedule's ``(n, ...)``
  array as a whole); names left out are not projected.

  Args:
    projections: name -> ``fn(array) -> array`` of the same shape and dtype,
      e.g. :func:`box`, :func:`positive_definite`, one of
      ``optax.projections`` (``jax.vmap(optax.projections.projection_simplex)``
      for rows on the simplex), or a function of your own (make it a hashable
      value, such as a ``NamedTuple`` with ``__call__``, to compile once).

  Returns:
    An optax ``GradientTransformation``; its ``update`` needs ``params``.
    ``init`` raises ValueError, naming the hyperparameter, for a projection
    that returns another shape or dtype, fails on the value, or names a
    hyperparameter that is not there: before any hypergradient is computed.
  """
  if not isinstance(projections, Mapping) or not projections:
    raise ValueError(f'projections must be a non-empty mapping name -> '
                     f'function, got {projections!r}.')
  for name, fn in projections.items():
    if not callable(fn):
      raise TypeError(f'projections[{name!r}] is not callable: {fn!r}.')
  static = tuple(projections.items())
  return optax.GradientTransformation(
      Partial(_ProjectionInit(static)), Partial(_ProjectionUpdate(static)))
