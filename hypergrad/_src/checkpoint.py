"""Checkpoints of the outer loop, written atomically with orbax.

After every outer step the loop state (schedule values, step sizes, signs,
step count) and the records of the steps so far are saved. orbax writes into a
temporary folder and renames it when complete, so a run killed mid-write
leaves the previous checkpoint intact; a checkpoint that cannot be read back
whole is refused with a clear error, never half-loaded. Nothing is pickled:
arrays go through orbax's standard format and records through JSON.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from hypergrad._src import outer
from hypergrad._src import search

PyTree = Any


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored whole."""


def _to_tree(state: search.OuterState) -> dict:
  return {'hparams': state.hparams, 'last_good': state.last_good,
          'opt': state.opt._asdict(),
          'step': np.asarray(state.step, np.int64),
          'converged': np.asarray(state.converged, np.bool_)}


def _from_tree(tree: dict) -> search.OuterState:
  opt = outer.SignDescentState(**tree['opt'])
  as_jax = lambda t: jax.tree.map(jnp.asarray, t)
  return search.OuterState(as_jax(tree['hparams']), as_jax(tree['last_good']),
                           as_jax(opt), int(tree['step']),
                           bool(tree['converged']))


def jsonable(tree: PyTree) -> PyTree:
  """Arrays to (nested) lists of floats, for records and summaries."""
  def convert(x):
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
      return np.asarray(x).tolist()
    return x
  return jax.tree.map(convert, tree)


class OuterCheckpointer:
  """Saves and restores the outer loop, keeping the last ``max_to_keep``.

  Example:
    >>> ckpt = OuterCheckpointer(workdir + '/checkpoints')
    >>> ckpt.save(state, records)
    >>> state, records = ckpt.restore_latest(template_state)
  """

  def __init__(self, directory: str, max_to_keep: int = 2):
    self.directory = os.path.abspath(directory)
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=False))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state: search.OuterState, records: list[dict]) -> None:
    self._manager.save(
        state.step,
        args=ocp.args.Composite(
            state=ocp.args.StandardSave(_to_tree(state)),
            records=ocp.args.JsonSave({'records': jsonable(records)})),
        force=True)
    self._manager.wait_until_finished()

  def restore_latest(self, template: search.OuterState
                     ) -> tuple[search.OuterState, list[dict]] | None:
    """The latest checkpoint, or None when there is none.

    Args:
      template: a state of the same structure (e.g. ``search.init(...)``),
        giving shapes and dtypes to restore into.

    Raises:
      CheckpointError: the checkpoint is corrupted, truncated or of another
        structure.
    """
    step = self._manager.latest_step()
    if step is None:
      return None
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct,
                            _to_tree(template))
    try:
      restored = self._manager.restore(
          step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract),
              records=ocp.args.JsonRestore()))
      tree = restored['state']
      records = restored['records']['records']
      state = _from_tree(tree)
    except Exception as e:  # orbax raises many kinds; all mean "unusable".
      raise CheckpointError(
          f'checkpoint {step} in {self.directory} cannot be restored whole '
          f'({type(e).__name__}: {e}). Delete that folder to resume from the '
          'previous checkpoint, or start afresh without --resume.') from e
    if state.step != step or len(records) != step:
      raise CheckpointError(
          f'checkpoint {step} in {self.directory} is inconsistent: it holds '
          f'outer step {state.step} and {len(records)} records.')
    return state, records

  def close(self) -> None:
    self._manager.close()
