"""Shared pieces of the benchmarks: a pure-JAX MLP problem, timing, memory."""

from __future__ import annotations

import time
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

import hypergrad


def enable_compilation_cache() -> str | None:
  """Turns on the persistent compilation cache for a benchmark script.

  Every script's ``main`` calls it first, so a rerun reads its programs back
  instead of compiling them again; see :mod:`hypergrad.experiments.cache`
  (folder: ``$HYPERGRAD_CACHE_DIR`` or ``~/.cache/hypergrad/jax``). Run
  times are measured after a warm-up call and do not change.

  Returns:
    The cache folder, or None if it could not be used.
  """
  # Imported here: the experiment kit pulls in flax, which the problem
  # builders below do not need.
  from hypergrad.experiments import cache  # pylint: disable=g-import-not-at-top
  return cache.enable_compilation_cache()


def mlp_problem(widths: Sequence[int] = (64, 128, 128, 10), batch_size: int = 64,
                num_examples: int = 1024, seed: int = 0,
                activation: Callable = jnp.tanh, dtype=jnp.float32):
  """SGD-momentum training of an MLP on random classification data.

  Returns:
    ``(step_fn, loss_fn, init_state)`` of the core contract; the minibatch of
    step ``t`` is a contiguous slice chosen from ``t`` (on-device data).
  """
  rng = np.random.RandomState(seed)
  x = jnp.asarray(rng.randn(num_examples, widths[0]), dtype)
  y = jnp.asarray(rng.randint(0, widths[-1], num_examples))
  keys = jax.random.split(jax.random.PRNGKey(seed), len(widths) - 1)
  params = [
      {'w': (jax.random.normal(k, (a, b)) / np.sqrt(a)).astype(dtype),
       'b': jnp.zeros((b,), dtype)}
      for k, a, b in zip(keys, widths[:-1], widths[1:])]

  def logits_fn(params, xb):
    h = xb
    for layer in params[:-1]:
      h = activation(h @ layer['w'] + layer['b'])
    return h @ params[-1]['w'] + params[-1]['b']

  def xent(params, xb, yb):
    logp = jax.nn.log_softmax(logits_fn(params, xb))
    return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

  num_batches = num_examples // batch_size

  def train_loss(params, t):
    start = (t % num_batches) * batch_size
    xb = jax.lax.dynamic_slice_in_dim(x, start, batch_size)
    yb = jax.lax.dynamic_slice_in_dim(y, start, batch_size)
    return xent(params, xb, yb)

  step_fn = hypergrad.sgd_momentum_step(train_loss)
  loss_fn = lambda state: xent(state.params, x[:256], y[:256])
  return step_fn, loss_fn, hypergrad.sgd_init(params)


def fds_hparams(num_lr: int, dtype=jnp.float32):
  """The FDS setting: ``num_lr`` learning-rate intervals, one momentum, one wd."""
  return {'lr': hypergrad.constant(0.05, num_lr, dtype),
          'momentum': hypergrad.constant(0.9, 1, dtype),
          'weight_decay': hypergrad.constant(5e-4, 1, dtype)}


def compile_time(fn: Callable, *args) -> float:
  """Seconds to trace, lower and compile ``jax.jit(fn)`` for ``args``.

  What the first call of a fresh program waits for before it runs; with the
  persistent cache on and a warm cache, mostly the time to read it back.
  """
  start = time.perf_counter()
  jax.jit(fn).lower(*args).compile()
  return time.perf_counter() - start


def best_time(fn: Callable[[], object], repeats: int = 3) -> float:
  """Best wall time of ``fn`` over ``repeats`` runs, after one warm-up run."""
  jax.block_until_ready(fn())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return min(times)


def compiled_memory(fn, *args) -> int:
  """Bytes XLA allocates for one call: arguments, outputs and temporaries."""
  stats = jax.jit(fn).lower(*args).compile().memory_analysis()
  return int(stats.temp_size_in_bytes + stats.argument_size_in_bytes
             + stats.output_size_in_bytes - stats.alias_size_in_bytes)


def compiled_flops(fn, *args) -> float:
  """XLA's count of floating-point operations of one call."""
  cost = jax.jit(fn).lower(*args).compile().cost_analysis()
  return float((cost[0] if isinstance(cost, list) else cost)['flops'])


def markdown_table(header: Sequence[str], rows: Sequence[Sequence]) -> str:
  lines = ['| ' + ' | '.join(header) + ' |',
           '|' + '|'.join('---' for _ in header) + '|']
  lines += ['| ' + ' | '.join(str(c) for c in row) + ' |' for row in rows]
  return '\n'.join(lines)


# 95% two-sided Student-t quantiles by degrees of freedom.
_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447,
         7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228, 20: 2.086, 30: 2.042}


def t_interval(values) -> tuple[float, float]:
  """Mean and half-width of the 95% Student-t interval of the mean."""
  v = np.asarray(values, np.float64)
  if len(v) < 2:
    return float(v.mean()), float('nan')
  t = _T975[max(k for k in _T975 if k <= len(v) - 1)]
  return float(v.mean()), float(t * v.std(ddof=1) / np.sqrt(len(v)))


def fmt_interval(values, scale: float = 1.0, digits: int = 2) -> str:
  """``'mean ± half-width'`` of the 95% t-interval of ``values * scale``."""
  m, h = t_interval(np.asarray(values, np.float64) * scale)
  return f'{m:.{digits}f} ± {h:.{digits}f}'
