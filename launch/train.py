"""FDS end to end: search a schedule with full-horizon hypergradients, retrain, test.

``train_and_evaluate(config, workdir)`` is the whole job; ``launch/fds.py``
only parses flags. Config fields (see ``launch/configs/base.py``):

* ``task``, ``data_dir``, ``seed``, ``batch_size`` (0: the task's),
  ``val_fraction``.
* ``val_objective``: the validation loss the hypergradients descend,
  ``cross_entropy`` (FDS's) or ``calibrated_cross_entropy`` (after the best
  temperature on the validation split, ``hypergrad.calibrated_cross_entropy``:
  a more accurate but over-confident network is not scored worse).
* ``horizon``: inner steps per hypergradient; ``retrain_steps`` (0: horizon).
* ``hyperparams``: comma-separated kinds to learn (``lr``, ``momentum``,
  ``weight_decay``); the others keep the task's plain values.
* ``intervals``, ``init``, ``step_sizes``: per kind.
* ``outer_steps``, ``tol``: the sign-based outer loop's bound and tolerance;
  ``divergence_factor``: a validation loss above this multiple of the first
  one counts as diverged (0: only NaN/Inf).
* ``estimator``: ``forward`` (FDS), ``reverse`` or ``auto`` (the faster of
  the two within the device's memory, ``hypergrad.auto``: the same
  hypergradient); ``chunk_size``, ``checkpoint_every``: their memory knobs.
* ``population``: inner runs per outer step (``S``; each its own validation
  split and initialisation, one vmapped program); ``aggregate``
  (``mean``/``median``/``trimmed_mean``/``sign_vote``) combines their
  hypergradients and ``min_agreement`` (0: off) leaves a value whose sign
  agreement is below it in place (undecided); ``population_from``: outer
  steps before it run one inner run (0: the population from the start).
* ``max_expansion``: a value whose hypergradient went through more than
  this ``log10`` expansion of the inner dynamics is held in place for the
  outer step (``docs/trust.md``; 0: off).
* ``redraw_val``, ``fresh_init``: per-outer-step validation split and inner
  initialisation.
* ``retrain_inits``: initialisations the learned and the default schedules
  are retrained from (paired: the same ones for both); test accuracies are
  their means (0: 3). The summary also reports the strongest reference
  schedule (the default, warm-up + cosine at the usual lr, or its peak lr
  the best of a small grid: ``hypergrad.experiments.references``), chosen
  on validation loss and retrained from the same initialisations, and the
  learned schedule's paired gain over it (fields ``strongest_reference``,
  ``reference_*``, ``paired_gain_over_reference``; their training steps
  are in ``reference_inner_steps``, not ``inner_steps``).

The result is the best schedule the search evaluated and accepted (lowest
validation loss), never values it did not evaluate; the last values are
reported beside it. A run that never improves on the initial schedule
reports the initial schedule, with a warning.

Outputs in ``workdir``: ``metrics.csv`` and TensorBoard events (one row per
outer step), ``schedules.png``, ``validation.png``, ``checkpoints/`` (orbax,
one per outer step; ``resume=True`` continues from the last) and
``summary.json``. The workdir is locked for the life of the run; a folder
holding a run is only continued (``resume``) or replaced (``overwrite``).

Several processes (after ``jax.distributed.initialize``, see
``launch/fds.py``): every process runs this same function on the same
``workdir`` (a shared file system) with a mesh over all their devices.
Process 0 locks and prepares the workdir and alone writes the outputs above;
orbax writes the checkpoints from process 0 too. The processes check that
they run the same config in the same workdir before any compute, and that
they hold the same outer state after every outer step.

The job's parts, one module each: ``launch/workdir.py`` (claim the workdir,
the config record, checkpoints and resume), ``launch/hypergradients.py``
(the search's ``hypergrad_fn``, with its progress bar) and
``launch/report.py`` (retrains, reference schedules, plots, the summary);
this module builds the task and runs the outer loop between them.
"""

from __future__ import annotations

