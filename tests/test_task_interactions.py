"""Learning task interactions end to end on digits (embedded, no download)."""

import jax
import jax.numpy as jnp
import numpy as np

from hypergrad.experiments import task_interactions as ti


def test_learned_coupling_beats_the_fixed_ones_on_validation():
  data = ti.make_data(0, per_task=5, num_val=200)
  assert data.x_tasks.shape == (10, 10, 65)
  config = ti.InteractionConfig(num_steps=60, outer_steps=6, outer_lr=0.01,
                                grid=(0.0, 1e-3, 1e-2))
  # optax.adam's bias correction mixes its int32 count with a Python float.
  with jax.numpy_dtype_promotion('standard'):
    r = ti.run(data, config)
  a = np.asarray(r['matrix'])
  np.testing.assert_allclose(a, a.T)
  assert (a >= 0).all() and (np.diag(a) == 0).all()
  assert r['val_loss_learned'] < r['val_loss_all_equal'] <= (
      r['val_loss_independent'])


def test_symmetric_non_negative_projection():
  a = ti.SymmetricNonNegative()(jnp.array([[1.0, -3.0], [5.0, 2.0]]))
  np.testing.assert_allclose(a, [[0.0, 1.0], [1.0, 0.0]])
  b = ti.SymmetricNonNegative()(jnp.array([[1.0, -3.0], [1.0, 2.0]]))
  np.testing.assert_allclose(b, 0.0)
