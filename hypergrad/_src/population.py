r"""Population hypergradients: one hypergradient per member, aggregated.

Near the optimum the sign of a single long-horizon hypergradient is close to
a coin flip for most values: it depends on the initialisation, the batch
order and the validation split as much as on the hyperparameters. A
*population* of ``S`` inner runs, member ``i`` from its own initial state
(weights, PRNG key of the batch order) and optionally its own data split,
gives ``S`` hypergradients ``g_i`` of the same schedule, from which

    mean        m = (1 / S) sum_i g_i
    std. error  e = std_i(g_i) / sqrt(S)          (ddof = 1)
    SNR         |m| / e
    agreement   a = |(1 / S) sum_i sign(g_i)|      in [0, 1]

per hyperparameter value, and an aggregate hypergradient: the mean, the
median, a trimmed mean or a sign vote ``(1 / S) sum_i sign(g_i)`` (whose size
is the agreement, not a gradient scale). With ``min_agreement``, values whose
members disagree (``a < min_agreement``) are *undecided*: their aggregate is
exactly 0, so the FDS sign-descent step leaves them where they are and does
not count a sign flip, and :func:`hypergrad.settled` counts them settled.

The population runs as one compiled program: ``jax.vmap`` over members of the
estimator's traceable ``compute`` (or ``jax.lax.map`` over batches of members
with ``member_batch``), so memory is the estimator's (constant in ``T`` for
forward mode) times ``S`` (or times ``member_batch``). The aggregation is a
second, tiny program: changing the aggregate, the trim or ``min_agreement``
never recompiles the unroll.

Members that differ in their data (a validation split, a training split)
pass a *list of S functions* for ``step_fn`` and/or ``loss_fn``: the same
function bound with ``jax.tree_util.Partial`` to different arrays, e.g.
``[task.loss_fn(task.split(seed)) for seed in seeds]``. This is the Task API
as it is (a split changes both the step's training indices and the loss's
validation indices), needs no new calling convention for ``loss_fn``, and
bound arrays that are the *same object* in every member (the data pool) are
passed once, not stacked ``S`` times; arrays that differ are stacked on a
leading member axis and mapped over.
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from hypergrad._src import devices as devices_lib
from hypergrad._src import estimator as estimator_lib
from hypergrad._src import forward as forward_lib
from hypergrad._src import schedule
from hypergrad._src import unroll as unroll_lib
from hypergrad._src import validation

PyTree = Any

AGGREGATES = ('mean', 'median', 'trimmed_mean', 'sign_vote')


class PopulationAggregate(NamedTuple):
  """Per-value summary of the members' hypergradients.

  Every field has the structure, shapes and dtypes of ``hparams`` (bool for
  ``undecided``).

  Attributes:
    hypergrads: the aggregate hypergradient, 0 where undecided.
    mean: the mean over members.
    stderr: standard error of the mean, ``std(ddof=1) / sqrt(S)``; NaN for
      ``S = 1``.
    snr: ``|mean| / stderr`` (inf where the members agree exactly on a
      non-zero value, 0 where all are 0); NaN for ``S = 1``.
    sign_agreement: ``|mean over members of sign(g)|`` in ``[0, 1]``: 1 when
      every member has the same sign, 0 for an even split.
    undecided: ``sign_agreement < min_agreement`` (all False without it).
  """
  hypergrads: PyTree
  mean: PyTree
  stderr: PyTree
  snr: PyTree
  sign_agreement: PyTree
  undecided: PyTree


class PopulationStats(NamedTuple):
  """What a population hypergradient knows besides its aggregate.

  Attributes:
    losses: ``(S,)``, each member's outer loss.
    hypergrads: each member's hypergradient: ``hparams``' structure with
      leaves ``(S, n, ...)``.
    mean, stderr, snr, sign_agreement, undecided: see
      :class:`PopulationAggregate`; like ``hparams``.
    nonfinite_step: int32 ``(S,)``, each member's first inner step whose
      state (or tangents) was non-finite, -1 if none.
    final_states: the members' final inner states, leaves ``(S, ...)``.
  """
  losses: jax.Array
  hypergrads: PyTree
  mean: PyTree
  stderr: PyTree
  snr: PyTree
  sign_agreement: PyTree
  undecided: PyTree
  nonfinite_step: jax.Array
  final_states: PyTree


class PopulationResult(NamedTuple):
  """``(loss, hypergrads, stats)`` of :func:`population_hypergrad`.

  Attributes:
    loss: scalar, the mean of the members' outer losses.
    hypergrads: the aggregate, with the structure, shapes and dtypes of
      ``hparams``.
    stats: a :class:`PopulationStats`.
  """
  loss: jax.Array
  hypergrads: PyTree
  stats: PopulationStats

  def as_hypergrad_result(self) -> estimator_lib.HypergradResult:
    """The single-estimate view the outer loop takes.

    ``info.nonfinite_step`` is the earliest over members (-1 if none) and
    ``info.final_state`` holds the members' final states (leading axis S).
    """
    steps = self.stats.nonfinite_step
    first = jnp.where(jnp.any(steps >= 0),
                      jnp.min(jnp.where(steps >= 0, steps,
                                        jnp.iinfo(jnp.int32).max)),
                      -1).astype(jnp.int32)
    return estimator_lib.HypergradResult(
        self.loss, self.hypergrads,
        unroll_lib.UnrollInfo(self.stats.final_states, first))


# ---------------------------------------------------------------------------
# Aggregation.


def _check_aggregate(aggregate, trim, min_agreement):
  if aggregate not in AGGREGATES:
    raise ValueError(f'aggregate must be one of {AGGREGATES}, got '
                     f'aggregate={aggregate!r}.')
  if not validation.is_real(trim) or not 0.0 <= trim < 0.5:
    raise ValueError(f'trim must be a number in [0, 0.5), the fraction cut '
                     f'from each end; got trim={trim!r}.')
  if min_agreement is not None and (
      not validation.is_real(min_agreement)
      or not 0.0 <= min_agreement <= 1.0):
    raise ValueError(f'min_agreement must be None or a number in [0, 1], '
                     f'got min_agreement={min_agreement!r}.')


def _aggregate_leaf(aggregate, g, trim, min_agreement, dtype):
  """The summary of one leaf of member hypergradients ``g: (S, ...)``."""
  s = g.shape[0]
  mean = jnp.mean(g, axis=0)
  votes = jnp.mean(jnp.sign(g), axis=0)
  agreement = jnp.abs(votes)
  if s > 1:
    stderr = jnp.std(g, axis=0, ddof=1) / np.sqrt(s).astype(g.dtype)
    # Members agreeing exactly: infinitely sure of a non-zero mean, no
    # signal at all in an all-zero one.
    snr = jnp.where(stderr > 0, jnp.abs(mean) / jnp.where(stderr > 0, stderr,
                                                          1),
                    jnp.where(mean == 0, 0, jnp.inf))
  else:  # one member says nothing about the spread
    stderr = jnp.full_like(mean, jnp.nan)
    snr = jnp.full_like(mean, jnp.nan)
  if aggregate == 'mean':
    value = mean
  elif aggregate == 'median':
    value = jnp.median(g, axis=0)
  elif aggregate == 'trimmed_mean':
    # k members cut from each end; trim < 0.5 keeps at least one.
    k = jnp.floor(trim * s).astype(jnp.int32)
    rank = jnp.arange(s, dtype=jnp.int32).reshape((s,) + (1,) * (g.ndim - 1))
    keep = (rank >= k) & (rank < s - k)
    ordered = jnp.sort(g, axis=0)
    value = (jnp.sum(jnp.where(keep, ordered, 0), axis=0)
             / (s - 2 * k).astype(g.dtype))
  else:  # 'sign_vote'
    value = votes
  # NaN agreement (a diverged member) compares False: the NaN aggregate goes
  # through, and the outer loop rejects the step.
  undecided = agreement < min_agreement.astype(agreement.dtype)
  value = jnp.where(undecided, 0, value)
  cast = lambda x: x.astype(dtype)
  return (cast(value), cast(mean), cast(stderr), cast(snr), cast(agreement),
          undecided)


@functools.partial(jax.jit, static_argnums=0)
def _aggregate(aggregate, member_hypergrads, trim, min_agreement):
  leaves, treedef = jax.tree.flatten(member_hypergrads)
  parts = [_aggregate_leaf(aggregate, g, trim, min_agreement, g.dtype)
           for g in leaves]
  return PopulationAggregate(*[jax.tree.unflatten(treedef, list(p))
                               for p in zip(*parts)])


def aggregate_hypergrads(member_hypergrads: PyTree, aggregate: str = 'mean',
                         *, trim: float = 0.25,
                         min_agreement: float | None = None
                         ) -> PopulationAggregate:
  r"""Aggregates ``S`` members' hypergradients value by value.

  With member hypergradients ``g_1 .. g_S`` of one value:

  * ``'mean'``: ``(1 / S) sum_i g_i``;
  * ``'median'``: the median over members;
  * ``'trimmed_mean'``: the mean of the members left after cutting the
    ``floor(trim * S)`` smallest and as many largest (``trim = 0.25``: the
    interquartile mean; below ``S = 1 / trim`` nothing is cut);
  * ``'sign_vote'``: ``(1 / S) sum_i sign(g_i)`` in ``[-1, 1]``: the
    majority's sign, with the agreement as its size (a sign-descent outer
    step only uses the sign).

  Then, with ``min_agreement``, values with ``|(1 / S) sum_i sign(g_i)| <
  min_agreement`` are undecided and set to exactly 0. A member's NaN makes
  that value's aggregate NaN, never undecided: a diverged member is for the
  outer loop to reject. Trim and ``min_agreement`` are traced: changing them
  does not recompile.

  Args:
    member_hypergrads: pytree of leaves ``(S, n, ...)``, ``S >= 1``.
    aggregate: one of ``'mean'``, ``'median'``, ``'trimmed_mean'``,
      ``'sign_vote'``.
    trim: fraction in ``[0, 0.5)`` cut from each end by ``'trimmed_mean'``.
    min_agreement: None, or the sign agreement in ``[0, 1]`` below which a
      value is undecided (0). For ``S`` members the agreement takes the
      values ``|2 p - S| / S`` for ``p`` positive members: with ``S = 8``,
      0.5 asks for at least 6 of 8 on one side.

  Returns:
    A :class:`PopulationAggregate`, leaves like one member's.

  Raises:
    ValueError: an unknown aggregate, a bad ``trim`` or ``min_agreement``,
      leaves without a common leading member axis ``S >= 1``.

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> g = {'lr': jnp.array([[1.0, -2.0], [3.0, 2.0], [2.0, -1.0]])}
    >>> out = hypergrad.aggregate_hypergrads(g, 'median', min_agreement=0.5)
    >>> out.hypergrads['lr'].tolist(), out.undecided['lr'].tolist()
    ([2.0, 0.0], [False, True])
  """
  _check_aggregate(aggregate, trim, min_agreement)
  leaves = jax.tree_util.tree_flatten_with_path(member_hypergrads)[0]
  if not leaves:
    raise ValueError('member_hypergrads has no leaves.')
  sizes = set()
  for path, leaf in leaves:
    shape = np.shape(leaf)
    if len(shape) < 1 or shape[0] < 1:
      raise ValueError(
          f'member_hypergrads leaf {jax.tree_util.keystr(path)} has shape '
          f'{tuple(shape)}: it needs a leading member axis S >= 1.')
    sizes.add(shape[0])
  if len(sizes) > 1:
    raise ValueError(f'member_hypergrads leaves disagree on the number of '
                     f'members: {sorted(sizes)}.')
  return _aggregate(aggregate, member_hypergrads, float(trim),
                    float(0.0 if min_agreement is None else min_agreement))


# ---------------------------------------------------------------------------
# Members.


class _FnSpec(NamedTuple):
  """How one function's bound leaves split into shared and per-member ones.

  Static (hashable): part of the compilation key, like a function identity.
  """
  treedef: Any
  batched: tuple[bool, ...]

  def build(self, shared, batched):
    shared_it, batched_it = iter(shared), iter(batched)
    return jax.tree.unflatten(
        self.treedef, [next(batched_it) if b else next(shared_it)
                       for b in self.batched])


def _member_fns(fns, num_members: int, name: str):
  """``(spec, shared_leaves, batched_leaves)`` of one or ``S`` functions."""
  if callable(fns):
    leaves, treedef = jax.tree.flatten(unroll_lib.as_pytree_fn(fns))
    return _FnSpec(treedef, (False,) * len(leaves)), leaves, []
  if not isinstance(fns, Sequence) or isinstance(fns, str):
    raise TypeError(f'{name} must be a callable, or a list of one callable '
                    f'per member; got {type(fns).__name__}.')
  if len(fns) != num_members:
    raise ValueError(f'{name} is a list of {len(fns)} functions for '
                     f'{num_members} members; give one per member.')
  flat = [jax.tree.flatten(unroll_lib.as_pytree_fn(f)) for f in fns]
  treedef = flat[0][1]
  for i, (_, d) in enumerate(flat):
    if d != treedef:
      raise ValueError(
          f'{name}[{i}] is not the same function as {name}[0] with other '
          'bound arrays; per-member functions must be one function bound '
          'with jax.tree_util.Partial to arrays of the same shapes.\n'
          f'  {name}[0]: {treedef}\n  {name}[{i}]: {d}')
  shared, batched, mask = [], [], []
  for j, column in enumerate(zip(*[leaves for leaves, _ in flat])):
    # The same object in every member (a data pool) is passed once.
    if all(x is column[0] for x in column):
      shared.append(column[0])
      mask.append(False)
      continue
    arrays = [jnp.asarray(x) for x in column]
    for i, x in enumerate(arrays):
      if x.shape != arrays[0].shape or x.dtype != arrays[0].dtype:
        raise ValueError(
            f'{name}[{i}] binds argument leaf {j} as {x.dtype}'
            f'{list(x.shape)}, {name}[0] as {arrays[0].dtype}'
            f'{list(arrays[0].shape)}: per-member arrays must agree in shape '
            'and dtype.')
    batched.append(jnp.stack(arrays))
    mask.append(True)
  return _FnSpec(treedef, tuple(mask)), shared, batched


def _check_init_states(init_states) -> tuple[PyTree, int]:
  """Arrays with a common leading member axis ``S >= 1``; returns ``S``."""
  leaves, treedef = jax.tree_util.tree_flatten_with_path(init_states)
  if not leaves:
    raise ValueError('init_states has no leaves.')
  out, num = [], None
  for path, leaf in leaves:
    name = jax.tree_util.keystr(path) or '<root>'
    x = unroll_lib.as_state(leaf)
    if x.ndim == 0 or x.shape[0] == 0:
      raise ValueError(
          f'init_states leaf {name} has shape {tuple(x.shape)}: every leaf '
          'needs a leading population axis of S >= 1 members (stack the '
          "members' states, e.g. jax.tree.map(lambda *x: jnp.stack(x), "
          '*states)).')
    if num is None:
      num, first = x.shape[0], name
    elif x.shape[0] != num:
      raise ValueError(
          f'init_states leaf {name} has {x.shape[0]} members on its leading '
          f'axis, leaf {first} has {num}: every leaf needs the same S.')
    out.append(x)
  return jax.tree.unflatten(treedef, out), num


def _check_member_mesh(mesh, member_axis, num):
  devices_lib.check_mesh_axis(mesh, member_axis, 'member_axis')
  if mesh is None:
    return
  devices = mesh.shape[member_axis]
  if num % devices:
    raise ValueError(f'S={num} members cannot be split evenly over the '
                     f'{devices} devices of mesh axis {member_axis!r}.')


@functools.partial(jax.jit, static_argnums=(0, 1, 2, 3, 4, 5, 6))
def _members(estimator, num_steps, step_spec, loss_spec, member_batch,
             mesh, member_axis, step_shared, step_batched, loss_shared,
             loss_batched, init_states, hparams):
  """Every member's loss, hypergradient, non-finite step and final state."""

  def member(xs):
    step_b, loss_b, state = xs
    step_fn = step_spec.build(step_shared, step_b)
    loss_fn = loss_spec.build(loss_shared, loss_b)
    # Traced once per compilation, on one member's shapes.
    unroll_lib.check_step_fn(step_fn, loss_fn, state, hparams, num_steps)
    result = estimator.compute(step_fn, loss_fn, state, hparams, num_steps)
    return (result.loss, result.hypergrads, result.info.nonfinite_step,
            result.info.final_state)

  def run(xs):
    if member_batch is None:
      return jax.vmap(member)(xs)
    return jax.lax.map(member, xs, batch_size=member_batch)

  xs = (step_batched, loss_batched, init_states)
  if mesh is None:
    return run(xs)
  # Members split over the mesh's member axis: each device runs its S / D
  # members; the shared arrays and the schedule are replicated.
  return devices_lib.split_map(run, xs, mesh, member_axis)


