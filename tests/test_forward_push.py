"""The batched tangent push: same numbers as the row loop, and (from an
export for CUDA, lowered on this CPU) tangent matmuls that carry the batch,
with no per-row loop. Its batch sizes: tests/test_tangents.py."""

import re

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import common
import hypergrad
from hypergrad._src import forward as forward_lib
from tests import helpers


def _hparams(n_lr, n_mom, n_wd):
  return {'lr': jnp.linspace(0.03, 0.1, n_lr),
          'momentum': jnp.linspace(0.5, 0.8, n_mom),
          'weight_decay': jnp.linspace(1e-3, 1e-2, n_wd)}


class BatchEqualsRowsTest(parameterized.TestCase):

  @parameterized.named_parameters(
      ('fds_setting', 7, 1, 1, 40, None),
      ('more_intervals_than_buckets', 12, 2, 3, 37, None),
      ('n_equals_T', 11, 1, 1, 11, None),
      ('chunks', 7, 3, 2, 23, 4),
      ('chunk_of_one', 4, 1, 2, 13, 1),
  )
  def test_matches_reverse_and_rows(self, n_lr, n_mom, n_wd, t, chunk):
    step_fn, loss_fn, state = helpers.sgd_problem()
    hparams = _hparams(n_lr, n_mom, n_wd)
    ref = hypergrad.reverse()(step_fn, loss_fn, state, hparams, t)
    for skip in (True, False):
      rows = hypergrad.forward(chunk, skip_unstarted=skip, push='rows')(
          step_fn, loss_fn, state, hparams, t)
      batch = hypergrad.forward(chunk, skip_unstarted=skip, push='batch')(
          step_fn, loss_fn, state, hparams, t)
      chex.assert_trees_all_equal_shapes_and_dtypes(batch.hypergrads, hparams)
      for out in (rows, batch):
        chex.assert_trees_all_close(out.hypergrads, ref.hypergrads,
                                    rtol=1e-10, atol=1e-14)
        chex.assert_trees_all_close(out.info.final_state,
                                    ref.info.final_state, rtol=1e-12)
      self.assertEqual(int(batch.info.nonfinite_step), -1)

  def test_matches_finite_differences(self):
    step_fn, loss_fn, state = helpers.sgd_problem()
    hparams = _hparams(5, 2, 1)
    _, grads, _ = hypergrad.forward(push='batch')(step_fn, loss_fn, state,
                                                  hparams, 17)
    f = jax.jit(lambda h: helpers.reference_unroll_loss(
        step_fn, loss_fn, state, h, 17))
    chex.assert_trees_all_close(grads, helpers.finite_difference(f, hparams),
                                rtol=1e-5, atol=1e-8)

  def test_unbegun_rows_in_a_batch_stay_exact(self):
    # Step 4's derivative is 0 * inf. With more intervals than batch sizes,
    # rows that begin later ride in the batch before they begin; the rows
    # of intervals beginning after step 4 must still match reverse mode.
    def step_fn(w, h, t):
      u = jnp.where(t == 4, 0.0, 1.0) * w
      return w + h['lr'] * jnp.sqrt(u)

    hparams = {'lr': jnp.linspace(0.1, 0.3, 8)}
    args = (step_fn, lambda w: jnp.sum(w ** 2), jnp.ones(2), hparams, 24)
    segments = forward_lib.plan([forward_lib.directions(hparams, 24)], 24)
    self.assertTrue(any(late for *_, late in segments))  # rows ride early
    out = hypergrad.forward(push='batch')(*args)
    ref = hypergrad.reverse()(*args)
    self.assertEqual(int(out.info.nonfinite_step), 4)
    self.assertTrue(np.isnan(out.hypergrads['lr'][0]))
    np.testing.assert_allclose(out.hypergrads['lr'][2:],
                               ref.hypergrads['lr'][2:], rtol=1e-12)

  def test_tangent_blow_up_with_finite_state_is_caught(self):
    def step_fn(w, h, t):
      w = jnp.where(t == 4, 0.0, w)
      return w + h['lr'] * jnp.sqrt(w)

    out = hypergrad.forward(push='batch')(
        step_fn, jnp.sum, jnp.ones(2), {'lr': jnp.array([0.1])}, 8)
    self.assertEqual(int(out.info.nonfinite_step), 4)

  def test_bad_push_refused(self):
    with pytest.raises(ValueError, match="push=.vmap."):
      hypergrad.forward(push='vmap')


def _regions(text, opener):
  """The text of each outermost op whose line contains ``opener``."""
  found, depth, stack, current = [], 0, [], []
  for line in text.splitlines():
    if opener in line:
      if not stack:
        current = []
      stack.append(depth)
    if stack:
      current.append(line)
    depth += line.count('{') - line.count('}')
    while stack and depth <= stack[-1] and '}' in line:
      stack.pop()
      if not stack:
        found.append('\n'.join(current))
  return found


def _inline_calls(body, functions, seen=()):
  """``body`` with the text of every private function it calls appended."""
  out = [body]
  for name in re.findall(r'call @([\w.]+)', body):
    if name in functions and name not in seen:
      out.append(_inline_calls(functions[name], functions, seen + (name,)))
  return '\n'.join(out)


def _unroll_loops(text):
  """Top-level while loops of an exported module, calls inlined, and how
  many while loops run inside them (calls followed)."""
  funcs = dict(re.findall(r'func\.func \w+ @([\w.]+)(.*?)\n  }', text,
                          re.DOTALL))
  main = funcs.get('main', text)
  whole = _inline_calls(main, funcs)
  loops = _regions(whole, 'stablehlo.while')
  loops = [_inline_calls(body, funcs) for body in loops]
  nested = sum(body.count('stablehlo.while') - 1 for body in loops)
  return loops, nested


@pytest.mark.parametrize('n_lr', [7, 30])
def test_cuda_export_pushes_a_batch_of_tangents(n_lr):
  # platforms=['cuda'] lowers on a CPU-only machine: the program a GPU would
  # run, with the platform's push (the batch; the CPU's is the row loop).
  step_fn, loss_fn, state = common.mlp_problem(num_examples=256)
  hparams = common.fds_hparams(n_lr)
  steps = 200
  segments = forward_lib.plan([forward_lib.directions(hparams, steps)],
                              steps)
  fn = jax.jit(lambda s, h: hypergrad.forward_hypergrad(step_fn, loss_fn, s,
                                                        h, steps))
  text = jax.export.export(fn, platforms=['cuda'])(state, hparams
                                                   ).mlir_module()
  bodies, nested = _unroll_loops(text)
  assert nested == 0, 'a loop inside the unroll: rows pushed one at a time'
  assert len(bodies) == len(segments)
  for body, (_, _, batch, _) in zip(bodies, segments):
    dots = re.findall(r'stablehlo\.dot_general.*-> tensor<([0-9x]+)x\w+>',
                      body)
    # Every weight matrix's tangent matmuls carry the segment's batch and
    # the expansion probe (one more row): the 3 layers' forward, backward
    # and weight-gradient products, each with two tangent terms.
    batched = [d for d in dots if str(batch + 1) in d.split('x')]
    assert len(batched) >= 12, (batch, dots)
    # The primal step: 3 forward, 3 weight-gradient, 2 input-gradient.
    assert len(dots) - len(batched) <= 8, dots
  cpu = jax.export.export(fn, platforms=['cpu'])(state, hparams).mlir_module()
  assert _unroll_loops(cpu)[1] >= 1  # the CPU program is the row loop
