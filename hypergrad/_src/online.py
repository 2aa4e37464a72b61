r"""Greedy (online) hyperparameter estimators behind one optax-like interface.

The non-greedy estimators (``forward_hypergrad``, ``reverse_hypergrad``)
differentiate a validation loss through a *whole* training run and are used by
an outer loop over many runs. The greedy estimators here instead adapt the
hyperparameters *during a single run*, from hypergradients over a short
horizon: one step (hypergradient descent), the steps since the last update
(RTHO), or a look-ahead window (truncated greedy). They are the baselines of
the FDS paper (Micaelli & Storkey 2021); the ``step_fn`` / ``loss_fn`` /
``hparams`` contract is the one of ``forward_hypergrad``.

The interface, shared by every method::

    method = hypergrad.rtho(step_fn, loss_fn, every=10, meta_lr=1e-3)
    state = method.init(inner_state, hparams)     # hparams leaves (1, ...)
    update = jax.jit(method.update)
    for t in range(num_steps):
      state = update(state, t)                    # one inner step
      log(t, state.hparams)                       # the values step t used
    final_inner = state.inner

or, as one jitted ``lax.scan`` returning the values used at every step::

    final_inner, schedule = hypergrad.run_online(method, inner_state, hparams,
                                                 num_steps)

Conventions:

* ``init(inner_state, hparams)``: ``hparams`` is a schedule pytree of the core
  contract with a single interval, leaves ``(1, ...)`` (e.g.
  ``hypergrad.constant(0.1)``): the initial values. The state's ``hparams``
  drops that axis: leaves ``(...)``, exactly the ``hparams_t`` that
  ``step_fn`` receives.
* ``update(state, t)`` first makes the hyperparameter update due at step
  ``t`` (if any), then runs inner step ``t`` with the resulting values. So
  after ``update(state, t)``, ``state.hparams`` is the value step ``t`` used.
* Every state is a NamedTuple with at least ``inner`` (the inner state),
  ``hparams`` and ``hypergrad`` (the latest hypergradient, same structure as
  ``hparams``); the rest is method-specific.
* ``run_online``'s ``schedule`` has leaves ``(num_steps, ...)``: a schedule
  with ``n = num_steps`` intervals, so ``hypergrad.unroll(step_fn,
  inner_state, schedule, num_steps)`` replays the run and ``forward_hypergrad``
  can differentiate it.

Meta updates (shared by every method): with hypergradient ``g`` of a leaf and
its meta step size ``eta``,

* ``'sgd'`` (default): ``h <- h - eta * g``;
* ``'sign'``: ``h <- h - eta * sign(g)`` (scale free: moves by ``eta``);
* ``'normalized'``: ``h <- h - eta * g / ||g||_2``, the norm taken per leaf.

then optionally ``h <- clip(h, lo, hi)`` (``bounds``). ``meta_lr`` is one
positive float or a mapping from top-level hyperparameter name to a positive
float (learning rate and momentum live on very different scales).
"""

from __future__ import annotations

import functools
import math
import types
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hypergrad._src import schedule
from hypergrad._src import unroll as unroll_lib

PyTree = Any

META_UPDATES = ('sgd', 'sign', 'normalized')

# Valid ranges of the SGD hyperparameters, for ``bounds=SGD_BOUNDS``: a
# learning rate or weight decay below zero and a momentum of 1 or more make
# the inner run diverge, and a greedy meta step can overshoot into them.
SGD_BOUNDS = types.MappingProxyType({'lr': (0.0, None),
                                     'momentum': (0.0, 0.999),
                                     'weight_decay': (0.0, None)})


class OnlineMethod(NamedTuple):
  """A greedy hyperparameter estimator: an ``init`` / ``update`` pair.

  Attributes:
    init: ``init(inner_state, hparams) -> state``; ``hparams`` leaves
      ``(1, ...)``. Traces ``step_fn`` once to check the unroll is well formed.
    update: ``update(state, t) -> state``: the hyperparameter update due at
      inner step ``t`` (int32 scalar, may be traced), then inner step ``t``.
    every: inner steps between hyperparameter updates (the window length of
      truncated greedy); ``run_online`` refuses a run shorter than this.
    every_arg: the name of the factory argument that set ``every``, for
      error messages.

  ``init`` and ``update`` are ``jax.tree_util.Partial`` objects: arrays bound
  to ``step_fn`` / ``loss_fn`` with ``Partial`` travel as traced arguments of
  ``run_online``, so new data of the same shapes does not recompile.
  """
  init: Callable[[PyTree, PyTree], Any]
  update: Callable[[Any, jax.Array], Any]
  every: int = 1
  every_arg: str = 'every'


