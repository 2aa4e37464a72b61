r"""Population hypergradients: one hypergradient per member, aggregated.

Near the optimum the sign of a single long-horizon hypergradient is close to
a coin flip for most values: it depends on the initialisation, the batch
order and the validation split as much as on the hyperparameters. A
*population* of ``S`` inner runs, member ``i`` from its own initial state
(weights, PRNG key of the batch order) and optionally its own data split,
gives ``S`` hypergradients ``g_i`` of the same schedule, aggregated value by
value (:func:`hypergrad.aggregate_hypergrads`: mean, median, trimmed mean or
sign vote, with undecided values at exactly 0).

A population is an estimator *value*, :class:`Population`, like
``hypergrad.forward()``: built by :func:`hypergrad.population` around the
estimator its members run, and called on the core contract with stacked
initial states. It returns the one result type,
:class:`hypergrad.HypergradResult`, whose ``info`` is a
:class:`PopulationStats` (the members' losses, hypergradients, per-value
statistics, non-finite steps and final states), so the outer loop, the
launch script and the benchmarks take a population wherever they take an
estimator.

The members run as one compiled program: ``jax.vmap`` over members of the
member estimator's traceable ``compute`` (or ``jax.lax.map`` over batches of
members with ``member_batch``), so memory is the member estimator's
(constant in ``T`` for forward mode) times ``S`` (or times
``member_batch``). The aggregation is a second, tiny program: changing the
aggregate, the trim or ``min_agreement`` never recompiles the unroll.

Members that differ in their data (a validation split, a training split)
pass a *list of S functions* for ``step_fn`` and/or ``loss_fn``: the same
function bound with ``jax.tree_util.Partial`` to different arrays, e.g.
``[task.loss_fn(task.split(seed)) for seed in seeds]``. Bound arrays that are
the *same object* in every member (the data pool) are passed once, not
stacked ``S`` times; arrays that differ are stacked on a leading member axis
and mapped over.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp

from hypergrad._src import aggregate as aggregate_lib
from hypergrad._src import devices as devices_lib
from hypergrad._src import estimator as estimator_lib
from hypergrad._src import forward as forward_lib
from hypergrad._src import schedule
from hypergrad._src import unroll as unroll_lib
from hypergrad._src import validation

PyTree = Any


class PopulationStats(NamedTuple):
  """A population's ``HypergradResult.info``: what it knows besides its aggregate.

  ``final_state`` and ``nonfinite_step`` are :class:`hypergrad.UnrollInfo`'s
  fields with a leading member axis, so code that reads a single run's info
  reads a population's the same way.

  Attributes:
    losses: ``(S,)``, each member's outer loss.
    hypergrads: each member's hypergradient: ``hparams``' structure with
      leaves ``(S, n, ...)``.
    mean, stderr, snr, sign_agreement, undecided: see
      :class:`hypergrad.PopulationAggregate`; like ``hparams``.
    nonfinite_step: int32 ``(S,)``, each member's first inner step whose
      state (or tangents) was non-finite, -1 if none.
    final_state: the members' final inner states, leaves ``(S, ...)``.
    expansion: like ``hparams``, the median over members of each value's
      expansion (:class:`hypergrad.UnrollInfo`); None if the member
      estimator measures none.
  """
  losses: jax.Array
  hypergrads: PyTree
  mean: PyTree
  stderr: PyTree
  snr: PyTree
  sign_agreement: PyTree
  undecided: PyTree
  nonfinite_step: jax.Array
  final_state: PyTree
  expansion: PyTree = None


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


def _member_results(estimator, num_steps, step_spec, loss_spec, member_batch,
             mesh, member_axis, step_shared, step_batched, loss_shared,
             loss_batched, init_states, hparams):
  """Every member's :class:`HypergradResult`, leaves with a member axis."""

  def member(xs):
    step_b, loss_b, state = xs
    step_fn = step_spec.build(step_shared, step_b)
    loss_fn = loss_spec.build(loss_shared, loss_b)
    # Traced once per compilation, on one member's shapes.
    unroll_lib.check_step_fn(step_fn, loss_fn, state, hparams, num_steps)
    return estimator.compute(step_fn, loss_fn, state, hparams, num_steps)

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



_members = jax.jit(_member_results, static_argnums=(0, 1, 2, 3, 4, 5, 6))


def _stats(agg_name, trim, min_agreement, members_out, hparams
           ) -> estimator_lib.HypergradResult:
  """The aggregate and statistics of the members' results (traceable)."""
  agg = aggregate_lib.aggregate_members(agg_name, members_out.hypergrads,
                                        trim, min_agreement)
  # Per-value summaries are wrapped back like hparams (a ConstantLeaf's
  # interval axis dropped); the members' hypergradients keep the
  # one-interval form, (S, 1, ...).
  agg = aggregate_lib.PopulationAggregate(
      *[schedule.like_hparams(f, hparams) for f in agg])
  growth = members_out.info.expansion
  if growth is not None:
    growth = schedule.like_hparams(
        jax.tree.map(lambda e: jnp.median(e, axis=0), growth), hparams)
  info = PopulationStats(members_out.loss, members_out.hypergrads, agg.mean,
                         agg.stderr, agg.snr, agg.sign_agreement,
                         agg.undecided, members_out.info.nonfinite_step,
                         members_out.info.final_state, growth)
  return estimator_lib.HypergradResult(jnp.mean(members_out.loss),
                                       agg.hypergrads, info)


