r"""Full-horizon hypergradients of an MLP's schedules, beside finite differences.

Trains an MLP on scikit-learn's bundled digits (no download) with SGD,
momentum and weight decay for ``--horizon`` inner steps, and prints the
forward-mode hypergradient of the validation loss with respect to a
learning-rate schedule of ``--lr_intervals`` pieces, a momentum and a weight
decay, each next to a float64 central finite difference.

    python -m launch.check_hypergrad                  # ~1 min on 2 CPU cores
    python -m launch.check_hypergrad --horizon 2000 --lr_intervals 10
"""

from __future__ import annotations

import time

from absl import app
from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

import hypergrad

_HORIZON = flags.DEFINE_integer('horizon', 500, 'Inner steps T.')
_LR_INTERVALS = flags.DEFINE_integer('lr_intervals', 7,
                                     'Pieces of the learning-rate schedule.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Inner minibatch size.')
_SEED = flags.DEFINE_integer('seed', 0, 'Seed of the data split and init.')
_EPS = flags.DEFINE_float('fd_eps', 1e-5, 'Finite-difference step.')


def digits_problem(batch_size: int, seed: int):
  """SGD-momentum on an MLP 64-128-10 over digits, in float64."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top
  x, y = load_digits(return_X_y=True)
  rng = np.random.RandomState(seed)
  order = rng.permutation(len(x))
  x = (x[order] / 16.0 - 0.5).astype(np.float64)
  y = y[order].astype(np.int32)
  x_tr, y_tr = jnp.asarray(x[:1500]), jnp.asarray(y[:1500])
  x_va, y_va = jnp.asarray(x[1500:]), jnp.asarray(y[1500:])
  key = jax.random.PRNGKey(seed)
  k1, k2, k_batch = jax.random.split(key, 3)
  params = {
      'w1': jax.random.normal(k1, (64, 128), jnp.float64) / 8.0,
      'b1': jnp.zeros((128,), jnp.float64),
      'w2': jax.random.normal(k2, (128, 10), jnp.float64) / np.sqrt(128.0),
      'b2': jnp.zeros((10,), jnp.float64)}

  def xent(p, xb, yb):
    logits = jnp.tanh(xb @ p['w1'] + p['b1']) @ p['w2'] + p['b2']
    logp = jax.nn.log_softmax(logits)
    return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

  def train_loss(p, t):
    # Minibatch picked from the step index on device: no host round trip.
    idx = jax.random.randint(jax.random.fold_in(k_batch, t), (batch_size,), 0,
                             x_tr.shape[0])
    return xent(p, x_tr[idx], y_tr[idx])

  step_fn = hypergrad.sgd_momentum_step(train_loss)
  loss_fn = lambda s: xent(s.params, x_va, y_va)
  return step_fn, loss_fn, hypergrad.sgd_init(params)


def main(argv):
  del argv
  jax.config.update('jax_enable_x64', True)
  horizon = _HORIZON.value
  step_fn, loss_fn, state = digits_problem(_BATCH.value, _SEED.value)
  hparams = {'lr': hypergrad.constant(0.1, _LR_INTERVALS.value, jnp.float64),
             'momentum': hypergrad.constant(0.9, 1, jnp.float64),
             'weight_decay': hypergrad.constant(1e-3, 1, jnp.float64)}
  print(f'digits MLP, T = {horizon} inner steps, '
        f'K = {_LR_INTERVALS.value + 2} hyperparameter values')

  start = time.perf_counter()
  loss, grads = jax.block_until_ready(hypergrad.forward_hypergrad(
      step_fn, loss_fn, state, hparams, horizon))
  print(f'validation loss {float(loss):.5f}; forward hypergradient in '
        f'{time.perf_counter() - start:.1f} s (with compilation)')

  final_loss = jax.jit(lambda h: loss_fn(
      hypergrad.unroll(step_fn, state, h, horizon)))
  eps = _EPS.value
  print(f'{"hyperparameter":>18} {"value":>10} {"forward":>14} '
        f'{"finite diff":>14} {"rel err":>9}')
  worst = 0.0
  for name in hparams:
    for i in range(hparams[name].shape[0]):
      bump = lambda s, name=name, i=i: {
          **hparams, name: hparams[name].at[i].add(s * eps)}
      fd = (float(final_loss(bump(1.0))) - float(final_loss(bump(-1.0)))) / (
          2 * eps)
      g = float(grads[name][i])
      err = abs(g - fd) / max(abs(fd), 1e-8)
      worst = max(worst, err)
      print(f'{name + f"[{i}]":>18} {float(hparams[name][i]):>10.4g} '
            f'{g:>14.6e} {fd:>14.6e} {err:>9.1e}')
  print(f'largest relative error against finite differences: {worst:.1e}')
  if not worst < 1e-4:
    raise SystemExit('hypergradient disagrees with finite differences')


if __name__ == '__main__':
  app.run(main)
