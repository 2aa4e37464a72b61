"""Forward-mode hypergradients through the whole unroll (FDS's core).

For hyperparameters ``lambda`` (schedule values) and the inner dynamics
``s_{t+1} = Phi(s_t, lambda_t, t)``, forward mode propagates the tangents
``Z_t = d s_t / d lambda`` alongside the primal run (Franceschi et al. 2017):

    Z_{t+1} = (d Phi / d s) Z_t + (d Phi / d lambda_t) (d lambda_t / d lambda),

and the hypergradient is ``d E(s_T) / d lambda = grad E(s_T) . Z_T``. Memory
holds one state and one tangent per hyperparameter value, whatever ``T``.

Two things keep this cheap (Micaelli & Storkey 2021):

* values are shared over contiguous intervals, so there are few tangents;
* the tangent of a value of interval ``i`` is exactly zero before interval
  ``i`` begins, so it is neither stored as begun nor pushed until then. With
  7 learning-rate intervals plus momentum and weight decay, that is 6 tangent
  pushes per step on average instead of 9.

Each inner step is linearised once (the primal step and its residuals are
computed once per step, not once per tangent) and pushes the tangents begun
so far, in one of two ways (:class:`Forward`'s ``push``):

* ``'batch'`` (GPU and TPU by default): a ``vmap`` of ``jvp`` over a static
  batch of tangents, fused with the primal step, every tangent matmul
  carrying the batch. The run is cut into a few segments, one per batch size
  (at most ``ceil(log2 K) + 1``, chosen to push the fewest not-yet-begun
  rows, :func:`plan`), so the program grows with ``log K``.
* ``'rows'`` (CPU by default): one compiled step whose linear map is applied
  to the begun rows one at a time, in a loop with a traced trip count; the
  program is the same size whatever ``K``.

Directions are sorted by the step they begin, so the begun ones are always
a prefix of the batch. Cost: about ``1 + a K_begun`` plain unrolls, ``a``
one to two plain steps of arithmetic per tangent (a Hessian-vector
product); what each push measures on CPU and GPU, and its compile time, is
in ``docs/benchmarks.md`` (``python -m benchmarks.forward_cost``,
``python -m benchmarks.gpu``).
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hypergrad._src import devices as devices_lib
from hypergrad._src import estimator as estimator_lib
from hypergrad._src import expansion as expansion_lib
from hypergrad._src import schedule
from hypergrad._src import tangents as tangents_lib
from hypergrad._src import unroll as unroll_lib
from hypergrad._src import validation

PyTree = Any


PUSHES = (None, 'batch', 'rows')

# Platforms whose default push (push=None) is the row loop; every other one
# pushes a batch. Measured: on XLA:CPU the row loop is faster and compiles in
# a third of the time; on accelerators a batch of tangents fills the device
# (docs/benchmarks.md). The one statement of the rule: `auto`'s probe reads
# it too.
ROW_PUSH_PLATFORMS = ('cpu',)


def default_push(platform: str) -> str:
  """The push ``forward(push=None)`` lowers to on ``platform``."""
  return 'rows' if platform in ROW_PUSH_PLATFORMS else 'batch'


class Direction(NamedTuple):
  """One scalar hyperparameter value: leaf, interval and trailing index."""
  start: int  # first inner step at which its tangent can be non-zero
  leaf: int
  interval: int
  entry: int  # flat index into the leaf's trailing axes
  flat: int  # position in the concatenation of all flattened leaves


def directions(hparams: PyTree, num_steps: int,
               skip_unstarted: bool = True) -> list[Direction]:
  """All scalar hyperparameter values, ordered by the step their tangent begins.

  A :class:`hypergrad.ConstantLeaf` counts as one interval: every tangent of
  its values begins at step 0.
  """
  out, offset = [], 0
  for l, shape in enumerate(schedule.schedule_shapes(hparams)):
    n, tail = shape[0], int(np.prod(shape[1:], dtype=np.int64))
    starts = schedule.interval_starts(n, num_steps)
    for i in range(n):
      for j in range(tail):
        start = int(starts[i]) if skip_unstarted else 0
        out.append(Direction(start, l, i, j, offset + i * tail + j))
    offset += n * tail
  return sorted(out, key=lambda d: (d.start, d.flat))


def _has_family(hparams) -> bool:
  return any(schedule.is_family(x) for x in
             jax.tree.leaves(hparams, is_leaf=schedule.is_family))


def _family_direction(hparams, t, num_steps, onehot, interval):
  """``d h_t`` along one value of ``hparams`` (a pytree like ``h_t``).

  Where a schedule family computes ``h_t`` from its parameters, the value's
  direction reaches ``h_t`` through the family's derivative: a ``jvp`` of
  :func:`schedule.hparams_at`. (Plain schedules take the cheaper masked
  one-hot, the same numbers.)

  Args:
    onehot: per hparams leaf, ``leaf.shape[1:]``: 1 at the value's entry.
    interval: the value's interval (traced int32).
  """
  leaves, treedef = jax.tree.flatten(hparams)
  tangent = jax.tree.unflatten(treedef, [
      jnp.zeros_like(h).at[interval].set(o.astype(h.dtype), mode='drop')
      for h, o in zip(leaves, onehot)])
  return jax.jvp(lambda hp: schedule.hparams_at(hp, t, num_steps),
                 (hparams,), (tangent,))[1]


class _Rows(NamedTuple):
  """The tangents of one chunk, described by arrays (one row per tangent).

  Rows past the chunk's directions are padding: they never begin.
  """
  start: Any  # int32 (C,): first step at which the row is pushed
  interval: Any  # int32 (C,): the interval its value is shared over
  onehot: tuple  # per hparams leaf, (C, *leaf.shape[1:]): 1 at its entry


def _rows(h_leaves, dirs: list[Direction], size: int, num_steps: int) -> _Rows:
  """NumPy rows of ``dirs`` padded to ``size`` with never-begun rows."""
  start = np.full((size,), num_steps, np.int32)
  interval = np.zeros((size,), np.int32)
  onehot = [np.zeros((size, int(np.prod(h.shape[1:], dtype=np.int64))),
                     h.dtype) for h in h_leaves]
  for k, d in enumerate(dirs):
    start[k], interval[k] = d.start, d.interval
    onehot[d.leaf][k, d.entry] = 1
  return _Rows(start, interval, tuple(
      o.reshape((size,) + h.shape[1:]) for o, h in zip(onehot, h_leaves)))


def plan(chunks: list[list[Direction]], num_steps: int,
         max_buckets: int | None = None
         ) -> tuple[tuple[int, int, int, bool], ...]:
  """The unroll's segments: ``(start, stop, batch, late)``, static.

  Every chunk pushes ``batch`` tangent rows over inner steps
  ``[start, stop)``; ``batch`` is the smallest of at most ``max_buckets``
  sizes (see :func:`tangents.buckets`) that holds the tangents any chunk has
  begun by ``stop - 1``. Begun counts only grow along the run, so each size
  is one contiguous segment and one compiled push. ``late``: some chunk has
  a row of the batch that begins after ``start`` (inside the segment).

  Args:
    chunks: the directions of each chunk, sorted by start.
    num_steps: the horizon ``T``.
    max_buckets: at most this many batch sizes; None:
      ``ceil(log2(K)) + 1`` for ``K`` rows a chunk, so the program grows with
      ``log K``, not ``K``.
  """
  counts = np.zeros((num_steps,), np.int64)
  fewest = np.full((num_steps,), np.iinfo(np.int64).max)
  for chunk in chunks:
    starts = np.sort(np.array([d.start for d in chunk], np.int64))
    begun = np.searchsorted(starts, np.arange(num_steps), side='right')
    counts, fewest = np.maximum(counts, begun), np.minimum(fewest, begun)
  size = max(len(c) for c in chunks)
  if max_buckets is None:
    max_buckets = int(np.ceil(np.log2(max(size, 1)))) + 1
  sizes = np.array(tangents_lib.buckets(counts, max_buckets))
  batch = sizes[np.searchsorted(sizes, counts)]
  edges = np.flatnonzero(np.diff(batch)) + 1
  bounds = np.concatenate([[0], edges, [num_steps]])
  return tuple((int(a), int(b), int(batch[a]), bool(fewest[a] < batch[a]))
               for a, b in zip(bounds[:-1], bounds[1:]))


def _batch_unroll(step_fn, init_state, hparams, num_steps, rows, segments,
                  progress=None, steps=None):
  """The final state's leaves, tangents, first non-finite step and expansion.

  One ``lax.scan`` per segment of :func:`plan` (a few, whatever the number
  of intervals): the step looks its hyperparameters up from ``t``, and the
  segment's static batch of rows is pushed with the primal step in one
  ``vmap`` of ``jvp`` (:func:`tangents.push_batch`). Rows not begun are
  exactly zero; inside the batch they are masked and stay so, past it they
  are not touched at all. With ``steps`` (the distinct interval starts), the
  batch carries one more row, the expansion probe (no hyperparameter
  direction), and the last output is its ``log10`` growth from each start;
  else None.
  """
  report = unroll_lib.progress_reporter(progress, num_steps)
  h_leaves, h_def = jax.tree.flatten(hparams)
  families = _has_family(hparams)
  split = unroll_lib.split_state(init_state)
  step, _ = tangents_lib.step_pieces(step_fn, split)

  def segment(batch, late):
    onehot = [o[:batch] for o in rows.onehot]
    interval, start = rows.interval[:batch], rows.start[:batch]
    # Rows that begin inside the segment are pushed, as zeros, before they
    # begin. That is exact (a linear map of zero) unless the step's
    # linearisation is not finite there (0 * inf): such a row is read as
    # zero until it begins, and is not counted by the finiteness check.

    def shaped(mask, x):
      return mask.reshape((batch,) + (1,) * (x.ndim - 1))

    def body(carry, _):
      diff, rest, tangents, t, bad, probe = carry
      report(t)
      h_t = schedule.hparams_at(hparams, t, num_steps)
      if families:
        dh = jax.vmap(lambda o, i: _family_direction(
            hparams, t, num_steps, o, i))(onehot, interval)
      else:
        # A row's value moves h_t only while its own interval is in force.
        dh = jax.tree.unflatten(h_def, [
            o * shaped(interval == schedule.interval_index(
                t, h.shape[0], num_steps), o).astype(o.dtype)
            for o, h in zip(onehot, h_leaves)])
      if late:
        on = start < t
        tangents = [jnp.where(shaped(on, z), z, 0) for z in tangents]
      if probe is None:
        diff, rest, tangents = tangents_lib.push_batch(
            step, diff, rest, h_t, t, tangents, dh)
      else:
        # The probe rides in the same batch as row 0: no second primal step.
        p, log_norm, at = probe
        at = expansion_lib.record(at, steps_arr, t, log_norm)
        dh = jax.tree.map(lambda d: jnp.concatenate(
            [jnp.zeros((1,) + d.shape[1:], d.dtype), d]), dh)
        diff, rest, out = tangents_lib.push_batch(
            step, diff, rest, h_t, t,
            [jnp.concatenate([q[None], z]) for q, z in zip(p, tangents)], dh)
        tangents = [z[1:] for z in out]
        p, log_norm = expansion_lib.renormalise([z[0] for z in out],
                                                log_norm)
        probe = (p, log_norm, at)
      if late:
        on = start <= t
        finite = unroll_lib.all_finite(diff) & jnp.all(jnp.stack([
            jnp.all(jnp.isfinite(z) | ~shaped(on, z)) for z in tangents]))
      else:
        finite = unroll_lib.all_finite(list(diff) + tangents)
      bad = jnp.where((bad < 0) & ~finite, t, bad).astype(jnp.int32)
      return (diff, rest, tangents, t + 1, bad, probe), None

    return body

  # The step index rides in the carry rather than as scanned-over input:
  # an int32[T] input would make memory grow with the horizon.
  diff, rest, t, bad = split.diff, split.rest, jnp.int32(0), jnp.int32(-1)
  steps_arr, probe = _probe_carry(steps, split.diff)
  tangents = tangents_lib.zeros(0, split.diff)
  for first, stop, batch, late in segments:
    # Rows begun in this segment join the batch as zeros.
    tangents = [jnp.concatenate([z, jnp.zeros((batch - z.shape[0],)
                                              + z.shape[1:], z.dtype)])
                for z in tangents]
    diff, rest, tangents, t, bad, probe = jax.lax.scan(
        segment(batch, late), (diff, rest, tangents, t, bad, probe), None,
        stop - first)[0]
  size = rows.start.shape[0]
  tangents = [jnp.pad(z, [(0, size - z.shape[0])] + [(0, 0)] * (z.ndim - 1))
              for z in tangents]
  return diff, rest, tangents, bad, _probe_growth(probe)


def _probe_carry(steps, diff):
  """``(steps as an array, the probe's initial carry)``, or ``(None, None)``."""
  if steps is None:
    return None, None
  return jnp.asarray(steps), (expansion_lib.probe_init(diff), jnp.float32(0),
                              jnp.zeros((len(steps),), jnp.float32))


def _probe_growth(probe):
  if probe is None:
    return None
  _, log_norm, at = probe
  return expansion_lib.from_probe(at, log_norm)


def _rows_unroll(step_fn, init_state, hparams, num_steps, rows,
                 progress=None, steps=None):
  """The final state's leaves, tangents, first non-finite step and expansion.

  One ``lax.scan`` over all ``num_steps`` steps, whatever the schedules: the
  step looks its hyperparameters up from ``t``, and the rows whose interval
  has begun (a prefix, rows being sorted by start) are pushed by
  :func:`tangents.push_rows`, a loop whose trip count is traced. Rows not
  yet begun are exactly zero and are neither read nor pushed. ``steps``: as
  in :func:`_batch_unroll`, the probe pushed once more through the step's
  linear map.
  """
  report = unroll_lib.progress_reporter(progress, num_steps)
  h_leaves, h_def = jax.tree.flatten(hparams)
  families = _has_family(hparams)
  split = unroll_lib.split_state(init_state)
  step, _ = tangents_lib.step_pieces(step_fn, split)

  def body(carry, _):
    diff, rest, tangents, t, bad, probe = carry
    report(t)
    h_t = schedule.hparams_at(hparams, t, num_steps)
    new_diff, new_rest, lin = tangents_lib.linearize(step, diff, rest, h_t, t)
    if probe is not None:
      p, log_norm, at = probe
      at = expansion_lib.record(at, steps_arr, t, log_norm)
      p, log_norm = expansion_lib.renormalise(
          list(lin(p, jax.tree.map(jnp.zeros_like, h_t))), log_norm)
      probe = (p, log_norm, at)
    # The interval in force for each leaf: a row's value moves h_t only
    # while its own interval is.
    now = [schedule.interval_index(t, h.shape[0], num_steps)
           for h in h_leaves]

    def direction(i):
      on = jax.lax.dynamic_index_in_dim(rows.interval, i, keepdims=False)
      if families:
        return _family_direction(
            hparams, t, num_steps,
            [jax.lax.dynamic_index_in_dim(o, i, keepdims=False)
             for o in rows.onehot], on)
      return jax.tree.unflatten(h_def, [
          jax.lax.dynamic_index_in_dim(o, i, keepdims=False)
          * (on == c).astype(o.dtype) for o, c in zip(rows.onehot, now)])

    begun = jnp.sum(rows.start <= t, dtype=jnp.int32)
    tangents, finite = tangents_lib.push_rows(lin, tangents, begun,
                                              direction)
    finite = finite & unroll_lib.all_finite(new_diff)
    bad = jnp.where((bad < 0) & ~finite, t, bad).astype(jnp.int32)
    return (new_diff, new_rest, tangents, t + 1, bad, probe), None

  # The step index rides in the carry rather than as scanned-over input:
  # an int32[T] input would make memory grow with the horizon.
  steps_arr, probe = _probe_carry(steps, split.diff)
  carry = (split.diff, split.rest,
           tangents_lib.zeros(rows.start.shape[0], split.diff),
           jnp.int32(0), jnp.int32(-1), probe)
  diff, rest, tangents, _, bad, probe = jax.lax.scan(body, carry, None,
                                                     num_steps)[0]
  return diff, rest, tangents, bad, _probe_growth(probe)


@dataclasses.dataclass(frozen=True)
class Forward(estimator_lib.Estimator):
  """Forward mode (FDS): tangents pushed through the whole unroll.

  Attributes:
    chunk_size: at most this many tangents are carried at once; more are
      handled by re-running the primal unroll per chunk (memory bounded by
      the chunk, compute grows with the number of chunks). None: one chunk.
    skip_unstarted: skip tangents of intervals that have not begun (exact;
      False only for benchmarking the naive scheme).
    mesh: a ``jax.sharding.Mesh`` with a ``tangent_axis`` axis of ``D``
      devices, or None. The tangents are split into ``D`` chunks, one per
      device (``chunk_size`` is then ignored), and every device runs the
      primal unroll with its own chunk of tangents (``jax.shard_map``):
      for many intervals or per-layer schedules, the tangent work is split
      ``D`` ways, and so is the tangent memory. The data and the state are
      replicated over this axis; other mesh axes are left to the caller.
    tangent_axis: the name of the mesh axis to split the tangents over.
    push: how the begun tangents go through each inner step. ``'batch'``:
      all at once, one ``vmap`` of ``jvp`` fused with the primal step, in
      at most ``ceil(log2 K) + 1`` static batch sizes (:func:`plan`).
      ``'rows'``: the step is linearised once and its linear map applied to
      the begun rows one at a time (one compiled body whatever ``K``).
      None: ``'rows'`` on CPU, ``'batch'`` on GPU and TPU, chosen when the
      program is lowered for its platform (``jax.lax.platform_dependent``).
      Both give the same numbers; see ``docs/benchmarks.md`` for what each
      costs where.
    expansion: measure the expansion behind each value's hypergradient
      (``info.expansion``, see ``docs/trust.md``) with one more tangent, a
      state-space probe; False saves that one tangent's cost.
  """
  chunk_size: int | None = None
  skip_unstarted: bool = True
  mesh: Any = None
  tangent_axis: str = 'tangent'
  push: str | None = None
  expansion: bool = True

  def __post_init__(self):
    object.__setattr__(self, 'chunk_size', validation.check_int(
        self.chunk_size, 'chunk_size', allow_none=True))
    object.__setattr__(self, 'skip_unstarted', bool(self.skip_unstarted))
    object.__setattr__(self, 'expansion', bool(self.expansion))
    devices_lib.check_mesh_axis(self.mesh, self.tangent_axis, 'tangent_axis')
    if self.push not in PUSHES:
      raise ValueError(f"push must be None, 'batch' or 'rows', got "
                       f'push={self.push!r}.')

  def compute(self, step_fn, loss_fn, init_state, hparams, num_steps,
              progress=None) -> estimator_lib.HypergradResult:
    dirs = directions(hparams, num_steps, self.skip_unstarted)
    devices = (1 if self.mesh is None
               else self.mesh.shape[self.tangent_axis])
    if devices > 1:
      # Round-robin over the directions sorted by start: every device gets
      # early and late intervals alike, so their work is even.
      chunks = [dirs[d::devices] for d in range(devices)]
      size = max(len(c) for c in chunks)
    else:
      size = min(self.chunk_size or len(dirs), len(dirs))
      chunks = [dirs[c:c + size] for c in range(0, len(dirs), size)]
    h_leaves = jax.tree.leaves(hparams)
    total = sum(h.size for h in h_leaves)
    rows = [_rows(h_leaves, c, size, num_steps) for c in chunks]
    # Padding rows scatter to index `total`, which is dropped.
    where = np.full((len(chunks), size), total, np.int64)
    for c, chunk in enumerate(chunks):
      where[c, :len(chunk)] = [d.flat for d in chunk]

    segments = plan(chunks, num_steps)
    steps = (expansion_lib.starts(hparams, num_steps) if self.expansion
             else None)

    def batch(r):
      return _batch_unroll(step_fn, init_state, hparams, num_steps, r,
                           segments, progress, steps)

    def rows_(r):
      return _rows_unroll(step_fn, init_state, hparams, num_steps, r,
                          progress, steps)

    split = unroll_lib.split_state(init_state)

    def one(r):
      if self.push is not None:
        out = (batch if self.push == 'batch' else rows_)(r)
      else:
        out = jax.lax.platform_dependent(
            r, **{p: rows_ for p in ROW_PUSH_PLATFORMS}, default=batch)
      diff, rest, tangents, bad, growth = out
      merge = lambda d: unroll_lib.merge_state(d, rest, split.treedef,
                                               split.mask)
      loss, g = jax.value_and_grad(lambda d: loss_fn(merge(d)))(diff)
      values = tangents_lib.contract_flat(tangents, g, tangents[0].dtype)
      growth = (None if growth is None else expansion_lib.per_value(
          growth, steps, hparams, num_steps))
      return loss, values, unroll_lib.UnrollInfo(merge(diff), bad, growth)

    if devices > 1:
      loss, values, info = self._sharded(one, rows)
    elif len(chunks) == 1:
      loss, values, info = one(jax.tree.map(jnp.asarray, rows[0]))
      values = values[None]
    else:
      # The chunks share one compiled unroll: their rows are scanned over.
      # Every chunk reruns the same primal; its tangents may blow up.
      # The probe's growth is the same in every chunk: the last one's is kept.
      def chunk(carry, r):
        bad = carry[2]
        loss, values, info = one(r)
        bad = unroll_lib.earliest(bad, info.nonfinite_step)
        return (loss, info.final_state, bad, info.expansion), values

      loss0 = jnp.zeros((), jax.eval_shape(loss_fn, init_state).dtype)
      growth0 = (None if steps is None else jax.tree.map(
          lambda h: jnp.zeros(h.shape, jnp.float32), hparams))
      stacked = jax.tree.map(lambda *x: jnp.asarray(np.stack(x)), *rows)
      (loss, final, bad, growth), values = jax.lax.scan(
          chunk, (loss0, init_state, jnp.int32(-1), growth0), stacked)
      info = unroll_lib.UnrollInfo(final, bad, growth)
    # NumPy's rules: a float32 and a float64 schedule in one pytree is fine
    # even under strict jax promotion; every leaf is cast back below.
    flat_dtype = np.result_type(*[h.dtype for h in h_leaves])
    flat = jnp.zeros((total,), flat_dtype).at[where.reshape(-1)].set(
        values.reshape(-1).astype(flat_dtype), mode='drop')
    return estimator_lib.HypergradResult(
        loss, tangents_lib.unflatten_like(flat, hparams), info)

  def _sharded(self, one, rows):
    """``one`` on every device's chunk of rows: ``(loss, values, info)``."""
    spec = jax.sharding.PartitionSpec
    stacked = jax.tree.map(lambda *x: jnp.asarray(np.stack(x)), *rows)

    def per_device(r):
      loss, values, info = one(jax.tree.map(lambda x: x[0], r))
      return loss, values[None], info._replace(
          nonfinite_step=info.nonfinite_step[None])

    # The primal run is the same on every device, so its loss and final
    # state leave as replicated values (no copies gathered); the chunks'
    # values and non-finite steps are gathered.
    split, same = spec(self.tangent_axis), spec()
    loss, values, info = devices_lib.split_map(
        per_device, stacked, self.mesh, self.tangent_axis,
        (same, split, unroll_lib.UnrollInfo(same, split, same)))
    bad = info.nonfinite_step[0]
    for d in range(1, info.nonfinite_step.shape[0]):
      bad = unroll_lib.earliest(bad, info.nonfinite_step[d])
    return loss, values, info._replace(nonfinite_step=bad)


def forward(chunk_size: int | None = None, *,
            skip_unstarted: bool = True, mesh: Any = None,
            tangent_axis: str = 'tangent', push: str | None = None,
            expansion: bool = True) -> Forward:
  """The forward-mode estimator (FDS), as a value to pass around.

  Memory is constant in the horizon: one state and one tangent per scalar
  hyperparameter value (``K``), or ``chunk_size`` tangents at a time. Time is
  about ``1 + a K_begun`` plain runs, ``K_begun`` the tangents of intervals
  already begun (averaged over the run).

  Args:
    chunk_size: bound on tangents carried at once, or None for all.
    skip_unstarted: see :class:`Forward`.
    mesh: split the tangents over this mesh's ``tangent_axis`` (see
      :class:`Forward`); None: one device.
    tangent_axis: the mesh axis name.
    push: ``'batch'``, ``'rows'`` or None (by platform); see
      :class:`Forward`.
    expansion: measure ``info.expansion`` (one more tangent); see
      :class:`Forward`.

  Returns:
    A :class:`Forward` estimator; call it like any :class:`Estimator`.

  Raises:
    ValueError: ``chunk_size`` not None or an int >= 1, or another ``push``.

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> step = lambda w, h, t: w - h['lr'] * 2.0 * (w - 3.0)
    >>> result = hypergrad.forward(chunk_size=1)(
    ...     step, lambda w: (w - 3.0) ** 2, jnp.zeros(()),
    ...     {'lr': jnp.full((2,), 0.1)}, num_steps=10)
    >>> result.hypergrads['lr'].shape, int(result.info.nonfinite_step)
    ((2,), -1)
  """
  return Forward(chunk_size, skip_unstarted, mesh, tangent_axis, push,
                 expansion)


def forward_hypergrad(step_fn, loss_fn, init_state, hparams, num_steps: int,
                      *, chunk_size: int | None = None,
                      skip_unstarted: bool = True,
                      progress: unroll_lib.Progress | None = None):
  """Loss and hypergradient of ``loss_fn`` after a whole inner run, forward mode.

  Runs ``state_{t+1} = step_fn(state_t, hparams_t, t)`` for ``t < num_steps``
  where ``hparams_t`` indexes every schedule leaf at ``(t * n) // num_steps``,
  and differentiates ``loss_fn(state_T)`` with respect to every schedule value
  by pushing one tangent per value through the unroll with ``jax.linearize``.
  Memory is constant in ``num_steps``. The same as
  ``hypergrad.forward(chunk_size)(...)`` without the unroll info.

  The computation is compiled once per (``step_fn``, ``loss_fn``,
  ``num_steps``, options, shapes and dtypes): the outer loop can call it with
  new hyperparameter values without recompiling, as long as it passes the
  same function objects (not fresh lambdas) each time. Bind large arrays
  (training data, a validation split) with ``jax.tree_util.Partial(fn,
  arrays...)``: they then travel as arguments, so new arrays of the same
  shapes do not recompile and nothing large is embedded in the program.

  Args:
    step_fn: ``step_fn(state, hparams_t, t) -> state``, one pure inner step;
      ``t`` is a traced int32 step index. A function or a
      ``jax.tree_util.Partial``.
    loss_fn: ``loss_fn(final_state) -> scalar``, the outer (validation) loss.
    init_state: pytree, the inner state at step 0. Integer leaves (counters,
      PRNG keys) are carried but not differentiated.
    hparams: pytree of schedule leaves of shape ``(n, ...)``, ``n`` values
      shared over ``n`` contiguous intervals; ``n`` may differ per leaf.
    num_steps: the horizon ``T``, a Python int.
    chunk_size: see :func:`hypergrad.forward`.
    skip_unstarted: see :class:`hypergrad.Forward`.
    progress: optional ``Progress(callback, every)``: ``callback(t)`` is called
      on the host every ``every`` inner steps (once per chunk), so a
      10^4-step hypergradient is never silent. Keep the same object across
      calls: it is part of the compilation key.

  Returns:
    ``(loss, hypergrads)``: the scalar outer loss and ``d loss / d hparams``
    with exactly the structure, shapes and dtypes of ``hparams``.

  Raises:
    ValueError, TypeError: bad ``num_steps``, schedule leaves (NaN or Inf
      values included), ``chunk_size``, or a ``step_fn`` that changes the
      state's structure; before compute.

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> step = lambda w, h, t: w - h['lr'] * 2.0 * (w - 3.0)
    >>> loss, g = hypergrad.forward_hypergrad(
    ...     step, lambda w: (w - 3.0) ** 2, jnp.zeros(()),
    ...     {'lr': jnp.full((2,), 0.1)}, num_steps=10)
    >>> g['lr'].shape
    (2,)
  """
  result = forward(chunk_size, skip_unstarted=skip_unstarted)(
      step_fn, loss_fn, init_state, hparams, num_steps, progress=progress)
  return result.loss, result.hypergrads
