r"""Hypergradient descent (Baydin et al. 2018), generalised by one-step differentiation.

Baydin et al. adapt the SGD learning rate online from the dot product of
successive gradients:

    alpha_{t+1} = alpha_t + beta * g_{t+1} . g_t,

which is gradient descent on ``alpha`` for the loss after *one* step:
``d f_{t+1}(theta_{t+1}) / d alpha = -g_{t+1} . g_t``. Written that way it
extends to any hyperparameter of any step: with ``s_{t+1} = Phi(s_t, h, t)``,

    h <- h - beta * d L(Phi(s_t, h, t)) / d h           (s_t held fixed)

computed by ``jax.grad`` through the single step, i.e. one vector-Jacobian
product of ``Phi`` with respect to ``h`` (cheap: ``h`` enters the SGD update
elementwise). For SGD with momentum ``v_{t+1} = mu v_t + g_t + wd w_t``,
``w_{t+1} = w_t - alpha v_{t+1}``, it gives ``alpha += beta g_{t+1} . v_{t+1}``
(the update direction replaces ``g_t``), and the one-step hypergradients
``-alpha g_{t+1} . v_t`` for the momentum and ``-alpha g_{t+1} . w_t`` for
the weight decay.

Which loss ``L``:

* ``step_loss_fn(state, t)`` given: ``L = step_loss_fn(s_{t+1}, t + 1)``, the
  training loss of the *next* minibatch: Baydin's original rule (``g_{t+1}``
  is the gradient the next step uses). Recommended: it costs one extra
  minibatch gradient per step.
* otherwise ``L = loss_fn(s_{t+1})``, the same (validation) loss as every
  other estimator: greedy one-step hyperparameter optimisation on the
  validation loss. Costs one validation gradient per step.

The update made at step ``t`` uses the hypergradient computed during step
``t - 1`` (as in Baydin et al., the learning rate is updated just before it is
used), so the state carries it.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from hypergrad._src import online

PyTree = Any


def _init(meta_opt, step_fn, loss_fn, step_loss_fn, inner_state, hparams):
  del step_loss_fn
  values = online.initial_values(hparams, 'hypergradient_descent')
  online.check_unroll(step_fn, loss_fn, inner_state, hparams)
  return online.OnlineState(inner_state, values,
                            jax.tree.map(jnp.zeros_like, values),
                            online.meta_init(meta_opt, values))


def _update(meta_opt, step_fn, loss_fn, step_loss_fn,
            state: online.OnlineState, t):
  t = jnp.asarray(t, jnp.int32)
  # A zero hypergradient (after init) leaves the values unchanged under the
  # built-in rules, so no branch is needed for the first step.
  values, meta_state = online.meta_apply(meta_opt, state.meta_state,
                                         state.hparams, state.hypergrad)

  def one_step_loss(h):
    new_inner = step_fn(state.inner, h, t)
    if step_loss_fn is not None:
      return step_loss_fn(new_inner, t + 1), new_inner
    return loss_fn(new_inner), new_inner

  # The state is a constant here: only the path through this one step's use
  # of h is differentiated.
  grads, new_inner = jax.grad(one_step_loss, has_aux=True)(values)
  grads = jax.tree.map(lambda g, h: g.astype(h.dtype), grads, values)
  return online.OnlineState(new_inner, values, grads, meta_state)


def hypergradient_descent(step_fn: Callable, loss_fn: Callable, *,
                          meta_opt: optax.GradientTransformation | None = None,
                          step_loss_fn: Callable | None = None
                          ) -> online.OnlineMethod:
  r"""Hypergradient descent: every step, a one-step hypergradient update.

  Every hyperparameter in ``hparams`` is learned (fix the others in the step
  builder). Per step: one inner step, one vector-Jacobian product of it with
  respect to the hyperparameters, and one gradient of ``L`` (see the module
  docstring): about twice the cost of plain training.

  Args:
    step_fn: ``step_fn(state, hparams_t, t) -> state``, as for
      ``forward_hypergrad``.
    loss_fn: ``loss_fn(state) -> scalar``, the validation loss; the one-step
      loss unless ``step_loss_fn`` is given.
    meta_opt: the meta optimiser, an optax ``GradientTransformation``
      applied to the hypergradient; default
      ``hypergrad.meta_optimizer(1e-3)``: gradient steps with Baydin et
      al.'s ``beta = 1e-3`` for SGD. ``beta`` multiplies a dot product of
      gradients, so its right size goes like ``1 / ||g||^2``;
      ``hypergrad.meta_optimizer(beta, 'sign', hypergrad.SGD_BOUNDS)`` is
      scale free and keeps the values in their valid ranges. The first
      meta step (of a zero hypergradient) comes before step 0, so a
      projection in ``meta_opt`` clips initial values outside their bounds
      from step 0 on.
    step_loss_fn: optional ``step_loss_fn(state, t) -> scalar``, the training
      loss of the minibatch of step ``t`` at ``state``. If given, HD uses
      the next minibatch's training loss (Baydin's rule).

  Returns:
    An :class:`OnlineMethod` with state :class:`OnlineState`.

  Raises:
    TypeError: ``meta_opt`` is not an optax transformation; at construction.

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> def train_loss(w, t):  # a regression whose minibatch is step t's
    ...   x = jnp.sin(jnp.arange(3.0) + t)
    ...   return (x @ w - 1.0) ** 2
    >>> step_fn = hypergrad.sgd_momentum_step(train_loss, momentum=0.5)
    >>> loss_fn = lambda s: jnp.sum((s.params - 0.5) ** 2)   # "validation"
    >>> state = hypergrad.sgd_init(jnp.zeros(3))
    >>> method = hypergrad.hypergradient_descent(
    ...     step_fn, loss_fn, meta_opt=hypergrad.meta_optimizer(1e-3),
    ...     step_loss_fn=lambda s, t: train_loss(s.params, t))
    >>> final, sched = hypergrad.run_online(
    ...     method, state, {'lr': hypergrad.constant(0.01)}, 100)
    >>> sched['lr'].shape   # the learning rate each step used
    (100,)
  """
  meta_opt = online.check_meta_opt(meta_opt)
  return online.make_method(online.Static(_init, ()),
                            online.Static(_update, ()), meta_opt,
                            (step_fn, loss_fn, step_loss_fn))
