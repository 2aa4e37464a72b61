"""Plots of a hyperparameter search: learned schedules and validation curves."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from hypergrad._src import extras


def _pyplot():
  extras.require('launch', 'matplotlib')
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(plt, fig, path: str, title: str = '') -> None:
  """Titles, lays out, writes and closes a figure (no figure is left open)."""
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _per_step(values, num_steps: int) -> np.ndarray:
  values = np.asarray(values, np.float64)
  n = values.shape[0]
  t = np.arange(num_steps)
  return values[(t * n) // num_steps]


def plot_schedules(records: Sequence[Mapping], num_steps: int, path: str,
                   final: Mapping | None = None, title: str = '') -> None:
  """One panel per hyperparameter kind, one curve per outer step.

  Args:
    records: outer-step records with an ``hparams`` mapping of schedules
      (the values evaluated at that step).
    num_steps: the horizon, to draw each schedule over inner steps.
    path: PNG file to write.
    final: the learned schedule after the last step, drawn in black.
    title: figure title.
  """
  plt = _pyplot()
  kinds = list((final or records[-1]['hparams']).keys())
  fig, axes = plt.subplots(1, len(kinds), figsize=(4.2 * len(kinds), 3.4),
                           squeeze=False)
  cmap = plt.get_cmap('viridis')
  t = np.arange(num_steps)
  for ax, kind in zip(axes[0], kinds):
    for i, rec in enumerate(records):
      values = np.asarray(rec['hparams'][kind], np.float64)
      values = values.reshape(values.shape[0], -1)[:, 0]
      ax.plot(t, _per_step(values, num_steps),
              color=cmap(i / max(len(records) - 1, 1)), lw=1.2,
              label=f'outer step {rec["outer_step"]}' if i in (
                  0, len(records) - 1) else None)
    if final is not None:
      values = np.asarray(final[kind], np.float64)
      values = values.reshape(values.shape[0], -1)[:, 0]
      ax.plot(t, _per_step(values, num_steps), color='black', lw=2,
              label='learned')
    ax.set_title(kind)
    ax.set_xlabel('inner step')
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=8)
  _save(plt, fig, path, title)


def plot_validation(records: Sequence[Mapping], path: str,
                    baseline: float | None = None, title: str = '') -> None:
  """Validation loss (and accuracy where recorded) per outer step."""
  plt = _pyplot()
  steps = [r['outer_step'] for r in records]
  has_acc = all('val_accuracy' in r for r in records)
  fig, axes = plt.subplots(1, 2 if has_acc else 1, figsize=(
      8.4 if has_acc else 4.2, 3.4), squeeze=False)
  loss = [r['val_loss'] if r.get('accepted', True) else np.nan
          for r in records]
  axes[0][0].plot(steps, loss, 'o-')
  axes[0][0].set_xlabel('outer step')
  axes[0][0].set_ylabel('validation loss (end of horizon)')
  axes[0][0].grid(alpha=0.3)
  if has_acc:
    axes[0][1].plot(steps, [100 * r['val_accuracy'] for r in records], 'o-',
                    label='learned schedule')
    if baseline is not None:
      axes[0][1].axhline(100 * baseline, color='gray', ls='--',
                         label='default schedule')
    axes[0][1].set_xlabel('outer step')
    axes[0][1].set_ylabel('validation accuracy (%)')
    axes[0][1].grid(alpha=0.3)
    axes[0][1].legend(fontsize=8)
  _save(plt, fig, path, title)


def plot_sign_agreement(records: Sequence[Mapping], path: str,
                        threshold: float | None = None,
                        title: str = '') -> None:
  """Each value's sign agreement over a population, per outer step (heat map).

  Rows are schedule values (``lr[0]``, ...), columns outer steps; a value
  below ``threshold`` was undecided and left in place.
  """
  plt = _pyplot()
  rows = [r for r in records if r.get('sign_agreement')]
  if not rows:
    return
  names = [f'{k}[{i}]' for k, v in rows[0]['sign_agreement'].items()
           for i in range(np.size(v))]
  grid = np.array([np.concatenate([np.ravel(v) for v in
                                   r['sign_agreement'].values()])
                   for r in rows]).T
  fig, ax = plt.subplots(figsize=(4.5 + 0.4 * len(rows),
                                  1.5 + 0.3 * len(names)))
  image = ax.imshow(grid, vmin=0.0, vmax=1.0, cmap='viridis', aspect='auto')
  ax.set_xticks(range(len(rows)), [str(r['outer_step']) for r in rows])
  ax.set_yticks(range(len(names)), names)
  ax.set_xlabel('outer step')
  ax.set_ylabel('schedule value')
  label = 'sign agreement'
  if threshold:
    label += f' (x: undecided, < {threshold:g})'
    for j, i in zip(*np.nonzero(grid.T < threshold)):
      ax.text(j, i, 'x', ha='center', va='center', color='w', fontsize=7)
  fig.colorbar(image, ax=ax, label=label)
  if title:
    ax.set_title(title, fontsize=9)
  _save(plt, fig, path)


def plot_matrix(matrix, path: str, title: str, label: str = '') -> None:
  """A square matrix as an image with a colour bar (task interactions).

  Args:
    matrix: ``(n, n)`` array.
    path: where the PNG goes.
    title: the figure's title.
    label: what rows and columns index, for both axes.
  """
  plt = _pyplot()
  matrix = np.asarray(matrix)
  fig, ax = plt.subplots(figsize=(5.2, 4.4))
  im = ax.imshow(matrix, cmap='viridis')
  ax.set_xticks(range(matrix.shape[1]))
  ax.set_yticks(range(matrix.shape[0]))
  ax.set_xlabel(label)
  ax.set_ylabel(label)
  fig.colorbar(im, ax=ax)
  _save(plt, fig, path, title)
