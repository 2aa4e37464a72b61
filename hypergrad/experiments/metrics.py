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
          'nonfinite_step', 'hypergrad_norm', 'seconds', 'inner_steps',
          'wall_time')
JSON_FIELDS = ('hparams', 'hypergrads', 'step_sizes', 'sign_agreement')
SCALARS = ('val_loss', 'val_accuracy', 'hypergrad_norm', 'seconds')


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
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      # tensorboardX names event files by the second and truncates a file
      # of the same name: a resume within a second of the kill would wipe
      # the killed process's events. A nanosecond suffix keeps every file,
      # and keeps them in time order (TensorBoard reads them sorted).
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'),
                               purge_step=len(records),
                               filename_suffix=f'.{time.time_ns()}')
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
    step = r['outer_step']
    for k in SCALARS:
      if isinstance(r.get(k), (int, float)) and math.isfinite(r[k]):
        self._tb.add_scalar(k, r[k], step)
    for group in ('hparams', 'hypergrads', 'sign_agreement'):
      for kind, values in (r.get(group) or {}).items():
        for i, v in enumerate(np.ravel(values)):
          if group == 'hypergrads':
            self._tb.add_scalar(f'hypergrad_sign/{kind}/{i}', np.sign(v), step)
          else:
            self._tb.add_scalar(f'{group}/{kind}/{i}', v, step)
    self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