class Named(NamedTuple):
  """A mapping name -> value frozen into a hashable, comparable tuple."""
  items: tuple

  def get(self, key, default=None):
    return dict(self.items).get(key, default)


@jax.tree_util.register_pytree_node_class
class MetaConfig:
  """How hyperparameters move given a hypergradient.

  A pytree whose leaves are the meta step sizes and whose static part is the
  rule, the bounds and the names: bound into an :class:`OnlineMethod`'s
  ``Partial`` the step sizes are traced, so a sweep over ``meta_lr`` (tuning
  a greedy method) compiles once.
  """

  def __init__(self, meta_lr, rule: str, bounds):
    self.meta_lr = meta_lr  # float or Named of floats
    self.rule = rule
    self.bounds = bounds  # None, (lo, hi), or Named of (lo, hi)

  def tree_flatten(self):
    if isinstance(self.meta_lr, Named):
      names = tuple(k for k, _ in self.meta_lr.items)
      rates = tuple(v for _, v in self.meta_lr.items)
    else:
      names, rates = None, (self.meta_lr,)
    return rates, (names, self.rule, self.bounds)

  @classmethod
  def tree_unflatten(cls, aux, rates):
    names, rule, bounds = aux
    meta_lr = rates[0] if names is None else Named(tuple(zip(names, rates)))
    return cls(meta_lr, rule, bounds)

  def __repr__(self):
    return (f'MetaConfig(meta_lr={self.meta_lr!r}, rule={self.rule!r}, '
            f'bounds={self.bounds!r})')


class Static(NamedTuple):
  """``fn`` with static leading arguments, compared and hashed by value.

  It is the static part of the ``Partial`` objects of an :class:`OnlineMethod`:
  two methods built with the same configuration (e.g. for a new split of the
  data bound to ``step_fn``) share one compilation.
  """
  fn: Callable
  args: tuple

  def __call__(self, *args):
    return self.fn(*self.args, *args)


# ---------------------------------------------------------------------------
# Validation (Python values only: runs before any compute).


def validate_positive_int(value, name: str) -> int:
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, np.integer)) or value < 1:
    raise ValueError(f'{name} must be an int >= 1, got {name}={value!r}.')
  return int(value)


def _check_rate(value, name: str) -> float:
  if isinstance(value, (bool, np.bool_)) or not isinstance(
      value, (int, float, np.integer, np.floating)):
    raise ValueError(f'{name} must be a positive number, got {name}='
                     f'{value!r}.')
  if not (math.isfinite(value) and value > 0):
    raise ValueError(f'{name} must be > 0 and finite, got {name}={value!r}.')
  return float(value)


def _check_bound(lo_hi, name: str):
  if (not isinstance(lo_hi, (tuple, list)) or len(lo_hi) != 2):
    raise ValueError(f'{name} must be a pair (lo, hi) with None for no bound, '
                     f'got {name}={lo_hi!r}.')
  lo, hi = lo_hi
  for v in (lo, hi):
    if v is not None and not isinstance(v, (int, float, np.integer,
                                            np.floating)):
      raise ValueError(f'{name} bounds must be numbers or None, got '
                       f'{name}={lo_hi!r}.')
  if lo is not None and hi is not None and lo > hi:
    raise ValueError(f'{name} has lo > hi: {name}={lo_hi!r}.')
  return (None if lo is None else float(lo), None if hi is None else float(hi))


