"""Run in a subprocess with 4 forced host devices (see test_sharding.py).

Prints one JSON line: single-device and 4-device hypergradients of the same
problem, and the per-device shard shape of a training batch.
"""

import csv
import json
import os
import tempfile

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


def launch_runs():
  """The launch job on one device and split over tangents or members.

  Returns ``{spec: (learned schedule, validation losses per outer step)}``.
  """
  from launch import train  # pylint: disable=g-import-not-at-top
  from launch.configs import digits_mlp  # pylint: disable=g-import-not-at-top
  # Which splits the runs really made: meshes the estimators and the
  # population were given.
  seen = []
  call = hypergrad.Population.__call__

  def recording(self, *args, **kwargs):
    seen.append(dict(self.mesh.shape) if self.mesh else None)
    return call(self, *args, **kwargs)

  hypergrad.Population.__call__ = recording
  compute = hypergrad.Forward.compute

  def recording_compute(self, *args, **kwargs):
    seen.append(dict(self.mesh.shape) if self.mesh else None)
    return compute(self, *args, **kwargs)

  hypergrad.Forward.compute = recording_compute
  out = {}
  for spec, population in (('', 1), ('tangent=4', 1), ('', 2),
                           ('member=2', 2)):
    del seen[:]
    c = digits_mlp.get_config()
    c.horizon, c.outer_steps, c.retrain_inits = 40, 2, 1
    c.intervals.lr, c.init.lr = 3, 0.05
    c.mesh, c.population = spec, population
    with tempfile.TemporaryDirectory() as workdir:
      summary = train.train_and_evaluate(c, workdir)
      with open(os.path.join(workdir, 'metrics.csv')) as f:
        losses = [float(r['val_loss']) for r in csv.DictReader(f)]
    # Traced once per program: the first record is the search's.
    out[f'{spec or "one"}/{population}'] = (summary['learned_schedule'],
                                            losses, seen[0])
  return out


def refused():
  """The launch's errors for meshes that cannot run, by case."""
  from launch import train  # pylint: disable=g-import-not-at-top
  from launch.configs import digits_mlp  # pylint: disable=g-import-not-at-top
  out = {}
  for case, fields in (
      ('reverse_tangent', {'mesh': 'tangent=2', 'estimator': 'reverse'}),
      ('population_members', {'mesh': 'member=2', 'population': 3}),
      ('data_and_tangent', {'mesh': 'data=2,tangent=2'})):
    c = digits_mlp.get_config()
    c.update(fields)
    try:
      train.validate_config(c)
      out[case] = 'accepted'
    except train.ConfigError as e:
      out[case] = str(e)
  return out


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
      'launch': launch_runs(),
      'refused': refused(),
  }))


if __name__ == '__main__':
  main()
