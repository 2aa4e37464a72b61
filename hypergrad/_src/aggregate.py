r"""Aggregating a population's hypergradients, value by value.

With ``S`` members' hypergradients ``g_1 .. g_S`` of one value,

    mean        m = (1 / S) sum_i g_i
    std. error  e = std_i(g_i) / sqrt(S)          (ddof = 1)
    SNR         |m| / e
    agreement   a = |(1 / S) sum_i sign(g_i)|      in [0, 1]

and an aggregate: the mean, the median, a trimmed mean or a sign vote. Values
whose members disagree (``a < min_agreement``) are *undecided*: exactly 0, so
a sign-descent outer step leaves them in place. A tiny program of its own:
changing the aggregate never recompiles the members' unroll
(:mod:`hypergrad._src.population`).
"""

from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

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



def check_aggregate(aggregate, trim, min_agreement):
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
def aggregate_members(aggregate, member_hypergrads, trim, min_agreement):
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
  check_aggregate(aggregate, trim, min_agreement)
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
  return aggregate_members(aggregate, member_hypergrads, float(trim),
                    float(0.0 if min_agreement is None else min_agreement))
