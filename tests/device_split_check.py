"""Run in a subprocess with 4 forced host devices (see test_device_split.py).

Prints one JSON line comparing forward-mode hypergradients with the tangents
split over a 4-device ``tangent`` mesh axis, and population hypergradients
with the members split over a ``member`` axis, to the one-device results.
"""

import json
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=4')

import jax  # pylint: disable=g-import-not-at-top
import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

jax.config.update('jax_enable_x64', True)

import hypergrad  # noqa: E402  # pylint: disable=g-import-not-at-top
from tests import helpers  # noqa: E402  # pylint: disable=g-import-not-at-top


def _diff(a, b):
  return max(float(jnp.max(jnp.abs(x - y)))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def main():
  out = {'devices': jax.device_count()}
  tangent_mesh = jax.make_mesh((4,), ('tangent',))
  member_mesh = jax.make_mesh((4,), ('member',))
  step_fn, loss_fn, state = helpers.sgd_problem()
  cases = {
      # 7 lr intervals + momentum + weight decay: 9 tangents over 4 devices.
      'fds_k9': {'lr': jnp.linspace(0.03, 0.1, 7),
                 'momentum': jnp.array([0.6]),
                 'weight_decay': jnp.array([1e-3])},
      # Fewer tangents than devices: some devices carry none.
      'k2': {'lr': jnp.array([0.05, 0.08])},
      # Per-layer learning-rate schedules (a prefix of the parameters).
      'per_leaf': {'lr': {'a': jnp.full((3,), 0.05), 'b': jnp.full((2,), 0.08)},
                   'momentum': jnp.array([0.5])},
  }
  for name, hp in cases.items():
    one = hypergrad.forward()(step_fn, loss_fn, state, hp, 120)
    split = hypergrad.forward(mesh=tangent_mesh)(step_fn, loss_fn, state, hp,
                                                 120)
    out[name] = {'hypergrads': _diff(one.hypergrads, split.hypergrads),
                 'loss': abs(float(one.loss - split.loss)),
                 'final_state': _diff(one.info.final_state,
                                      split.info.final_state),
                 'nonfinite_step': int(split.info.nonfinite_step)}
  # A run that diverges in its second interval: the first non-finite step
  # is the earliest over the devices' chunks, as on one device.
  bad_hp = {'lr': jnp.array([0.05, 1e30]), 'momentum': jnp.array([0.5])}
  out['diverging'] = [
      int(hypergrad.forward(mesh=m)(step_fn, loss_fn, state, bad_hp,
                                    120).info.nonfinite_step)
      for m in (None, tangent_mesh)]
  hp = cases['fds_k9']
  # A mesh built with the Mesh constructor has Auto axes (make_mesh's are
  # Explicit): both kinds work.
  auto_mesh = jax.sharding.Mesh(np.array(jax.devices()), ('tangent',))
  one = hypergrad.forward()(step_fn, loss_fn, state, hp, 120)
  split = hypergrad.forward(mesh=auto_mesh)(step_fn, loss_fn, state, hp, 120)
  out['auto_axes'] = _diff(one.hypergrads, split.hypergrads)
  lowered = jax.jit(lambda s, h: hypergrad.forward(mesh=tangent_mesh)(
      step_fn, loss_fn, s, h, 120).hypergrads).lower(state, hp).as_text()
  out['manual_computation'] = 'manual_computation' in lowered or (
      'shard_map' in lowered)

  states = jax.tree.map(
      lambda x: jnp.stack([x * (1.0 + 0.1 * i) for i in range(8)]), state)
  ref = hypergrad.population(aggregate='median')(
      step_fn, loss_fn, states, hp, 120)
  by_member = hypergrad.population(aggregate='median', mesh=member_mesh)(
      step_fn, loss_fn, states, hp, 120)
  by_member_auto = hypergrad.population(
      aggregate='median',
      mesh=jax.sharding.Mesh(np.array(jax.devices()), ('member',)))(
      step_fn, loss_fn, states, hp, 120)
  by_tangent = hypergrad.population(
      aggregate='median', estimator=hypergrad.forward(mesh=tangent_mesh))(
      step_fn, loss_fn, states, hp, 120)
  out['population'] = {
      'members_split': _diff(ref.info.hypergrads, by_member.info.hypergrads),
      'members_split_aggregate': _diff(ref.hypergrads, by_member.hypergrads),
      'members_split_auto_axes': _diff(ref.info.hypergrads,
                                       by_member_auto.info.hypergrads),
      'tangents_split': _diff(ref.info.hypergrads,
                              by_tangent.info.hypergrads),
  }
  try:
    hypergrad.population(mesh=member_mesh)(
        step_fn, loss_fn, jax.tree.map(lambda x: x[:6], states), hp, 120)
    out['uneven_error'] = ''
  except ValueError as e:
    out['uneven_error'] = str(e)
  try:
    hypergrad.forward(mesh=member_mesh)
    out['axis_error'] = ''
  except ValueError as e:
    out['axis_error'] = str(e)
  print(json.dumps(out))


if __name__ == '__main__':
  main()
