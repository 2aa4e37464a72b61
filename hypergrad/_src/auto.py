r"""Automatic choice between forward mode and checkpointed reverse mode.

Both estimators compute the same hypergradient (to round-off); they differ in
cost. For ``K`` scalar hyperparameter values over a horizon ``T`` with a
state of ``|s|`` bytes and ``r`` bytes of residuals per step:

* forward mode pushes one tangent per begun value through every step: time
  ``~ T (p + a K_b)`` for a plain step of ``p`` seconds, ``a`` seconds per
  tangent and ``K_b`` tangents begun on average; memory ``~ (K + 2) |s| + r``,
  flat in ``T``;
* reverse mode keeps every step's residuals where ``T r`` fits the budget
  (``checkpoint_every=None``), else checkpoints every ``c = round(sqrt(T))``
  steps: ``~ T q`` for ``q`` seconds per step of the checkpointed backward
  pass (one extra forward pass included, one plain unroll less without
  checkpoints) whatever ``K``, storing ``~ (T / c) |s| + c r``.

:func:`auto` measures ``p``, ``a`` and ``q`` on the device it runs on (a
probe of a few inner steps of each, see :func:`probe`, cached per problem
shape and device kind), drops the estimators that do not fit the memory
budget, and takes the faster of the rest. On 2 CPU cores a tangent costs
about 1.5-3 plain steps and a reverse step about 5, so reverse mode wins
from a few tangents on; on a GPU a batch of tangents fills the device and
forward mode wins far longer (figures: ``docs/benchmarks.md``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from typing import Any, Callable, NamedTuple

import jax
from jax.extend import core as jax_core
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
# Inner steps each probe program runs, and the most tangents it pushes (the
# per-tangent cost of more is extrapolated).
PROBE_STEPS = 16
PROBE_MAX_TANGENTS = 32
# (plain, tangent, reverse) seconds per step when the probe cannot run: the
# MLP of benchmarks/common.py on 2 CPU cores (docs/benchmarks.md).
FALLBACK_TIMES = (1.2e-4, 2.4e-4, 6e-4)

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
    probe: the measured step costs behind the time estimates.
  """
  estimator: estimator_lib.Estimator
  reason: str
  forward_cost: float
  reverse_cost: float
  forward_bytes: int
  reverse_bytes: int
  budget_bytes: int
  probe: ProbeTimes | None = None


class ProbeTimes(NamedTuple):
  """Seconds per inner step, measured on one device by :func:`probe`.

  Attributes:
    device: the device kind measured on (``jax.Device.device_kind``).
    plain: one plain inner step.
    tangent: each tangent of the forward push, on top of the plain step
      (the push forward mode uses on this platform; see
      :class:`hypergrad.Forward`).
    reverse: one step of checkpointed reverse mode (forward pass,
      recomputation and backward pass).
    tangents: how many tangents the push was measured with.
  """
  device: str
  plain: float
  tangent: float
  reverse: float
  tangents: int

  def describe(self) -> str:
    return (f'measured on {self.device}: plain step {self.plain * 1e6:.0f} '
            f'us, +{self.tangent / self.plain:.2f} plain steps per tangent '
            f'(a batch of {self.tangents}), checkpointed reverse step '
            f'{self.reverse / self.plain:.2f} plain steps')


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
  jaxpr = jax.make_jaxpr(residuals)(split.diff, split.rest, h0).jaxpr
  # Arrays the step closes over (the training data, say) are kept once for
  # the whole run, not once per step: only residuals computed from the
  # step's inputs count.
  shared = set(map(id, jaxpr.constvars)) | set(map(id, jaxpr.invars))
  return int(sum(
      np.prod(v.aval.shape, dtype=np.int64) * v.aval.dtype.itemsize
      for v in jaxpr.outvars
      if isinstance(v, jax_core.Var) and id(v) not in shared))


_PROBES: dict = {}


def _concrete(tree):
  """``tree`` with every traced leaf replaced by zeros of its shape.

  Step costs do not depend on the values, and the probe runs outside the
  trace that :meth:`Auto.compute` is called in.
  """
  return jax.tree.map(
      lambda x: (jnp.zeros(x.shape, x.dtype)
                 if isinstance(x, jax.core.Tracer) else x), tree)


def _seconds(fn, *args) -> float:
  """Best of 3 timed runs of ``jit(fn)``, compiled and warmed first."""
  compiled = jax.jit(fn).lower(*args).compile()
  jax.block_until_ready(compiled(*args))
  best = math.inf
  for _ in range(3):
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    best = min(best, time.perf_counter() - start)
  return best


