"""The reference schedules a learned one is measured against.

Besides a task's constant default (lr 0.1, momentum 0.9, wd 5e-4 for the
SGD tasks), what a practitioner would start from: a linear warm-up over
:data:`COSINE_WARMUP` of the run to the usual lr, then a cosine decay to 0,
with the task's momentum and weight decay; and the same with its peak lr
the best of a small grid (:data:`COSINE_GRID`, factors of the usual lr).
The strongest of these is chosen on validation loss, never on test, by
:func:`strongest_reference`. Shared by the HPO table
(``benchmarks/hpo/``) and the main job's summary (``launch/report.py``).
"""

from __future__ import annotations

import math
from typing import Callable

from hypergrad.experiments import blackbox

# A 5% warm-up and a decay to 0: the common default of cosine schedules.
COSINE_WARMUP = 0.05
# The peak-lr grid of the tuned reference, factors of the usual lr in the
# order tried (the usual one first); every run is charged.
COSINE_GRID = (1.0, 0.5, 2.0, 0.25, 4.0, 8.0)
# The reference rows, in the order reported.
NAMES = ('default', 'default_cosine', 'cosine_grid')


def cosine_values(task, peak_lr: float | None = None) -> dict:
  """The warm-up + cosine reference at ``peak_lr`` (default: the task's).

  The values :func:`hypergrad.experiments.blackbox.parametric_schedule`
  reads.
  """
  default = dict(task.spec.default_hparams)
  return {'peak_lr': default['lr'] if peak_lr is None else peak_lr,
          'warmup_fraction': COSINE_WARMUP, 'decay': 'cosine',
          'final_fraction': 0.0, 'momentum': default['momentum'],
          'weight_decay': default['weight_decay']}


def cosine_schedule(task, num_steps: int, peak_lr: float | None = None):
  """The warm-up + cosine reference as a schedule of ``num_steps`` lrs."""
  return blackbox.parametric_schedule(cosine_values(task, peak_lr),
                                      num_steps, task.dtype)


def validation_loss(task, num_steps: int, init_seed: int
                    ) -> Callable[[dict], float]:
  """``val_loss(hparams)``: trained from ``init_seed`` on the default split.

  The score the references are chosen by (as the HPO table's black-box
  trials are scored); ``inf`` for a run that diverged.
  """
  split = task.default_split()
  loss_fn = task.loss_fn(split)

  def val_loss(hparams) -> float:
    loss = float(loss_fn(task.train(hparams, num_steps, init_seed=init_seed,
                                    split=split)))
    return loss if math.isfinite(loss) else math.inf
  return val_loss


def strongest_reference(task, num_steps: int,
                        val_loss: Callable[[dict], float]) -> dict:
  """The reference schedules and the one of the lowest validation loss.

  Args:
    task: the task (its default values and dtype).
    num_steps: the horizon the schedules run for.
    val_loss: ``val_loss(hparams) -> float``, the validation loss of a
      schedule trained for ``num_steps`` (``inf`` if it diverged).

  Returns:
    ``{'schedules': {name: hparams}, 'val_loss': {name: loss},
    'grid_val_loss': [loss per COSINE_GRID factor], 'strongest': name}``,
    names from :data:`NAMES`; ``num_steps * (len(COSINE_GRID) + 1)``
    inner steps of training (the cosine at the usual lr is the grid's
    first point).
  """
  peak = dict(task.spec.default_hparams)['lr']
  grid = [cosine_schedule(task, num_steps, peak * f) for f in COSINE_GRID]
  grid_loss = [float(val_loss(h)) for h in grid]
  best = min(range(len(grid)), key=lambda i: (grid_loss[i], i))
  schedules = {'default': task.default_hparams(),
               'default_cosine': grid[0], 'cosine_grid': grid[best]}
  losses = {'default': float(val_loss(schedules['default'])),
            'default_cosine': grid_loss[0], 'cosine_grid': grid_loss[best]}
  strongest = min(NAMES, key=lambda n: (losses[n], NAMES.index(n)))
  return {'schedules': schedules, 'val_loss': losses,
          'grid_val_loss': grid_loss, 'strongest': strongest}
