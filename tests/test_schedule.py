"""Shared-interval schedules: constants, the (t * n) // T rule, resampling."""

import chex
import jax.numpy as jnp
import numpy as np

import hypergrad
from hypergrad._src import schedule


def test_schedule_helpers():
  h = hypergrad.constant(0.1, 4, jnp.float32)
  chex.assert_shape(h, (4,))
  chex.assert_type(h, jnp.float32)
  assert not h.weak_type
  np.testing.assert_array_equal(
      schedule.resample(jnp.array([1.0, 2.0]), 4), [1.0, 1.0, 2.0, 2.0])
  per_step = hypergrad.expand({'lr': jnp.array([1.0, 2.0, 3.0])}, 7)['lr']
  # (t * 3) // 7 for t = 0..6
  np.testing.assert_array_equal(per_step, [1, 1, 1, 2, 2, 3, 3])
  starts = hypergrad.interval_starts(3, 7)
  np.testing.assert_array_equal(starts, [0, 3, 5])
  for t in range(7):
    assert schedule.interval_index(t, 3, 7) == np.searchsorted(
        starts, t, side='right') - 1