import time
from typing import Any, Callable

from absl import logging
import jax
import ml_collections
import numpy as np
from tqdm import auto as tqdm_auto

import hypergrad
from hypergrad._src import search
from hypergrad.experiments import checkpoint as ckpt_lib
from hypergrad.experiments import distributed as dist_lib
from hypergrad.experiments import fds as fds_lib
from hypergrad.experiments import metrics as metrics_lib
from hypergrad.experiments import tasks as tasks_lib
from hypergrad.experiments import workdir as workdir_lib

try:
  from . import hypergradients
  from . import report
  from . import validation
  from . import workdir as workdir_io
except ImportError:  # run as a script, not as a package module
  import hypergradients  # type: ignore
  import report  # type: ignore
  import validation  # type: ignore
  import workdir as workdir_io  # type: ignore

# Named here as before: the config's checks (launch/validation.py) and the
# report's error and printout (launch/report.py).
ConfigError = validation.ConfigError
ESTIMATORS = validation.ESTIMATORS
validate_config = validation.validate_config
RetrainDivergedError = report.RetrainDivergedError
print_summary = report.print_summary


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       resume: bool = False, overwrite: bool = False,
                       on_outer_step: Callable[[Any, dict], None] | None = None
                       ) -> dict[str, Any]:
  """Runs the FDS search, retrains with the best schedule found and tests it.

  Args:
    config: see the module docstring.
    workdir: output folder (created, and locked while the run lasts).
    resume: continue from the last checkpoint in ``workdir``.
    overwrite: remove the outputs of an earlier run in ``workdir`` first.
    on_outer_step: called with ``(outer state, record)`` after each outer
      step is logged and checkpointed (e.g. to watch a run, or to stop one
      there as a kill would).

  Returns:
    The summary also written to ``workdir/summary.json``.

  Raises:
    ConfigError: a bad config value, a workdir that is busy, unwritable or
      holds another run (before any compute).
    hypergrad.experiments.data.DatasetNotFoundError: the data is absent.
    search.DivergenceError: the inner run diverges at the initial values.
    RetrainDivergedError: retraining with the learned schedule diverged (the
      summary is written first, with no test accuracy).
    OSError: an output could not be written (a full disk, say); the message
      names it.
  """
  kinds = validate_config(config)
  config_json = config.to_json(sort_keys=True)
  lock = workdir_io.claim(workdir, resume, overwrite, config_json)
  try:
    return _run(config, kinds, config_json, workdir, resume, on_outer_step)
  finally:
    lock.release()


def _make_task(config, mesh):
  """The config's task, its data placed over ``mesh``'s data axis."""
  overrides = {'batch_size': config.batch_size} if config.batch_size else {}
  overrides['val_objective'] = config.val_objective
  return tasks_lib.make_task(config.task, data_dir=config.data_dir or None,
                             seed=config.seed,
                             val_fraction=config.val_fraction,
                             mesh=tasks_lib.data_mesh(mesh), **overrides)


def _run(config, kinds, config_json, workdir, resume, on_outer_step):
  """The search (resumed or not), then the report."""
  start = time.time()
  mesh = tasks_lib.make_mesh(config.get('mesh', ''))
  task = _make_task(config, mesh)
  hparams0 = fds_lib.initial_hparams(
      task, {k: config.init[k] for k in kinds}, config.intervals)
  opt = hypergrad.sign_descent({k: config.step_sizes[k] for k in kinds})
  fn, extra = hypergradients.make_hypergrad_fn(config, task, mesh)

  checkpointer = workdir_io.open_checkpointer(workdir)
  try:
    state, records = search.init(hparams0, opt), []
    if resume:
      state, records = workdir_io.restore(checkpointer, state, workdir,
                                          config_json)
    workdir_io.write_config(workdir, config_json)
    prior_seconds = records[-1]['wall_time'] if records else 0.0
    elapsed = lambda: prior_seconds + time.time() - start
    on_step = _OuterStepOutputs(config, workdir, config_json, records,
                                checkpointer, extra, state.step, elapsed,
                                on_outer_step)
    state, _ = hypergrad.fds_search(
        fn, hparams0, opt=opt, max_outer_steps=config.outer_steps,
        tol=config.tol,
        divergence_factor=config.get('divergence_factor', 0.0) or None,
        collapse_loss=0.99 * task.chance_loss, state=state, callback=on_step,
        max_expansion=config.get('max_expansion', 0.0) or None)
    on_step.close()
  finally:
    checkpointer.close()
  return report.summarize(config, kinds, task, state, records, workdir,
                          elapsed)


