"""Smoke test of the core as a pip user gets it: the wheel, no extras.

Run by .ci/run in a fresh virtual environment holding only the wheel and its
install_requires. Exits non-zero on the first failure.
"""

import sys

import jax.numpy as jnp

import hypergrad

KIT = ('flax', 'tensorflow_datasets', 'optuna', 'sklearn', 'matplotlib',
       'orbax', 'mnist1d', 'ml_collections', 'tensorboardX', 'tqdm')
loaded = [m for m in KIT if m in sys.modules]
assert not loaded, f'import hypergrad loaded the experiment kit: {loaded}'
assert hypergrad.__file__.find('site-packages') > 0, hypergrad.__file__

step = lambda w, h, t: w - h['lr'] * 2.0 * (w - 3.0)
loss = lambda w: (w - 3.0) ** 2
hparams = {'lr': hypergrad.constant(0.1, 2)}
f_loss, f_grad = hypergrad.forward_hypergrad(step, loss, jnp.zeros(()),
                                             hparams, 20)
r_loss, r_grad, _ = hypergrad.reverse(checkpoint_every=5)(
    step, loss, jnp.zeros(()), hparams, 20)
assert jnp.allclose(f_grad['lr'], r_grad['lr'], rtol=1e-4), (f_grad, r_grad)
method = hypergrad.hypergradient_descent(
    step, loss, meta_opt=hypergrad.meta_optimizer(0.01))
_, sched = hypergrad.run_online(method, jnp.zeros(()),
                                {'lr': hypergrad.constant(0.1)}, 20)
assert sched['lr'].shape == (20,)
state, _ = hypergrad.fds_search(
    lambda h, k: hypergrad.forward_hypergrad(step, loss, jnp.zeros(()), h, 20),
    hparams, max_outer_steps=2)
assert state.step == 2

try:
  import hypergrad.experiments  # noqa: F401  (needs the experiments extra)
except ImportError as e:
  assert "pip install 'jax-hypergrad[experiments]'" in str(e), e
else:
  raise AssertionError('hypergrad.experiments imported without its extra')
print(f'smoke: hypergrad {hypergrad.__version__} core install OK '
      f'(forward {float(f_grad["lr"][0]):.4f} = reverse '
      f'{float(r_grad["lr"][0]):.4f}; HD, outer loop, missing-extra message)')
