r"""The tangent engine: forward-mode pushes shared by every forward estimator.

Forward mode carries ``Z_t = d s_t / d lambda``, one tangent per scalar
hyperparameter value, through the inner dynamics ``s_{t+1} = Phi(s_t, h_t, t)``:

    Z_{t+1} = (d Phi / d s) Z_t + (d Phi / d h) (d h_t / d lambda),

and contracts it with the outer loss's gradient at the end,
``d E / d lambda = grad E(s_T) . Z_T``. ``forward_hypergrad`` (through the
whole run) and RTHO (online) differ only in when they contract and how
``d h_t / d lambda`` looks; both use the three pieces here:

* :func:`step_pieces`: the inner step on the *differentiable* part of the
  state (integer leaves such as PRNG keys ride along untouched);
* :func:`push`: one linearisation of the step applied to the whole tangent
  batch (``jax.linearize`` + ``jax.vmap``), so the primal step and its
  residuals are computed once per inner step, not once per tangent;
* :func:`basis` and :func:`contract`: one-hot tangents of a pytree of values,
  and ``grad E . Z`` back into the structure of the values.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hypergrad._src import unroll as unroll_lib

PyTree = Any


def step_pieces(step_fn: Callable, split: unroll_lib.SplitState):
  """``step(diff, rest, h, t) -> (diff, rest)`` and ``merge(diff, rest)``.

  Args:
    step_fn: the core contract's ``step_fn(state, hparams_t, t)``.
    split: the split of a state of the run (its structure and mask).
  """
  def merge(diff, rest):
    return unroll_lib.merge_state(diff, rest, split.treedef, split.mask)

  def step(diff, rest, h, t):
    out = unroll_lib.split_state(step_fn(merge(diff, rest), h, t))
    return out.diff, out.rest

  return step, merge


def push(step, diff, rest, h, t, tangents, dh):
  """One inner step of the primal and of a batch of tangents.

  Args:
    step: from :func:`step_pieces`.
    diff, rest: the state's differentiable and other leaves.
    h: the hyperparameters in force at step ``t`` (``hparams_t``).
    t: int32 step index.
    tangents: list of ``(K, *leaf.shape)`` arrays, one per ``diff`` leaf.
    dh: pytree like ``h`` with leaves ``(K, *leaf.shape)``: each tangent's
      direction in hyperparameter space at this step.

  Returns:
    ``(new_diff, new_rest, new_tangents)``.
  """
  new_diff, lin, new_rest = jax.linearize(
      lambda d, h_: step(d, rest, h_, t), diff, h, has_aux=True)
  return new_diff, new_rest, list(jax.vmap(lin)(tangents, dh))


def zeros(k: int, diff) -> list:
  """``k`` zero tangents of the differentiable leaves ``diff``."""
  return [jnp.zeros((k,) + np.shape(x), jnp.result_type(x)) for x in diff]


def basis(values: PyTree) -> PyTree:
  """One-hot tangents of every scalar in ``values``: leaves ``(K, *leaf.shape)``.

  ``K`` is the total number of scalars; row ``k`` is 1 at the ``k``-th scalar
  in ``jax.tree.leaves`` order (row-major within a leaf).
  """
  leaves, treedef = jax.tree.flatten(values)
  sizes = [int(np.size(h)) for h in leaves]
  total, offset, out = sum(sizes), 0, []
  for h, size in zip(leaves, sizes):
    b = np.zeros((total, size), dtype=jnp.result_type(h))
    b[offset + np.arange(size), np.arange(size)] = 1
    out.append(jnp.asarray(b.reshape((total,) + np.shape(h))))
    offset += size
  return jax.tree.unflatten(treedef, out)


def contract_flat(tangents, grads, dtype) -> jax.Array:
  """``grad E . Z`` for each of the ``K`` tangents: shape ``(K,)``.

  Each state leaf's contribution is cast to ``dtype`` before summing, so a
  mixed-precision state passes strict dtype promotion.
  """
  total = None
  for z, g in zip(tangents, grads):
    term = (z.reshape(z.shape[0], -1) @ g.reshape(-1).astype(z.dtype)
            ).astype(dtype)
    total = term if total is None else total + term
  return total


def unflatten_like(flat: jax.Array, values: PyTree) -> PyTree:
  """A ``(K,)`` vector back into the structure, shapes and dtypes of ``values``."""
  leaves, treedef = jax.tree.flatten(values)
  out, offset = [], 0
  for h in leaves:
    size = int(np.size(h))
    out.append(flat[offset:offset + size].reshape(np.shape(h)).astype(
        jnp.result_type(h)))
    offset += size
  return jax.tree.unflatten(treedef, out)


def contract(tangents, grads, values: PyTree) -> PyTree:
  """``grad E . Z`` as a pytree like ``values`` (tangents from :func:`basis`)."""
  dtype = np.result_type(*[jnp.result_type(h) for h in jax.tree.leaves(values)])
  return unflatten_like(contract_flat(tangents, grads, dtype), values)
