"""Learning task interactions (Franceschi et al. 2017): a learned coupling matrix.

``K`` binary tasks (one class of a dataset against the rest), each with a
linear model ``w_j`` trained on its own few examples. The tasks are coupled
by the training objective

    sum_j L_j(w_j) + sum_{j, k} A_jk ||w_j - w_k||^2 + lam sum_j ||w_j||^2,

whose ``K x K`` interaction matrix ``A`` (non-negative, symmetric) is the
hyperparameter, a :class:`hypergrad.ConstantLeaf`, learned by reverse-mode
hypergradients of the tasks' validation loss through the whole
gradient-descent run; the outer step is Adam followed by the projection onto
symmetric non-negative matrices (zero diagonal). Compared with independent tasks (``A = 0``)
and a fixed all-equal coupling (``A_jk = c`` off the diagonal, ``c`` the
best of a grid on the validation loss, also the learned matrix's start).
Accuracy is the one-vs-rest classifier's: the class of the highest score.

Used by ``python -m benchmarks.task_interactions``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hypergrad
from hypergrad.experiments.data import sources

Partial = jax.tree_util.Partial


class TaskData(NamedTuple):
  """Per-task training sets and shared validation / test sets.

  Attributes:
    x_tasks: float32 ``(K, n, D)``: task ``j``'s training inputs.
    y_tasks: float32 ``(K, n)``: +1 (class ``j``) or -1.
    x_val, y_val: float32 ``(V, D)``, int32 ``(V,)`` class labels.
    x_test, y_test: the test set, likewise.
  """
  x_tasks: np.ndarray
  y_tasks: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray


def make_data(seed: int, *, per_task: int = 10, num_val: int = 300,
              dataset: str = 'digits') -> TaskData:
  """``per_task`` positives and as many negatives per task, drawn by ``seed``."""
  ds = sources.load_dataset(dataset, val_fraction=0.05, seed=0)
  flat = lambda x: x.reshape(len(x), -1)
  x_pool = np.concatenate([flat(ds.x_train), flat(ds.x_val)])
  y_pool = np.concatenate([ds.y_train, ds.y_val])
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(x_pool))
  val, rest = order[:num_val], order[num_val:]
  xs, ys = [], []
  for j in range(ds.num_classes):
    pos = rng.choice(rest[y_pool[rest] == j], per_task, replace=False)
    neg = rng.choice(rest[y_pool[rest] != j], per_task, replace=False)
    idx = np.concatenate([pos, neg])
    xs.append(x_pool[idx])
    ys.append(np.concatenate([np.ones(per_task), -np.ones(per_task)]))
  # A bias feature, so the coupling can also tie the tasks' offsets.
  add_bias = lambda x: np.concatenate(
      [x, np.ones(x.shape[:-1] + (1,), x.dtype)], -1).astype(np.float32)
  return TaskData(add_bias(np.stack(xs)), np.stack(ys).astype(np.float32),
                  add_bias(x_pool[val]), y_pool[val].astype(np.int32),
                  add_bias(flat(ds.x_test)), ds.y_test.astype(np.int32))


def pairwise_sq(w: jax.Array) -> jax.Array:
  """``||w_j - w_k||^2`` for every pair of rows of ``w``: ``(K, K)``.

  The diagonal is exactly 0: round-off there would give ``A_jj`` a tiny
  hypergradient that Adam, which divides by its size, turns into full steps.
  """
  sq = jnp.sum(w * w, axis=1)
  off = 1 - jnp.eye(w.shape[0], dtype=w.dtype)
  return jnp.maximum(sq[:, None] + sq[None, :] - 2 * w @ w.T, 0) * off


def train_loss(x_tasks, y_tasks, l2, w, t, hparams_t):
  """The coupled objective; the loss sees ``A`` (``loss_hparams=True``)."""
  del t  # full batch
  margins = y_tasks * jnp.einsum('knd,kd->kn', x_tasks, w)
  task_losses = jnp.sum(jnp.mean(jax.nn.softplus(-margins), axis=1))
  coupling = jnp.sum(hparams_t['coupling'] * pairwise_sq(w))
  return task_losses + coupling + l2 * jnp.sum(w * w)


def scores(w, x) -> jax.Array:
  return x @ w.T


def val_loss(x, y, state) -> jax.Array:
  """Sum over tasks of the one-vs-rest logistic loss on the validation set."""
  k = state.params.shape[0]
  signs = jnp.where(y[:, None] == jnp.arange(k)[None, :], 1.0, -1.0)
  return jnp.sum(jnp.mean(jax.nn.softplus(-signs * scores(state.params, x)),
                          axis=0))


def accuracy(w, x, y) -> float:
  return float(jnp.mean(jnp.argmax(scores(w, x), -1) == y))


class SymmetricNonNegative(NamedTuple):
  """Projection onto symmetric matrices with non-negative entries, diagonal 0.

  The average of ``A`` and its transpose, clipped at 0, its diagonal (a
  task's coupling with itself, which has no effect) set to 0: the nearest
  such matrix in Frobenius norm (the three constraints act entrywise on
  symmetric pairs, so their projections compose).
  """

  def __call__(self, a):
    off = 1 - jnp.eye(a.shape[0], dtype=a.dtype)
    return (jnp.maximum(0.5 * (a + a.T), 0) * off).astype(a.dtype)


@dataclasses.dataclass(frozen=True)
class InteractionConfig:
  """Attributes: horizon, inner step, L2, outer loop and the coupling grid."""
  num_steps: int = 200
  inner_lr: float = 0.1
  l2: float = 1e-3
  outer_steps: int = 30
  outer_lr: float = 0.01
  grid: tuple = (0.0, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


def _problem(data: TaskData, config: InteractionConfig):
  step_fn = hypergrad.sgd_momentum_step(
      Partial(train_loss, jnp.asarray(data.x_tasks), jnp.asarray(data.y_tasks),
              jnp.float32(config.l2)), lr=config.inner_lr, loss_hparams=True)
  loss_fn = Partial(val_loss, jnp.asarray(data.x_val), jnp.asarray(data.y_val))
  k, _, d = data.x_tasks.shape
  init = hypergrad.sgd_init(jnp.zeros((k, d), jnp.float32))
  return step_fn, loss_fn, init


def all_equal(k: int, c: float) -> np.ndarray:
  return (c * (1 - np.eye(k))).astype(np.float32)


def run(data: TaskData, config: InteractionConfig) -> dict:
  """Independent tasks, the best all-equal coupling and the learned matrix."""
  step_fn, loss_fn, init = _problem(data, config)
  k = data.x_tasks.shape[0]
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  estimator = hypergrad.reverse()

  def evaluate(a):
    h = {'coupling': hypergrad.ConstantLeaf(jnp.asarray(a))}
    result = estimator(step_fn, loss_fn, init, h, config.num_steps)
    return float(result.loss), result.info.final_state.params

  grid = {c: evaluate(all_equal(k, c)) for c in config.grid}
  best_c = min((c for c in grid if c > 0), key=lambda c: grid[c][0])
  start = time.perf_counter()

  def hypergrad_fn(h, step):
    del step
    return estimator(step_fn, loss_fn, init, h, config.num_steps)

  state, records = hypergrad.fds_search(
      hypergrad_fn,
      {'coupling': hypergrad.constant_leaf(all_equal(k, best_c))},
      opt=hypergrad.pytree_chain(optax.adam(config.outer_lr), hypergrad.projection(
          {'coupling': SymmetricNonNegative()})),
      max_outer_steps=config.outer_steps, tol=0.0)
  learned = np.asarray(state.best_hparams['coupling'].value)
  learned_loss, learned_w = evaluate(learned)
  return {
      'independent': accuracy(grid[0.0][1], x_test, y_test),
      'all_equal': accuracy(grid[best_c][1], x_test, y_test),
      'learned': accuracy(learned_w, x_test, y_test),
      'val_loss_independent': grid[0.0][0],
      'val_loss_all_equal': grid[best_c][0],
      'val_loss_learned': learned_loss,
      'best_c': best_c,
      'matrix': learned.tolist(),
      'val_losses': [r['val_loss'] for r in records],
      'search_seconds': time.perf_counter() - start,
  }

