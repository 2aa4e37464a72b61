"""The outer and meta optimisers as optax ``GradientTransformation``s.

:func:`sign_descent` (FDS's outer step: sign steps halved on a sign flip,
clipped to the valid ranges) and :func:`meta_optimizer` (the greedy methods'
meta step). Their numbers are ``Partial`` leaves, so a sweep over step sizes
compiles once; ``docs/outer_loop.md`` has the rule and its reasons.
"""

from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hypergrad._src import chain
from hypergrad._src import projections
from hypergrad._src import registry
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


def sign_descent(step_sizes=None, bounds=None, *, decay: float = 0.5
                 ) -> optax.GradientTransformation:
  """The FDS outer optimiser: sign steps, halved on every sign flip, projected.

  :func:`scale_by_sign_descent` followed by a clip of every value to its
  valid range (whose state, a ``ProjectState``, says which values are pinned
  at a bound), chained by :func:`hypergrad.pytree_chain`.

  Args:
    step_sizes: see :func:`scale_by_sign_descent`.
    bounds: ``(lo, hi)`` for every value, or a mapping from hyperparameter
      name to ``(lo, hi)`` (``None`` in a pair: unbounded); default: the
      registry's valid ranges (:data:`hypergrad.SGD_BOUNDS` and the adam
      family's). Names absent from the mapping are unbounded.
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
  return chain.pytree_chain(scale_by_sign_descent(step_sizes, decay=decay),
                            projections.clip_to_bounds(bounds))


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
    parts.append(projections.clip_to_bounds(bounds))
  return chain.pytree_chain(*parts)
