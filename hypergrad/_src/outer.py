"""Outer and meta optimisers as optax ``GradientTransformation``s.

The FDS outer step moves each schedule value by the *sign* of its
hypergradient (long-horizon hypergradients are noisy in size but reliable in
sign; Micaelli & Storkey 2021), with a step of its own that is halved whenever
that sign flips, as in Rprop:

    s <- s * decay   if sign(g) != sign(g_prev)
    h <- clip(h - s * sign(g), lo, hi)

Here that is two small transformations, chained:

* :func:`scale_by_sign_descent`: ``u = -s * sign(g)`` with the halving rule;
* :func:`project`: keeps ``h + u`` in each kind's valid range (from the
  registry: ``lr >= 0``, ``0 <= momentum <= 0.999``, ``weight_decay >= 0``).

:func:`sign_descent` is their chain. Any optax transformation can stand in
(``optax.adam``, ``optax.rprop``, ``optax.chain(...)``): the outer loop only
calls ``init`` and ``update``. The greedy methods' meta updates
(:func:`meta_optimizer`: sgd, sign or normalised steps with per-kind rates,
then :func:`project`) are built from the same pieces.

Every transformation here keeps its numbers (step sizes, rates) as pytree
leaves of ``jax.tree_util.Partial`` objects, never baked into a closure: built
twice with other rates it compiles once (a meta-step-size sweep), and it can
travel as an argument of a jitted function.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hypergrad._src import registry
from hypergrad._src import unroll as unroll_lib
from hypergrad._src import validation

PyTree = Any
Partial = jax.tree_util.Partial


class SignDescentState(NamedTuple):
  """State of :func:`scale_by_sign_descent`.

  Attributes:
    step_sizes: pytree like the hyperparameters: each value's current step.
    prev_sign: pytree like the hyperparameters: sign of the previous
      hypergradient (0 before the first update).
    count: number of updates applied.
  """
  step_sizes: PyTree
  prev_sign: PyTree
  count: jax.Array


class ProjectState(NamedTuple):
  """State of :func:`project`.

  Attributes:
    pinned: pytree of bools like the hyperparameters: the last update pushed
      the value against a bound of its valid range.
  """
  pinned: PyTree


# ---------------------------------------------------------------------------
# Per-kind numbers: a float for every value, or a mapping from the top-level
# hyperparameter name (``'lr'``) to a float.


def _per_kind(params: PyTree, values, what: str) -> PyTree:
  """A pytree like ``params`` holding each leaf's number from ``values``."""
  if not isinstance(values, Mapping):
    return jax.tree.map(lambda _: values, params)
  if not isinstance(params, Mapping):
    raise ValueError(f'{what} is a mapping by name, but the hyperparameters '
                     'are not a mapping of named kinds; pass one number.')
  missing = sorted(set(params) - set(values))
  if missing:
    raise ValueError(f'{what} needs one entry per hyperparameter: missing '
                     f'{missing} (given: {sorted(values)}).')
  return {k: jax.tree.map(lambda _, v=values[k]: v, p)
          for k, p in params.items()}


def _check_rates(values, name: str, fill: Mapping | None = None):
  """Validates one positive number or a mapping name -> positive number."""
  if isinstance(values, Mapping) or (values is None and fill is not None):
    merged = {**(fill or {}), **(values or {})}
    if not merged:
      raise ValueError(f'{name} is an empty mapping.')
    return {k: validation.check_positive(v, f'{name}[{k!r}]')
            for k, v in merged.items()}
  return validation.check_positive(values, name)


# ---------------------------------------------------------------------------
# Sign descent.


def _sign_init(step_sizes, params):
  sizes = _per_kind(params, step_sizes, 'initial step size')
  steps = jax.tree.map(
      lambda h, s: jnp.full(jnp.shape(h), s, jnp.result_type(h)), params,
      sizes)
  return SignDescentState(steps, jax.tree.map(jnp.zeros_like, params),
                          jnp.zeros((), jnp.int32))


class _SignUpdate(NamedTuple):
  decay: float

  def __call__(self, updates, state, params=None):
    del params
    sign = jax.tree.map(jnp.sign, updates)
    steps = jax.tree.map(
        lambda s, p, q: jnp.where(p * q < 0, s * self.decay, s).astype(
            s.dtype), state.step_sizes, sign, state.prev_sign)
    out = jax.tree.map(lambda s, g: (-s * g).astype(s.dtype), steps, sign)
    return out, SignDescentState(steps, sign, state.count + 1)


