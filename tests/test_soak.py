"""Soak test: 20 consecutive outer steps on MNIST-1D; memory must not grow.

Excluded from the default run (``-m "not slow"`` in setup.cfg); run it with

    python -m pytest -m slow tests/test_soak.py -s

It drives the launch script's own outer loop (the same hypergradient function,
a fresh validation split and inner initialisation every outer step, an orbax
checkpoint after every step) and samples, after every outer step, the process
RSS and JAX's live device buffers. After a warm-up (compilation, caches,
allocator pools) the samples must be flat: the last five steps may not hold
more live arrays or bytes than steps 5-9, and their RSS may exceed that of
steps 5-9 by at most 10% or 32 MiB, whichever is smaller.
"""

import gc
import time

import jax
import numpy as np
import pytest

import hypergrad
from hypergrad.experiments import checkpoint as ckpt_lib
from hypergrad.experiments import tasks as tasks_lib
from launch import hypergradients
from launch import train
from launch.configs import mnist1d_mlp

OUTER_STEPS = 20
HORIZON = 300
WARMUP = slice(5, 10)
LAST = slice(OUTER_STEPS - 5, OUTER_STEPS)
MIB = 2**20


def _rss_bytes() -> int:
  with open('/proc/self/status') as f:
    for line in f:
      if line.startswith('VmRSS:'):
        return int(line.split()[1]) * 1024
  raise RuntimeError('no VmRSS in /proc/self/status')


def _sample() -> dict:
  gc.collect()
  arrays = jax.live_arrays()
  return {'rss': _rss_bytes(), 'live_arrays': len(arrays),
          'live_bytes': sum(a.nbytes for a in arrays)}


@pytest.mark.slow
def test_memory_flat_over_20_outer_steps(tmp_path):
  config = mnist1d_mlp.get_config()
  config.horizon = HORIZON
  config.outer_steps = OUTER_STEPS
  config.progress_every = HORIZON
  kinds = train.validate_config(config)
  task = tasks_lib.make_task(config.task, seed=config.seed,
                             val_fraction=config.val_fraction)
  hparams0 = {k: hypergrad.constant(config.init[k], config.intervals[k],
                                    task.dtype) for k in kinds}
  opt = hypergrad.sign_descent({k: config.step_sizes[k] for k in kinds})
  fn, _ = hypergradients.make_hypergrad_fn(config, task)
  checkpointer = ckpt_lib.OuterCheckpointer(str(tmp_path / 'checkpoints'))

  state, records, samples = hypergrad.outer_init(hparams0, opt), [], []
  start = time.perf_counter()
  for _ in range(OUTER_STEPS):  # on past convergence: memory is the point
    state, record = hypergrad.outer_step(fn, opt, state, tol=config.tol)
    records.append(ckpt_lib.jsonable(record))
    checkpointer.save(state, records)
    samples.append(_sample())
  checkpointer.close()
  seconds = time.perf_counter() - start

  print(f'\n{OUTER_STEPS} outer steps of mnist1d_mlp, horizon {HORIZON}, '
        f'{seconds:.0f} s')
  print('step  RSS MiB  live arrays  live MiB  val loss')
  for i, (s, r) in enumerate(zip(samples, records)):
    print(f'{i:4d}  {s["rss"] / MIB:7.1f}  {s["live_arrays"]:11d}  '
          f'{s["live_bytes"] / MIB:8.2f}  {r["val_loss"]:.4f}')

  rss = np.array([s['rss'] for s in samples])
  count = np.array([s['live_arrays'] for s in samples])
  nbytes = np.array([s['live_bytes'] for s in samples])
  assert count[LAST].max() <= count[WARMUP].max(), count
  assert nbytes[LAST].max() <= nbytes[WARMUP].max(), nbytes
  growth = rss[LAST].max() - rss[WARMUP].max()
  assert growth <= min(0.10 * rss[WARMUP].max(), 32 * MIB), (
      f'RSS grew by {growth / MIB:.1f} MiB: {rss / MIB}')
