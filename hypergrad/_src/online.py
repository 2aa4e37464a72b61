r"""Greedy (online) hyperparameter estimators behind one optax-like interface.

The non-greedy estimators (``hypergrad.forward()``, ``hypergrad.reverse()``)
differentiate a validation loss through a *whole* training run and are used by
an outer loop over many runs. The greedy estimators here instead adapt the
hyperparameters *during a single run*, from hypergradients over a short
horizon: one step (hypergradient descent), the steps since the last update
(RTHO), or a look-ahead window (truncated greedy). They are the baselines of
the FDS paper (Micaelli & Storkey 2021); the ``step_fn`` / ``loss_fn`` /
``hparams`` contract is the one of ``forward_hypergrad``.

The interface, shared by every method::

    method = hypergrad.rtho(step_fn, loss_fn, every=10,
                            meta_opt=hypergrad.meta_optimizer(1e-3))
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
* Every method's state is an :class:`OnlineState`: ``inner`` (the inner
  state), ``hparams``, ``hypergrad`` (the latest hypergradient, same
  structure as ``hparams``), ``meta_state`` and, for RTHO only,
  ``tangents``.
* ``run_online``'s ``schedule`` has leaves ``(num_steps, ...)``: a schedule
  with ``n = num_steps`` intervals, so ``hypergrad.unroll(step_fn,
  inner_state, schedule, num_steps)`` replays the run and ``forward_hypergrad``
  can differentiate it.

Meta updates: every method takes one ``meta_opt``, an optax
``GradientTransformation`` applied to the hypergradient (its state rides in
the method's state as ``meta_state``); the default,
``hypergrad.meta_optimizer(1e-3)``, is plain gradient steps of ``1e-3``.
:func:`hypergrad.meta_optimizer` builds the usual ones, the same
transformations as the FDS outer optimiser: sgd, sign or normalised steps
with one rate or one per hyperparameter name, then a projection onto the
valid ranges, e.g. ``hypergrad.meta_optimizer(1e-2, 'sign',
hypergrad.SGD_BOUNDS)``. Their rates are pytree leaves, so a sweep over the
rate compiles once (as for any transformation built with
:func:`hypergrad.pytree_chain` from this library's parts; a closure such as
``optax.adam(rate)`` compiles once per rate).
"""

from __future__ import annotations

import functools
import math
import numbers
import types
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hypergrad._src import chain
from hypergrad._src import registry
from hypergrad._src import schedule
from hypergrad._src import transformations
from hypergrad._src import unroll as unroll_lib

PyTree = Any

# Valid ranges of the SGD hyperparameters, for
# ``meta_optimizer(rate, rule, SGD_BOUNDS)`` (from the registry): a greedy
# meta step can overshoot into a diverging value.
SGD_BOUNDS = types.MappingProxyType(
    {k: (lo, None if hi == math.inf else hi)
     for k, (lo, hi) in registry.SGD.bounds.items()})

# The meta step size of the default meta optimiser.
DEFAULT_META_LR = 1e-3


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


class OnlineState(NamedTuple):
  """The state of every greedy method.

  Attributes:
    inner: the inner state.
    hparams: current values (leaves without the interval axis); after
      ``update(state, t)``, the values step ``t`` used.
    hypergrad: the latest hypergradient, like ``hparams``; zeros after
      ``init``. Hypergradient descent: the one-step hypergradient computed
      during the last step, applied by the next ``update``. RTHO: the one of
      the latest hyperparameter update. Truncated greedy: the look-ahead
      hypergradient of the latest meta step (the last one when
      ``meta_steps > 1``).
    meta_state: the meta optimiser's state.
    tangents: RTHO only (``()`` otherwise): ``d inner / d hparams`` for every
      floating inner leaf (in ``jax.tree.leaves`` order), each of shape
      ``(K, *leaf.shape)`` with ``K`` the total number of scalar
      hyperparameter values.
  """
  inner: PyTree
  hparams: PyTree
  hypergrad: PyTree
  meta_state: Any
  tangents: Any = ()


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


def check_meta_opt(meta_opt) -> optax.GradientTransformation:
  """``meta_opt`` checked; ``None`` is ``hypergrad.meta_optimizer(1e-3)``.

  Raises:
    TypeError: ``meta_opt`` is not an optax ``GradientTransformation`` (an
      ``init`` / ``update`` pair); at construction, before any compute.
  """
  if meta_opt is None:
    return transformations.meta_optimizer(DEFAULT_META_LR)
  if not (callable(getattr(meta_opt, 'init', None))
          and callable(getattr(meta_opt, 'update', None))):
    hint = ''
    if isinstance(meta_opt, (numbers.Number, str, Mapping, tuple)):
      hint = (' For meta step sizes, a rule or bounds, build one with '
              'hypergrad.meta_optimizer(meta_lr, meta_update, bounds).')
    raise TypeError(f'meta_opt must be an optax GradientTransformation, got '
                    f'{meta_opt!r}.{hint}')
  return meta_opt