class _OuterStepOutputs:
  """The search's callback: each outer step's record, metrics and checkpoint.

  Logging, the cross-process check and the checkpoint of every outer step;
  the loop itself is the library's (``hypergrad.fds_search``).
  """

  def __init__(self, config, workdir, config_json, records, checkpointer,
               extra, initial_step, elapsed, on_outer_step):
    self._config, self._config_json = config, config_json
    self._records, self._checkpointer = records, checkpointer
    self._extra, self._elapsed = extra, elapsed
    self._on_outer_step = on_outer_step
    primary = dist_lib.is_primary()
    self._workdir = workdir
    with self._writing_metrics():
      self._metrics = metrics_lib.MetricsWriter(workdir, records,
                                                active=primary)
    self._bar = tqdm_auto.tqdm(total=config.outer_steps,
                               initial=initial_step,
                               desc=f'FDS {config.task}',
                               disable=None if primary else True)

  def __call__(self, state, record):
    config = self._config
    record.update(val_accuracy=self._extra['val_accuracy'],
                  inner_steps=config.horizon, wall_time=self._elapsed())
    record = ckpt_lib.jsonable(record)
    self._records.append(record)
    if dist_lib.process_count() > 1:
      # Equal inputs, equal programs: a difference is a bug, and a resume
      # would silently follow process 0's state only.
      dist_lib.check_same(f'state/{state.step}',
                          ckpt_lib.state_digest(state),
                          f'the outer state after outer step '
                          f'{record["outer_step"]}')
    with self._writing_metrics():
      self._metrics.write(record)
    self._checkpointer.save(state, self._records,
                            {'config': self._config_json})
    self._bar.update(1)
    logging.info('outer step %d %s: val loss %.4f, val acc %.4f, %.1fs%s%s',
                 record['outer_step'], _status(record),
                 record['val_loss'], record['val_accuracy'],
                 record['seconds'], _agreement_text(record, config),
                 _trust_text(record))
    if self._on_outer_step is not None:
      self._on_outer_step(state, record)

  def _writing_metrics(self):
    # metrics.csv and the TensorBoard events, written by one call.
    return workdir_lib.writing(self._workdir,
                               'the metrics (metrics.csv, tensorboard/) in')

  def close(self):
    self._bar.close()
    self._metrics.close()


def _status(record) -> str:
  if record['accepted']:
    return 'accepted'
  return f'REJECTED: {record["reason"]}; backing off'


def _trust_text(record) -> str:
  """`, expansion max X (k held)`: how far the step's hypergradient is trusted."""
  expansion = record.get('expansion')
  if not expansion:
    return ''
  values = np.concatenate([np.ravel(np.asarray(v, np.float64))
                           for v in jax.tree.leaves(expansion)])
  held = record.get('untrusted') or 0
  return (f', expansion max {np.max(values):.1f}'
          + (f' ({held} untrusted, held)' if held else ''))


def _agreement_text(record, config) -> str:
  """`, sign agreement min/mean, k undecided` for a population's step."""
  agreement = record.get('sign_agreement')
  if not agreement:
    return ''
  values = np.concatenate([np.ravel(v) for v in agreement.values()])
  undecided = int(np.sum(values < (config.min_agreement or 0.0)))
  return (f', sign agreement min {values.min():.2f} mean {values.mean():.2f}'
          f', {undecided}/{values.size} undecided')