def meta_config(meta_lr, meta_update: str, bounds) -> MetaConfig:
  """Validates the meta-update arguments shared by every greedy method."""
  if isinstance(meta_lr, Mapping):
    if not meta_lr:
      raise ValueError('meta_lr is an empty mapping.')
    meta_lr = Named(tuple((k, _check_rate(v, f'meta_lr[{k!r}]'))
                          for k, v in meta_lr.items()))
  else:
    meta_lr = _check_rate(meta_lr, 'meta_lr')
  if meta_update not in META_UPDATES:
    raise ValueError(f'meta_update must be one of {META_UPDATES}, got '
                     f'meta_update={meta_update!r}.')
  if bounds is not None:
    if isinstance(bounds, Mapping):
      bounds = Named(tuple((k, _check_bound(v, f'bounds[{k!r}]'))
                           for k, v in bounds.items()))
    else:
      bounds = _check_bound(bounds, 'bounds')
  return MetaConfig(meta_lr, meta_update, bounds)


def _top_key(path) -> Any:
  entry = path[0] if path else None
  if isinstance(entry, jax.tree_util.DictKey):
    return entry.key
  if isinstance(entry, jax.tree_util.GetAttrKey):
    return entry.name
  return None


def per_leaf(cfg: MetaConfig, hparams: PyTree):
  """Meta step size and bounds of every hparams leaf, in leaves order."""
  paths = [p for p, _ in jax.tree_util.tree_flatten_with_path(hparams)[0]]
  keys = [_top_key(p) for p in paths]
  if isinstance(cfg.meta_lr, Named):
    meta_lr = dict(cfg.meta_lr.items)
    names = {k for k in keys if k is not None}
    if any(k is None for k in keys):
      raise ValueError('meta_lr is a mapping by name but hparams is not a '
                       'mapping of named hyperparameters; pass one float.')
    missing, extra = names - set(meta_lr), set(meta_lr) - names
    if missing or extra:
      raise ValueError(
          f'meta_lr must have one entry per hyperparameter: missing '
          f'{sorted(missing)}, unknown {sorted(extra)} (hparams has '
          f'{sorted(names)}).')
    lrs = [meta_lr[k] for k in keys]
  else:
    lrs = [cfg.meta_lr] * len(keys)
  if cfg.bounds is None:
    bounds = [(None, None)] * len(keys)
  elif isinstance(cfg.bounds, Named):
    # Names absent from hparams are ignored so that SGD_BOUNDS fits any
    # subset of the SGD hyperparameters.
    bounds = [cfg.bounds.get(k, (None, None)) for k in keys]
  else:
    bounds = [cfg.bounds] * len(keys)
  return lrs, bounds


def meta_step(cfg: MetaConfig, hparams: PyTree, hypergrad: PyTree) -> PyTree:
  """One hyperparameter update ``h <- clip(h - eta * direction(g))``.

  Args:
    cfg: from :func:`meta_config`.
    hparams: current values (any leaf shapes).
    hypergrad: ``d loss / d hparams``, same structure.

  Returns:
    The new values, same structure and dtypes as ``hparams``.
  """
  lrs, bounds = per_leaf(cfg, hparams)
  leaves, treedef = jax.tree.flatten(hparams)
  grads = jax.tree.leaves(hypergrad)
  out = []
  for h, g, lr, (lo, hi) in zip(leaves, grads, lrs, bounds):
    g = g.astype(h.dtype)
    if cfg.rule == 'sign':
      g = jnp.sign(g)
    elif cfg.rule == 'normalized':
      norm = jnp.sqrt(jnp.sum(g * g))
      g = g / jnp.maximum(norm, jnp.finfo(h.dtype).tiny)
    new = h - lr * g
    if lo is not None or hi is not None:
      new = jnp.clip(new, lo, hi)
    out.append(new.astype(h.dtype))
  return jax.tree.unflatten(treedef, out)


def initial_values(hparams: PyTree, method: str) -> PyTree:
  """Checks the single-interval contract and drops the interval axis."""
  for name, leaf in zip(schedule.leaf_names(hparams),
                        jax.tree.leaves(hparams)):
    shape = np.shape(leaf)
    if len(shape) == 0 or shape[0] != 1:
      raise ValueError(
          f'{method} learns one current value per hyperparameter: give '
          f'hparams leaves a single interval axis, shape (1, ...) (e.g. '
          f'hypergrad.constant(value)); leaf {name} has shape {shape}.')
  return jax.tree.map(lambda h: jnp.asarray(h)[0], hparams)