def meta_init(meta_opt, values):
  """The meta optimiser's state; checks (abstractly) that it fits ``values``.

  A mapping of rates that misses a hyperparameter fails here, when the
  method is initialised, not in the middle of the run.
  """
  meta_state = meta_opt.init(values)
  jax.eval_shape(meta_opt.update, values, meta_state, values)
  return meta_state


def meta_apply(meta_opt, meta_state, values, hypergrad):
  """One meta step: ``values + meta_opt.update(hypergrad)``."""
  updates, meta_state = meta_opt.update(hypergrad, meta_state, values)
  return optax.apply_updates(values, updates), meta_state


def initial_values(hparams: PyTree, method: str) -> PyTree:
  """Checks the single-interval contract and drops the interval axis.

  A :class:`hypergrad.ConstantLeaf` (per-example weights, say) is already
  one current value: it becomes its array.
  """
  for name, leaf in zip(schedule.leaf_names(hparams),
                        jax.tree.leaves(hparams,
                                        is_leaf=schedule.is_constant_leaf)):
    if schedule.is_constant_leaf(leaf):
      continue
    shape = np.shape(leaf)
    if len(shape) == 0 or shape[0] != 1:
      raise ValueError(
          f'{method} learns one current value per hyperparameter: give '
          f'hparams leaves a single interval axis, shape (1, ...) (e.g. '
          f'hypergrad.constant(value)), or declare them '
          f'hypergrad.constant_leaf(value); leaf {name} has shape {shape}.')
  return jax.tree.map(
      lambda h: h.value if schedule.is_constant_leaf(h) else jnp.asarray(h)[0],
      hparams, is_leaf=schedule.is_constant_leaf)


def check_unroll(step_fn, loss_fn, inner_state, hparams):
  """``check_step_fn`` for a single-interval schedule (trace-time only)."""
  unroll_lib.check_step_fn(step_fn, loss_fn, inner_state, hparams, 1)


def make_method(init_impl: Static, update_impl: Static, meta_opt, fns,
                every: int = 1, every_arg: str = 'every') -> OnlineMethod:
  """Wraps ``impl.fn(*impl.args, meta_opt, *fns, ...)`` as an :class:`OnlineMethod`.

  ``meta_opt`` (its rates) and ``fns`` (user callables) become pytree
  children of the ``Partial`` so the rates and the arrays the functions are
  bound to are traced; ``init_impl`` / ``update_impl`` (with their static
  configuration) are its static part, compared by value, so neither reusing a
  method nor rebuilding it with other meta step sizes, or the same
  configuration and functions, recompiles.
  """
  fns = tuple(None if f is None else unroll_lib.as_pytree_fn(f) for f in fns)
  meta_opt = chain.as_pytree(meta_opt)
  return OnlineMethod(jax.tree_util.Partial(init_impl, meta_opt, *fns),
                      jax.tree_util.Partial(update_impl, meta_opt, *fns),
                      every, every_arg)


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
    ``hparams`` with leaves ``(T, ...)``, a valid ``T``-interval schedule (a
    :class:`hypergrad.ConstantLeaf` comes back as its values at every step,
    a plain ``(T, ...)`` leaf).

  Raises:
    ValueError, TypeError: bad ``num_steps`` or ``hparams``, an ``every`` /
      ``window`` longer than the run, a malformed ``step_fn``; before any
      compute.

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> def train_loss(w, t):  # a regression whose minibatch is step t's
    ...   x = jnp.sin(jnp.arange(3.0) + t)
    ...   return (x @ w - 1.0) ** 2
    >>> step_fn = hypergrad.sgd_momentum_step(train_loss, momentum=0.5)
    >>> loss_fn = lambda s: jnp.sum((s.params - 0.5) ** 2)   # "validation"
    >>> state = hypergrad.sgd_init(jnp.zeros(3))
    >>> method = hypergrad.hypergradient_descent(
    ...     step_fn, loss_fn, meta_opt=hypergrad.meta_optimizer(1e-3))
    >>> final, sched = hypergrad.run_online(
    ...     method, state, {'lr': hypergrad.constant(0.1)}, num_steps=1000)
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
