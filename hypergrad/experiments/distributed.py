"""Several processes, one run: start-up, agreement and failing fast.

A run on several hosts (or on several processes of one host) is the same
program started once per process; ``jax.distributed`` connects them, after
which a ``data=N`` mesh spans every process's devices and each process runs
the same computations on its share of every batch. This module holds what
the launch script needs beyond that:

* :func:`initialize`: ``jax.distributed.initialize`` with a heartbeat timeout,
  so that a process that dies or hangs makes the others fail within that
  time instead of waiting in a collective for ever, and with CPU collectives
  (gloo) so that CPU processes can reduce across processes at all.
* :func:`all_gather` and :func:`broadcast`: short strings through the
  coordination service's key-value store. They need no device and no
  collective, so processes can agree (on the workdir, the config, the outer
  state) before any computation, and a refusal reaches every process.
* :func:`first_error`, :func:`check_same`: an error found by any process, or
  a value that differs between processes, stops all of them with its
  message.
* :func:`exit_now`: how a process of a multi-process run leaves on an error:
  message first, then ``os._exit``, without JAX's shutdown barrier (which
  would wait for peers that may be waiting for this process), unless every
  process raised the error together (:func:`fail_together`).

In a single process (no ``jax.distributed``) all of these are no-ops.
"""

from __future__ import annotations

import os
import sys
import traceback

import jax

# Prefix of every key this module sets; the store lives as long as the run
# (it is held by process 0's coordination service), so keys never collide
# with an earlier run's.
_PREFIX = 'hypergrad'

DEFAULT_HEARTBEAT_TIMEOUT = 60  # seconds
# Process agreement waits at most this long for the slowest peer, e.g. while
# process 0 clears a workdir for --overwrite.
AGREE_TIMEOUT = 600  # seconds


# Set when every process is failing with the same error (see fail_together).
_together = False


class ProcessesDisagreeError(RuntimeError):
  """Processes of one run disagree (config, workdir, outer state)."""


def fail_together(error: Exception) -> Exception:
  """Marks ``error`` as raised now by every process of the run; returns it.

  For errors found through an agreement (:func:`all_gather`): the processes
  then leave through JAX's shutdown barrier, so that process 0, which holds
  the coordination service, outlives the others' last reads of it.
  """
  global _together
  _together = process_count() > 1
  return error


def _client():
  # The same handle orbax uses for its barriers; jax has no public one.
  # pylint: disable-next=protected-access
  return jax._src.distributed.global_state.client


def is_initialized() -> bool:
  """Whether ``jax.distributed`` connects this process to others."""
  return _client() is not None


def initialize(coordinator_address: str | None = None,
               num_processes: int | None = None,
               process_id: int | None = None, *,
               heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT,
               initialization_timeout: int = 300,
               shutdown_timeout: int = 300) -> None:
  """Connects this process to the others of the run; call before any JAX op.

  With no arguments JAX detects a SLURM, Open MPI or Cloud TPU environment
  (``jax.distributed.initialize()``'s own auto-detection).

  Args:
    coordinator_address: ``host:port`` of process 0.
    num_processes: number of processes.
    process_id: this process's index in ``[0, num_processes)``.
    heartbeat_timeout: seconds after which a process that sent no heartbeat
      counts as dead; every other process then stops with an error.
    initialization_timeout: seconds to wait for every process to connect.
    shutdown_timeout: seconds a process that finished waits for the others
      to finish too (process 0 writes the plots and summary last).
  """
  # Without an implementation, CPU processes cannot reduce across processes;
  # keep one the user chose (e.g. mpi).
  if jax.config.jax_cpu_collectives_implementation is None:
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  jax.distributed.initialize(
      coordinator_address, num_processes, process_id,
      initialization_timeout=initialization_timeout,
      heartbeat_timeout_seconds=heartbeat_timeout,
      shutdown_timeout_seconds=shutdown_timeout)


def process_index() -> int:
  return jax.process_index() if is_initialized() else 0


def process_count() -> int:
  return jax.process_count() if is_initialized() else 1


def is_primary() -> bool:
  """Whether this process writes the run's files (process 0)."""
  return process_index() == 0


def label() -> str:
  """``'process i/n'`` in a multi-process run, else ``''``."""
  return (f'process {process_index()}/{process_count()}'
          if process_count() > 1 else '')


def all_gather(key: str, value: str,
               timeout: float = AGREE_TIMEOUT) -> list[str]:
  """Every process's ``value`` for ``key``, in process order.

  ``key`` must be new to the run (one key per agreement). A single process
  gets ``[value]``.

  Raises:
    ProcessesDisagreeError: a process did not answer within ``timeout``
      seconds.
  """
  if process_count() == 1:
    return [value]
  client = _client()
  client.key_value_set(f'{_PREFIX}/{key}/{process_index()}', value)
  values = []
  for i in range(process_count()):
    try:
      values.append(client.blocking_key_value_get(
          f'{_PREFIX}/{key}/{i}', int(timeout * 1000)))
    except Exception as e:  # pylint: disable=broad-except
      raise ProcessesDisagreeError(
          f'process {i} did not report {key!r} within {timeout:g} s: '
          f'{type(e).__name__}: {e}') from None
  return values


