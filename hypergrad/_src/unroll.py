"""The inner training unroll every hypergradient estimator is built on.

An inner run is ``state_{t+1} = step_fn(state_t, hparams_t, t)`` for
``t = 0 .. T-1``: a pure function of the initial state and the hyperparameter
schedules, written once as a ``lax.scan`` so that forward mode, reverse mode
and the greedy estimators all differentiate the same dynamics.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hypergrad._src import expansion as expansion_lib
from hypergrad._src import schedule

PyTree = Any
StepFn = Callable[[PyTree, PyTree, jax.Array], PyTree]
LossFn = Callable[[PyTree], jax.Array]


class UnrollInfo(NamedTuple):
  """What an estimator can report about the inner run besides its gradient.

  Attributes:
    final_state: the inner state after the last step.
    nonfinite_step: int32 scalar, the first inner step ``t`` whose output
      (state, or tangents in forward mode) held a NaN or Inf; -1 if none.
    expansion: float32, like the hyperparameters: for each value, ``log10``
      of how much the linearised inner dynamics amplify a perturbation made
      at the step its interval begins by the end of the run (see
      ``docs/trust.md``); None where not measured (a plain unroll).
  """
  final_state: Any
  nonfinite_step: jax.Array
  expansion: Any = None


def first_nonfinite(first, t, tree):
  """Updates the first-non-finite-step flag with the output of step ``t``.

  One fused reduction per step, kept on the device: a divergence is located
  without a host round trip per step.
  """
  finite = all_finite([x for x in jax.tree.leaves(tree)
                       if is_differentiable(x)])
  return jnp.where((first < 0) & ~finite, t, first).astype(jnp.int32)


def all_finite(leaves) -> jax.Array:
  """Whether every entry of every array in ``leaves`` is finite: bool scalar."""
  if not leaves:
    return jnp.bool_(True)
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))


def earliest(a, b):
  """The earlier of two first-non-finite steps (-1 meaning none)."""
  return jnp.where(a < 0, b, jnp.where(b < 0, a, jnp.minimum(a, b)))


class Progress(NamedTuple):
  """Host-side progress reporting from inside a jitted unroll.

  Attributes:
    callback: ``callback(t: int)``, called with the inner step index.
    every: call it every ``every`` inner steps.
  """
  callback: Callable[[int], Any]
  every: int = 100


def validate_progress(progress) -> None:
  if progress is None:
    return
  if not isinstance(progress, Progress):
    raise TypeError(f'progress must be a hypergrad.Progress or None, got '
                    f'{progress!r}.')
  if not callable(progress.callback) or not isinstance(progress.every, int) \
      or progress.every < 1:
    raise ValueError(f'progress needs a callable and every >= 1, got '
                     f'{progress!r}.')


def progress_reporter(progress: Progress | None, num_steps: int):
  """A traceable ``report(t)`` that calls back to the host every few steps."""
  if progress is None:
    return lambda t: None

  def host(t):
    progress.callback(int(t))

  def report(t):
    jax.lax.cond((t % progress.every == 0) | (t == num_steps - 1),
                 lambda: jax.debug.callback(host, t), lambda: None)
  return report


def as_pytree_fn(fn: Callable) -> Callable:
  """A callable as a pytree whose leaves are the arrays it is bound to.

  Estimators take ``step_fn`` and ``loss_fn`` as jit *arguments*: a plain
  function becomes a leaf-less ``jax.tree_util.Partial`` keyed on its
  identity, while a ``Partial(fn, data, ...)`` passes its bound arrays as
  traced arguments. Training data bound that way is neither embedded in the
  compiled program as a constant (slow compiles, huge executables) nor a
  reason to recompile when a new validation split of the same shape arrives.
  """
  if not callable(fn):
    raise TypeError(f'expected a callable, got {fn!r}.')
  leaves = jax.tree.leaves(fn)
  if len(leaves) == 1 and leaves[0] is fn:
    return jax.tree_util.Partial(fn)
  return fn


def is_differentiable(x) -> bool:
  """Whether a state leaf carries a tangent (inexact dtype)."""
  return jnp.issubdtype(jnp.result_type(x), jnp.inexact)


class SplitState(NamedTuple):
  """A state pytree cut into its differentiable and its other leaves.

  Integer leaves (step counters, PRNG keys) have no tangent; keeping them
  apart lets the tangent batch be plain float arrays, with no float0 leaves.
  """
  diff: list
  rest: list
  treedef: Any
  mask: tuple


def split_state(state: PyTree) -> SplitState:
  leaves, treedef = jax.tree.flatten(state)
  mask = tuple(bool(is_differentiable(x)) for x in leaves)
  diff = [x for x, m in zip(leaves, mask) if m]
  rest = [x for x, m in zip(leaves, mask) if not m]
  return SplitState(diff, rest, treedef, mask)


def merge_state(diff, rest, treedef, mask) -> PyTree:
  diff_it, rest_it = iter(diff), iter(rest)
  leaves = [next(diff_it) if m else next(rest_it) for m in mask]
  return jax.tree.unflatten(treedef, leaves)


def check_step_fn(step_fn: StepFn, loss_fn: LossFn | None, init_state: PyTree,
                  hparams: PyTree, num_steps: int) -> None:
  """Checks, by abstract evaluation only, that the unroll is well formed.

  ``lax.scan`` would otherwise fail deep inside tracing with an opaque carry
  mismatch; this names the leaf. Costs one trace of ``step_fn`` and no FLOPs.

  Raises:
    ValueError: ``step_fn`` changes the state's structure, a leaf's shape or
      dtype, or ``loss_fn`` does not return a real scalar.
  """
  h0 = schedule.hparams_at(hparams, 0, num_steps)
  try:
    out = jax.eval_shape(step_fn, init_state, h0, jnp.zeros((), jnp.int32))
  except (TypeError, ValueError) as e:
    # E.g. per-example weights of another length than the data: name the
    # shapes the step was given rather than leave a bare broadcasting error.
    shapes = jax.tree.map(lambda x: f'{jnp.result_type(x)}{list(np.shape(x))}',
                          h0)
    raise ValueError(
        f'step_fn fails on the hyperparameters of step 0, {shapes}: '
        f'{type(e).__name__}: {e}') from e
  in_def = jax.tree.structure(init_state)
  out_def = jax.tree.structure(out)
  if in_def != out_def:
    raise ValueError(
        'step_fn must return a state with the same pytree structure as its '
        f'input state.\n  input:  {in_def}\n  output: {out_def}')
  names = schedule.leaf_names(init_state)
  for name, a, b in zip(names, jax.tree.leaves(init_state),
                        jax.tree.leaves(out)):
    a_shape, a_dtype = np.shape(a), jnp.result_type(a)
    if a_shape != b.shape or a_dtype != b.dtype:
      raise ValueError(
          f'step_fn changes state leaf {name} from {a_dtype}{list(a_shape)} '
          f'to {b.dtype}{list(b.shape)}; the inner state must keep its shapes '
          'and dtypes across steps.')
  if not any(split_state(init_state).mask):
    raise ValueError('init_state has no floating-point leaf to differentiate.')
  if loss_fn is not None:
    loss = jax.eval_shape(loss_fn, init_state)
    if (not isinstance(loss, jax.ShapeDtypeStruct) or loss.shape != ()
        or not jnp.issubdtype(loss.dtype, jnp.floating)):
      raise ValueError(
          f'loss_fn must return a real scalar, got {loss}.')


def check_finite_state(state: PyTree, name: str = 'init_state') -> None:
  """Refuses a state with a NaN or Inf, naming the leaf, before any compute.

  A non-finite initial state would otherwise come back as a NaN loss and
  hypergradient, and an outer loop would blame the hyperparameters. Traced
  leaves (a caller inside ``jit``) are not checked.
  """
  leaves = [x for x in jax.tree.leaves(state)
            if is_differentiable(x) and not isinstance(x, jax.core.Tracer)]
  if not leaves or bool(_all_finite_jit(leaves)):
    return
  for leaf_name, x in zip(schedule.leaf_names(state), jax.tree.leaves(state)):
    if (is_differentiable(x) and not isinstance(x, jax.core.Tracer)
        and not bool(jnp.all(jnp.isfinite(x)))):
      bad = int(np.size(x) - np.sum(np.isfinite(np.asarray(x))))
      raise ValueError(
          f'{name} leaf {leaf_name} holds {bad} NaN or Inf value(s) of '
          f'{np.size(x)}: the inner run would start from them. Check the '
          'initialisation (or a checkpoint it was restored from).')


_all_finite_jit = jax.jit(all_finite)


def as_state(init_state: PyTree) -> PyTree:
  """Converts leaves to arrays so the scan carry has fixed, strong dtypes."""
  def convert(x):
    x = jnp.asarray(x)
    # A weak-typed Python float would come back strongly typed from step_fn
    # and break the scan carry.
    return x.astype(x.dtype) if getattr(x, 'weak_type', False) else x
  return jax.tree.map(convert, init_state)


def tap_state(state: PyTree, slot: jax.Array) -> PyTree:
  """:func:`expansion.tap` on a state's differentiable leaves."""
  split = split_state(state)
  return merge_state(expansion_lib.tap(split.diff, slot), split.rest,
                     split.treedef, split.mask)


