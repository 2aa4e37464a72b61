"""Input-validation fuzzing of the public API and the launch script.

Random malformed hyperparameter pytrees, shapes, dtypes, horizons and option
values must each raise a ``ValueError`` or ``TypeError`` from hypergrad's own
checks, naming the bad value or leaf, and never anything from deep inside
JAX/XLA. Random *valid* inputs must go through and keep the structure, shapes
and dtypes of the schedules. The launch script's config values get the same
treatment (``ConfigError``, a ``ValueError``), and a few bad command lines run
end to end.

The inner problem is a 3-parameter quadratic and horizons stay tiny so that
the few valid examples that compile cost milliseconds to a second.
"""

import math
import os
import subprocess
import sys
import time
import traceback

from hypothesis import HealthCheck
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import hypergrad
from launch import train
from launch.configs import digits_mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FUZZ = settings(max_examples=50, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
# Valid inputs compile once per structure and shape: fewer examples.
FUZZ_VALID = settings(FUZZ, max_examples=20)


# -- A tiny inner problem that reads every leaf of any hparams pytree ----------


def step_fn(w, h, t):
  del t
  s = sum(jnp.mean(x).astype(w.dtype) for x in jax.tree.leaves(h))
  return w - 0.1 * jnp.tanh(s) * (w - 1.0)


def loss_fn(w):
  return jnp.sum((w - 1.0) ** 2)


W0 = jnp.zeros((3,), jnp.float64)


def forward(hparams, num_steps, **kw):
  return hypergrad.forward_hypergrad(step_fn, loss_fn, W0, hparams, num_steps,
                                     **kw)


def reverse(hparams, num_steps, **kw):
  return hypergrad.reverse(**kw)(step_fn, loss_fn, W0, hparams,
                                 num_steps)[:2]


ESTIMATORS = [forward, reverse]


@pytest.fixture(autouse=True, scope='module')
def _unfiltered_tracebacks():
  """JAX hides its own frames; show them so errors from inside JAX are seen."""
  previous = jax.config.jax_traceback_filtering
  jax.config.update('jax_traceback_filtering', 'off')
  yield
  jax.config.update('jax_traceback_filtering', previous)


def raises_clearly(fn, *needles, types=(ValueError, TypeError)):
  """Runs ``fn``; it must raise one of ``types`` from hypergrad or launch code.

  Returns the exception. Any other exception propagates (failing the test with
  its own traceback); an error raised inside JAX, numpy or orbax fails here.
  """
  try:
    fn()
  except types as e:
    origin = traceback.extract_tb(e.__traceback__)[-1].filename
    assert ('/hypergrad/' in origin and '/site-packages/' not in origin
            or '/launch/' in origin), (
        f'{type(e).__name__} raised deep inside {origin}: {e}')
    for needle in needles:
      assert needle in str(e), (needle, str(e))
    return e
  raise AssertionError(f'no error; expected one naming {needles}')


# -- Strategies ----------------------------------------------------------------

HORIZONS = (1, 2, 3, 5)


@st.composite
def good_leaf(draw, num_steps, dtype=None):
  n = draw(st.integers(1, min(num_steps, 5)))  # each interval: a segment
  tail = draw(st.sampled_from([(), (2,)]))
  dtype = dtype or draw(st.sampled_from([np.float32, np.float64]))
  value = draw(st.floats(-1.0, 1.0, allow_nan=False, width=32))
  make = draw(st.sampled_from([np.full, jnp.full]))
  return make((n,) + tail, value, dtype)


def containers(children):
  keys = st.sampled_from(['lr', 'momentum', 'wd', 'a', 'b'])
  return st.one_of(
      st.lists(children, min_size=1, max_size=3),
      st.lists(children, min_size=1, max_size=3).map(tuple),
      st.dictionaries(keys, children, min_size=1, max_size=3),
  )


@st.composite
def good_tree(draw, num_steps, dtype=None):
  return draw(st.recursive(good_leaf(num_steps, dtype), containers,
                           max_leaves=3))


_F32 = np.float32
# name -> (make(num_steps, k) -> a pytree leaf breaking the schedule contract,
#          a piece of the message expected); k is a random int in [1, 50].
BAD_LEAVES = {
    # Shapes.
    'python-float': (lambda T, k: 0.5, 'scalar'),
    'numpy-scalar': (lambda T, k: np.float32(0.5), 'scalar'),
    '0d-array': (lambda T, k: jnp.asarray(0.5, jnp.float64), 'scalar'),
    'n=0': (lambda T, k: np.zeros((0,), _F32), 'n=0'),
    'n=0-trailing': (lambda T, k: jnp.zeros((0, 2), _F32), 'n=0'),
    'n>T': (lambda T, k: np.zeros((T + k,), _F32), 'more than num_steps'),
    'empty-trailing': (lambda T, k: np.zeros((1, 0), _F32), 'no values'),
    'empty-trailing-2': (lambda T, k: jnp.zeros((min(T, 3), 2, 0), _F32),
                         'no values'),
    # Dtypes.
    'int32': (lambda T, k: np.ones((1,), np.int32), 'dtype int32'),
    'int8': (lambda T, k: jnp.ones((1,), jnp.int8), 'dtype int8'),
    'uint16': (lambda T, k: np.ones((1,), np.uint16), 'dtype uint16'),
    'bool': (lambda T, k: np.ones((1,), bool), 'dtype bool'),
    'complex64': (lambda T, k: jnp.ones((1,), jnp.complex64),
                  'dtype complex64'),
    'complex128': (lambda T, k: np.ones((k,), np.complex128),
                   'dtype complex128'),
    'prng-key': (lambda T, k: jax.random.split(jax.random.key(0), 1),
                 'dtype key'),
    'python-int': (lambda T, k: k, 'dtype int'),
    'python-bool': (lambda T, k: True, 'dtype bool'),
    'python-complex': (lambda T, k: 1j, 'not an array'),
    # Not arrays at all.
    'str': (lambda T, k: '0.1', 'not an array'),
    'bytes': (lambda T, k: b'0.1', 'not an array'),
    'object': (lambda T, k: object(), 'not an array'),
    'set': (lambda T, k: {0.1}, 'not an array'),
    'ellipsis': (lambda T, k: Ellipsis, 'not an array'),
    'function': (lambda T, k: len, 'not an array'),
    'str-array': (lambda T, k: np.array(['0.1']), 'not a numeric array'),
    'object-array': (lambda T, k: np.array([object()]),
                     'not a numeric array'),
    'datetime-array': (lambda T, k: np.zeros((1,), 'datetime64[s]'),
                       'not a numeric array'),
    'struct-array': (lambda T, k: np.zeros((1,), [('a', 'f8')]),
                     'not a numeric array'),
    'shape-dtype-struct': (lambda T, k: jax.ShapeDtypeStruct((1,), _F32),
                           'not a concrete array'),
}


@st.composite
def bad_leaf(draw, num_steps, name=None):
  """A leaf that breaks the schedule contract, and what its error must say."""
  name = name or draw(st.sampled_from(sorted(BAD_LEAVES)))
  make, needle = BAD_LEAVES[name]
  return make(num_steps, draw(st.integers(1, 50))), needle


@st.composite
def tree_with_bad_leaf(draw, num_steps, name):
  """Good leaves around one bad leaf at a random place; (tree, path, needle)."""
  bad, needle = draw(bad_leaf(num_steps, name))
  marker = object()
  skeleton = draw(st.recursive(
      st.one_of(good_leaf(num_steps), st.just(marker)), containers,
      max_leaves=4))
  marked = [l for l in jax.tree.leaves(skeleton) if l is marker]
  if not marked:
    skeleton = {'bad': skeleton, 'zz': marker} if draw(st.booleans()) else [
        marker, skeleton]
  # The first marker (in flattening order) becomes the bad leaf; later ones
  # good leaves, so the bad leaf is the first the validator meets.
  seen = []

  def place(x):
    if x is marker:
      seen.append(x)
      return bad if len(seen) == 1 else np.ones((1,), np.float64)
    return x

  tree = jax.tree.map(place, skeleton)
  paths = [jax.tree_util.keystr(p) or '<root>' for p, l in
           jax.tree_util.tree_flatten_with_path(tree)[0] if l is bad]
  return tree, paths[0], needle


BAD_NUM_STEPS = st.one_of(
    st.integers(max_value=0),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.text(max_size=4),
    st.none(),
    st.sampled_from([np.float64(4.0), np.float32(4.0), jnp.int32(4),
                     np.array(4), np.array([4]), [4], (4,), 4 + 0j, '4',
                     np.bool_(True)]),
)


# -- The estimators -----------------------------------------------------------


@pytest.mark.parametrize('name', sorted(BAD_LEAVES))
@pytest.mark.parametrize('estimator', ESTIMATORS, ids=['forward', 'reverse'])
@settings(FUZZ, max_examples=6)
@given(data=st.data())
def test_malformed_hparams_rejected_naming_the_leaf(estimator, name, data):
  """Every kind of bad leaf, at random places in random nested pytrees."""
  num_steps = data.draw(st.sampled_from(HORIZONS + (10, 1000)))
  tree, path, needle = data.draw(tree_with_bad_leaf(num_steps, name))
  raises_clearly(lambda: estimator(tree, num_steps), path, needle)


@pytest.mark.parametrize('estimator', ESTIMATORS, ids=['forward', 'reverse'])
@pytest.mark.parametrize('hparams', [
    {}, [], (), None, {'lr': None}, [[], {}], {'a': ((),)}])
def test_hparams_without_leaves_rejected(estimator, hparams):
  raises_clearly(lambda: estimator(hparams, 3), 'no leaves')


@pytest.mark.parametrize('estimator', ESTIMATORS, ids=['forward', 'reverse'])
@FUZZ
@given(num_steps=BAD_NUM_STEPS)
def test_bad_num_steps_rejected(estimator, num_steps):
  raises_clearly(lambda: estimator({'lr': np.ones((1,))}, num_steps),
                 'num_steps')


@pytest.mark.parametrize('estimator', ESTIMATORS, ids=['forward', 'reverse'])
@FUZZ
@given(data=st.data())
def test_step_arithmetic_overflow_rejected(estimator, data):
  """``t * n`` is int32 in the unroll: n * T beyond 2**31 - 1 is refused."""
  n = data.draw(st.integers(1, 8))
  num_steps = data.draw(st.integers(-(-2**31 // n), 2**62))
  wrap = data.draw(st.sampled_from([int, np.int64, np.uint64]))
  raises_clearly(lambda: estimator({'lr': np.ones((n,))}, wrap(num_steps)),
                 "['lr']", 'overflows')


@pytest.mark.parametrize('kwargs, needle', [
    ({'chunk_size': 0}, 'chunk_size'),
    ({'chunk_size': -2}, 'chunk_size'),
    ({'chunk_size': 1.5}, 'chunk_size'),
    ({'chunk_size': '2'}, 'chunk_size'),
    ({'chunk_size': True}, 'chunk_size'),
    ({'progress': 10}, 'progress'),
    ({'progress': hypergrad.Progress(print, 0)}, 'progress'),
    ({'progress': hypergrad.Progress(None, 5)}, 'progress'),
])
def test_bad_forward_options_rejected(kwargs, needle):
  raises_clearly(lambda: forward({'lr': np.ones((2,))}, 4, **kwargs), needle)


@pytest.mark.parametrize('checkpoint_every', [0, -1, 2.0, '3', True, [2]])
def test_bad_checkpoint_every_rejected(checkpoint_every):
  raises_clearly(lambda: reverse({'lr': np.ones((2,))}, 4,
                                 checkpoint_every=checkpoint_every),
                 'checkpoint_every')


@pytest.mark.parametrize('wrap', [np.int32, np.int64, np.uint8])
def test_numpy_int_options_accepted(wrap):
  # Sizes read from configs or arrays arrive as numpy ints.
  h = {'lr': np.full((2,), 0.1)}
  ref = forward(h, 4)[1]['lr']
  got_fwd = forward(h, 4, chunk_size=wrap(1))[1]['lr']
  got_rev = reverse(h, 4, checkpoint_every=wrap(3))[1]['lr']
  np.testing.assert_allclose(got_fwd, ref, rtol=1e-6)
  np.testing.assert_allclose(got_rev, ref, rtol=1e-6)


@FUZZ_VALID
@given(data=st.data())
def test_valid_inputs_keep_structure_shapes_and_dtypes(data):
  num_steps = data.draw(st.sampled_from(HORIZONS))
  # One dtype per pytree: see test_forward_mixed_precision_hparams.
  dtype = data.draw(st.sampled_from([np.float32, np.float64]))
  hparams = data.draw(good_tree(num_steps, dtype))
  wrap = data.draw(st.sampled_from([int, np.int32, np.int64, np.uint8]))
  results = [fn(hparams, wrap(num_steps)) for fn in ESTIMATORS]
  for loss, grads in results:
    assert loss.shape == () and bool(jnp.isfinite(loss))
    assert jax.tree.structure(grads) == jax.tree.structure(hparams)
    for g, h in zip(jax.tree.leaves(grads), jax.tree.leaves(hparams)):
      assert g.shape == np.shape(h) and g.dtype == h.dtype
  # Both estimators differentiate the same unroll.
  for g_fwd, g_rev in zip(jax.tree.leaves(results[0][1]),
                          jax.tree.leaves(results[1][1])):
    tol = 1e-5 if g_fwd.dtype == np.float32 else 1e-10
    np.testing.assert_allclose(g_fwd, g_rev, rtol=tol, atol=tol)


def test_forward_mixed_precision_hparams():
  hparams = {'lr': np.full((2,), 0.1, np.float32),
             'momentum': np.full((1,), 0.5, np.float64)}
  _, grads = forward(hparams, 4)
  _, expected = reverse(hparams, 4)
  for g, e in zip(jax.tree.leaves(grads), jax.tree.leaves(expected)):
    assert g.dtype == e.dtype
    np.testing.assert_allclose(g, e, rtol=1e-5)


# -- Task.train -------------------------------------------------------------------


@pytest.fixture(scope='module')
def task():
  return hypergrad.experiments.make_task('digits_mlp')


@FUZZ
@given(data=st.data())
def test_task_train_rejects_malformed_hparams(task, data):
  num_steps = data.draw(st.sampled_from([5, 100]))
  bad, needle = data.draw(bad_leaf(num_steps))
  name = data.draw(st.sampled_from(['lr', 'momentum', 'weight_decay']))
  hparams = {'lr': np.full((1,), 0.1, np.float32), name: bad}
  raises_clearly(lambda: task.train(hparams, num_steps), f"['{name}']",
                 needle)


@FUZZ
@given(num_steps=BAD_NUM_STEPS)
def test_task_train_rejects_bad_num_steps(task, num_steps):
  raises_clearly(lambda: task.train({'lr': np.ones((1,), np.float32)},
                                    num_steps), 'num_steps')


@pytest.mark.parametrize('hparams, needle', [
    ({'dropout': np.full((1,), 0.1, np.float32)}, 'dropout'),
    ([np.full((1,), 0.1, np.float32)], 'hparams'),
    ({'lr': np.full((1, 5), 0.1, np.float32)}, "'lr'"),
], ids=['unknown-name', 'not-a-mapping', 'trailing-shape'])
def test_task_train_rejects_hparams_the_task_cannot_use(task, hparams,
                                                         needle):
  raises_clearly(lambda: task.train(hparams, 5), needle)


# -- The launch script's config ---------------------------------------------------

KINDS = ('lr', 'momentum', 'weight_decay')
# Non-integers, for fields that must be integers.
NOT_INT = st.one_of(st.floats(allow_nan=True), st.booleans(), st.none(),
                    st.text(max_size=3), st.just([1]), st.just(1 + 1j))
NOT_REAL = st.one_of(st.booleans(), st.none(), st.text(max_size=3),
                     st.just([0.1]), st.just(1j), st.just({'x': 0.1}))
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])


def _config(**changes):
  """digits_mlp's config as a non-type-safe ConfigDict (any value goes in)."""
  c = ml_collections.ConfigDict(digits_mlp.get_config().to_dict(),
                                type_safe=False)
  for path, value in changes.items():
    node = c
    *parents, leaf = path.split('.')
    for p in parents:
      node = node[p]
    node[leaf] = value
  return c


@st.composite
def bad_config(draw):
  """(config, needle): one invalid field in an otherwise valid config."""
  kind = draw(st.sampled_from(KINDS))
  int_fields = ('retrain_steps', 'batch_size', 'chunk_size',
                'checkpoint_every', 'progress_every')
  choice = draw(st.sampled_from([
      'horizon', 'outer_steps', 'intervals', 'interval_overflow',
      'hyperparams', 'estimator', 'val_fraction', 'tol', 'init',
      'init_range', 'step_sizes', 'int_field', 'seed', 'task', 'mapping']))
  if choice in ('horizon', 'outer_steps'):
    value = draw(st.one_of(st.integers(max_value=0), NOT_INT))
    return _config(**{choice: value}), f'{choice} must be'
  if choice == 'intervals':
    value = draw(st.one_of(st.integers(max_value=0), NOT_INT,
                           st.integers(501, 10**12)))
    return _config(**{f'intervals.{kind}': value}), f'intervals for {kind}'
  if choice == 'interval_overflow':  # the other kinds get 1 interval
    n = draw(st.integers(2, 100))
    horizon = draw(st.integers(-(-2**31 // n), 2**31 - 1))
    intervals = {f'intervals.{k}': n if k == kind else 1 for k in KINDS}
    return _config(horizon=horizon, **intervals), f'intervals for {kind}'
  if choice == 'hyperparams':
    value = draw(st.one_of(
        st.sampled_from(['', ',', ' , ', 'lr,lr', 'lr,foo', 'LR', 'lr;wd',
                         'lr momentum', 'momentum,lr,momentum']),
        st.text(alphabet='abcxyz,_ ', max_size=8).filter(
            lambda s: s.strip(', ') and not set(
                k.strip() for k in s.split(',') if k.strip()) <= set(KINDS))))
    return _config(hyperparams=value), 'hyperparam'
  if choice == 'estimator':
    value = draw(st.one_of(st.text(max_size=8).filter(
        lambda s: s not in train.ESTIMATORS), st.none(), st.integers()))
    return _config(estimator=value), 'estimator'
  if choice in ('val_fraction', 'tol'):
    value = draw(st.one_of(
        NOT_REAL, NON_FINITE, st.floats(max_value=0.0),
        st.floats(min_value=1.0, allow_infinity=True)))
    return _config(**{choice: value}), choice
  if choice == 'init':
    value = draw(st.one_of(NOT_REAL, NON_FINITE))
    return _config(**{f'init.{kind}': value}), f'initial value for {kind}'
  if choice == 'init_range':
    if kind == 'momentum':
      value = draw(st.one_of(st.floats(max_value=-1e-9),
                             st.floats(min_value=1.0, allow_infinity=False)))
    else:
      value = draw(st.floats(max_value=-1e-9, allow_infinity=False))
    return _config(**{f'init.{kind}': value}), 'initial'
  if choice == 'step_sizes':
    value = draw(st.one_of(NOT_REAL, NON_FINITE, st.floats(max_value=0.0)))
    return _config(**{f'step_sizes.{kind}': value}), f'step size for {kind}'
  if choice == 'int_field':
    name = draw(st.sampled_from(int_fields))
    value = draw(st.one_of(st.integers(max_value=-1), NOT_INT))
    return _config(**{name: value}), name
  if choice == 'seed':
    value = draw(st.one_of(st.integers(max_value=-1),
                           st.integers(min_value=2**53), NOT_INT))
    return _config(seed=value), 'seed'
  if choice == 'task':
    value = draw(st.one_of(st.text(max_size=10).filter(
        lambda s: s not in hypergrad.experiments.TASKS), st.none(), st.integers()))
    return _config(task=value), 'task'
  name = draw(st.sampled_from(['intervals', 'init', 'step_sizes']))
  value = draw(st.one_of(st.none(), st.integers(), st.text(max_size=5),
                         st.just([7])))
  return _config(**{name: value}), name


@FUZZ
@given(case=bad_config())
def test_bad_config_values_rejected_naming_the_field(case):
  config, needle = case
  e = raises_clearly(lambda: train.validate_config(config), needle,
                     types=(train.ConfigError,))
  assert isinstance(e, ValueError)


@st.composite
def good_config(draw):
  horizon = draw(st.integers(1, 10**6))
  kinds = draw(st.lists(st.sampled_from(KINDS), min_size=1, max_size=3,
                        unique=True))
  changes = {
      'horizon': horizon, 'outer_steps': draw(st.integers(1, 1000)),
      'hyperparams': draw(st.sampled_from([',', ', ', ' ,'])).join(kinds),
      'estimator': draw(st.sampled_from(train.ESTIMATORS)),
      'val_fraction': draw(st.floats(1e-6, 1 - 1e-6)),
      'tol': draw(st.floats(1e-6, 1 - 1e-6)),
      'seed': draw(st.integers(0, 2**53 - 1)),
      'batch_size': draw(st.integers(0, 4096)),
      'chunk_size': draw(st.integers(0, 100)),
      'init.lr': draw(st.floats(0.0, 10.0)),
      'init.momentum': draw(st.floats(0.0, 0.999)),
      'init.weight_decay': draw(st.floats(0.0, 1.0)),
  }
  for k in KINDS:
    changes[f'intervals.{k}'] = draw(st.integers(1, min(horizon, 50)))
    changes[f'step_sizes.{k}'] = draw(st.floats(1e-8, 10.0))
  return _config(**changes), kinds


@FUZZ
@given(case=good_config())
def test_valid_configs_accepted(case):
  config, kinds = case
  assert train.validate_config(config) == kinds


# -- The launch script end to end ---------------------------------------------------

CONFIG_FILE = os.path.join(ROOT, 'launch', 'configs', 'digits_mlp.py')


@pytest.mark.parametrize('flags, message', [
    (['--config.horizon=abc'], "--config.horizon=abc"),
    (['--config.intervals.lr=0'], 'intervals for lr must be a positive'),
    (['--config.outer_steps=-1'], 'outer_steps must be a positive integer'),
    (['--config.seed=-3'], 'seed must be an integer in [0, 2**53)'),
    (['--config.tol=2'], 'tol must be in (0, 1)'),
    (['--config.init.lr=nan'], 'initial value for lr must be a finite number'),
    (['--config.estimator=backward'], "unknown estimator 'backward'"),
    (['--config.hyperparams=lr,temperature'],
     "unknown hyperparameter 'temperature'"),
    (['--config.horizon=10', '--config.intervals.lr=20'],
     'exceed the horizon'),
    (['--config.mesh=data=3'], 'data=3'),
    (['--config', os.path.join(ROOT, 'no_such_config.py')],
     'No such file or directory'),
    (['--resume'], 'holds no checkpointed run'),
], ids=['horizon-abc', 'intervals-zero', 'outer-steps', 'seed', 'tol',
        'init-nan', 'estimator', 'hyperparams', 'intervals-horizon', 'mesh',
        'config-file', 'resume-nothing'])
def test_bad_command_lines_exit_with_a_message(flags, message, tmp_path):
  workdir = tmp_path / 'run'
  start = time.monotonic()
  config = [] if '--config' in flags else ['--config', CONFIG_FILE]
  proc = subprocess.run(
      [sys.executable, '-m', 'launch.fds', *config,
       '--workdir', str(workdir)] + flags,
      cwd=ROOT, capture_output=True, text=True, timeout=300,
      env=dict(os.environ, JAX_PLATFORMS='cpu'))
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-2000:]
  assert 'Traceback' not in proc.stderr, proc.stderr[-3000:]
  assert time.monotonic() - start < 120  # no data loaded, nothing compiled
  assert not workdir.exists() or not os.listdir(workdir)