def probe(step_fn, init_state, hparams, num_steps: int,
          tangents: int) -> ProbeTimes:
  """Measures a plain step, a tangent and a reverse step on this device.

  Three small programs of :data:`PROBE_STEPS` inner steps each: the plain
  unroll, the forward push of ``min(tangents, PROBE_MAX_TANGENTS)``
  tangents (the push :class:`hypergrad.Forward` uses on this platform) and
  the gradient of a checkpointed unroll. A few seconds at most, most of it
  compiling; cached per problem shape, step function and device kind.

  Args:
    step_fn: the core contract's step (a function or a ``Partial``).
    init_state, hparams, num_steps: the problem (values may be traced: the
      probe runs zeros of their shapes).
    tangents: the number of tangents forward mode would carry at once.

  Returns:
    A :class:`ProbeTimes`.
  """
  step_fn = unroll_lib.as_pytree_fn(step_fn)
  device = jax.devices()[0]
  batch = max(1, min(int(tangents), PROBE_MAX_TANGENTS))
  key = (device.device_kind, device.platform, batch, num_steps,
         jax.tree.structure(step_fn),
         tuple((np.shape(x), jnp.result_type(x)) for x in
               jax.tree.leaves((step_fn, init_state, hparams))))
  if key in _PROBES:
    return _PROBES[key]
  step_fn, init_state, hparams = _concrete((step_fn, init_state, hparams))
  steps = min(PROBE_STEPS, num_steps)
  split = unroll_lib.split_state(init_state)
  step, _ = tangents_lib.step_pieces(step_fn, split)
  rows = forward_lib.default_push(device.platform) == 'rows'

  def plain(state, h):
    return unroll_lib.unroll(step_fn, state, h, num_steps, stop=steps)

  def pushed(diff, rest, h, z):
    def body(carry, _):
      diff, rest, z, t = carry
      h_t = schedule.hparams_at(h, t, num_steps)
      dh = jax.tree.map(lambda x: jnp.zeros((batch,) + x.shape, x.dtype),
                        h_t)
      if rows:
        diff, rest, lin = tangents_lib.linearize(step, diff, rest, h_t, t)
        z, _ = tangents_lib.push_rows(
            lin, z, jnp.int32(batch),
            lambda i: jax.tree.map(lambda x: x[i], dh))
      else:
        diff, rest, z = tangents_lib.push_batch(step, diff, rest, h_t, t, z,
                                                dh)
      return (diff, rest, z, t + 1), None
    return jax.lax.scan(body, (diff, rest, z, jnp.int32(0)), None, steps)[0]

  def backward(state, h):
    def loss(h):
      final = unroll_lib.unroll(step_fn, state, h, num_steps, stop=steps,
                                checkpoint_every=max(1, steps // 4))
      diff = unroll_lib.split_state(final).diff
      return sum(jnp.sum(x.astype(jnp.float32)) for x in diff)
    return jax.grad(loss)(h)

  try:
    t_plain = _seconds(plain, init_state, hparams) / steps
    t_push = _seconds(pushed, split.diff, split.rest, hparams,
                      tangents_lib.zeros(batch, split.diff)) / steps
    t_reverse = _seconds(backward, init_state, hparams) / steps
    out = ProbeTimes(device.device_kind, t_plain,
                     max(t_push - t_plain, 0.0) / batch, t_reverse, batch)
  except Exception as e:  # pylint: disable=broad-except
    # A step that closes over a traced array (not bound with Partial) cannot
    # run outside its trace. The probe only informs a choice between two
    # exact estimators: fall back to figures measured on 2 CPU cores.
    logging.getLogger(__name__).warning(
        'hypergrad.auto: step costs not measured (%s: %s); deciding from CPU '
        'figures.', type(e).__name__, e)
    out = ProbeTimes(f'{device.device_kind}, not measured ({type(e).__name__}'
                     '; 2-CPU-core figures)', *FALLBACK_TIMES, batch)
  _PROBES[key] = out
  return out


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
    measure: ``measure(step_fn, init_state, hparams, num_steps, tangents)
      -> ProbeTimes``, the step costs to decide by; None: :func:`probe`,
      measured on the device.
    copies: runs that share the budget at once (a vmapped population's
      members, set by :meth:`sharing_memory`); each gets ``1 / copies``.
  """
  memory_budget_bytes: int | None = None
  prefer: str | None = None
  measure: Callable[..., ProbeTimes] | None = None
  copies: int = 1

  def __post_init__(self):
    object.__setattr__(self, 'memory_budget_bytes', validation.check_int(
        self.memory_budget_bytes, 'memory_budget_bytes', allow_none=True))
    if self.prefer not in _PREFER:
      raise ValueError(f"prefer must be None, 'forward' or 'reverse', got "
                       f'prefer={self.prefer!r}.')
    object.__setattr__(self, 'copies', validation.check_int(self.copies,
                                                            'copies'))
    if self.measure is not None and not callable(self.measure):
      raise TypeError(f'measure must be callable or None, got '
                      f'measure={self.measure!r}.')

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
    # Constant leaves count as one-interval schedules, as compute sees them.
    hparams = schedule.as_schedules(hparams)
    dirs = forward_lib.directions(hparams, num_steps)
    k = len(dirs)
    begun = sum(num_steps - d.start for d in dirs) / num_steps
    state_bytes = _nbytes(init_state)
    diff_bytes = _nbytes(unroll_lib.split_state(init_state).diff)
    residual = step_residual_bytes(step_fn, init_state, hparams, num_steps)
    budget, source = memory_budget(self.memory_budget_bytes)
    if self.copies > 1:
      budget, source = budget // self.copies, (
          f'{source}, shared by {self.copies} runs at once')
    c = max(1, round(math.sqrt(num_steps)))

    def forward_bytes(chunk):
      return (chunk + 2) * diff_bytes + 2 * state_bytes + residual

    # Reverse mode keeps every step's residuals where they fit (one forward
    # pass fewer), else checkpoints every c steps.
    plain_bytes = 2 * state_bytes + num_steps * residual
    if plain_bytes <= budget:
      c, reverse_bytes = None, plain_bytes
    else:
      reverse_bytes = ((-(-num_steps // c)) + 2) * state_bytes + c * residual
    chunk = k
    if forward_bytes(k) > budget:  # fewer tangents at a time, if that fits
      fit = (budget - forward_bytes(0)) // max(diff_bytes, 1)
      chunk = int(min(max(fit, 1), k))
    times = (self.measure or probe)(step_fn, init_state, hparams, num_steps,
                                    chunk)
    # In plain-unroll units: each chunk reruns the primal unroll.
    forward_cost = -(-k // chunk) + times.tangent / times.plain * begun
    # The probe times a checkpointed step; without checkpoints the forward
    # pass is not recomputed.
    reverse_cost = times.reverse / times.plain - (1.0 if c is None else 0.0)
    fwd = forward_lib.Forward(None if chunk == k else chunk)
    rev = reverse_lib.Reverse(c)
    fwd_fits = forward_bytes(chunk) <= budget
    rev_fits = reverse_bytes <= budget
    rev_name = ('reverse, every step kept' if c is None
                else f'reverse, checkpoints every {c} steps')
    facts = (f'K={k} tangents ({begun:.1f} begun on average), T={num_steps}; '
             f'estimated time forward {forward_cost:.1f} / {rev_name} '
             f'{reverse_cost:.1f} plain unrolls, memory forward '
             f'{_mib(forward_bytes(chunk))} / reverse {_mib(reverse_bytes)} '
             f'against a budget of {_mib(budget)} ({source}); '
             f'{times.describe()}')
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
                      forward_bytes(chunk), reverse_bytes, budget, times)

  def sharing_memory(self, copies: int) -> Auto:
    return dataclasses.replace(self, copies=self.copies * copies)

  def compute(self, step_fn, loss_fn, init_state, hparams, num_steps,
              progress=None) -> estimator_lib.HypergradResult:
    chosen = self._choose(step_fn, init_state, hparams, num_steps).estimator
    return chosen.compute(step_fn, loss_fn, init_state, hparams, num_steps,
                          progress)


def auto(memory_budget_bytes: int | None = None, *,
         prefer: str | None = None,
         measure: Callable[..., ProbeTimes] | None = None) -> Auto:
  """Forward or checkpointed reverse mode, whichever suits the problem.

  The choice is made per problem (number of tangents, horizon, state and
  residual sizes, memory budget, and step costs measured on the device by a
  short probe), when it is compiled; see the module docstring for the model,
  and :meth:`Auto.choose` for what it picks and why.

  Args:
    memory_budget_bytes: bytes the hypergradient may use; None: half the
      free memory of a device that reports it, else 4 GiB.
    prefer: None to choose, ``'forward'`` or ``'reverse'`` to force one.
    measure: the step costs to decide by (see :class:`Auto`); None
      measures them on the device.

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
    >>> choice = est.choose(*args)
    >>> type(choice.estimator).__name__ in ('Forward', 'Reverse')
    True
    >>> 'measured on' in choice.reason
    True
    >>> est(*args).hypergrads['lr'].shape
    (2,)
  """
  return Auto(memory_budget_bytes, prefer, measure)