def population_hypergrad(step_fn, loss_fn, init_states, hparams,
                         num_steps: int, *,
                         estimator: estimator_lib.Estimator | None = None,
                         aggregate: str = 'mean', trim: float = 0.25,
                         min_agreement: float | None = None,
                         member_batch: int | None = None,
                         mesh: jax.sharding.Mesh | None = None,
                         member_axis: str = 'member'
                         ) -> PopulationResult:
  r"""Hypergradients of a population of inner runs, and their aggregate.

  Member ``i`` runs ``state_{t+1} = step_fn_i(state_t, hparams_t, t)`` from
  ``init_states[i]`` (every leaf indexed on its leading axis) for
  ``num_steps`` steps of the shared schedule ``hparams``, and the estimator
  gives ``L_i = loss_fn_i(state_T)`` and ``g_i = d L_i / d hparams``. The
  result is ``mean_i L_i``, the aggregate of the ``g_i`` (see
  :func:`hypergrad.aggregate_hypergrads`) and per-value statistics.

  All members run in one compiled program (``jax.vmap`` of the estimator's
  ``compute``), compiled once per (estimator, functions, ``num_steps``,
  ``member_batch``, shapes and dtypes): new values, new initial states and
  new per-member arrays of the same shapes do not recompile, nor does a new
  ``aggregate``, ``trim`` or ``min_agreement``. Memory is the estimator's
  for one member times ``S`` (times ``member_batch`` with it).

  Args:
    step_fn: the core contract's ``step_fn(state, hparams_t, t)``, shared by
      every member; or a list of ``S`` of them, one per member: the same
      function bound (``jax.tree_util.Partial``) to arrays of the same
      shapes, e.g. each member's training indices. Bound arrays that are the
      same object in every member are passed once.
    loss_fn: ``loss_fn(final_state) -> scalar``, shared; or a list of ``S``,
      e.g. ``[task.loss_fn(task.split(seed)) for seed in seeds]`` for
      members with their own validation split.
    init_states: pytree whose every leaf has a leading population axis of
      ``S >= 1`` members: member ``i``'s initial state (weights, and a PRNG
      key that fixes its batch order) is ``tree.map(lambda x: x[i], ...)``.
    hparams: pytree of schedule leaves ``(n, ...)``, shared by the members.
    num_steps: the horizon ``T``, a Python int.
    estimator: any :class:`hypergrad.Estimator`; default
      ``hypergrad.forward()``.
    aggregate: ``'mean'``, ``'median'``, ``'trimmed_mean'`` or
      ``'sign_vote'``.
    trim: fraction cut from each end by ``'trimmed_mean'``, in ``[0, 0.5)``.
    min_agreement: None, or the sign agreement below which a value is
      undecided: its aggregate is exactly 0, so a sign-descent outer step
      leaves it in place (and counts no sign flip).
    member_batch: None (vmap over all members at once), or run members in
      batches of this many with ``jax.lax.map`` (memory for
      ``member_batch`` members, members of a batch vectorised).
    mesh: a ``jax.sharding.Mesh`` to split the members over (its
      ``member_axis`` of ``D`` devices, ``S`` a multiple of ``D``; each
      device runs ``S / D`` members), or None for one device. To split each
      member's tangents instead, pass ``estimator=hypergrad.forward(mesh=...)``.
    member_axis: the name of that mesh axis.

  Returns:
    A :class:`PopulationResult` ``(loss, hypergrads, stats)``: the mean
    member loss, the aggregate hypergradient (structure, shapes and dtypes of
    ``hparams``) and :class:`PopulationStats` (``losses (S,)``, member
    ``hypergrads (S, n, ...)``, ``mean``, ``stderr``, ``snr``,
    ``sign_agreement``, ``undecided``, ``nonfinite_step (S,)``,
    ``final_states``).

  Raises:
    TypeError, ValueError: before any compute: a bad estimator, aggregate,
      ``trim``, ``min_agreement`` or ``member_batch``; ``init_states``
      leaves without a common leading axis ``S >= 1`` (naming the leaf);
      a function list of the wrong length or of different functions; bad
      ``num_steps`` or schedule leaves (NaN/Inf included, naming the leaf).

  Example:
    >>> import jax, jax.numpy as jnp, hypergrad
    >>> step = lambda s, h, t: {**s, 'w': s['w'] - h['lr'] * (s['w'] - 1)}
    >>> loss = lambda s: jnp.sum((s['w'] - s['target']) ** 2)
    >>> states = {'w': jnp.zeros((4, 2)),
    ...           'target': 1.0 + jax.random.normal(jax.random.key(0), (4, 2))}
    >>> loss_, g, stats = hypergrad.population_hypergrad(
    ...     step, loss, states, {'lr': jnp.full((3,), 0.1)}, 30,
    ...     aggregate='median', min_agreement=0.5)
    >>> g['lr'].shape, stats.hypergrads['lr'].shape, stats.losses.shape
    ((3,), (4, 3), (4,))
  """
  estimator = estimator_lib.check_estimator(
      forward_lib.forward() if estimator is None else estimator)
  _check_aggregate(aggregate, trim, min_agreement)
  member_batch = validation.check_int(member_batch, 'member_batch',
                                      allow_none=True)
  init_states, num = _check_init_states(init_states)
  _check_member_mesh(mesh, member_axis, num)
  member0 = jax.tree.map(lambda x: x[0], init_states)
  _, hparams, num_steps = estimator_lib.validate_problem(member0, hparams,
                                                         num_steps)
  # Members run at once (vmap), member_batch at a time, or split over
  # devices: an estimator sized to a memory budget gives each its share.
  devices = 1 if mesh is None else mesh.shape[member_axis]
  estimator = estimator.sharing_memory(
      min(member_batch or num, max(num // devices, 1)))
  step_spec, step_shared, step_batched = _member_fns(step_fn, num, 'step_fn')
  loss_spec, loss_shared, loss_batched = _member_fns(loss_fn, num, 'loss_fn')
  losses, grads, bad, finals = _members(
      estimator, num_steps, step_spec, loss_spec, member_batch, mesh,
      member_axis, step_shared,
      step_batched, loss_shared, loss_batched, init_states,
      schedule.as_schedules(hparams))
  agg = _aggregate(aggregate, grads, float(trim),
                   float(0.0 if min_agreement is None else min_agreement))
  # Per-value summaries are wrapped back like hparams (a ConstantLeaf's
  # interval axis dropped); the members' hypergradients keep the
  # one-interval form, (S, 1, ...).
  agg = PopulationAggregate(*[schedule.like_hparams(f, hparams) for f in agg])
  stats = PopulationStats(losses, grads, agg.mean, agg.stderr, agg.snr,
                          agg.sign_agreement, agg.undecided, bad, finals)
  return PopulationResult(jnp.mean(losses), agg.hypergrads, stats)