def _tap_at(state, t, steps, slots):
  """The state through ``slots[k]``'s tap where ``t == steps[k]``."""
  k = jnp.maximum(jnp.searchsorted(steps, t, side='right') - 1, 0)
  return tap_state(state, jnp.where(steps[k] == t, slots[k],
                                    jnp.zeros((), slots.dtype)))


def unroll(step_fn: StepFn, init_state: PyTree, hparams: PyTree,
           num_steps: int, *, start: int = 0, stop: int | None = None,
           checkpoint_every: int | None = None,
           return_info: bool = False, taps=None):
  """Runs inner steps ``start .. stop-1`` of a horizon of ``num_steps``.

  The plain training pass: no tangents. Differentiable in reverse mode; with
  ``checkpoint_every=c`` the scan is nested (an outer scan over blocks of ``c``
  steps whose body is rematerialised) so reverse mode stores about ``T / c``
  states instead of ``T``.

  Args:
    step_fn: ``step_fn(state, hparams_t, t) -> state``.
    init_state: the state at step ``start``.
    hparams: schedule pytree, leaves ``(n, ...)``.
    num_steps: the horizon ``T`` that sets the sharing rule.
    start: first step to run.
    stop: one past the last step to run (default ``num_steps``).
    checkpoint_every: block length for rematerialisation, or None.
    return_info: also return the first step whose state was non-finite.
    taps: None, or ``(steps, slots)``: int32 ``(S,)`` sorted steps and a
      float32 ``(S,)`` vector; the state entering step ``steps[k]`` passes
      through :func:`expansion.tap` with ``slots[k]``, so reverse mode reads
      the adjoint's norm there.

  Returns:
    The state after step ``stop - 1``; with ``return_info=True``, an
    :class:`UnrollInfo`.
  """
  stop = num_steps if stop is None else stop
  length = stop - start
  bad0 = jnp.int32(-1)
  if length <= 0:
    return UnrollInfo(init_state, bad0) if return_info else init_state

  # The step index rides in the carry: scanning over an int32[T] array of
  # steps would make memory grow with the horizon.
  def body(carry, _):
    state, t, bad = carry
    h_t = schedule.hparams_at(hparams, t, num_steps)
    if taps is not None:
      state = _tap_at(state, t, *taps)
    state = step_fn(state, h_t, t)
    if return_info:
      bad = first_nonfinite(bad, t, state)
    return (state, t + 1, bad), None

  def run(state, t, bad, steps):
    return jax.lax.scan(body, (state, t, bad), None, steps)[0]

  carry = (init_state, jnp.int32(start), bad0)
  if checkpoint_every is None or checkpoint_every >= length:
    carry = run(*carry, length)
  else:
    c = checkpoint_every
    num_blocks, tail = divmod(length, c)
    block = jax.checkpoint(lambda carry, _: (run(*carry, c), None))
    carry = jax.lax.scan(block, carry, None, num_blocks)[0]
    if tail:
      carry = run(*carry, tail)
  state, _, bad = carry
  return UnrollInfo(state, bad) if return_info else state
