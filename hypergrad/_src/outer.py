"""The FDS outer step: move each hyperparameter value by the sign of its hypergradient.

Long-horizon hypergradients are noisy in size but reliable in sign (Micaelli &
Storkey 2021), so each schedule value ``h`` moves by a step of its own:

    h <- clip(h - step * sign(g)),

and a value's ``step`` is halved whenever the sign of its hypergradient flips
(an oscillation means the optimum has been passed), as in Rprop. The search has
converged when every value's step is below ``tol`` (default 5%) of the value's
magnitude; about 10 outer steps in practice.

Valid ranges are kept by **clipping** after each step (not by a
parametrisation): ``lr >= 0``, ``0 <= momentum <= 0.999``, ``weight_decay >=
0`` by default, so values are learned on their natural scale, as in the paper.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, NamedTuple

import jax
import jax.numpy as jnp

PyTree = Any

# The FDS reference's initial step sizes per hyperparameter kind.
DEFAULT_STEP_SIZES = {'lr': 0.1, 'momentum': 0.1, 'weight_decay': 3e-4,
                      'learning_rate': 0.1}
# Valid ranges enforced by clipping.
DEFAULT_BOUNDS = {'lr': (0.0, math.inf), 'learning_rate': (0.0, math.inf),
                  'momentum': (0.0, 0.999), 'b1': (0.0, 0.999),
                  'b2': (0.0, 0.9999), 'weight_decay': (0.0, math.inf)}


class SignDescentState(NamedTuple):
  """State of the sign-based outer optimiser.

  Attributes:
    step_sizes: pytree like ``hparams``: each value's current step.
    prev_sign: pytree like ``hparams``: sign of the previous hypergradient
      (0 before the first update).
    count: number of updates applied.
    pinned: pytree of bools like ``hparams``: the last step pushed the value
      against a bound of its valid range (it cannot move further that way).
  """
  step_sizes: PyTree
  prev_sign: PyTree
  count: jax.Array
  pinned: PyTree


class SignDescent(NamedTuple):
  """An ``init``/``update`` pair, like an optax ``GradientTransformation``."""
  init: Any
  update: Any


def _per_kind(hparams: Mapping[str, PyTree], values: Mapping[str, Any], what):
  missing = [k for k in hparams if k not in values]
  if missing:
    raise ValueError(f'no {what} for hyperparameter(s) {missing}; give them '
                     f'explicitly (known defaults: {sorted(values)}).')
  return {k: jax.tree.map(lambda _, v=values[k]: v, h)
          for k, h in hparams.items()}


def sign_descent(step_sizes: Mapping[str, float] | None = None,
                 bounds: Mapping[str, tuple[float, float]] | None = None,
                 *, decay: float = 0.5) -> SignDescent:
  """The FDS outer optimiser: sign steps, halved on every sign flip.

  Args:
    step_sizes: initial step per hyperparameter kind (the top-level keys of
      the hparams mapping); defaults to :data:`DEFAULT_STEP_SIZES` (lr 0.1,
      momentum 0.1, weight decay 3e-4) for the kinds not given.
    bounds: ``(low, high)`` clipping range per kind; defaults to
      :data:`DEFAULT_BOUNDS`. Kinds absent from both are unbounded.
    decay: factor applied to a value's step when its sign flips.

  Returns:
    ``SignDescent(init, update)`` with ``init(hparams) -> SignDescentState``
    and ``update(hypergrads, state, hparams) -> (new_hparams, new_state)``.

  Example:
    >>> opt = sign_descent()
    >>> state = opt.init(hparams)
    >>> hparams, state = opt.update(hypergrads, state, hparams)
  """
  if not 0.0 < decay < 1.0:
    raise ValueError(f'decay must be in (0, 1), got decay={decay}.')
  sizes = {**DEFAULT_STEP_SIZES, **(step_sizes or {})}
  for k, v in sizes.items():
    if not v > 0:
      raise ValueError(f'initial step size for {k!r} must be > 0, got {v}.')
  all_bounds = {**DEFAULT_BOUNDS, **(bounds or {})}

  def init(hparams: Mapping[str, PyTree]) -> SignDescentState:
    per_kind = _per_kind(hparams, sizes, 'initial step size')
    steps = jax.tree.map(lambda h, s: jnp.full(jnp.shape(h), s,
                                               jnp.result_type(h)),
                         dict(hparams), per_kind)
    zeros = jax.tree.map(jnp.zeros_like, dict(hparams))
    return SignDescentState(steps, zeros, jnp.zeros((), jnp.int32),
                            jax.tree.map(lambda z: z != 0, zeros))

  def update(hypergrads, state: SignDescentState, hparams):
    sign = jax.tree.map(jnp.sign, dict(hypergrads))
    steps = jax.tree.map(
        lambda s, p, q: jnp.where(p * q < 0, s * decay, s).astype(s.dtype),
        state.step_sizes, sign, state.prev_sign)
    moved = jax.tree.map(lambda h, s, g: h - s * g, dict(hparams), steps, sign)
    new = {k: jax.tree.map(
        lambda h, b=all_bounds.get(k, (-math.inf, math.inf)): jnp.clip(
            h, b[0], b[1]).astype(h.dtype), v) for k, v in moved.items()}
    pinned = jax.tree.map(lambda a, b: a != b, moved, new)
    return new, SignDescentState(steps, sign, state.count + 1, pinned)

  return SignDescent(init, update)


def converged(state: SignDescentState, hparams, tol: float = 0.05) -> bool:
  """Whether the search has settled.

  A value has settled when its step is below ``tol`` times its magnitude,
  when it is pinned at a bound of its valid range (weight decay pushed below
  0, say), or when its last hypergradient was exactly zero (a stationary
  point). The search has converged when every value has settled; never
  before the first update.
  """
  if int(state.count) == 0:
    return False
  checks = jax.tree.map(
      lambda s, h, p, g: bool(jnp.all((s < tol * jnp.abs(h)) | p | (g == 0))),
      state.step_sizes, dict(hparams), state.pinned, state.prev_sign)
  return all(jax.tree.leaves(checks))


def back_off(state: SignDescentState, factor: float = 0.5) -> SignDescentState:
  """Shrinks every step after a rejected outer step (a diverging inner run)."""
  return state._replace(step_sizes=jax.tree.map(
      lambda s: (s * factor).astype(s.dtype), state.step_sizes))
