"""Run in a subprocess with 4 forced host devices (see test_sharding.py).

Prints one JSON line: single-device and 4-device hypergradients of the same
problem, and the per-device shard shape of a training batch.
"""

import json
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

import hypergrad  # pylint: disable=g-import-not-at-top
from hypergrad.experiments import tasks  # pylint: disable=g-import-not-at-top


def hypergrads(mesh):
  task = tasks.make_task('digits_mlp', mesh=mesh, batch_size=32)
  step_fn, loss_fn, state = task.problem(split_seed=1, init_seed=2)
  hparams = {'lr': jnp.array([0.1, 0.05, 0.02], jnp.float32),
             'momentum': jnp.array([0.5], jnp.float32),
             'weight_decay': jnp.array([1e-3], jnp.float32)}
  loss, g = hypergrad.forward_hypergrad(step_fn, loss_fn, state, hparams, 30)
  return task, float(loss), {k: np.asarray(v).tolist() for k, v in g.items()}


def main():
  mesh = tasks.make_mesh('data=4')
  _, loss1, g1 = hypergrads(None)
  task, loss4, g4 = hypergrads(mesh)
  x = task.x_pool[:32]
  out_sharding = jax.jit(lambda x: tasks.shard_batch(x, mesh)).lower(
      x).compile().output_shardings
  step_fn, _, state = task.problem()
  h_t = {'lr': jnp.float32(0.1), 'momentum': jnp.float32(0.5),
         'weight_decay': jnp.float32(1e-3)}
  hlo = jax.jit(step_fn).lower(state, h_t, jnp.int32(0)).compile().as_text()
  print(json.dumps({
      'devices': jax.device_count(),
      'loss1': loss1, 'loss4': loss4, 'g1': g1, 'g4': g4,
      'shard_shape': list(out_sharding.shard_shape(x.shape)),
      'all_reduce_in_step': 'all-reduce' in hlo,
  }))


if __name__ == '__main__':
  main()
