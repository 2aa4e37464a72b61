"""The launch job's ``hypergrad_fn``: FDS's, with a progress bar per outer step.

:func:`make_hypergrad_fn` wraps ``hypergrad.experiments.fds.make_hypergrad_fn``
for ``train_and_evaluate``: the estimator and population come from the
config, a tqdm bar counts each outer step's inner steps (process 0 only), and
the validation accuracy of every evaluated schedule is kept for the step's
record.
"""

from __future__ import annotations

import jax
import numpy as np
from tqdm import auto as tqdm_auto

import hypergrad
from hypergrad.experiments import distributed as dist_lib
from hypergrad.experiments import fds as fds_lib


def make_hypergrad_fn(config, task, mesh=None):
  """FDS's ``hypergrad_fn`` with a progress bar; records val accuracy.

  Args:
    config: the launch config (``launch/train.py``'s module docstring).
    task: the task the inner runs train.
    mesh: the run's mesh (tangent or member splits), or None.

  Returns:
    ``(fn, extra)``: ``fn(hparams, outer_step)`` for ``hypergrad.fds_search``,
    and a dict whose ``'val_accuracy'`` is the last evaluated schedule's
    validation accuracy (NaN where its inner run diverged).
  """
  progress_every = config.progress_every or max(config.horizon // 10, 1)
  bar = {'bar': None}

  def on_step(t):
    if bar['bar'] is not None:
      bar['bar'].n = t + 1
      bar['bar'].refresh()

  extra = {}

  def on_result(result, split):
    jax.block_until_ready(result.hypergrads)
    jax.effects_barrier()
    final_state, nonfinite_step = fds_lib.first_member(result)
    extra['val_accuracy'] = (
        task.evaluate(final_state, 'val', split)['accuracy']
        if nonfinite_step < 0 else float('nan'))

  inner = fds_lib.make_hypergrad_fn(
      task, fds_lib.estimator_from_config(config, mesh), config.horizon,
      seed=config.seed, redraw_val=config.redraw_val,
      fresh_init=config.fresh_init,
      progress=hypergrad.Progress(on_step, progress_every),
      on_result=on_result, population=config.population,
      aggregate=config.aggregate,
      min_agreement=config.min_agreement or None,
      population_from=config.population_from, mesh=mesh)

  def fn(hparams, outer_step):
    # Host values every step: after an outer update they are device arrays
    # placed like the hypergradients (on a mesh: replicated over it), not
    # like the initial ones, and a new placement recompiles the unroll.
    hparams = jax.tree.map(np.asarray, hparams)
    bar['bar'] = tqdm_auto.tqdm(total=config.horizon, leave=False,
                                desc=f'outer step {outer_step}: inner steps',
                                disable=None if dist_lib.is_primary()
                                else True)
    try:
      return inner(hparams, outer_step)
    finally:
      bar['bar'].close()
      bar['bar'] = None

  return fn, extra
