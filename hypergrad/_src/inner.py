"""Ready-made inner steps: SGD with momentum and weight decay, and any optax optimiser.

Each builder turns a training loss into a ``step_fn(state, hparams_t, t)`` of
the core contract. Hyperparameters are looked up by name in ``hparams_t`` (a
mapping); names absent from it take the fixed values given to the builder, so
the same step learns any subset of them.

A hyperparameter value may be a scalar, an array broadcastable against every
parameter leaf, or a pytree that is a prefix of the parameters (one value per
layer, say): ``{'lr': {'Dense_0': ..., 'Dense_1': ...}}``.

With ``loss_hparams=True`` the training loss sees the hyperparameters too,
``train_loss_fn(params, t, hparams_t)``: a weighted loss (one weight per
training example, a :class:`hypergrad.ConstantLeaf`) or a coupling between
tasks needs no hand-written step. Names the optimiser does not know are
then the loss's.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hypergrad._src import registry

PyTree = Any

SGD_HPARAMS = registry.SGD.names


class SGDState(NamedTuple):
  """Inner state of SGD with momentum.

  Attributes:
    params: the model parameters.
    velocity: the momentum buffer, same structure as ``params``.
    model_state: non-trained model state carried through the run, e.g. flax
      ``batch_stats``; ``()`` when the model has none.
  """
  params: PyTree
  velocity: PyTree
  model_state: PyTree = ()


class OptaxState(NamedTuple):
  """Inner state of an optax optimiser built with ``optax.inject_hyperparams``."""
  params: PyTree
  opt_state: PyTree
  model_state: PyTree = ()


def sgd_init(params: PyTree, model_state: PyTree = ()) -> SGDState:
  """Initial SGD state: zero velocity."""
  return SGDState(params, jax.tree.map(jnp.zeros_like, params), model_state)


def _per_param(value, params, fn):
  """Applies ``fn(value_leaf, param_leaf)`` with ``value`` a prefix of ``params``."""
  if not isinstance(value, (Mapping, list, tuple)):
    return jax.tree.map(lambda p: fn(value, p), params)
  return jax.tree.map(lambda v, sub: jax.tree.map(lambda p: fn(v, p), sub),
                      value, params)


def _lookup(hparams_t: Mapping[str, Any], name: str, fixed: Mapping[str, Any]):
  if name in hparams_t:
    return hparams_t[name]
  if fixed.get(name) is None:
    raise KeyError(
        f'hyperparameter {name!r} is neither in hparams_t (keys '
        f'{sorted(hparams_t)}) nor given a fixed value to the step builder.')
  return fixed[name]


def _loss_and_grad(train_loss_fn, with_model_state, loss_hparams=False):
  """``value_and_grad`` of ``(params, model_state, t, hparams_t)``."""
  if with_model_state:
    def wrapped(params, model_state, t, hparams_t):
      if loss_hparams:
        return train_loss_fn(params, model_state, t, hparams_t)
      return train_loss_fn(params, model_state, t)
  else:
    def wrapped(params, model_state, t, hparams_t):
      if loss_hparams:
        return train_loss_fn(params, t, hparams_t), model_state
      return train_loss_fn(params, t), model_state
  return jax.value_and_grad(wrapped, has_aux=True)


def _clip(grads, max_norm):
  if max_norm is None:
    return grads
  norm = optax.global_norm(grads)
  scale = jnp.minimum(1.0, max_norm / jnp.maximum(norm, 1e-12))
  return jax.tree.map(lambda g: g * scale.astype(g.dtype), grads)


def sgd_momentum_step(train_loss_fn: Callable[..., Any], *,
                      lr=None, momentum=0.0, weight_decay=0.0,
                      with_model_state: bool = False,
                      max_grad_norm: float | None = None,
                      loss_hparams: bool = False):
  """Builds the FDS inner step: SGD with momentum and coupled weight decay.

  With gradient ``g`` of the training loss on the minibatch of step ``t``:

      v <- momentum * v + g + weight_decay * w
      w <- w - lr * v

  Args:
    train_loss_fn: ``train_loss_fn(params, t) -> loss``, or with
      ``with_model_state=True``
      ``train_loss_fn(params, model_state, t) -> (loss, new_model_state)``.
      It picks its minibatch from the step index ``t``.
    lr, momentum, weight_decay: fixed values for hyperparameters absent from
      ``hparams_t``; ``lr=None`` means ``hparams_t`` must hold ``'lr'``.
    with_model_state: see ``train_loss_fn``.
    max_grad_norm: clip the minibatch gradient to this global norm (the FDS
      reference clamps inner gradients in some experiments); None: no clip.
    loss_hparams: pass the step's hyperparameters to the loss as a last
      argument, ``train_loss_fn(params, t, hparams_t)`` (or ``(params,
      model_state, t, hparams_t)``); names other than SGD's are then allowed
      and left to the loss.

  Returns:
    ``step_fn(state: SGDState, hparams_t, t) -> SGDState``.

  Example:
    >>> step_fn = sgd_momentum_step(lambda w, t: jnp.sum(w ** 2))
    >>> state = sgd_init(jnp.ones(3))
    >>> state = step_fn(state, {'lr': 0.1, 'momentum': 0.9}, 0)

    A loss weighted per example, the weights learned as hyperparameters:

    >>> x, y = jnp.ones((4, 3)), jnp.arange(4.0)
    >>> weighted = lambda w, t, h: jnp.mean(h['weights'] * (x @ w - y) ** 2)
    >>> step_fn = sgd_momentum_step(weighted, lr=0.1, loss_hparams=True)
    >>> state = step_fn(sgd_init(jnp.zeros(3)), {'weights': jnp.ones(4)}, 0)
  """
  fixed = {'lr': lr, 'momentum': momentum, 'weight_decay': weight_decay}
  value_and_grad = _loss_and_grad(train_loss_fn, with_model_state,
                                  loss_hparams)

  def step_fn(state: SGDState, hparams_t, t) -> SGDState:
    unknown = set(hparams_t) - set(SGD_HPARAMS)
    if unknown and not loss_hparams:
      raise KeyError(f'SGD has no hyperparameter(s) {sorted(unknown)}; '
                     f'known: {list(SGD_HPARAMS)}. For a loss that reads '
                     'them, build the step with loss_hparams=True.')
    (_, model_state), grads = value_and_grad(state.params, state.model_state, t,
                                             hparams_t)
    grads = _clip(grads, max_grad_norm)
    mom = _lookup(hparams_t, 'momentum', fixed)
    wd = _lookup(hparams_t, 'weight_decay', fixed)
    lr_ = _lookup(hparams_t, 'lr', fixed)
    decayed = jax.tree.map(
        jnp.add, grads, _per_param(wd, state.params, lambda h, p: h * p))
    scaled_v = _per_param(mom, state.velocity, lambda h, v: h * v)
    velocity = jax.tree.map(jnp.add, scaled_v, decayed)
    steps = _per_param(lr_, velocity, lambda h, v: h * v)
    params = jax.tree.map(jnp.subtract, state.params, steps)
    return SGDState(_cast_like(params, state.params),
                    _cast_like(velocity, state.velocity), model_state)

  return step_fn


def _cast_like(tree, like):
  # A float64 hyperparameter must not promote a float32 model's state: the
  # scan carry keeps its dtypes.
  return jax.tree.map(lambda x, y: x.astype(jnp.result_type(y)), tree, like)


def optax_init(optimizer: optax.GradientTransformation, params: PyTree,
               model_state: PyTree = ()) -> OptaxState:
  """Initial state for :func:`optax_step`."""
  return OptaxState(params, optimizer.init(params), model_state)


def optax_step(train_loss_fn: Callable[..., Any],
               optimizer: optax.GradientTransformation, *,
               with_model_state: bool = False,
               max_grad_norm: float | None = None,
               loss_hparams: bool = False):
  """Builds an inner step from any optax optimiser with injectable hyperparameters.

  The optimiser must come from ``optax.inject_hyperparams``; at every step the
  values in ``hparams_t`` overwrite the same-named entries of its
  ``hyperparams`` before the update, so they are differentiated through.

  Args:
    train_loss_fn: as in :func:`sgd_momentum_step`.
    optimizer: e.g. ``optax.inject_hyperparams(optax.adam)(learning_rate=1e-3)``.
    with_model_state: as in :func:`sgd_momentum_step`.
    max_grad_norm: optional global-norm clip of the minibatch gradient.
    loss_hparams: as in :func:`sgd_momentum_step`: the loss gets
      ``hparams_t`` last, and names the optimiser cannot inject are the
      loss's.

  Returns:
    ``step_fn(state: OptaxState, hparams_t, t) -> OptaxState``.

  Example:
    >>> opt = optax.inject_hyperparams(optax.adam)(learning_rate=1e-3, b1=0.9)
    >>> step_fn = optax_step(lambda w, t: jnp.sum(w ** 2), opt)
    >>> state = optax_init(opt, jnp.ones(3))
    >>> state = step_fn(state, {'learning_rate': 0.01, 'b1': 0.8}, 0)
  """
  value_and_grad = _loss_and_grad(train_loss_fn, with_model_state,
                                  loss_hparams)

  def step_fn(state: OptaxState, hparams_t, t) -> OptaxState:
    opt_state = state.opt_state
    if not hasattr(opt_state, 'hyperparams'):
      raise TypeError('optax_step needs an optimiser built with '
                      'optax.inject_hyperparams; its state has no hyperparams.')
    unknown = set(hparams_t) - set(opt_state.hyperparams)
    if unknown and not loss_hparams:
      raise KeyError(
          f'the optimiser has no injectable hyperparameter(s) '
          f'{sorted(unknown)}; injectable: {sorted(opt_state.hyperparams)}. '
          'For a loss that reads them, build the step with '
          'loss_hparams=True.')
    hyper = dict(opt_state.hyperparams)
    for name, value in hparams_t.items():
      if name in hyper:
        hyper[name] = jnp.asarray(value).astype(jnp.result_type(hyper[name]))
    opt_state = opt_state._replace(hyperparams=hyper)
    (_, model_state), grads = value_and_grad(state.params, state.model_state, t,
                                             hparams_t)
    grads = _clip(grads, max_grad_norm)
    updates, opt_state = optimizer.update(grads, opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return OptaxState(_cast_like(params, state.params), opt_state, model_state)

  return step_fn