def first_nonfinite(nonfinite_step) -> int:
  """The earliest non-finite inner step of a run or of members (-1: none).

  Takes ``info.nonfinite_step`` of a single run (a scalar) or of a
  population (``(S,)``).
  """
  steps = jnp.atleast_1d(jnp.asarray(nonfinite_step))
  bad = [int(s) for s in steps.tolist() if s >= 0]
  return min(bad) if bad else -1


@dataclasses.dataclass(frozen=True)
class Population(estimator_lib.Estimator):
  """A population of ``S`` inner runs, aggregated: an estimator value.

  Build it with :func:`hypergrad.population`. Called like any estimator,
  except that ``init_state`` carries a leading member axis and ``step_fn`` /
  ``loss_fn`` may be lists of one function per member.

  Attributes:
    estimator: the estimator each member runs.
    aggregate: one of ``hypergrad.AGGREGATES``.
    trim: the fraction cut from each end by ``'trimmed_mean'``.
    min_agreement: None, or the sign agreement below which a value is
      undecided (its aggregate exactly 0).
    member_batch: None (vmap every member at once) or members per
      ``jax.lax.map`` batch.
    mesh: a mesh to split the members over, or None.
    member_axis: that mesh's axis name.
  """
  estimator: estimator_lib.Estimator
  aggregate: str = 'mean'
  trim: float = 0.25
  min_agreement: float | None = None
  member_batch: int | None = None
  mesh: jax.sharding.Mesh | None = None
  member_axis: str = 'member'

  runs_members = True

  def __post_init__(self):
    estimator_lib.check_estimator(self.estimator, single_run=True)
    aggregate_lib.check_aggregate(self.aggregate, self.trim,
                                  self.min_agreement)
    validation.check_int(self.member_batch, 'member_batch', allow_none=True)
    devices_lib.check_mesh_axis(self.mesh, self.member_axis, 'member_axis')

  def sharing_memory(self, copies: int) -> Population:
    return dataclasses.replace(
        self, estimator=self.estimator.sharing_memory(copies))

  def _member_estimator(self, num: int) -> estimator_lib.Estimator:
    # Members run at once (vmap), member_batch at a time, or split over
    # devices: an estimator sized to a memory budget gives each its share.
    devices = 1 if self.mesh is None else self.mesh.shape[self.member_axis]
    return self.estimator.sharing_memory(
        min(self.member_batch or num, max(num // devices, 1)))

  def compute(self, step_fn, loss_fn, init_state, hparams, num_steps: int,
              progress: unroll_lib.Progress | None = None
              ) -> estimator_lib.HypergradResult:
    """The population's result, traceable: ``init_state`` leaves ``(S, ...)``.

    ``step_fn`` and ``loss_fn`` are shared by the members here (one
    function each); :meth:`__call__` also takes per-member lists.
    """
    del progress  # members are vmapped: no single run to report on
    num = jax.tree.leaves(init_state)[0].shape[0]
    spec = lambda fn: _member_fns(fn, num, 'fn')
    step_spec, step_shared, step_batched = spec(step_fn)
    loss_spec, loss_shared, loss_batched = spec(loss_fn)
    out = _member_results(
        self._member_estimator(num), num_steps, step_spec, loss_spec,
        self.member_batch, self.mesh, self.member_axis, step_shared,
        step_batched, loss_shared, loss_batched, init_state, hparams)
    return _stats(self.aggregate, jnp.float32(self.trim),
                  jnp.float32(self.min_agreement or 0.0), out, hparams)

  def __call__(self, step_fn, loss_fn, init_state, hparams, num_steps: int,
               *, progress: unroll_lib.Progress | None = None
               ) -> estimator_lib.HypergradResult:
    """Loss, aggregate hypergradient and :class:`PopulationStats`.

    Args:
      step_fn: the core contract's ``step_fn(state, hparams_t, t)``, shared
        by every member; or a list of ``S`` of them, one per member: the same
        function bound (``jax.tree_util.Partial``) to arrays of the same
        shapes, e.g. each member's training indices.
      loss_fn: ``loss_fn(final_state) -> scalar``, shared; or a list of
        ``S``, e.g. ``[task.loss_fn(task.split(seed)) for seed in seeds]``.
      init_state: pytree whose every leaf has a leading axis of ``S >= 1``
        members.
      hparams: pytree of schedule leaves ``(n, ...)`` (and
        :class:`hypergrad.ConstantLeaf` values), shared by the members.
      num_steps: the horizon ``T``, a Python int.
      progress: must be None: the members run vmapped.

    Returns:
      A :class:`hypergrad.HypergradResult`: the mean member loss, the
      aggregate hypergradient (structure, shapes and dtypes of ``hparams``)
      and, as ``info``, :class:`PopulationStats`.
    """
    if progress is not None:
      raise ValueError('a population runs its members vmapped in one program '
                       'and reports no progress; pass progress=None.')
    init_states, num = _check_init_states(init_state)
    unroll_lib.check_finite_state(init_states, 'init_states')
    _check_member_mesh(self.mesh, self.member_axis, num)
    member0 = jax.tree.map(lambda x: x[0], init_states)
    _, hparams, num_steps = estimator_lib.validate_problem(member0, hparams,
                                                           num_steps)
    step_spec, step_shared, step_batched = _member_fns(step_fn, num,
                                                       'step_fn')
    loss_spec, loss_shared, loss_batched = _member_fns(loss_fn, num,
                                                       'loss_fn')
    out = _members(
        self._member_estimator(num), num_steps, step_spec, loss_spec,
        self.member_batch, self.mesh, self.member_axis, step_shared,
        step_batched, loss_shared, loss_batched, init_states,
        schedule.as_schedules(hparams))
    # A second, tiny program: a new aggregate, trim or min_agreement never
    # recompiles the members.
    return _stats_jit(self.aggregate, float(self.trim),
                      float(self.min_agreement or 0.0), out, hparams)


_stats_jit = jax.jit(_stats, static_argnums=0)


def population(estimator: estimator_lib.Estimator | None = None, *,
               aggregate: str = 'mean', trim: float = 0.25,
               min_agreement: float | None = None,
               member_batch: int | None = None,
               mesh: jax.sharding.Mesh | None = None,
               member_axis: str = 'member') -> Population:
  r"""A population estimator: ``S`` inner runs, their hypergradients aggregated.

  Member ``i`` runs ``state_{t+1} = step_fn_i(state_t, hparams_t, t)`` from
  ``init_state[i]`` (every leaf indexed on its leading axis) for
  ``num_steps`` steps of the shared schedule ``hparams``; the member
  estimator gives ``L_i = loss_fn_i(state_T)`` and ``g_i = d L_i / d
  hparams``. The result is ``mean_i L_i``, the aggregate of the ``g_i`` (see
  :func:`hypergrad.aggregate_hypergrads`) and per-value statistics.

  All members run in one compiled program, compiled once per (member
  estimator, functions, ``num_steps``, ``member_batch``, shapes and dtypes):
  new values, initial states and per-member arrays of the same shapes do not
  recompile, nor does a new ``aggregate``, ``trim`` or ``min_agreement``.
  Memory is the member estimator's for one member times ``S`` (times
  ``member_batch`` with it).

  Args:
    estimator: any single-run :class:`hypergrad.Estimator`; default
      ``hypergrad.forward()``.
    aggregate: ``'mean'``, ``'median'``, ``'trimmed_mean'`` or
      ``'sign_vote'``.
    trim: fraction cut from each end by ``'trimmed_mean'``, in ``[0, 0.5)``.
    min_agreement: None, or the sign agreement below which a value is
      undecided: its aggregate is exactly 0, so a sign-descent outer step
      leaves it in place (and counts no sign flip).
    member_batch: None (vmap over all members at once), or run members in
      batches of this many with ``jax.lax.map``.
    mesh: a ``jax.sharding.Mesh`` to split the members over (its
      ``member_axis`` of ``D`` devices, ``S`` a multiple of ``D``), or None
      for one device. To split each member's tangents instead, pass
      ``estimator=hypergrad.forward(mesh=...)``.
    member_axis: the name of that mesh axis.

  Returns:
    A :class:`Population` estimator value.

  Raises:
    TypeError, ValueError: a bad estimator (a population included),
      aggregate, ``trim``, ``min_agreement``, ``member_batch`` or mesh axis.

  Example:
    >>> import jax, jax.numpy as jnp, hypergrad
    >>> step = lambda s, h, t: {**s, 'w': s['w'] - h['lr'] * (s['w'] - 1)}
    >>> loss = lambda s: jnp.sum((s['w'] - s['target']) ** 2)
    >>> states = {'w': jnp.zeros((4, 2)),
    ...           'target': 1.0 + jax.random.normal(jax.random.key(0), (4, 2))}
    >>> est = hypergrad.population(aggregate='median', min_agreement=0.5)
    >>> loss_, g, info = est(step, loss, states, {'lr': jnp.full((3,), 0.1)},
    ...                      30)
    >>> g['lr'].shape, info.hypergrads['lr'].shape, info.losses.shape
    ((3,), (4, 3), (4,))
  """
  return Population(forward_lib.forward() if estimator is None else estimator,
                    aggregate, trim, min_agreement, member_batch, mesh,
                    member_axis)
