"""Test helpers: central finite differences and small inner problems."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np

import hypergrad

# The library's reference, re-exported for the tests.
finite_difference = hypergrad.finite_difference


def regression_problem(dtype=jnp.float64, num_examples=48, batch=8, dim=5,
                       hidden=4, seed=0):
  """A tanh network regressed on random data; minibatch chosen from ``t``."""
  rng = np.random.RandomState(seed)
  x = jnp.asarray(rng.randn(num_examples, dim), dtype)
  y = jnp.asarray(rng.randn(num_examples), dtype)
  params = {'a': jnp.asarray(rng.randn(dim, hidden) * 0.5, dtype),
            'b': jnp.asarray(rng.randn(hidden) * 0.5, dtype)}
  num_batches = num_examples // batch

  def predict(p, xb):
    return jnp.tanh(xb @ p['a']) @ p['b']

  def train_loss(p, t):
    start = (t % num_batches) * batch
    xb = jax.lax.dynamic_slice_in_dim(x, start, batch)
    yb = jax.lax.dynamic_slice_in_dim(y, start, batch)
    return jnp.mean((predict(p, xb) - yb) ** 2)

  def val_loss(p):
    return jnp.mean((predict(p, x) - y) ** 2)

  return train_loss, val_loss, params


def sgd_problem(dtype=jnp.float64, **kw):
  train_loss, val_loss, params = regression_problem(dtype, **kw)
  step_fn = hypergrad.sgd_momentum_step(train_loss)
  loss_fn = lambda s: val_loss(s.params)
  return step_fn, loss_fn, hypergrad.sgd_init(params)


def reference_unroll_loss(step_fn, loss_fn, init_state, hparams, num_steps):
  """A plain Python loop over the sharing rule, written independently."""
  state = init_state
  for t in range(num_steps):
    h_t = jax.tree.map(lambda h: h[(t * h.shape[0]) // num_steps], hparams)
    state = step_fn(state, h_t, jnp.int32(t))
  return loss_fn(state)


def quadratic_problem(curvature=2.0, dim=3, dtype=jnp.float64):
  """Full-batch gradient descent on ``curvature / 2 * ||w - 1||^2``.

  The error contracts by ``1 - lr * curvature`` per step, so the learning rate
  that minimises the loss after any number of steps (and after one step, the
  greedy target) is ``1 / curvature``: a known optimum for the greedy methods.

  Returns:
    ``(step_fn, loss_fn, init_state, optimal_lr)``; the training loss is the
    validation loss.
  """
  target = jnp.ones((dim,), dtype)

  def train_loss(w, t):
    del t
    return 0.5 * curvature * jnp.sum((w - target) ** 2)

  step_fn = hypergrad.sgd_momentum_step(train_loss)
  loss_fn = lambda s: train_loss(s.params, 0)
  init = hypergrad.sgd_init(jnp.asarray(-9.0 * np.ones(dim), dtype))
  return step_fn, loss_fn, init, 1.0 / curvature


def check_task_hypergrad(task, num_steps: int):
  """A task's forward hypergradients equal central finite differences.

  Run in float64 (``make_task(..., dtype=jnp.float64)``) on a 2-interval lr,
  momentum and weight decay schedule. Returns ``(step_fn, state, hparams)``
  for further checks.
  """
  step_fn, loss_fn, state = task.problem(init_seed=0)
  hparams = {'lr': jnp.array([0.2, 0.1]), 'momentum': jnp.array([0.5]),
             'weight_decay': jnp.array([1e-3])}
  _, grads = hypergrad.forward_hypergrad(step_fn, loss_fn, state, hparams,
                                         num_steps)
  f = jax.jit(lambda h: loss_fn(hypergrad.unroll(step_fn, state, h,
                                                 num_steps)))
  chex.assert_trees_all_close(grads, finite_difference(f, hparams),
                              rtol=1e-5, atol=1e-9)
  return step_fn, state, hparams


def run_forced_devices_check(module: str) -> dict:
  """Runs ``python -m module`` (which forces host devices) and reads its JSON.

  The device count is fixed when JAX starts, hence a fresh process; the
  module prints one JSON line last.
  """
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  proc = subprocess.run([sys.executable, '-m', module], cwd=root,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])