def scale_by_sign_descent(step_sizes=None, *, decay: float = 0.5
                          ) -> optax.GradientTransformation:
  """``u = -s * sign(g)``, each value's step ``s`` multiplied by ``decay`` on a sign flip.

  Args:
    step_sizes: initial step, one positive float for every value or a
      mapping from hyperparameter name to float; names left out take the
      registry's FDS steps (lr 0.1, momentum 0.1, weight decay 3e-4).
    decay: factor applied to a value's step when its sign flips, in (0, 1).

  Returns:
    An optax ``GradientTransformation`` with state :class:`SignDescentState`.

  Raises:
    ValueError: a step size that is not a finite number > 0, or ``decay``
      outside (0, 1); at construction. A hyperparameter name with no step
      size; at ``init``.
  """
  if not (validation.is_real(decay) and 0.0 < decay < 1.0):
    raise ValueError(f'decay must be in (0, 1), got decay={decay!r}.')
  sizes = _check_rates(step_sizes, 'step_sizes',
                       fill=registry.ALL_OUTER_STEPS)
  return optax.GradientTransformation(
      Partial(_sign_init, sizes), Partial(_SignUpdate(float(decay))))


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
      raise ValueError('project needs the current hyperparameters: call '
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
        b = by_name.get(k, unbounded)
        per_leaf[k] = jax.tree.map(lambda _, b=b: b, p)
    else:
      per_leaf = jax.tree.map(lambda _: self.bounds, params)
    moved = jax.tree.map(lambda h, u: h + u, params, updates)
    new = jax.tree.map(lambda m, b: jnp.clip(m, b[0], b[1]).astype(m.dtype),
                       moved, per_leaf, is_leaf=lambda x: isinstance(x, tuple))
    out = jax.tree.map(lambda n, h: (n - h).astype(h.dtype), new, params)
    return out, ProjectState(jax.tree.map(lambda a, b: a != b, moved, new))


def project(bounds=None) -> optax.GradientTransformation:
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
# Projections onto constraint sets of any shape (boxes, simplices, the
# positive-definite cone), for hyperparameters that are not schedules.


class _Box(NamedTuple):
  lo: float
  hi: float

  def __call__(self, x):
    return jnp.clip(x, self.lo, self.hi).astype(x.dtype)


def box(lo=None, hi=None):
  """Euclidean projection onto ``[lo, hi]`` elementwise (None: unbounded).

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> hypergrad.box(0.0, 1.0)(jnp.array([-0.5, 0.25, 2.0])).tolist()
    [0.0, 0.25, 1.0]
  """
  lo, hi = validation.check_bounds((lo, hi), 'box')
  return _Box(lo, hi)


class _Simplex(NamedTuple):
  total: float

  def __call__(self, x):
    # Sort-based Euclidean projection of each row onto {v >= 0, sum v = z}
    # (Duchi et al. 2008): exact, differentiable almost everywhere, no loop.
    z = jnp.asarray(self.total, x.dtype)
    d = x.shape[-1]
    u = -jnp.sort(-x, axis=-1)
    css = jnp.cumsum(u, axis=-1) - z
    k = jnp.arange(1, d + 1, dtype=x.dtype)
    rho = jnp.sum(u - css / k > 0, axis=-1, keepdims=True)
    theta = jnp.take_along_axis(css, rho - 1, axis=-1) / rho.astype(x.dtype)
    return jnp.maximum(x - theta, 0).astype(x.dtype)


def simplex(total: float = 1.0):
  """Euclidean projection of every row (last axis) onto the simplex.

  ``{v : v >= 0, sum(v) = total}``: a row-normalised (row-stochastic)
  interaction matrix, or mixture weights.

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> hypergrad.simplex()(jnp.array([[2.0, 0.0, 1.0]])).tolist()
    [[1.0, 0.0, 0.0]]
  """
  return _Simplex(validation.check_positive(total, 'total'))


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
      e.g. :func:`box`, :func:`simplex`, :func:`positive_definite`, or a
      function of your own (make it a hashable value, such as a
      ``NamedTuple`` with ``__call__``, to compile once).

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


# ---------------------------------------------------------------------------
# Chaining, keeping the result a pytree of numbers.


def _chain_init(transforms, params):
  return tuple(t.init(params) for t in transforms)


def _chain_update(transforms, updates, state, params=None):
  new_state = []
  for t, s in zip(transforms, state):
    updates, s = t.update(updates, s, params)
    new_state.append(s)
  return updates, tuple(new_state)


def as_pytree(transform: optax.GradientTransformation
              ) -> optax.GradientTransformation:
  """A transformation whose functions are ``Partial``s (a pytree of numbers).

  Transformations from this module already are; any other (``optax.adam``'s
  closures) is keyed on its functions' identities.
  """
  return optax.GradientTransformation(
      unroll_lib.as_pytree_fn(transform.init),
      unroll_lib.as_pytree_fn(transform.update))


def pytree_chain(*transforms) -> optax.GradientTransformation:
  """``optax.chain`` whose parts' numbers are pytree leaves, not constants.

  The same updates as ``optax.chain(*transforms)``; the transformation is a
  pytree (its functions are ``Partial``s), so an outer loop that takes it as
  a jit argument does not recompile when a step size changes. Named apart
  from ``optax.chain`` because it is not the same object.
  """
  parts = tuple(as_pytree(t) for t in transforms)
  return optax.GradientTransformation(Partial(_chain_init, parts),
                                      Partial(_chain_update, parts))


def sign_descent(step_sizes=None, bounds=None, *, decay: float = 0.5
                 ) -> optax.GradientTransformation:
  """The FDS outer optimiser: sign steps, halved on every sign flip, projected.

  ``pytree_chain(scale_by_sign_descent(step_sizes, decay=decay), project(bounds))``.

  Args:
    step_sizes: see :func:`scale_by_sign_descent`.
    bounds: see :func:`project`.
    decay: see :func:`scale_by_sign_descent`.

  Returns:
    An optax ``GradientTransformation``: ``update(hypergrads, state, hparams)
    -> (updates, state)``; apply with ``optax.apply_updates``.

  Example:
    >>> import jax.numpy as jnp, optax, hypergrad
    >>> opt = hypergrad.sign_descent({'lr': 0.1})
    >>> h = {'lr': jnp.array([0.5, 0.5])}
    >>> u, state = opt.update({'lr': jnp.array([-1.0, 2.0])}, opt.init(h), h)
    >>> optax.apply_updates(h, u)['lr'].tolist()
    [0.6, 0.4]
  """
  return pytree_chain(scale_by_sign_descent(step_sizes, decay=decay),
               project(bounds))


# ---------------------------------------------------------------------------
# Meta optimisers of the greedy methods.


def _direction_init(params):
  del params
  return optax.EmptyState()


class _Direction(NamedTuple):
  rule: str

  def __call__(self, updates, state, params=None):
    del params
    if self.rule == 'sign':
      updates = jax.tree.map(jnp.sign, updates)
    elif self.rule == 'normalized':
      def unit(g):
        norm = jnp.sqrt(jnp.sum(g * g))
        return g / jnp.maximum(norm, jnp.finfo(g.dtype).tiny)
      updates = jax.tree.map(unit, updates)
    return updates, state


def _scale_init(params):
  del params
  return optax.EmptyState()


def _scale_update(rates, updates, state, params=None):
  del params
  per_leaf = _per_kind(updates, rates, 'meta_lr')
  return jax.tree.map(lambda g, r: (-r * g).astype(g.dtype), updates,
                      per_leaf), state


def scale_by_kind(rates) -> optax.GradientTransformation:
  """``u = -rate * g`` with one rate, or one per hyperparameter name.

  Raises:
    ValueError: a rate that is not a finite number > 0; at construction. A
      hyperparameter name with no rate; at ``update``.
  """
  rates = _check_rates(rates, 'meta_lr')
  return optax.GradientTransformation(Partial(_scale_init),
                                      Partial(_scale_update, rates))


META_UPDATES = ('sgd', 'sign', 'normalized')


def meta_optimizer(meta_lr=1e-3, meta_update: str = 'sgd', bounds=None
                   ) -> optax.GradientTransformation:
  """The greedy methods' meta step: a direction, a per-kind rate, a projection.

  With hypergradient ``g`` of a leaf and its rate ``eta``:

  * ``'sgd'``: ``h <- h - eta * g``;
  * ``'sign'``: ``h <- h - eta * sign(g)`` (scale free: moves by ``eta``);
  * ``'normalized'``: ``h <- h - eta * g / ||g||_2``, the norm per leaf;

  then ``h <- clip(h, lo, hi)`` where ``bounds`` is given. It is the
  ``meta_opt`` argument of :func:`hypergrad.hypergradient_descent`,
  :func:`hypergrad.rtho` and :func:`hypergrad.truncated_greedy`; its rates
  are pytree leaves, so a sweep over them compiles once.

  Args:
    meta_lr: positive float, or a mapping name -> positive float (learning
      rate and momentum live on very different scales).
    meta_update: ``'sgd'``, ``'sign'`` or ``'normalized'``.
    bounds: None (unbounded), ``(lo, hi)`` for all values, or a mapping
      name -> ``(lo, hi)`` such as :data:`hypergrad.SGD_BOUNDS`; ``None`` in
      a pair means unbounded on that side.

  Returns:
    An optax ``GradientTransformation``.

  Raises:
    ValueError: a bad rate, rule or bound; at construction.

  Example:
    >>> import jax.numpy as jnp, optax, hypergrad
    >>> opt = hypergrad.meta_optimizer({'lr': 0.1, 'momentum': 0.01}, 'sign',
    ...                                hypergrad.SGD_BOUNDS)
    >>> h = {'lr': jnp.array(0.05), 'momentum': jnp.array(0.995)}
    >>> g = {'lr': jnp.array(-3.0), 'momentum': jnp.array(-2.0)}
    >>> u, _ = opt.update(g, opt.init(h), h)
    >>> {k: round(float(v), 4) for k, v in optax.apply_updates(h, u).items()}
    {'lr': 0.15, 'momentum': 0.999}
  """
  if meta_update not in META_UPDATES:
    raise ValueError(f'meta_update must be one of {META_UPDATES}, got '
                     f'meta_update={meta_update!r}.')
  parts = [optax.GradientTransformation(Partial(_direction_init),
                                        Partial(_Direction(meta_update))),
           scale_by_kind(meta_lr)]
  if bounds is not None:
    parts.append(project(bounds))
  return pytree_chain(*parts)


# ---------------------------------------------------------------------------
# Convergence.


def _find(state, cls):
  """Every ``cls`` instance inside a (chained) optimiser state."""
  if isinstance(state, cls):
    return [state]
  if isinstance(state, (tuple, list)):
    return [s for part in state for s in _find(part, cls)]
  return []


def settled(updates: PyTree, hparams: PyTree, opt_state, tol: float = 0.05,
            hypergrads: PyTree | None = None) -> bool:
  """Whether the last outer update says the search has converged.

  A value has settled when the update moved it, by less than ``tol`` times
  its magnitude (for sign descent: its step is that small), when its
  hypergradient was exactly zero (a stationary point), or when it is pinned
  at a bound of its valid range (weight decay pushed below 0, say).
  Converged when every value has. An update of exactly zero with a non-zero
  hypergradient (an optimiser warming up, as Rprop's first step) settles
  nothing.

  Args:
    updates: the last update applied, like ``hparams``.
    hparams: the values after it.
    opt_state: the optimiser's state (a :class:`ProjectState` in it, if any,
      says which values are pinned).
    tol: fraction of each value.
    hypergrads: the hypergradients behind the update (None: unknown).
  """
  pinned = [p.pinned for p in _find(opt_state, ProjectState)]
  pinned = pinned[-1] if pinned else jax.tree.map(
      lambda h: jnp.zeros(jnp.shape(h), bool), hparams)
  if hypergrads is None:
    hypergrads = jax.tree.map(jnp.ones_like, hparams)
  checks = jax.tree.map(
      lambda u, h, p, g: bool(jnp.all(
          ((u != 0) & (jnp.abs(u) < tol * jnp.abs(h))) | (g == 0) | p)),
      updates, hparams, pinned, hypergrads)
  return all(jax.tree.leaves(checks))
