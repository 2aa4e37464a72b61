"""The settings of one HPO table: presets, FDS's launch config, overrides.

Everything a run is bound to is resolved here once, before any compute, so
that a bad override or a journal of other settings is refused at once.
"""

from __future__ import annotations

import dataclasses
import importlib
import math

import ml_collections

import hypergrad
from hypergrad._src import registry
from hypergrad._src import schedule
from launch.configs import base

KINDS = registry.SGD.names
# Tables written before the objective was recorded all used this one.
OBJECTIVE_BEFORE_THE_FIELD = 'cross_entropy'

# Per-task settings of the comparison (the FDS settings come from the task's
# launch config). WRN-16-1: reverse mode stores sqrt(T)-step checkpoints.
PRESETS = {
    'mnist1d_mlp': {'horizon': 1000},
    'mnist1d_large_mlp': {'horizon': 1000},
    'fashion_mnist_mlp': {'horizon': 1000},
    'digits_mlp': {'horizon': 500},
    'cifar10_wrn16_1': {'horizon': 10000, 'reverse_checkpoint_every': 100,
                        'eval_batch': 4},
}


def fds_config(task_name: str) -> ml_collections.ConfigDict:
  """The task's launch config (FDS's settings), or the base one."""
  try:
    module = importlib.import_module(f'launch.configs.{task_name}')
    return module.get_config()
  except ModuleNotFoundError:
    return base.get_base_config(task_name)


def paper_config(config):
  """``config`` with the FDS paper's initial values and outer step sizes."""
  paper = base.get_base_config(config.task)
  out = config.copy_and_resolve_references()
  out.init, out.step_sizes = paper.init, paper.step_sizes
  return out


def config_intervals(config) -> dict:
  """A config's shared intervals of every hyperparameter."""
  return {k: int(config.intervals.get(k, 1)) for k in KINDS}


def initial_fds_hparams(task, config, init: str) -> dict:
  """FDS's starting schedule: the config's values or the task's defaults."""
  values = dict(task.spec.default_hparams if init == 'default'
                else config.init)
  return {k: schedule.constant(values[k], config.intervals.get(k, 1),
                               task.dtype) for k in KINDS}


@dataclasses.dataclass
class Setup:
  """One table's resolved settings (presets and overrides applied)."""

  task_name: str
  config: ml_collections.ConfigDict  # FDS's, overrides applied
  horizon: int
  budget: int                         # 0: set by FDS's measured cost
  fds_outer_steps: int
  seeds: int
  methods: tuple
  eval_points: int
  eval_seeds: int
  eval_batch: int
  blackbox_lr_intervals: int
  hyperband_reports: int
  greedy_scales: list
  tune_greedy: bool
  fds_init: str
  val_objective: str
  reverse_ckpt: int | None
  repeats: int
  data_dir: str | None

  def journal_settings(self) -> dict:
    """What a journal of this table is bound to."""
    return {'task': self.task_name, 'horizon': self.horizon,
            'budget': self.budget, 'fds_outer_steps': self.fds_outer_steps,
            'eval_points': self.eval_points, 'eval_seeds': self.eval_seeds,
            'eval_batch': self.eval_batch,
            'blackbox_lr_intervals': self.blackbox_lr_intervals,
            'hyperband_reports': self.hyperband_reports,
            'greedy_scales': list(self.greedy_scales),
            'fds_init': self.fds_init, 'val_objective': self.val_objective,
            'fds_step_sizes': self.config.step_sizes.to_dict(),
            'fds_intervals': config_intervals(self.config),
            'reverse_checkpoint_every': self.reverse_ckpt,
            'hypergrad': hypergrad.__version__,
            # Only when on: journals from before the flag stay valid.
            **({'tune_greedy': True} if self.tune_greedy else {})}


def _override_config(config, step_sizes: dict, intervals: dict,
                     horizon: int) -> None:
  """Puts the validated FDS overrides into ``config``."""
  for k, v in step_sizes.items():
    if k not in KINDS or not v > 0:
      raise ValueError(f'bad FDS step size {k}={v}.')
    config.step_sizes[k] = float(v)
  for k, v in intervals.items():
    if k not in KINDS or not (math.isfinite(v) and v == int(v)
                              and 1 <= v <= horizon):
      raise ValueError(f'bad FDS interval count {k}={v}: a whole number '
                       f'from 1 to the horizon {horizon}, for one of '
                       f'{", ".join(KINDS)}.')
    config.intervals[k] = int(v)


def resolve(task_name: str, *, horizon: int, fds_step_sizes: dict | None,
            fds_intervals: dict | None, reverse_checkpoint_every: int,
            eval_batch: int, val_objective: str, **fields) -> Setup:
  """The table's settings: the task's preset and launch config, overridden.

  Raises:
    ValueError: an override names an unknown hyperparameter or is out of
      range (before any data loads).
  """
  preset = PRESETS.get(task_name, {})
  config = fds_config(task_name)
  horizon = horizon or preset.get('horizon', config.horizon)
  _override_config(config, fds_step_sizes or {}, fds_intervals or {},
                   horizon)
  if reverse_checkpoint_every < 0:
    reverse_checkpoint_every = preset.get('reverse_checkpoint_every', 0)
  return Setup(
      task_name=task_name, config=config, horizon=horizon,
      eval_batch=eval_batch or preset.get('eval_batch', 16),
      val_objective=val_objective or config.val_objective,
      reverse_ckpt=reverse_checkpoint_every or None, **fields)
