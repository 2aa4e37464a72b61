"""Checkpoints of the outer loop, written atomically with orbax.

After every outer step the loop state (schedule values, step sizes, signs,
step count) and the records of the steps so far are saved. orbax writes into a
temporary folder and renames it when complete, so a run killed mid-write
leaves the previous checkpoint intact; a checkpoint that cannot be read back
whole is refused with a clear error, never half-loaded. Nothing is pickled:
arrays go through orbax's standard format and records through JSON.

Array data is checksummed by orbax's storage (tensorstore OCDBT); JSON has no
checksum of its own, so the records carry a SHA-256 digest of their canonical
JSON, checked on restore: a flipped digit in a record is refused too.

A restore reads every stored value of the arrays once, one after the other,
before orbax restores them: orbax reads all arrays at once, and when one read
fails it closes its event loop with the others still in flight, whose
completions then call back into the closed loop (``RuntimeError: Event loop
is closed``, printed by tensorstore's threads after the refusal, up to the
exit). Refused first, a corrupted checkpoint leaves nothing in flight.

A checkpoint that cannot be written (a full disk) raises an ``OSError``
naming its folder (``cannot write checkpoint .../3: No space left on
device``).

Several processes (``jax.distributed``): every process calls ``save`` and
``restore_latest`` on the same folder (a shared file system); orbax writes
once, from process 0. The loop state is saved as host (numpy) arrays, which
orbax treats as replicated: the processes hold equal values (the launch
script checks it with :func:`state_digest`), whereas the device arrays they
hold may be single-device ones that orbax cannot save from several hosts.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from hypergrad._src import extras
from hypergrad._src import schedule
from hypergrad._src import search
from hypergrad.experiments import workdir as workdir_lib

extras.require('launch', 'orbax')
# pylint: disable=g-import-not-at-top,wrong-import-position
from etils import epath  # noqa: E402  (an orbax dependency)
import orbax.checkpoint as ocp  # noqa: E402
import tensorstore as ts  # noqa: E402  (an orbax dependency)

PyTree = Any


class CheckpointError(RuntimeError):
  """A checkpoint exists but cannot be restored whole."""


def _plain(tree: PyTree) -> PyTree:
  """``tree`` with every ``hypergrad.ConstantLeaf`` replaced by its array.

  orbax and JSON know dicts, lists and arrays; the template's structure
  puts the wrappers back on restore.
  """
  return jax.tree.map(lambda x: x.value if schedule.is_constant_leaf(x)
                      else x, tree, is_leaf=schedule.is_constant_leaf)


def _to_tree(state: search.OuterState) -> dict:
  # Any optax state: its leaves by position; the template's structure puts
  # them back. Nothing is pickled. Host copies: the same checkpoint from one
  # process or many (see the module docstring).
  host = lambda t: jax.tree.map(np.asarray, _plain(t))
  opt_leaves = jax.tree.leaves(state.opt_state)
  return {'hparams': host(state.hparams), 'last_good': host(state.last_good),
          'best_hparams': host(state.best_hparams),
          'opt_leaves': {f'{i:04d}': np.asarray(leaf)
                         for i, leaf in enumerate(opt_leaves)},
          'step': np.asarray(state.step, np.int64),
          'converged': np.asarray(state.converged, np.bool_),
          'initial_loss': np.asarray(state.initial_loss, np.float64),
          'update_scale': np.asarray(state.update_scale, np.float64),
          'best_loss': np.asarray(state.best_loss, np.float64),
          'best_step': np.asarray(state.best_step, np.int64),
          'best_score': np.asarray(state.best_score, np.float64)}


def _from_tree(tree: dict, template: search.OuterState) -> search.OuterState:
  def as_jax(t, like):
    # The template's structure, so ConstantLeaf wrappers come back.
    return jax.tree.unflatten(jax.tree.structure(like),
                              [jnp.asarray(x) for x in jax.tree.leaves(t)])
  leaves = [tree['opt_leaves'][k] for k in sorted(tree['opt_leaves'])]
  opt_state = jax.tree.unflatten(jax.tree.structure(template.opt_state),
                                 [jnp.asarray(x) for x in leaves])
  return search.OuterState(
      as_jax(tree['hparams'], template.hparams),
      as_jax(tree['last_good'], template.last_good), opt_state,
      int(tree['step']), bool(tree['converged']), float(tree['initial_loss']),
      float(tree['update_scale']),
      as_jax(tree['best_hparams'], template.best_hparams),
      float(tree['best_loss']), int(tree['best_step']),
      # Checkpoints from before the score hook have none: inf means "the
      # best validation loss is the score" to the loop.
      float(tree.get('best_score', float('inf'))))


def jsonable(tree: PyTree) -> PyTree:
  """Arrays to (nested) lists of floats, for records and summaries."""
  def convert(x):
    if isinstance(x, (jax.Array, np.ndarray, np.generic)):
      return np.asarray(x).tolist()
    return x
  return jax.tree.map(convert, _plain(tree))


def _digest(records) -> str:
  text = json.dumps(records, sort_keys=True, separators=(',', ':'))
  return hashlib.sha256(text.encode('utf-8')).hexdigest()


def state_digest(state: search.OuterState) -> str:
  """SHA-256 of everything a checkpoint saves of ``state``, bit for bit.

  Processes of one run compare it after every outer step: equal digests mean
  that each would write, and resume from, the same checkpoint.
  """
  h = hashlib.sha256()
  tree = _to_tree(state)
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    h.update(jax.tree_util.keystr(path).encode())
    h.update(f'{leaf.dtype.str}{leaf.shape}'.encode())
    h.update(np.ascontiguousarray(leaf).tobytes())
  return h.hexdigest()


def _reporting_temporary_path(on_write: Callable[[str, str], None]):
  """orbax's atomic-rename temporary folder, telling ``on_write`` its phases.

  A subclass of the public ``orbax.checkpoint.path.atomicity``
  ``AtomicRenameTemporaryPath`` (orbax's ``temporary_path_class`` option):
  it creates, writes and renames exactly as its base does.
  """

  class ReportingTemporaryPath(ocp.path.atomicity.AtomicRenameTemporaryPath):

    async def create(self, *args, **kwargs):
      path = await super().create(*args, **kwargs)
      on_write('created', str(self.get_final()))
      return path

    async def finalize(self, *args, **kwargs):
      on_write('finalizing', str(self.get_final()))
      return await super().finalize(*args, **kwargs)

  return ReportingTemporaryPath


def _read_every_value(item: str) -> None:
  """Reads each value of the array item ``item`` (an OCDBT database), in turn.

  Each read is waited for before the next starts, so a failed one leaves
  none in flight (see the module docstring). An item without readable
  metadata, or not in OCDBT, is left to orbax, which refuses it before
  reading any array.

  Raises:
    ValueError: tensorstore's, for the first value that cannot be read (a
      data file truncated, deleted or failing its checksum); or none found
      (the database's manifest gone).
  """
  try:
    with open(os.path.join(item, '_METADATA')) as f:
      if not json.load(f).get('use_ocdbt'):
        return
  except (OSError, ValueError, AttributeError):
    return
  store = ts.KvStore.open({'driver': 'ocdbt', 'base': {
      'driver': 'file', 'path': item + os.sep}}).result()
  keys = store.list().result()
  if not keys:
    raise ValueError(f'its array database {item} holds no values (its '
                     'manifest.ocdbt is missing or empty)')
  for key in keys:
    store.read(key).result()


class OuterCheckpointer:
  """Saves and restores the outer loop, keeping the last ``max_to_keep``.

  Example:
    >>> import tempfile, jax.numpy as jnp, hypergrad
    >>> from hypergrad.experiments.checkpoint import OuterCheckpointer
    >>> opt = hypergrad.sign_descent()
    >>> state = hypergrad.outer_init({'lr': jnp.array([0.1])}, opt)
    >>> ckpt = OuterCheckpointer(tempfile.mkdtemp() + '/checkpoints')
    >>> ckpt.save(state, records=[])
    >>> state, records = ckpt.restore_latest(state)   # template: same shapes
    >>> ckpt.close()
  """

  def __init__(self, directory: str, max_to_keep: int = 2,
               on_write: Callable[[str, str], None] | None = None):
    """Opens (creating it) the checkpoint folder ``directory``.

    Args:
      directory: the folder of the checkpoints, one subfolder per step.
      max_to_keep: the latest checkpoints kept; older ones are deleted.
      on_write: a fault-injection seam for tests (None in a run): called as
        ``on_write(phase, path)`` while a checkpoint is written, where
        ``path`` is a step's folder or an item's folder (``state``,
        ``records``) inside the step's temporary folder, as it will be named
        once published. ``'created'``: its temporary folder now exists,
        nothing written in it yet. ``'finalizing'``: everything in it is
        written, and it is about to be committed and renamed to ``path``.
        An ``on_write`` that kills the process there leaves what a crash at
        that moment would. It writes through orbax's atomic-rename
        temporary folders (the default on a local file system).
    """
    self.directory = os.path.abspath(directory)
    hooks = {} if on_write is None else {
        'temporary_path_class': _reporting_temporary_path(on_write)}
    self._manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep, create=True,
            enable_async_checkpointing=False, **hooks))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def save(self, state: search.OuterState, records: list[dict],
           meta: dict | None = None) -> None:
    """Saves the loop state, the records so far and ``meta`` (e.g. the config).

    ``meta`` is covered by the records' SHA-256 digest too.

    Raises:
      OSError: the checkpoint could not be written (a full disk, say); its
        message names the step's folder.
    """
    records = jsonable(records)
    meta = jsonable(meta or {})
    folder = os.path.join(self.directory, str(state.step))
    with workdir_lib.writing(folder, 'checkpoint'):
      self._manager.save(
          state.step,
          args=ocp.args.Composite(
              state=ocp.args.StandardSave(_to_tree(state)),
              records=ocp.args.JsonSave({'records': records, 'meta': meta,
                                         'sha256': _digest([records, meta])})),
          force=True)
      self._manager.wait_until_finished()

  def restore_latest(self, template: search.OuterState, *,
                     with_meta: bool = False):
    """The latest checkpoint, or None when there is none.

    Returns ``(state, records)``, or ``(state, records, meta)`` with
    ``with_meta=True``.

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
    folder = os.path.join(self.directory, str(step))
    advice = ('Delete that folder to resume from the previous checkpoint, or '
              'start afresh in a new --workdir.')
    # Host arrays in, host arrays out: no device sharding to agree on.
    abstract = _to_tree(template)
    try:
      # Every value readable before orbax reads them all at once.
      _read_every_value(os.path.join(folder, 'state'))
      # Host targets need no saved metadata to restore into, so check it
      # here: a checkpoint without it is not whole, or of another run.
      saved = ocp.StandardCheckpointHandler().metadata(
          epath.Path(folder) / 'state').tree
      got = jax.tree.map(lambda m: (tuple(m.shape), np.dtype(m.dtype)),
                         saved)
      if 'best_score' not in got:  # written before the score hook
        abstract.pop('best_score')
      want = jax.tree.map(lambda x: (x.shape, x.dtype), abstract)
      if got != want:
        raise ValueError('its arrays have other shapes, dtypes or names than '
                         'this run\'s')
      restored = self._manager.restore(
          step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract),
              records=ocp.args.JsonRestore()))
      tree = restored['state']
      records = restored['records']['records']
      if 'sha256' not in restored['records']:
        raise ValueError('the records carry no SHA-256 digest (corrupted, or '
                         'written by an older hypergrad)')
      meta = restored['records'].get('meta', {})
      if restored['records']['sha256'] != _digest([records, meta]):
        raise ValueError('the records do not match their SHA-256 digest')
      state = _from_tree(tree, template)
    except Exception as e:  # orbax raises many kinds; all mean "unusable".
      detail = str(e) if len(str(e)) < 300 else str(e)[:300] + '...'
      raise CheckpointError(
          f'checkpoint {folder} cannot be restored whole: it is corrupted, '
          f'truncated or of another run ({type(e).__name__}: {detail}). '
          f'{advice}') from e
    if state.step != step or len(records) != step:
      raise CheckpointError(
          f'checkpoint {folder} is inconsistent: it holds outer step '
          f'{state.step} and {len(records)} records. {advice}')
    return (state, records, meta) if with_meta else (state, records)

  def close(self) -> None:
    self._manager.close()
