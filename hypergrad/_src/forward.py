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
  ``i`` begins, so the unroll is cut into segments at interval boundaries and
  each segment only carries the tangents that have begun. With 7 learning-rate
  intervals plus momentum and weight decay, that is 6 tangents on average
  instead of 9.

Within a segment every hyperparameter is constant, so the schedule is indexed
statically and the tangent engine (:mod:`hypergrad._src.tangents`) linearises
the step once and applies its linear map to the whole tangent batch: the
primal step and its residuals are computed once per inner step, not once per
tangent.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hypergrad._src import estimator as estimator_lib
from hypergrad._src import schedule
from hypergrad._src import tangents as tangents_lib
from hypergrad._src import unroll as unroll_lib
from hypergrad._src import validation

PyTree = Any


class Direction(NamedTuple):
  """One scalar hyperparameter value: leaf, interval and trailing index."""
  start: int  # first inner step at which its tangent can be non-zero
  leaf: int
  interval: int
  entry: int  # flat index into the leaf's trailing axes
  flat: int  # position in the concatenation of all flattened leaves


def directions(hparams: PyTree, num_steps: int,
               skip_unstarted: bool = True) -> list[Direction]:
  """All scalar hyperparameter values, ordered by the step their tangent begins."""
  out, offset = [], 0
  for l, leaf in enumerate(jax.tree.leaves(hparams)):
    n, tail = leaf.shape[0], int(np.prod(leaf.shape[1:], dtype=np.int64))
    starts = schedule.interval_starts(n, num_steps)
    for i in range(n):
      for j in range(tail):
        start = int(starts[i]) if skip_unstarted else 0
        out.append(Direction(start, l, i, j, offset + i * tail + j))
    offset += n * tail
  return sorted(out, key=lambda d: (d.start, d.flat))


def _hparam_tangents(hparams_leaves, dirs, intervals):
  """Tangents of ``hparams_t`` for each direction within one segment.

  Direction (l, i, j) moves entry j of leaf l only while interval i is in
  force; elsewhere its tangent of ``hparams_t`` is zero.
  """
  out = []
  for l, leaf in enumerate(hparams_leaves):
    tail_shape = leaf.shape[1:]
    tail = int(np.prod(tail_shape, dtype=np.int64))
    t = np.zeros((len(dirs), tail), dtype=leaf.dtype)
    for k, d in enumerate(dirs):
      if d.leaf == l and d.interval == intervals[l]:
        t[k, d.entry] = 1
    out.append(jnp.asarray(t.reshape((len(dirs),) + tail_shape)))
  return out


def _chunk_hypergrad(step_fn, loss_fn, init_state, hparams, num_steps, dirs,
                     progress=None):
  """Loss, hypergradient values and unroll info for one chunk of directions."""
  report = unroll_lib.progress_reporter(progress, num_steps)
  h_leaves, h_def = jax.tree.flatten(hparams)
  split = unroll_lib.split_state(init_state)
  step, merge = tangents_lib.step_pieces(step_fn, split)
  diff, rest = split.diff, split.rest
  tangents = None  # list of (k, *leaf.shape) arrays, one per diff leaf
  bad = jnp.int32(-1)  # first step whose output is non-finite

  for seg in schedule.segments(hparams, num_steps):
    active = [d for d in dirs if d.start <= seg.start]
    h_seg = jax.tree.unflatten(
        h_def, [h[c] for h, c in zip(h_leaves, seg.intervals)])
    length = seg.stop - seg.start
    t0 = jnp.int32(seg.start)

    # The step index rides in the carry rather than as scanned-over input:
    # an int32[T] input would make memory grow with the horizon.
    if not active:
      def plain_body(carry, _, h_seg=h_seg):
        diff_, rest_, t, bad_ = carry
        report(t)
        new_diff, new_rest = step(diff_, rest_, h_seg, t)
        bad_ = unroll_lib.first_nonfinite(bad_, t, new_diff)
        return (new_diff, new_rest, t + 1, bad_), None
      diff, rest, _, bad = jax.lax.scan(plain_body, (diff, rest, t0, bad),
                                        None, length)[0]
      continue

    k = len(active)
    if tangents is None:
      tangents = tangents_lib.zeros(k, diff)
    elif tangents[0].shape[0] < k:
      pad = tangents_lib.zeros(k - tangents[0].shape[0], diff)
      tangents = [jnp.concatenate([z, p]) for z, p in zip(tangents, pad)]
    dh = jax.tree.unflatten(
        h_def, _hparam_tangents(h_leaves, active, seg.intervals))

    def body(carry, _, h_seg=h_seg, dh=dh):
      diff_, rest_, tan, t, bad_ = carry
      report(t)
      new_diff, new_rest, new_tan = tangents_lib.push(step, diff_, rest_,
                                                      h_seg, t, tan, dh)
      bad_ = unroll_lib.first_nonfinite(bad_, t, (new_diff, new_tan))
      return (new_diff, new_rest, new_tan, t + 1, bad_), None

    diff, rest, tangents, _, bad = jax.lax.scan(
        body, (diff, rest, tangents, t0, bad), None, length)[0]

  loss, g = jax.value_and_grad(lambda d: loss_fn(merge(d, rest)))(diff)
  values = tangents_lib.contract_flat(tangents, g, tangents[0].dtype)
  return loss, values, unroll_lib.UnrollInfo(merge(diff, rest), bad)


