"""``pytree_chain``: ``optax.chain`` whose parts' numbers are pytree leaves.

A transformation built from ``jax.tree_util.Partial``s travels as a jit
argument, so rebuilding it with other step sizes does not recompile.
"""

from __future__ import annotations

import jax
import optax

from hypergrad._src import unroll as unroll_lib

Partial = jax.tree_util.Partial


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

  Transformations of this package already are; any other (``optax.adam``'s
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
