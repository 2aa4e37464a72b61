"""Finite differences of a scalar function of a schedule pytree.

The reference every hypergradient estimator is checked against: in float64,
with ``eps ~ 1e-6``, truncation (``O(eps^2)``) and rounding (``~1e-16 / eps``)
errors are both near ``1e-10`` relative, far below the float32 estimators'.
:func:`check_hypergrad` asks the cheaper question a search needs answered:
does a hypergradient predict the loss along its own direction?
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

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


class HypergradCheck(NamedTuple):
  """Whether a hypergradient predicts the loss along its own direction.

  Attributes:
    predicted: the directional derivative the hypergradient predicts along
      its own direction, each leaf in units of its size (see
      :func:`check_hypergrad`).
    measured: the central differences of the loss along it at each step.
    steps: the steps taken, as fractions of each leaf's size.
    ratios: ``measured / predicted`` at each step.
    agrees: every ratio within ``[1 / factor, factor]``: same sign, and the
      size right to that factor at both steps.
  """
  predicted: float
  measured: tuple[float, ...]
  steps: tuple[float, ...]
  ratios: tuple[float, ...]
  agrees: bool


def check_hypergrad(loss: Callable[[PyTree], Any], hparams: PyTree,
                    hypergrads: PyTree, *,
                    rel_steps: tuple[float, ...] = (1e-2, 1e-3),
                    factor: float = 2.0) -> HypergradCheck:
  r"""Checks a hypergradient against the loss it claims to differentiate.

  Each leaf is measured in units of its own root mean square ``s`` (1 where
  it is all 0). With ``d = (g s) / ||g s||`` over all values, a hypergradient
  that can be trusted predicts ``L(h + e s d) - L(h - e s d) ~ 2 e ||g s||``
  at small steps ``e``. Where the inner training is chaotic the derivative of the unroll
  explodes and no longer describes the loss at any step a search would take
  (Metz et al. 2021): the central differences at two steps disagree with it
  and with each other. Costs ``2 * len(rel_steps)`` evaluations of ``loss``
  (plain training runs). See ``docs/trust.md``.

  Args:
    loss: ``loss(hparams) -> scalar``, the outer loss after a plain run on
      the same split and initialisation as the hypergradient; jit it.
    hparams: the values the hypergradient was computed at.
    hypergrads: the hypergradient, like ``hparams``.
    rel_steps: the steps along ``d``, as fractions of each leaf's size.
    factor: how far, as a factor, each central difference may be from the
      prediction.

  Returns:
    A :class:`HypergradCheck`; ``agrees`` is True for a zero hypergradient
    whose loss does not move either.

  Raises:
    ValueError: a step or ``factor`` that is not a positive finite number
      (``factor > 1``), or a non-finite hypergradient.

  Example:
    >>> import jax, jax.numpy as jnp, hypergrad
    >>> step_fn = lambda w, h, t: w - h['lr'] * 2.0 * (w - 3.0)
    >>> loss_fn = lambda w: (w - 3.0) ** 2
    >>> hparams = {'lr': hypergrad.constant(0.1, 2)}
    >>> _, g = hypergrad.forward_hypergrad(step_fn, loss_fn, jnp.zeros(()),
    ...                                    hparams, 10)
    >>> loss = jax.jit(lambda h: loss_fn(
    ...     hypergrad.unroll(step_fn, jnp.zeros(()), h, 10)))
    >>> hypergrad.check_hypergrad(loss, hparams, g).agrees
    True
  """
  steps = tuple(rel_steps)
  if not steps or not all(validation.is_real(e) and np.isfinite(e) and e > 0
                          for e in steps):
    raise ValueError('rel_steps must be positive finite numbers, got '
                     f'rel_steps={rel_steps!r}.')
  if not (validation.is_real(factor) and np.isfinite(factor) and factor > 1):
    raise ValueError(f'factor must be a finite number > 1, got '
                     f'factor={factor!r}.')
  h_leaves, treedef = jax.tree.flatten(hparams)
  g_leaves = jax.tree.leaves(hypergrads)
  if len(g_leaves) != len(h_leaves):
    raise ValueError('hypergrads must have the structure of hparams.')
  h_np = [np.asarray(h, np.float64) for h in h_leaves]
  g_np = [np.asarray(g, np.float64) for g in g_leaves]
  if not all(np.all(np.isfinite(g)) for g in g_np):
    raise ValueError('the hypergradient holds a NaN or Inf: nothing to check.')
  # Each leaf in units of its own size: a weight decay of 5e-4 and a
  # learning rate of 0.4 are moved by the same fraction of themselves.
  scales = [float(np.sqrt(np.mean(h ** 2))) if h.size else 1.0 for h in h_np]
  scales = [s if s > 0 else 1.0 for s in scales]
  scaled = [g * s for g, s in zip(g_np, scales)]
  norm = float(np.sqrt(sum(np.sum(g ** 2) for g in scaled)))
  direction = [g / norm * s if norm > 0 else np.zeros_like(g)
               for g, s in zip(scaled, scales)]

  def at(e):
    moved = [jnp.asarray(h + e * d, jnp.result_type(x))
             for h, d, x in zip(h_np, direction, h_leaves)]
    return float(loss(jax.tree.unflatten(treedef, moved)))

  measured = [(at(e) - at(-e)) / (2 * e) for e in steps]
  if norm > 0:
    ratios = tuple(m / norm for m in measured)
    agrees = all(np.isfinite(r) and 1 / factor <= r <= factor
                 for r in ratios)
  else:
    ratios = tuple(float('nan') for _ in measured)
    agrees = all(abs(m) <= 1e-6 for m in measured)
  return HypergradCheck(norm, tuple(measured), steps, ratios, bool(agrees))
