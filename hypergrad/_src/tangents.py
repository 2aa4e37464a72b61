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
* :func:`push_batch`: the step and the whole tangent batch in one ``vmap``
  of ``jvp``, so the primal step is computed once per inner step, not once
  per tangent;
* :func:`basis` and :func:`contract`: one-hot tangents of a pytree of values,
  and ``grad E . Z`` back into the structure of the values.

``forward_hypergrad`` pushes its tangents in one of two ways: a static batch
fused with the primal step (:func:`push_batch`, in a few batch sizes chosen
by :func:`buckets`), or the variable-count form (:func:`linearize` and
:func:`push_rows`: the step linearised once, its linear map applied to the
first ``count`` rows one at a time, ``count`` traced, so one compiled loop
body serves any number of begun tangents).
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


def linearize(step, diff, rest, h, t):
  """The primal step and its linear map in ``(diff, h)``, computed once.

  Returns:
    ``(new_diff, new_rest, lin)`` with ``lin(z, dh) -> new_z`` for one
    tangent ``z`` (a list like ``diff``) and ``dh`` (a pytree like ``h``).
  """
  new_diff, lin, new_rest = jax.linearize(
      lambda d, h_: step(d, rest, h_, t), diff, h, has_aux=True)
  return new_diff, new_rest, lin


def push_batch(step, diff, rest, h, t, tangents, dh):
  """One inner step of the primal and of a static batch of tangents, fused.

  ``jax.vmap`` of ``jax.jvp``: XLA sees the primal step and all ``B``
  tangent pushes as one program and fuses them (the primal's elementwise
  derivatives are computed in the kernels that use them), and every tangent
  matmul carries the whole batch.

  Args:
    step: from :func:`step_pieces`.
    diff, rest: the state's differentiable and other leaves.
    h: the hyperparameters in force at step ``t``.
    t: int32 step index.
    tangents: list of ``(B, *leaf.shape)`` arrays, one per ``diff`` leaf.
    dh: pytree like ``h`` with leaves ``(B, *leaf.shape)``.

  Returns:
    ``(new_diff, new_rest, new_tangents)``.
  """
  def one(z, dh_):
    return jax.jvp(lambda d, h_: step(d, rest, h_, t), (diff, h), (z, dh_),
                   has_aux=True)

  new_diff, new_z, new_rest = jax.vmap(
      one, in_axes=(0, 0), out_axes=(None, 0, None))(list(tangents), dh)
  return new_diff, new_rest, [v.astype(z.dtype)
                              for v, z in zip(new_z, tangents)]


def push_rows(lin, tangents, count, direction):
  r"""Applies ``lin`` to rows ``0 .. count-1`` of the tangent batch, in place.

  Row ``i`` becomes ``lin(tangents[:, i], direction(i))``; rows from
  ``count`` on are neither read nor written. ``count`` may be traced, so one
  compiled loop body serves every number of rows (the number of begun
  tangents changes along the unroll).

  Rows go through ``lin`` one at a time, not as a ``vmap`` batch: on XLA:CPU
  one row is plain 2-D linear algebra and the loop body compiles once for
  any count (figures: ``docs/benchmarks.md``). Each application sits inside
  a ``lax.cond`` whose predicate is always true: the conditional is a fusion
  boundary, so the row is read and written as one contiguous copy (without
  it XLA fuses the dynamic row indexing into every elementwise tangent
  kernel, and the push runs about 2x slower).

  Args:
    lin: ``lin(z, dh) -> new_z``, from :func:`linearize`.
    tangents: list of ``(C, *leaf.shape)`` arrays, one per differentiable
      state leaf.
    count: int32 scalar, ``0 <= count <= C``.
    direction: ``direction(i) -> dh``, the hyperparameter tangent of row
      ``i`` (traced ``i``) at this step.

  Returns:
    ``(tangents, finite)``: the updated batch and whether every new row is
    finite (bool scalar; True when ``count == 0``).

  Example:
    >>> lin = lambda z, dh: [2.0 * z[0] + dh]
    >>> rows, ok = push_rows(lin, [jnp.ones((3, 2))], jnp.int32(2),
    ...                      lambda i: 1.0)
    >>> rows[0][:, 0].tolist(), bool(ok)
    ([3.0, 3.0, 1.0], True)
  """
  def apply(z, dh):
    new = list(lin(z, dh))
    return new, unroll_lib.all_finite(new)

  def keep(z, dh):
    del dh
    return list(z), jnp.bool_(True)

  def row(i, carry):
    batch, finite = carry
    z = [jax.lax.dynamic_index_in_dim(x, i, keepdims=False) for x in batch]
    new, ok = jax.lax.cond(i < count, apply, keep, z, direction(i))
    batch = [jax.lax.dynamic_update_index_in_dim(x, v.astype(x.dtype), i, 0)
             for x, v in zip(batch, new)]
    return batch, finite & ok

  return jax.lax.fori_loop(jnp.int32(0), count.astype(jnp.int32), row,
                           (list(tangents), jnp.bool_(True)))


def buckets(counts, max_buckets: int) -> list[int]:
  r"""Static tangent-batch sizes for a run, chosen to waste the fewest pushes.

  ``counts[t]`` is the number of tangents begun at inner step ``t``
  (non-decreasing in ``t``). Each step pushes the smallest chosen batch size
  that holds its begun tangents; the sizes minimise the pushes of not-yet-
  begun rows, ``sum_t (bucket(counts[t]) - counts[t])``, over at most
  ``max_buckets`` sizes (an exact dynamic programme over the distinct
  counts). One batch size is one compiled push, so the program compiles a
  number of pushes bounded by ``max_buckets`` whatever the number of
  intervals.

  Args:
    counts: int array ``(T,)``, begun tangents per step.
    max_buckets: int >= 1.

  Returns:
    The sorted batch sizes; the largest is ``max(counts)``.

  Example:
    >>> buckets([3, 3, 4, 4, 5, 5, 9, 9], 2)
    [5, 9]
  """
  values, weights = np.unique(np.asarray(counts, np.int64), return_counts=True)
  m = len(values)
  if m <= max_buckets:
    return [int(v) for v in values]
  w = weights.astype(np.float64)
  cw = np.concatenate([[0.0], np.cumsum(w)])
  cvw = np.concatenate([[0.0], np.cumsum(w * values)])

  def cover(j, i):  # rows wasted when values[j..i] all use values[i]
    return values[i] * (cw[i + 1] - cw[j]) - (cvw[i + 1] - cvw[j])

  inf = np.inf
  # best[k, i]: least waste covering values[0..i] with k+1 sizes, the
  # largest values[i]; arg[k, i]: where its last bucket's run begins.
  best = np.full((max_buckets, m), inf)
  arg = np.zeros((max_buckets, m), np.int64)
  best[0] = cover(0, np.arange(m))
  for k in range(1, max_buckets):
    for i in range(m):
      j = np.arange(1, i + 1)
      if not len(j):
        continue
      c = best[k - 1, j - 1] + cover(j, i)
      arg[k, i] = j[np.argmin(c)]
      best[k, i] = c.min()
  k = int(np.argmin(best[:, m - 1]))
  sizes, i = [], m - 1
  while True:
    sizes.append(int(values[i]))
    if k == 0:
      break
    i, k = int(arg[k, i]) - 1, k - 1
  return sorted(sizes)


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
