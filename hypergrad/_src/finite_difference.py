"""Central finite differences of a scalar function of a schedule pytree.

The reference every hypergradient estimator is checked against: in float64,
with ``eps ~ 1e-6``, truncation (``O(eps^2)``) and rounding (``~1e-16 / eps``)
errors are both near ``1e-10`` relative, far below the float32 estimators'.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hypergrad._src import validation

PyTree = Any


def finite_difference(loss: Callable[[PyTree], Any], hparams: PyTree,
                      eps: float = 1e-6) -> PyTree:
  r"""Central differences of ``loss(hparams)`` w.r.t. every schedule value.

  .. math::
    g_i \approx \frac{L(h + \epsilon e_i) - L(h - \epsilon e_i)}{2 \epsilon}

  Costs two evaluations of ``loss`` per schedule value (each a whole training
  run for a validation loss), so it is for checking, not for searching.

  Args:
    loss: ``loss(hparams) -> scalar``, e.g. ``lambda h: loss_fn(unroll(
      step_fn, state, h, T))``; jit it so the bumped calls do not retrace.
    hparams: the schedule pytree; leaves of any shape.
    eps: the bump; ``1e-6`` suits float64 (enable ``jax_enable_x64``).

  Returns:
    A pytree like ``hparams`` of float64 numpy arrays.

  Raises:
    ValueError: ``eps`` not a positive finite number.

  Example:
    >>> import jax, jax.numpy as jnp, hypergrad
    >>> step_fn = lambda w, h, t: w - h['lr'] * 2.0 * (w - 3.0)
    >>> loss_fn = lambda w: (w - 3.0) ** 2
    >>> hparams = {'lr': hypergrad.constant(0.1, 2)}
    >>> loss = jax.jit(lambda h: loss_fn(
    ...     hypergrad.unroll(step_fn, jnp.zeros(()), h, 10)))
    >>> g_fd = hypergrad.finite_difference(loss, hparams, eps=1e-3)  # float32
    >>> _, g = hypergrad.forward_hypergrad(step_fn, loss_fn, jnp.zeros(()),
    ...                                    hparams, 10)
    >>> bool(jnp.allclose(g['lr'], g_fd['lr'], rtol=1e-2))
    True
  """
  if not (validation.is_real(eps) and np.isfinite(eps) and eps > 0):
    raise ValueError(f'eps must be a positive finite number, got eps={eps!r}.')
  leaves, treedef = jax.tree.flatten(hparams)
  out = []
  for l, leaf in enumerate(leaves):
    leaf = np.asarray(leaf, np.float64)
    grad = np.zeros_like(leaf)
    for idx in np.ndindex(leaf.shape):
      vals = []
      for sign in (1.0, -1.0):
        bumped = leaf.copy()
        bumped[idx] += sign * eps
        new = list(leaves)
        new[l] = jnp.asarray(bumped)
        vals.append(float(loss(jax.tree.unflatten(treedef, new))))
      grad[idx] = (vals[0] - vals[1]) / (2 * eps)
    out.append(grad)
  return jax.tree.unflatten(treedef, out)