def broadcast(key: str, value: str | None,
              timeout: float = AGREE_TIMEOUT) -> str:
  """Process 0's ``value`` for ``key`` on every process (others pass None)."""
  if process_count() == 1:
    return value
  client = _client()
  if is_primary():
    client.key_value_set(f'{_PREFIX}/{key}', value)
    return value
  try:
    return client.blocking_key_value_get(f'{_PREFIX}/{key}',
                                         int(timeout * 1000))
  except Exception as e:  # pylint: disable=broad-except
    raise ProcessesDisagreeError(
        f'process 0 did not report {key!r} within {timeout:g} s: '
        f'{type(e).__name__}: {e}') from None


def first_error(key: str, error: str) -> str:
  """This process's ``error``, else the first other process's; '' if none.

  Every process passes its own (``''`` for none) and learns of the others',
  so all of them stop together (:func:`fail_together`) on an error that only
  some of them found. Another process's error is prefixed with its name.
  """
  errors = all_gather(key, error)
  return error or next((e if e.startswith('process ') else
                        f'process {i}: {e}'
                        for i, e in enumerate(errors) if e), '')


def check_same(key: str, value: str, what: str) -> None:
  """Raises unless every process passes the same ``value`` for ``key``.

  Args:
    key: new to the run, e.g. ``'state/3'``.
    value: a short string, e.g. a digest.
    what: what is compared, for the message.

  Raises:
    ProcessesDisagreeError: naming the processes that differ from process 0.
  """
  values = all_gather(key, value)
  differ = [i for i, v in enumerate(values) if v != values[0]]
  if differ:
    raise fail_together(ProcessesDisagreeError(
        f'processes {differ} disagree with process 0 on {what}.'))


def check_mesh(mesh) -> None:
  """In a multi-process run, the mesh must split data over every process.

  A process without devices in the mesh would compute nothing of the run;
  without a mesh every process would compute the whole run on its own.

  Raises:
    ValueError: with the mesh to use.
  """
  if process_count() == 1:
    return
  hint = (f'use --config.mesh=data={jax.device_count()} (every device of '
          f'the {process_count()} processes)')
  if mesh is None:
    raise ValueError(f'a run of {process_count()} processes needs a mesh '
                     f'over their devices; {hint}.')
  if 'data' not in mesh.axis_names or mesh.shape['data'] == 1:
    # The task's arrays are process-local unless placed on a data axis.
    raise ValueError(f'a run of {process_count()} processes splits '
                     f'minibatches over them, not tangents or members '
                     f'(mesh {dict(mesh.shape)}); {hint}.')
  missing = (set(range(process_count()))
             - {d.process_index for d in mesh.devices.flat})
  if missing:
    raise ValueError(f'the mesh {dict(mesh.shape)} has no device of '
                     f'process(es) {sorted(missing)}; {hint}.')


def _lost_peer(e: BaseException) -> bool:
  text = f'{type(e).__name__} {e.code if isinstance(e, SystemExit) else e}'
  return any(s in text for s in ('Gloo', 'NCCL', 'oordination', 'heartbeat',
                                 'Connection closed', 'DEADLINE_EXCEEDED'))


def exit_now(e: BaseException) -> None:
  """Leaves a multi-process run on ``e``: a message, then exit status 1.

  ``os._exit`` skips JAX's shutdown barrier, which would keep this process
  waiting for peers that wait for it (in a collective it will never join)
  until the shutdown timeout. The peers fail in turn: at once where they wait
  on this process in a collective (CPU), at the latest after the heartbeat
  timeout. An error every process raised (:func:`fail_together`) leaves
  through the barrier instead, all processes at once.
  """
  who = label()
  if isinstance(e, SystemExit) and isinstance(e.code, str):
    message = e.code
  elif isinstance(e, KeyboardInterrupt):
    message = 'error: interrupted'
  elif _lost_peer(e):
    message = f'error: {type(e).__name__}: {e}'
  else:
    traceback.print_exc()
    message = f'error: {type(e).__name__}: {e}'
  if _lost_peer(e):
    # The runtime's words (a closed connection, a timeout) do not say why.
    message = ('error: lost contact with another process of this run (it '
               'failed or was killed; see its log). '
               + message.removeprefix('error: ')[:600])
  print(f'{who}: {message}' if who else message, file=sys.stderr, flush=True)
  sys.stdout.flush()
  if _together:
    sys.exit(1)
  os._exit(1)  # pylint: disable=protected-access