def check_unroll(step_fn, loss_fn, inner_state, hparams):
  """``check_step_fn`` for a single-interval schedule (trace-time only)."""
  unroll_lib.check_step_fn(step_fn, loss_fn, inner_state, hparams, 1)


class _ConfigFirst(NamedTuple):
  """Calls ``impl.fn(cfg, *impl.args, *rest)``: the traced config goes first."""
  impl: Static

  def __call__(self, cfg, *rest):
    return self.impl.fn(cfg, *self.impl.args, *rest)


def make_method(cfg: MetaConfig, init_impl: Static, update_impl: Static, fns,
                every: int = 1, every_arg: str = 'every') -> OnlineMethod:
  """Wraps ``impl.fn(cfg, *impl.args, *fns, ...)`` as an :class:`OnlineMethod`.

  ``cfg`` (its meta step sizes) and ``fns`` (user callables) become pytree
  children of the ``Partial`` so the step sizes and the arrays the functions
  are bound to are traced; ``init_impl`` / ``update_impl`` (with their static
  configuration) are its static part, compared by value, so neither reusing a
  method nor rebuilding it with other meta step sizes, or the same
  configuration and functions, recompiles.
  """
  fns = tuple(None if f is None else unroll_lib.as_pytree_fn(f) for f in fns)
  return OnlineMethod(
      jax.tree_util.Partial(_ConfigFirst(init_impl), cfg, *fns),
      jax.tree_util.Partial(_ConfigFirst(update_impl), cfg, *fns), every,
      every_arg)


# ---------------------------------------------------------------------------
# The driver.


@functools.partial(jax.jit, static_argnums=(0,))
def _run_online(num_steps, init, update, inner_state, hparams):
  state = init(inner_state, hparams)

  # The step index rides in the carry (see unroll.unroll).
  def body(carry, _):
    state, t = carry
    state = update(state, t)
    return (state, t + 1), state.hparams

  (state, _), used = jax.lax.scan(body, (state, jnp.int32(0)), None,
                                  num_steps)
  return state.inner, used


def run_online(method: OnlineMethod, init_state: PyTree, hparams: PyTree,
               num_steps: int):
  """Runs a greedy method over a whole training run, as one jitted scan.

  Args:
    method: from :func:`hypergradient_descent`, :func:`rtho` or
      :func:`truncated_greedy`.
    init_state: the inner state at step 0.
    hparams: the initial hyperparameters, schedule leaves of shape
      ``(1, ...)`` (``hypergrad.constant(value)``).
    num_steps: the number of inner steps ``T``, a Python int.

  Returns:
    ``(final_inner_state, schedule)``: the inner state after ``T`` steps, and
    the values actually used at every step: the structure and dtypes of
    ``hparams`` with leaves ``(T, ...)``, a valid ``T``-interval schedule.

  Raises:
    ValueError, TypeError: bad ``num_steps`` or ``hparams``, an ``every`` /
      ``window`` longer than the run, a malformed ``step_fn``; before any
      compute.

  Example:
    >>> method = hypergrad.hypergradient_descent(step_fn, loss_fn,
    ...                                          meta_lr=1e-3)
    >>> final, sched = hypergrad.run_online(
    ...     method, hypergrad.sgd_init(params), {'lr': hypergrad.constant(0.1)},
    ...     num_steps=1000)
    >>> sched['lr'].shape
    (1000,)
  """
  if not isinstance(method, OnlineMethod):
    raise TypeError(f'method must be an OnlineMethod (from '
                    f'hypergradient_descent, rtho or truncated_greedy), got '
                    f'{type(method).__name__}.')
  num_steps = schedule.validate_num_steps(num_steps)
  if method.every > num_steps:
    raise ValueError(
        f'{method.every_arg}={method.every} is longer than the run, '
        f'num_steps={num_steps}: no hyperparameter update would be made.')
  hparams = schedule.validate_hparams(hparams, num_steps)
  initial_values(hparams, 'run_online')
  init_state = unroll_lib.as_state(init_state)
  return _run_online(num_steps, method.init, method.update, init_state,
                     hparams)
