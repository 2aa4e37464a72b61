r"""Automatic choice between forward mode and checkpointed reverse mode.

Both estimators compute the same hypergradient (to round-off); they differ in
cost. For ``K`` scalar hyperparameter values over a horizon ``T`` with a
state of ``|s|`` bytes and ``r`` bytes of residuals per step:

* forward mode pushes one tangent per begun value through every step: time
  grows with the number of tangents begun (``K_b``, averaged over the run),
  memory is ``~ (K + 2) |s| + r``, flat in ``T``;
* reverse mode with ``checkpoint_every = c = round(sqrt(T))`` costs about one
  extra forward pass whatever ``K``, and stores ``~ (T / c) |s| + c r``.

:func:`auto` estimates both from shapes alone (no FLOPs: ``r`` comes from an
abstract trace of one step's ``jax.vjp``), drops the ones that do not fit the
memory budget, and takes the faster of the rest. The time model, in units of
one plain jitted training unroll of the same ``T`` steps, is calibrated on
the MLP 64-128-128-10 of ``benchmarks/common.py`` at ``T = 1,000`` on 2 CPU
cores (``python -m benchmarks.crossover``; two runs on a machine shared with
other jobs, best of 3 interleaved rounds each, the range of the two runs in
brackets):

=====  ============  ==================  =========================  =========
K      K begun       forward / plain     reverse (c=32) / plain     faster
=====  ============  ==================  =========================  =========
3      3.0           9.5 (9.5-9.6)       4.8 (4.7-4.8)              reverse
9      6.0           12.4 (12.4-16.9)    4.6 (4.6-5.9)              reverse
17     10.0          24.4 (24.4-34.2)    4.8 (4.8-12.6)             reverse
33     18.0          37.3 (37.3-44.1)    4.4 (4.4-5.4)              reverse
=====  ============  ==================  =========================  =========

so forward ``~ 3.5 + 1.9 K_b`` and checkpointed reverse ``~ 4.7``: on CPU
reverse mode is faster from ``K_b ~ 1`` on, and forward mode is chosen for a
single tangent, or when reverse mode's checkpoints do not fit the budget
(very long horizons, a large state, little memory). Accelerators change the
constants (a tangent batch fills a GPU better than it does 2 CPU cores);
pass ``prefer`` where you have measured otherwise.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hypergrad._src import estimator as estimator_lib
from hypergrad._src import forward as forward_lib
from hypergrad._src import reverse as reverse_lib
from hypergrad._src import schedule
from hypergrad._src import tangents as tangents_lib
from hypergrad._src import unroll as unroll_lib
from hypergrad._src import validation

PyTree = Any

# Used when the device reports no memory (CPU): a share of a laptop's RAM.
DEFAULT_BUDGET_BYTES = 4 * 2**30
# Of a device's free memory, the share a hypergradient may take: the data,
# the model and the outer loop live there too.
DEVICE_FRACTION = 0.5
# Time model in plain-unroll units, fitted to the table of the module
# docstring: forward ~ FORWARD_FIXED * chunks + FORWARD_PER_TANGENT * K_b.
FORWARD_FIXED = 3.5
FORWARD_PER_TANGENT = 1.9
REVERSE_COST = 4.7

_PREFER = (None, 'forward', 'reverse')


class AutoChoice(NamedTuple):
  """What :class:`Auto` chose for a problem, and why.

  Attributes:
    estimator: the estimator it runs (a :class:`hypergrad.Forward` or
      :class:`hypergrad.Reverse` value).
    reason: one sentence with the estimates behind the choice.
    forward_cost, reverse_cost: estimated time in plain-unroll units.
    forward_bytes, reverse_bytes: estimated memory of each.
    budget_bytes: the memory budget the estimates were held against.
  """
  estimator: estimator_lib.Estimator
  reason: str
  forward_cost: float
  reverse_cost: float
  forward_bytes: int
  reverse_bytes: int
  budget_bytes: int


def _nbytes(tree) -> int:
  return int(sum(np.prod(np.shape(x), dtype=np.int64)
                 * jnp.dtype(jnp.result_type(x)).itemsize
                 for x in jax.tree.leaves(tree)))


def _mib(n: int) -> str:
  return f'{n / 2**20:.1f} MiB' if n < 2**30 else f'{n / 2**30:.1f} GiB'


def step_residual_bytes(step_fn, init_state, hparams, num_steps: int) -> int:
  """Bytes ``jax.vjp`` keeps for one inner step: abstract trace, no FLOPs."""
  split = unroll_lib.split_state(init_state)
  step, _ = tangents_lib.step_pieces(step_fn, split)

  def residuals(diff, rest, h):
    return jax.vjp(lambda d, h_: step(d, rest, h_, jnp.int32(0))[0],
                   diff, h)[1]

  h0 = schedule.hparams_at(hparams, 0, num_steps)
  return _nbytes(jax.eval_shape(residuals, split.diff, split.rest, h0))


def memory_budget(budget_bytes: int | None = None) -> tuple[int, str]:
  """``(bytes, where it comes from)``: the given budget, else the device's.

  A device that reports ``memory_stats()`` (GPU, TPU) gives
  ``DEVICE_FRACTION`` of its free memory; otherwise (CPU)
  ``DEFAULT_BUDGET_BYTES``.
  """
  if budget_bytes is not None:
    return budget_bytes, 'given'
  device = jax.devices()[0]
  try:
    stats = device.memory_stats()
  except Exception:  # pylint: disable=broad-except
    stats = None  # some backends raise rather than return None
  if stats and stats.get('bytes_limit'):
    free = stats['bytes_limit'] - stats.get('bytes_in_use', 0)
    return int(DEVICE_FRACTION * free), (
        f'{DEVICE_FRACTION:.0%} of the free memory of {device.device_kind}')
  return DEFAULT_BUDGET_BYTES, 'the default; the device reports no memory'


@dataclasses.dataclass(frozen=True)
class Auto(estimator_lib.Estimator):
  """Forward or checkpointed reverse mode, whichever suits the problem.

  Decided at trace time from shapes alone (see the module docstring), so the
  choice is fixed for a compilation; :meth:`choose` says what it would run
  and why.

  Attributes:
    memory_budget_bytes: bytes the hypergradient may use, or None for the
      device's (see :func:`memory_budget`).
    prefer: None to choose, or ``'forward'`` / ``'reverse'`` to force one
      (still reported against the budget).
  """
  memory_budget_bytes: int | None = None
  prefer: str | None = None

  def __post_init__(self):
    object.__setattr__(self, 'memory_budget_bytes', validation.check_int(
        self.memory_budget_bytes, 'memory_budget_bytes', allow_none=True))
    if self.prefer not in _PREFER:
      raise ValueError(f"prefer must be None, 'forward' or 'reverse', got "
                       f'prefer={self.prefer!r}.')

  def choose(self, step_fn, loss_fn, init_state, hparams,
             num_steps: int) -> AutoChoice:
    """The estimator :meth:`compute` would run on this problem, and why.

    Takes the arguments of an estimator call; ``loss_fn`` is not used.

    Returns:
      A :class:`AutoChoice`.
    """
    del loss_fn
    init_state, hparams, num_steps = estimator_lib.validate_problem(
        init_state, hparams, num_steps)
    return self._choose(unroll_lib.as_pytree_fn(step_fn), init_state, hparams,
                        num_steps)

  def _choose(self, step_fn, init_state, hparams, num_steps) -> AutoChoice:
    dirs = forward_lib.directions(hparams, num_steps)
    k = len(dirs)
    begun = sum(num_steps - d.start for d in dirs) / num_steps
    state_bytes = _nbytes(init_state)
    diff_bytes = _nbytes(unroll_lib.split_state(init_state).diff)
    residual = step_residual_bytes(step_fn, init_state, hparams, num_steps)
    budget, source = memory_budget(self.memory_budget_bytes)
    c = max(1, round(math.sqrt(num_steps)))

    def forward_bytes(chunk):
      return (chunk + 2) * diff_bytes + 2 * state_bytes + residual

    reverse_bytes = ((-(-num_steps // c)) + 2) * state_bytes + c * residual
    reverse_cost = REVERSE_COST
    chunk = k
    if forward_bytes(k) > budget:  # fewer tangents at a time, if that fits
      fit = (budget - forward_bytes(0)) // max(diff_bytes, 1)
      chunk = int(min(max(fit, 1), k))
    forward_cost = (FORWARD_FIXED * -(-k // chunk)
                    + FORWARD_PER_TANGENT * begun)
    fwd = forward_lib.Forward(None if chunk == k else chunk)
    rev = reverse_lib.Reverse(c)
    fwd_fits = forward_bytes(chunk) <= budget
    rev_fits = reverse_bytes <= budget
    facts = (f'K={k} tangents ({begun:.1f} begun on average), T={num_steps}; '
             f'estimated time forward {forward_cost:.1f} / reverse '
             f'{reverse_cost:.1f} plain unrolls, memory forward '
             f'{_mib(forward_bytes(chunk))} / reverse {_mib(reverse_bytes)} '
             f'against a budget of {_mib(budget)} ({source})')
    if self.prefer is not None:
      chosen = fwd if self.prefer == 'forward' else rev
      fits = fwd_fits if self.prefer == 'forward' else rev_fits
      why = f'{self.prefer} as preferred' + ('' if fits else
                                             ' (over the budget)')
    elif fwd_fits and rev_fits:
      chosen = fwd if forward_cost <= reverse_cost else rev
      why = ('forward: faster' if chosen is fwd else 'reverse: faster')
    elif fwd_fits or rev_fits:
      chosen = fwd if fwd_fits else rev
      why = ('forward: the only one within the memory budget' if fwd_fits
             else 'reverse: the only one within the memory budget')
    else:
      chosen = fwd if forward_bytes(chunk) <= reverse_bytes else rev
      why = (f'{"forward" if chosen is fwd else "reverse"}: neither fits the '
             'memory budget, this one needs less')
    if chosen is fwd and chunk != k:
      why += f', {chunk} tangents at a time'
    return AutoChoice(chosen, f'{why}. {facts}.', forward_cost, reverse_cost,
                  forward_bytes(chunk), reverse_bytes, budget)

  def compute(self, step_fn, loss_fn, init_state, hparams, num_steps,
              progress=None) -> estimator_lib.HypergradResult:
    chosen = self._choose(step_fn, init_state, hparams, num_steps).estimator
    return chosen.compute(step_fn, loss_fn, init_state, hparams, num_steps,
                          progress)


def auto(memory_budget_bytes: int | None = None, *,
         prefer: str | None = None) -> Auto:
  """Forward or checkpointed reverse mode, whichever suits the problem.

  The choice is made per problem (number of tangents, horizon, state and
  residual sizes, memory budget), when it is compiled; see the module
  docstring for the model and the measurements behind it, and
  :meth:`Auto.choose` for what it picks and why.

  Args:
    memory_budget_bytes: bytes the hypergradient may use; None: half the
      free memory of a device that reports it, else 4 GiB.
    prefer: None to choose, ``'forward'`` or ``'reverse'`` to force one.

  Returns:
    An :class:`Auto` estimator; call it like any :class:`hypergrad.Estimator`.

  Raises:
    ValueError: a budget that is not an int >= 1, or another ``prefer``.

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> step = lambda w, h, t: w - h['lr'] * 2.0 * (w - 3.0)
    >>> loss = lambda w: (w - 3.0) ** 2
    >>> args = (step, loss, jnp.zeros(()), {'lr': jnp.full((2,), 0.1)}, 100)
    >>> est = hypergrad.auto(memory_budget_bytes=2**20)
    >>> type(est.choose(*args).estimator).__name__
    'Reverse'
    >>> est(*args).hypergrads['lr'].shape
    (2,)
  """
  return Auto(memory_budget_bytes, prefer)
