"""Data hyper-cleaning (Franceschi et al. 2017): one learned weight per example.

``N`` training examples, a fraction of them given a random *wrong* label, a
clean validation set. The inner problem trains a classifier by full-batch
gradient descent for a fixed horizon on the weighted loss
``sum_i w_i ce_i / N``; the hyperparameters are the ``N`` weights, a
:class:`hypergrad.ConstantLeaf` in ``[0, 1]``, learned by reverse-mode
hypergradients of the clean validation loss (``N`` values: reverse mode's
cost does not grow with them, forward mode's would). The outer optimiser is
Adam followed by the projection onto the box. Examples whose weight ends
below ``0.5`` are flagged as corrupted.

Used by ``python -m benchmarks.hypercleaning``, the launch-free entry point,
and by its fast test.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

import hypergrad
from hypergrad.experiments.data import sources

PyTree = Any
Partial = jax.tree_util.Partial


class CleaningData(NamedTuple):
  """The arrays of one hyper-cleaning problem (host numpy, flattened inputs).

  Attributes:
    x_train: float32 ``(N, D)``.
    y_train: int32 ``(N,)``: the labels trained on, some corrupted.
    y_true: int32 ``(N,)``: the correct labels.
    corrupted: bool ``(N,)``: ``y_train != y_true``.
    x_val, y_val: the clean validation set.
    x_test, y_test: the official test set.
    num_classes: number of classes.
  """
  x_train: np.ndarray
  y_train: np.ndarray
  y_true: np.ndarray
  corrupted: np.ndarray
  x_val: np.ndarray
  y_val: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int


def corrupt(labels: np.ndarray, fraction: float, num_classes: int,
            rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
  """``fraction`` of ``labels`` replaced by a uniformly drawn *wrong* label.

  Returns:
    ``(noisy_labels, corrupted_mask)``.
  """
  n = len(labels)
  mask = np.zeros(n, bool)
  mask[rng.permutation(n)[:int(round(fraction * n))]] = True
  shift = rng.integers(1, num_classes, size=n)
  noisy = np.where(mask, (labels + shift) % num_classes, labels)
  return noisy.astype(np.int32), mask


def make_data(seed: int, *, num_train: int = 5000, num_val: int = 5000,
              num_test: int | None = None, noise: float = 0.5,
              dataset: str = 'fashion_mnist',
              data_dir: str | None = None) -> CleaningData:
  """Draws ``num_train`` + ``num_val`` examples of the pooled training set.

  The draw and the corruption depend on ``seed`` only; the test set is the
  official one (its first ``num_test`` examples, or all).
  """
  ds = sources.load_dataset(dataset, data_dir=data_dir, val_fraction=0.05,
                            seed=0)
  x_pool = np.concatenate([ds.x_train, ds.x_val]).reshape(
      len(ds.x_train) + len(ds.x_val), -1)
  y_pool = np.concatenate([ds.y_train, ds.y_val])
  if num_train + num_val > len(x_pool):
    raise ValueError(f'num_train + num_val = {num_train + num_val} exceeds '
                     f'the {len(x_pool)} examples of {dataset}.')
  rng = np.random.default_rng(seed)
  order = rng.permutation(len(x_pool))
  train, val = order[:num_train], order[num_train:num_train + num_val]
  noisy, mask = corrupt(y_pool[train], noise, ds.num_classes, rng)
  x_test = ds.x_test.reshape(len(ds.x_test), -1)[:num_test]
  return CleaningData(x_pool[train], noisy, y_pool[train], mask,
                      x_pool[val], y_pool[val], x_test,
                      ds.y_test[:num_test], ds.num_classes)


# ---------------------------------------------------------------------------
# Models: softmax regression and a small MLP, as plain pytrees of arrays.


def init_params(model: str, dim: int, num_classes: int, seed: int,
                hidden: int = 64) -> PyTree:
  """Softmax regression starts at 0; the MLP from a seeded Glorot draw."""
  f32 = jnp.float32  # the data's dtype, whatever jax_enable_x64 says
  if model == 'softmax':
    return {'W': jnp.zeros((dim, num_classes), f32),
            'b': jnp.zeros(num_classes, f32)}
  if model == 'mlp':
    k1, k2 = jax.random.split(jax.random.key(seed))
    glorot = jax.nn.initializers.glorot_normal()
    return {'W1': glorot(k1, (dim, hidden), f32), 'b1': jnp.zeros(hidden, f32),
            'W2': glorot(k2, (hidden, num_classes), f32),
            'b2': jnp.zeros(num_classes, f32)}
  raise ValueError(f"model must be 'softmax' or 'mlp', got {model!r}.")


def logits(params: PyTree, x: jax.Array) -> jax.Array:
  if 'W' in params:
    return x @ params['W'] + params['b']
  return jax.nn.relu(x @ params['W1'] + params['b1']) @ params['W2'] \
      + params['b2']


def _ce(params, x, y):
  return optax.softmax_cross_entropy_with_integer_labels(logits(params, x), y)


def weighted_train_loss(x, y, params, t, hparams_t):
  """``sum_i w_i ce_i / N``: the loss sees the weights (``loss_hparams``)."""
  del t  # full batch: every step sees every example
  return jnp.mean(hparams_t['weights'] * _ce(params, x, y))


def val_loss(x, y, state) -> jax.Array:
  return jnp.mean(_ce(state.params, x, y))


def accuracy(params, x, y) -> float:
  return float(jnp.mean(jnp.argmax(logits(params, x), -1) == y))


@dataclasses.dataclass(frozen=True)
class CleaningConfig:
  """One hyper-cleaning run.

  Attributes:
    model: ``'softmax'`` (softmax regression) or ``'mlp'`` (one hidden layer).
    num_steps: inner full-batch gradient-descent steps (the horizon).
    inner_lr: the inner learning rate (fixed, not learned).
    outer_steps: outer (Adam) steps on the weights.
    outer_lr: Adam's step size.
    init_weight: every weight's initial value.
    threshold: weights below it flag an example as corrupted.
    hidden: the MLP's hidden width.
  """
  model: str = 'softmax'
  num_steps: int = 500
  inner_lr: float = 0.5
  outer_steps: int = 40
  outer_lr: float = 0.1
  init_weight: float = 1.0
  threshold: float = 0.5
  hidden: int = 64


class Problem(NamedTuple):
  step_fn: Any
  loss_fn: Any
  init_state: Any


def problem(data: CleaningData, config: CleaningConfig, seed: int) -> Problem:
  """The inner problem: step, validation loss and initial state.

  Data is bound with ``Partial`` so it travels as an argument: a new seed's
  data of the same shapes does not recompile.

  Raises:
    ValueError: a weight vector must match the training set; checked where
      the weights are built (:func:`initial_hparams`).
  """
  step_fn = hypergrad.sgd_momentum_step(
      Partial(weighted_train_loss, jnp.asarray(data.x_train),
              jnp.asarray(data.y_train)),
      lr=config.inner_lr, loss_hparams=True)
  loss_fn = Partial(val_loss, jnp.asarray(data.x_val), jnp.asarray(data.y_val))
  params = init_params(config.model, data.x_train.shape[1], data.num_classes,
                       seed, config.hidden)
  return Problem(step_fn, loss_fn, hypergrad.sgd_init(params))


def initial_hparams(data: CleaningData, value: float | np.ndarray) -> dict:
  """``{'weights': ConstantLeaf}`` of one weight per training example.

  Raises:
    ValueError: an array of weights whose length is not the number of
      training examples (before any compute).
  """
  n = len(data.y_train)
  weights = np.broadcast_to(np.asarray(value, np.float32), np.shape(value))
  if weights.ndim == 0:
    weights = np.full((n,), float(weights), np.float32)
  if weights.shape != (n,):
    raise ValueError(f'hyper-cleaning needs one weight per training example: '
                     f'{n} weights, got shape {weights.shape}.')
  return {'weights': hypergrad.constant_leaf(jnp.asarray(weights))}


_unroll = jax.jit(hypergrad.unroll, static_argnums=(0, 3))


def train(prob: Problem, weights, num_steps: int):
  """The inner run at fixed ``weights``: the final state (compiled once)."""
  return _unroll(prob.step_fn, prob.init_state, {
      'weights': hypergrad.ConstantLeaf(jnp.asarray(weights, jnp.float32))},
                 num_steps)


def flag_scores(flagged: np.ndarray, corrupted: np.ndarray) -> dict:
  """Precision, recall and F1 of flagging the corrupted examples."""
  tp = int(np.sum(flagged & corrupted))
  precision = tp / max(int(np.sum(flagged)), 1)
  recall = tp / max(int(np.sum(corrupted)), 1)
  f1 = 2 * precision * recall / max(precision + recall, 1e-12)
  return {'precision': precision, 'recall': recall, 'f1': f1}


def outer_optimizer(config: CleaningConfig) -> optax.GradientTransformation:
  """Adam on the weights, then the projection onto ``[0, 1]``."""
  return hypergrad.pytree_chain(optax.adam(config.outer_lr), hypergrad.projection(
      {'weights': hypergrad.box(0.0, 1.0)}))


def run(data: CleaningData, config: CleaningConfig, seed: int,
        estimator: hypergrad.Estimator | None = None) -> dict:
  """Oracle, baseline and hyper-cleaning on one draw; their test accuracies.

  Returns:
    A dict of test accuracies (``oracle``, ``baseline``, ``cleaned``),
    flagging scores, the outer loop's validation losses, the learned
    weights' summary and the seconds spent.
  """
  estimator = estimator or hypergrad.reverse()
  prob = problem(data, config, seed)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  clean = (~data.corrupted).astype(np.float32)
  oracle = jax.block_until_ready(train(prob, clean, config.num_steps))
  # Timed after the first (compiling) run, to completion.
  start = time.perf_counter()
  baseline = jax.block_until_ready(
      train(prob, np.ones_like(clean), config.num_steps))
  plain_seconds = time.perf_counter() - start

  def hypergrad_fn(h, k):
    del k
    return estimator(prob.step_fn, prob.loss_fn, prob.init_state, h,
                     config.num_steps)

  start = time.perf_counter()
  state, records = hypergrad.fds_search(
      hypergrad_fn, initial_hparams(data, config.init_weight),
      opt=outer_optimizer(config), max_outer_steps=config.outer_steps,
      tol=0.0)
  search_seconds = time.perf_counter() - start
  weights = np.asarray(state.best_hparams['weights'].value)
  cleaned = train(prob, weights, config.num_steps)
  flagged = weights < config.threshold
  return {
      'oracle': accuracy(oracle.params, x_test, y_test),
      'baseline': accuracy(baseline.params, x_test, y_test),
      'cleaned': accuracy(cleaned.params, x_test, y_test),
      **flag_scores(flagged, data.corrupted),
      'val_losses': [r['val_loss'] for r in records],
      'best_step': state.best_step,
      'weights_clean_mean': float(weights[~data.corrupted].mean()),
      'weights_corrupted_mean': float(weights[data.corrupted].mean()),
      'plain_seconds': plain_seconds,
      'search_seconds': search_seconds,
      'seconds_per_hypergradient': search_seconds / max(len(records), 1),
  }


def run_rtho(data: CleaningData, config: CleaningConfig, seed: int, *,
             every: int = 10, meta_lr: float = 0.05) -> dict:
  """Real-time forward mode (RTHO) on the same problem, then the same retrain.

  One training run in which every ``every`` steps the weights take an Adam
  step (projected onto ``[0, 1]``) along the forward-mode hypergradient of
  the validation loss at the current state (Franceschi et al. 2017, RTHO).
  It pushes one state-sized tangent per weight through every step: ``N``
  Jacobian-vector products of the full-batch step per step, so it is run
  on small ``N`` only.

  Returns:
    Test accuracy after retraining with the final weights, flagging scores
    and the seconds of the online run (compiled and warmed up first).
  """
  prob = problem(data, config, seed)
  method = hypergrad.rtho(
      prob.step_fn, prob.loss_fn, every=every,
      meta_opt=hypergrad.pytree_chain(optax.adam(meta_lr), hypergrad.projection(
          {'weights': hypergrad.box(0.0, 1.0)})))
  hparams = initial_hparams(data, config.init_weight)
  run_once = lambda: jax.block_until_ready(hypergrad.run_online(
      method, prob.init_state, hparams, config.num_steps))
  run_once()  # compile
  start = time.perf_counter()
  _, used = run_once()
  seconds = time.perf_counter() - start
  weights = np.asarray(used['weights'][-1])
  cleaned = train(prob, weights, config.num_steps)
  x_test, y_test = jnp.asarray(data.x_test), jnp.asarray(data.y_test)
  return {'cleaned': accuracy(cleaned.params, x_test, y_test),
          **flag_scores(weights < config.threshold, data.corrupted),
          'val_loss': float(prob.loss_fn(cleaned)),
          'seconds': seconds}


def run_reverse_for(data: CleaningData, config: CleaningConfig, seed: int,
                    seconds: float) -> dict:
  """The full-horizon reverse-mode search given ``seconds`` of compute.

  Its outer steps are as many as fit in ``seconds`` at its measured time per
  hypergradient (at least 1): the equal-compute partner of :func:`run_rtho`.
  """
  prob = problem(data, config, seed)
  estimator = hypergrad.reverse()
  h0 = initial_hparams(data, config.init_weight)
  call = lambda: jax.block_until_ready(estimator(
      prob.step_fn, prob.loss_fn, prob.init_state, h0, config.num_steps))
  call()  # compile
  start = time.perf_counter()
  call()
  per_call = time.perf_counter() - start
  steps = max(1, int(seconds // per_call))
  r = run(data, dataclasses.replace(config, outer_steps=steps), seed,
          estimator)
  r['outer_steps'] = steps
  return r
