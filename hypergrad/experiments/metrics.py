"""Per-outer-step metrics: ``metrics.csv`` and TensorBoard, consistent with checkpoints.

Both are rebuilt from the checkpoint's own records when a run resumes: the
CSV is rewritten from them and TensorBoard drops every event at or after the
first step not checkpointed (tensorboardX's ``purge_step``), so a kill
between a metrics write and the checkpoint never leaves a row or a point
twice. In a run of several processes only process 0 writes them
(``active=False`` elsewhere).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import time

import numpy as np

FIELDS = ('outer_step', 'accepted', 'reason', 'val_loss', 'val_accuracy',
          'nonfinite_step', 'hypergrad_norm', 'untrusted', 'seconds',
          'inner_steps', 'wall_time')
# `expansion`: each value's trust measure (docs/trust.md); `check`: the
# finite-difference check of the step, where the run asked for one.
JSON_FIELDS = ('hparams', 'hypergrads', 'step_sizes', 'sign_agreement',
               'expansion', 'check')
SCALARS = ('val_loss', 'val_accuracy', 'hypergrad_norm', 'untrusted',
           'seconds')


class MetricsWriter:
  """CSV rows and TensorBoard scalars, one set per outer step.

  Args:
    workdir: the run's folder.
    records: the checkpointed records (empty for a new run): written to the
      CSV again, and TensorBoard is purged from ``len(records)`` on.
    active: False: write nothing (a process other than the run's process 0,
      which writes the same records).
  """

  def __init__(self, workdir: str, records: list[dict], active: bool = True):
    self.path = os.path.join(workdir, 'metrics.csv')
    self.active = active
    self._tb = None
    if not active:
      return
    try:
      self._tb = _EventFile(os.path.join(workdir, 'tensorboard'),
                            purge_step=len(records))
    except ImportError:
      logging.warning('tensorboardX not installed: no TensorBoard events.')
    tmp = self.path + '.tmp'
    with open(tmp, 'w', newline='') as f:
      writer = csv.writer(f)
      writer.writerow(list(FIELDS) + list(JSON_FIELDS))
      for r in records:
        writer.writerow(self._row(r))
    os.replace(tmp, self.path)

  @staticmethod
  def _row(r: dict) -> list:
    return [r.get(k, '') for k in FIELDS] + [json.dumps(r.get(k))
                                             for k in JSON_FIELDS]

  def write(self, r: dict) -> None:
    if not self.active:
      return
    with open(self.path, 'a', newline='') as f:
      csv.writer(f).writerow(self._row(r))
    if self._tb is None:
      return
    scalars = [(k, r[k]) for k in SCALARS
               if isinstance(r.get(k), (int, float)) and math.isfinite(r[k])]
    for group in ('hparams', 'hypergrads', 'sign_agreement', 'expansion'):
      for kind, values in (r.get(group) or {}).items():
        for i, v in enumerate(np.ravel(values)):
          if group == 'hypergrads':
            scalars.append((f'hypergrad_sign/{kind}/{i}', np.sign(v)))
          else:
            scalars.append((f'{group}/{kind}/{i}', v))
    self._tb.write(r['outer_step'], scalars)

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class _EventFile:
  """A TensorBoard event file written synchronously.

  Not tensorboardX's ``SummaryWriter``: it hands events to a thread, and its
  ``flush()`` does not wait for that thread's queue, so the checkpoint that
  follows a metrics write could land while the last points were still
  queued, and a kill then lost them for good (the resumed run purges only
  the steps after the checkpoint). Here every point of an outer step is in
  the file before :meth:`write` returns.

  The file name gets a nanosecond suffix: tensorboardX names event files by
  the second and truncates a file of the same name, so a resume within a
  second of a kill would wipe the killed process's events. The suffix keeps
  every file, in time order (TensorBoard reads them sorted).

  Args:
    logdir: the TensorBoard folder (created).
    purge_step: TensorBoard drops the points of earlier files at and after
      this step (a ``SessionLog.START`` event, as ``purge_step`` in
      tensorboardX and TensorFlow).
  """

  def __init__(self, logdir: str, purge_step: int):
    # pylint: disable=g-import-not-at-top
    from tensorboardX import event_file_writer
    from tensorboardX import summary
    from tensorboardX.proto import event_pb2
    self._pb, self._scalar = event_pb2, summary.scalar
    os.makedirs(logdir, exist_ok=True)
    self._writer = event_file_writer.EventsWriter(
        os.path.join(logdir, 'events'), f'.{time.time_ns()}')
    self._writer.write_event(event_pb2.Event(
        wall_time=time.time(), step=purge_step,
        session_log=event_pb2.SessionLog(status=event_pb2.SessionLog.START)))
    self._writer.flush()

  def write(self, step: int, scalars) -> None:
    """Appends ``(tag, value)`` points at ``step`` and flushes the file."""
    now = time.time()
    for tag, value in scalars:
      self._writer.write_event(self._pb.Event(
          wall_time=now, step=step, summary=self._scalar(tag, float(value))))
    self._writer.flush()

  def close(self) -> None:
    self._writer.close()
