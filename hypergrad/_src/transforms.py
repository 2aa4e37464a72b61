"""Parametrisations that keep hyperparameters in their valid range.

Learning in an unconstrained space is the user's choice, made explicit by
wrapping the step: ``reparametrize(step_fn, {'lr': jax.nn.softplus})`` gives a
step whose ``hparams_t['lr']`` is a raw value mapped through ``softplus`` before
use (``jax.nn.sigmoid`` and ``jax.scipy.special.logit`` for momentum).
Hypergradients are then with respect to the raw values. Nothing here is applied
behind the user's back.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp


def inverse_softplus(y):
  """Inverse of ``jax.nn.softplus`` for ``y > 0``, stable for large ``y``."""
  y = jnp.asarray(y)
  return y + jnp.log(-jnp.expm1(-y))


def reparametrize(step_fn: Callable, transforms: Mapping[str, Callable]):
  """Wraps ``step_fn`` so named hyperparameters arrive in a raw space.

  Args:
    step_fn: ``step_fn(state, hparams_t, t) -> state`` with mapping hparams.
    transforms: name -> function applied to ``hparams_t[name]`` (and to every
      leaf of it, for per-layer values) before ``step_fn`` sees it.

  Returns:
    A step function of the same contract taking raw values.

  Example:
    >>> import jax, jax.numpy as jnp, hypergrad
    >>> step_fn = hypergrad.sgd_momentum_step(lambda w, t: jnp.sum(w ** 2))
    >>> raw_step = hypergrad.reparametrize(
    ...     step_fn, {'lr': jax.nn.softplus, 'momentum': jax.nn.sigmoid})
    >>> raw = {'lr': hypergrad.inverse_softplus(hypergrad.constant(0.1, 7)),
    ...        'momentum': jax.scipy.special.logit(hypergrad.constant(0.9))}
    >>> _, g = hypergrad.forward_hypergrad(   # d loss / d raw values
    ...     raw_step, lambda s: jnp.sum(s.params ** 2),
    ...     hypergrad.sgd_init(jnp.ones(2)), raw, 70)
    >>> g['lr'].shape
    (7,)
  """
  transforms = dict(transforms)

  def wrapped(state: Any, hparams_t, t):
    mapped = dict(hparams_t)
    for name, fn in transforms.items():
      if name in mapped:
        mapped[name] = jax.tree.map(fn, mapped[name])
    return step_fn(state, mapped, t)

  return wrapped