@dataclasses.dataclass(frozen=True)
class Forward(estimator_lib.Estimator):
  """Forward mode (FDS): tangents pushed through the whole unroll.

  Attributes:
    chunk_size: at most this many tangents are carried at once; more are
      handled by re-running the primal unroll per chunk (memory bounded by
      the chunk, compute grows with the number of chunks). None: one chunk.
    skip_unstarted: skip tangents of intervals that have not begun (exact;
      False only for benchmarking the naive scheme).
  """
  chunk_size: int | None = None
  skip_unstarted: bool = True

  def __post_init__(self):
    object.__setattr__(self, 'chunk_size', validation.check_int(
        self.chunk_size, 'chunk_size', allow_none=True))
    object.__setattr__(self, 'skip_unstarted', bool(self.skip_unstarted))

  def compute(self, step_fn, loss_fn, init_state, hparams, num_steps,
              progress=None) -> estimator_lib.HypergradResult:
    dirs = directions(hparams, num_steps, self.skip_unstarted)
    chunk = self.chunk_size or len(dirs)
    h_leaves = jax.tree.leaves(hparams)
    total = sum(h.size for h in h_leaves)
    # NumPy's rules: a float32 and a float64 schedule in one pytree is fine
    # even under strict jax promotion; every leaf is cast back below.
    flat_dtype = np.result_type(*[h.dtype for h in h_leaves])
    flat = jnp.zeros((total,), flat_dtype)
    loss = info = None
    for c in range(0, len(dirs), chunk):
      group = dirs[c:c + chunk]
      chunk_loss, values, chunk_info = _chunk_hypergrad(
          step_fn, loss_fn, init_state, hparams, num_steps, group, progress)
      if loss is None:
        loss, info = chunk_loss, chunk_info
      else:  # every chunk reruns the same primal; its tangents may blow up
        info = info._replace(nonfinite_step=unroll_lib.earliest(
            info.nonfinite_step, chunk_info.nonfinite_step))
      flat = flat.at[np.array([d.flat for d in group])].set(
          values.astype(flat_dtype))
    return estimator_lib.HypergradResult(
        loss, tangents_lib.unflatten_like(flat, hparams), info)


def forward(chunk_size: int | None = None, *,
            skip_unstarted: bool = True) -> Forward:
  """The forward-mode estimator (FDS), as a value to pass around.

  Memory is constant in the horizon: one state and one tangent per scalar
  hyperparameter value (``K``), or ``chunk_size`` tangents at a time. Time is
  about ``1 + a K_begun`` plain runs, ``K_begun`` the tangents of intervals
  already begun (averaged over the run).

  Args:
    chunk_size: bound on tangents carried at once, or None for all.
    skip_unstarted: see :class:`Forward`.

  Returns:
    A :class:`Forward` estimator; call it like any :class:`Estimator`.

  Raises:
    ValueError: ``chunk_size`` not None or an int >= 1.

  Example:
    >>> import jax.numpy as jnp, hypergrad
    >>> step = lambda w, h, t: w - h['lr'] * 2.0 * (w - 3.0)
    >>> result = hypergrad.forward(chunk_size=1)(
    ...     step, lambda w: (w - 3.0) ** 2, jnp.zeros(()),
    ...     {'lr': jnp.full((2,), 0.1)}, num_steps=10)
    >>> result.hypergrads['lr'].shape, int(result.info.nonfinite_step)
    ((2,), -1)
  """
  return Forward(chunk_size, skip_unstarted)


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
