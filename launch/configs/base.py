"""Shared defaults of every FDS task config (see the task files for commands)."""

import ml_collections

from hypergrad._src import registry
from hypergrad.experiments import tasks as tasks_lib


def get_base_config(task: str) -> ml_collections.ConfigDict:
  """FDS defaults from the paper, for ``task``.

  Fields: see ``launch/train.py``'s module docstring.
  """
  c = ml_collections.ConfigDict()
  c.task = task
  c.data_dir = ''               # '' = the dataset's default location
  c.seed = 0
  c.horizon = tasks_lib.TASKS[task].horizon if task in tasks_lib.TASKS \
      else 1000                 # inner steps per hypergradient (and retrain)
  c.batch_size = 0              # 0 = the task's default
  c.val_fraction = 0.05         # FDS: 5% of the training set
  # What the hypergradients descend: cross_entropy (FDS's) or
  # calibrated_cross_entropy (after the best temperature).
  c.val_objective = 'cross_entropy'
  c.hyperparams = 'lr,momentum,weight_decay'
  c.intervals = ml_collections.ConfigDict(
      {'lr': 7, 'momentum': 1, 'weight_decay': 1})
  # Initial values: 0, as in the FDS reference.
  c.init = ml_collections.ConfigDict({k: 0.0 for k in registry.SGD.names})
  # Initial outer step sizes (the paper's: lr 0.1, momentum 0.1, wd 3e-4).
  c.step_sizes = ml_collections.ConfigDict(dict(registry.SGD.outer_steps))
  c.outer_steps = 10
  c.tol = 0.05                  # converged when every step < 5% of its value
  # An outer step whose validation loss exceeds this multiple of the initial
  # one is rejected as diverged, even if finite; 0 = only NaN/Inf.
  c.divergence_factor = 10.0
  c.estimator = 'forward'       # forward | reverse | auto
  c.population = 1              # inner runs per outer step (vmapped)
  c.aggregate = 'median'        # mean | median | trimmed_mean | sign_vote
  c.min_agreement = 0.0         # sign agreement below it: no move; 0 = off
  c.max_expansion = 2.0         # log10 expansion above it: held (docs/trust.md); 0 = off
  c.population_from = 0         # outer steps before it: one inner run
  c.checkpoint_every = 0        # reverse mode rematerialisation block; 0 = none
  c.chunk_size = 0              # forward mode: max tangents at once; 0 = all
  c.redraw_val = True           # FDS re-draws the validation split per outer step
  c.fresh_init = True           # fresh inner initialisation per outer step
  c.retrain_steps = 0           # 0 = horizon
  c.retrain_inits = 3           # paired retrains of learned and default
  c.progress_every = 0          # inner-step progress period; 0 = horizon // 10
  # 'data=N': split minibatches over N devices; 'tangent=N': forward mode's
  # tangents; 'member=N': a population's inner runs (one axis at a time).
  c.mesh = ''
  return c
