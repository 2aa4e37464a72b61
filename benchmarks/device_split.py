r"""Speed-up of splitting tangents or population members over devices.

Forward mode with ``hypergrad.forward(mesh=...)`` runs the primal unroll on
every device of the ``tangent`` axis, each with its share of the tangents;
``population(mesh=...)(...)`` gives each device of the ``member``
axis its share of the members. On a CPU the devices are forced host devices
(``--devices``, default 2: this machine's cores), so the figure is what the
split gains from the cores XLA:CPU leaves idle in one program; on a GPU
machine run it with ``--devices`` = the number of GPUs.

    python -m benchmarks.device_split            # ~3 min on 2 CPU cores

MLP 64-128-128-10 of ``benchmarks/common.py``, T = ``--steps``; times are the
best of ``--repeats`` after a warm-up, compilation excluded.
"""

from __future__ import annotations

import os
import sys


def _force_devices(argv) -> None:
  # The device count is fixed when JAX starts: read it before importing jax.
  n = '2'
  for i, a in enumerate(argv):
    if a.startswith('--devices='):
      n = a.split('=', 1)[1]
    elif a == '--devices' and i + 1 < len(argv):
      n = argv[i + 1]
  if 'cpu' in os.environ.get('JAX_PLATFORMS', 'cpu'):
    os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                               f' --xla_force_host_platform_device_count={n}')


_force_devices(sys.argv)

# pylint: disable=g-import-not-at-top,wrong-import-position
from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from benchmarks import common  # noqa: E402
import hypergrad  # noqa: E402

_DEVICES = flags.DEFINE_integer('devices', 2, 'Devices to split over.')
_STEPS = flags.DEFINE_integer('steps', 1000, 'Horizon T.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed repeats (best kept).')
_LR_INTERVALS = flags.DEFINE_list('lr_intervals', ['7', '31'],
                                  'Learning-rate intervals; K = this + 2.')
_MEMBERS = flags.DEFINE_integer('members', 4, 'Population size S.')


def measure(devices: int, steps: int, lr_intervals, members: int,
            repeats: int):
  """Rows ``[what, one device s, split s, speed-up]``."""
  step_fn, loss_fn, state = common.mlp_problem()
  tangent = jax.make_mesh((devices,), ('tangent',))
  member = jax.make_mesh((devices,), ('member',))
  rows = []

  def timed(fn, *args):
    f = jax.jit(fn)
    return common.best_time(lambda: f(*args), repeats)

  for n in lr_intervals:
    hp = common.fds_hparams(n)
    one = timed(lambda s, h: hypergrad.forward()(
        step_fn, loss_fn, s, h, steps).hypergrads, state, hp)
    split = timed(lambda s, h: hypergrad.forward(mesh=tangent)(
        step_fn, loss_fn, s, h, steps).hypergrads, state, hp)
    rows.append([f'forward, K={n + 2}, tangents split', f'{one:.2f}',
                 f'{split:.2f}', f'{one / split:.2f}'])
  hp = common.fds_hparams(7)
  states = jax.tree.map(
      lambda x: jnp.stack([x] * members), state)
  one = timed(lambda s, h: hypergrad.population()(
      step_fn, loss_fn, s, h, steps).hypergrads, states, hp)
  split = timed(lambda s, h: hypergrad.population(mesh=member)(
      step_fn, loss_fn, s, h, steps).hypergrads, states, hp)
  rows.append([f'population S={members}, K=9, members split', f'{one:.2f}',
               f'{split:.2f}', f'{one / split:.2f}'])
  return rows


def main(argv):
  del argv
  common.enable_compilation_cache()
  devices = jax.devices()
  if len(devices) < _DEVICES.value:
    raise app.UsageError(f'--devices={_DEVICES.value} but JAX sees '
                         f'{len(devices)} devices.')
  print(f'backend: {jax.default_backend()} ({devices[0].device_kind}), '
        f'{_DEVICES.value} devices, T = {_STEPS.value}')
  rows = measure(_DEVICES.value, _STEPS.value,
                 [int(k) for k in _LR_INTERVALS.value], _MEMBERS.value,
                 _REPEATS.value)
  print(common.markdown_table(
      ['what', 'one device s', f'split over {_DEVICES.value} s', 'speed-up'],
      rows))


if __name__ == '__main__':
  app.run(main)
