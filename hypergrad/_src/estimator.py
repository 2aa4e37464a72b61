"""One interface for every full-horizon hypergradient estimator.

An estimator is a *value* (a frozen dataclass: hashable, comparable, cheap to
pass around) holding its options; calling it on the core contract returns one
result type, whatever the estimator::

    est = hypergrad.forward(chunk_size=4)          # or hypergrad.reverse(...)
    result = est(step_fn, loss_fn, init_state, hparams, num_steps)
    result.loss, result.hypergrads, result.info     # HypergradResult

Everything that needs a hypergradient (the outer loop, truncated greedy, the
population estimator, the launch script, the benchmarks) takes an estimator
value, never a string. A new estimator subclasses :class:`Estimator`,
implements :meth:`Estimator.compute` (traceable, no validation) and is
immediately usable everywhere; see ``WORKSPACE.md``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, NamedTuple

import jax

from hypergrad._src import schedule
from hypergrad._src import unroll as unroll_lib

PyTree = Any


class HypergradResult(NamedTuple):
  """What every estimator returns.

  Attributes:
    loss: scalar, the outer (validation) loss after the inner run.
    hypergrads: ``d loss / d hparams``, with exactly the structure, shapes and
      dtypes of ``hparams``.
    info: :class:`hypergrad.UnrollInfo`: the final inner state, the first
      inner step whose state (or tangents) was non-finite, -1 if none, and
      each value's ``expansion`` (how far its hypergradient can be trusted,
      ``docs/trust.md``); for a :func:`hypergrad.population`,
      :class:`hypergrad.PopulationStats`: the first two with a leading
      member axis, the members' median expansion, and the members' losses,
      hypergradients and per-value statistics.
  """
  loss: jax.Array
  hypergrads: PyTree
  info: Any


def validate_problem(init_state, hparams, num_steps):
  """Checks shared by every estimator, on Python values, before any compute.

  Returns:
    ``(init_state, hparams, num_steps)`` with leaves converted to arrays.

  Raises:
    TypeError, ValueError: a bad horizon, a schedule leaf that breaks the
      sharing contract or holds a NaN/Inf, or an initial state that holds a
      NaN/Inf, naming the leaf.
  """
  num_steps = schedule.validate_num_steps(num_steps)
  hparams = schedule.validate_hparams(hparams, num_steps)
  init_state = unroll_lib.as_state(init_state)
  unroll_lib.check_finite_state(init_state)
  return init_state, hparams, num_steps


@dataclasses.dataclass(frozen=True)
class Estimator:
  """Base class of full-horizon hypergradient estimators.

  Subclasses are frozen dataclasses of options and implement
  :meth:`compute`. Calling an estimator validates its arguments, then runs
  ``compute`` under ``jax.jit``; the compilation is keyed on the estimator
  value, ``step_fn``/``loss_fn`` identities, ``num_steps``, ``progress`` and
  the shapes and dtypes, so new hyperparameter values (and new arrays bound to
  the functions with ``jax.tree_util.Partial``) never recompile.
  """

  # Whether a call runs several inner runs at once (a population): their
  # initial states carry a leading member axis.
  runs_members = False

  def compute(self, step_fn, loss_fn, init_state, hparams, num_steps: int,
              progress: unroll_lib.Progress | None = None) -> HypergradResult:
    """The estimate, traceable (inside ``jit``, ``vmap``, ``lax.cond``).

    Performs no validation: callers inside a trace (truncated greedy,
    population hypergradients) have validated already. ``hparams`` holds
    schedule leaves only: callers pass ``schedule.as_schedules(hparams)``
    (a :class:`hypergrad.ConstantLeaf` as a one-interval schedule).
    """
    raise NotImplementedError

  def sharing_memory(self, copies: int) -> Estimator:
    """This estimator for ``copies`` runs that hold memory at once.

    A population vmaps its members' runs: an estimator that sizes itself
    to a memory budget (:class:`hypergrad.Auto`) gives each its share.
    Others are returned unchanged.
    """
    del copies
    return self

  def __call__(self, step_fn, loss_fn, init_state, hparams, num_steps: int, *,
               progress: unroll_lib.Progress | None = None) -> HypergradResult:
    """Loss, hypergradients and unroll info of ``loss_fn`` after the run.

    Args:
      step_fn: ``step_fn(state, hparams_t, t) -> state``, one pure inner
        step; ``t`` is a traced int32 step index.
      loss_fn: ``loss_fn(final_state) -> scalar``, the outer loss.
      init_state: pytree, the inner state at step 0. Integer leaves
        (counters, PRNG keys) are carried but not differentiated.
      hparams: pytree of schedule leaves ``(n, ...)``: ``n`` values shared
        over ``n`` contiguous intervals (``leaf[(t * n) // num_steps]`` at
        step ``t``), and :class:`hypergrad.ConstantLeaf` values of any
        shape, in force at every step.
      num_steps: the horizon ``T``, a Python int.
      progress: optional :class:`hypergrad.Progress` host callback.

    Returns:
      A :class:`HypergradResult`.
    """
    init_state, hparams, num_steps = validate_problem(init_state, hparams,
                                                      num_steps)
    unroll_lib.validate_progress(progress)
    # `compute` sees schedules only: a ConstantLeaf is a one-interval
    # schedule there, and its hypergradient is wrapped back below.
    result = _run(self, num_steps, progress, unroll_lib.as_pytree_fn(step_fn),
                  unroll_lib.as_pytree_fn(loss_fn), init_state,
                  schedule.as_schedules(hparams))
    info = result.info
    if getattr(info, 'expansion', None) is not None:
      info = info._replace(expansion=schedule.like_hparams(info.expansion,
                                                           hparams))
    return result._replace(
        hypergrads=schedule.like_hparams(result.hypergrads, hparams),
        info=info)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _run(estimator, num_steps, progress, step_fn, loss_fn, init_state,
         hparams) -> HypergradResult:
  # Runs once per trace, i.e. once per compilation.
  unroll_lib.check_step_fn(step_fn, loss_fn, init_state, hparams, num_steps)
  return estimator.compute(step_fn, loss_fn, init_state, hparams, num_steps,
                           progress)


def check_estimator(estimator, name: str = 'estimator', *,
                    single_run: bool = False) -> Estimator:
  """Refuses anything but an :class:`Estimator` value (a string, say).

  With ``single_run``, also one that runs several inner runs at once (a
  :func:`hypergrad.population`): where one run is differentiated (a
  population's members, truncated greedy's look-ahead).
  """
  if not isinstance(estimator, Estimator):
    raise TypeError(
        f'{name} must be an estimator value such as hypergrad.forward() or '
        f'hypergrad.reverse(checkpoint_every=...), got {estimator!r}.')
  if single_run and estimator.runs_members:
    raise TypeError(
        f'{name} must differentiate one inner run (hypergrad.forward(), '
        f'hypergrad.reverse(), hypergrad.auto()), not a population of them; '
        f'got {estimator!r}.')
  return estimator
