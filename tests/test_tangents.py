"""The tangent engine's batch sizes: few compiled sizes, the least padding."""

import itertools

from absl.testing import parameterized
import jax.numpy as jnp
import numpy as np

from benchmarks import common
import hypergrad
from hypergrad._src import forward as forward_lib
from hypergrad._src import tangents as tangents_lib
from tests import helpers


class BucketsTest(parameterized.TestCase):

  @parameterized.parameters(itertools.product([1, 2, 3, 4], [0, 1, 2]))
  def test_least_waste_against_brute_force(self, max_buckets, seed):
    rng = np.random.RandomState(seed)
    counts = np.sort(rng.randint(1, 12, size=40))
    got = tangents_lib.buckets(counts, max_buckets)
    values = np.unique(counts)

    def waste(sizes):
      sizes = np.asarray(sorted(sizes))
      return int(np.sum(sizes[np.searchsorted(sizes, counts)] - counts))

    best = min(waste(list(c) + [values[-1]])
               for k in range(min(max_buckets, len(values)))
               for c in itertools.combinations(values[:-1], k))
    self.assertLessEqual(len(got), max_buckets)
    self.assertEqual(got[-1], values[-1])
    self.assertEqual(waste(got), best)

  @parameterized.parameters((7, 9, 5), (30, 32, 6))
  def test_batch_sizes_grow_with_log_k(self, n_lr, k, most):
    hparams = common.fds_hparams(n_lr)
    segments = forward_lib.plan([forward_lib.directions(hparams, 1000)], 1000)
    self.assertLen(segments, most)
    self.assertEqual(segments[-1][2], k)
    self.assertEqual([s[0] for s in segments[1:]],
                     [s[1] for s in segments[:-1]])

  def test_traces_grow_with_log_k(self):
    step_fn, loss_fn, state = helpers.sgd_problem()
    traces = {}
    for n in (1, 9, 31):
      seen = []

      def counted(s, h, t, seen=seen):
        seen.append(t)
        return step_fn(s, h, t)

      hypergrad.forward(push='batch')(counted, loss_fn, state,
                                      {'lr': jnp.full((n,), 0.05),
                                       'momentum': jnp.array([0.5])}, 40)
      traces[n] = len(seen)
    # One trace per batch size (at most ceil(log2 K) + 1), plus the checks.
    self.assertLessEqual(traces[9] - traces[1], 4)
    self.assertLessEqual(traces[31] - traces[9], 2)
