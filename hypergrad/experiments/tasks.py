"""Tasks: a dataset, a model, an inner optimiser and a validation loss.

A :class:`Task` produces the ``step_fn``, ``loss_fn`` and ``init_state`` of the
core contract for any validation split and inner initialisation, plus
``evaluate(state, split)``. The data pool sits on the device once; a split is
a pair of index arrays and the batch order a PRNG key in the state, so
re-drawing either between outer steps changes arguments, not the compiled
program.

The inner optimiser is SGD with momentum and coupled weight decay in the FDS
form; hyperparameters are read from ``hparams_t`` by name (``lr``,
``momentum``, ``weight_decay``), with the task's plain defaults for names not
being learned.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from hypergrad._src import inner
from hypergrad._src import losses
from hypergrad._src import registry
from hypergrad._src import schedule
from hypergrad._src import unroll as unroll_lib
from hypergrad.experiments import data as data_lib
from hypergrad.experiments import models as models_lib

PyTree = Any


@dataclasses.dataclass(frozen=True)
class TaskSpec:
  """What a named task is made of.

  Attributes:
    dataset: a :data:`hypergrad.data.DATASET_NAMES` entry.
    model: a model name for :func:`make_model`.
    model_kwargs: extra model attributes, as a tuple of (name, value) pairs.
    batch_size: inner minibatch size.
    augment: random crop and flip inside the step (CIFAR-10).
    default_hparams: the plain schedule a practitioner would try first (one
      interval each): the baseline the learned schedule is compared with.
    horizon: default inner steps per hypergradient.
    val_fraction: share of the training set held out for validation.
    val_objective: the validation loss the hypergradients descend, a
      :data:`VAL_OBJECTIVES` name: ``cross_entropy`` or
      ``calibrated_cross_entropy`` (after the best temperature,
      :func:`hypergrad.calibrated_cross_entropy`: confidence a scalar could
      fix does not count against a more accurate network).
  """
  dataset: str
  model: str
  model_kwargs: tuple = ()
  batch_size: int = 128
  augment: bool = False
  default_hparams: tuple = tuple(registry.SGD.defaults.items())
  horizon: int = 1000
  val_fraction: float = 0.05
  val_objective: str = 'cross_entropy'


TASKS = {
    'mnist1d_mlp': TaskSpec('mnist1d', 'mlp',
                            (('widths', (128, 128)), ('activation', 'relu')),
                            batch_size=128, horizon=1000),
    # 5x the signals: a 5% validation split of 950 signals instead of 190.
    'mnist1d_large_mlp': TaskSpec('mnist1d_large', 'mlp',
                                  (('widths', (128, 128)),
                                   ('activation', 'relu')),
                                  batch_size=128, horizon=1000),
    # Real images on a CPU: flattened 28x28 Fashion-MNIST through an MLP.
    'fashion_mnist_mlp': TaskSpec('fashion_mnist', 'mlp',
                                  (('widths', (256, 128)),
                                   ('activation', 'relu')),
                                  batch_size=128, horizon=1000),
    'digits_mlp': TaskSpec('digits', 'mlp',
                           (('widths', (128,)), ('activation', 'tanh')),
                           batch_size=64, horizon=500, val_fraction=0.1),
    'mnist1d_lenet': TaskSpec('mnist1d', 'lenet', batch_size=128,
                              horizon=1500),
    'fashion_mnist_lenet': TaskSpec('fashion_mnist', 'lenet', batch_size=128,
                                    horizon=2000),
    'mnist_lenet': TaskSpec('mnist', 'lenet', batch_size=128, horizon=2000),
    'svhn_lenet': TaskSpec('svhn_cropped', 'lenet', batch_size=128,
                           horizon=4000),
    'cifar10_wrn16_1': TaskSpec('cifar10', 'wrn-16-1', batch_size=256,
                                augment=True, horizon=10000),
}


class TaskState(NamedTuple):
  """The inner state of a task's unroll.

  Attributes:
    opt: :class:`SGDState` (params, velocity, BatchNorm statistics).
    key: raw ``uint32[2]`` PRNG key fixing batch order and augmentation.
  """
  opt: inner.SGDState
  key: jax.Array


class Split(NamedTuple):
  """Index arrays into the on-device training pool."""
  train: jax.Array
  val: jax.Array


def _xent(logits, labels):
  return optax.softmax_cross_entropy_with_integer_labels(
      logits.astype(jnp.float32) if logits.dtype == jnp.float16 else logits,
      labels).mean()


# The validation objectives a task can hand to the estimators. The test
# loss that :meth:`Task.evaluate` reports stays the plain cross-entropy.
VAL_OBJECTIVES = {
    'cross_entropy': _xent,
    'calibrated_cross_entropy': losses.calibrated_cross_entropy,
}


def shard_batch(x, mesh):
  """Splits a batch's leading axis over the mesh's ``data`` axis.

  The only sharding decision of a data-parallel unroll: parameters, velocity
  and tangents stay replicated, and XLA's partitioner inserts the gradient
  all-reduce. No-op without a mesh.
  """
  if mesh is None:
    return x
  spec = jax.sharding.PartitionSpec('data', *([None] * (x.ndim - 1)))
  return jax.lax.with_sharding_constraint(
      x, jax.sharding.NamedSharding(mesh, spec))


def _task_step(static, x_pool, y_pool, train_idx, state: TaskState, hparams_t,
               t):
  model, batch_size, augment, fixed, mesh = static
  key = jax.random.fold_in(state.key, 1)

  def train_loss(params, model_state, t):
    idx = train_idx[data_lib.batch_indices(key, t, batch_size,
                                           train_idx.shape[0])]
    xb, yb = shard_batch(x_pool[idx], mesh), shard_batch(y_pool[idx], mesh)
    if augment:
      xb = data_lib.augment(jax.random.fold_in(state.key, t), xb)
    logits, model_state = models_lib.apply_model(model, params, model_state,
                                                 xb, train=True)
    return _xent(logits, yb), model_state

  step = inner.sgd_momentum_step(train_loss, with_model_state=True, **fixed)
  return TaskState(step(state.opt, hparams_t, t), state.key)


def _task_val_loss(static, x_pool, y_pool, val_idx, state: TaskState):
  model, mesh, objective = static
  x, y = x_pool[val_idx], y_pool[val_idx]
  if mesh is not None and x.shape[0] % mesh.shape['data'] == 0:
    x, y = shard_batch(x, mesh), shard_batch(y, mesh)
  logits, _ = models_lib.apply_model(model, state.opt.params,
                                     state.opt.model_state, x, train=False)
  return VAL_OBJECTIVES[objective](logits, y)


class Problem(NamedTuple):
  """One instance of a task: the core contract's three pieces."""
  step_fn: Callable
  loss_fn: Callable
  init_state: TaskState


class Task:
  """A dataset, a flax model and the FDS inner optimiser, ready to unroll.

  Example:
    >>> import hypergrad, hypergrad.experiments
    >>> task = hypergrad.experiments.make_task('digits_mlp')
    >>> step_fn, loss_fn, state = task.problem(split_seed=0, init_seed=0)
    >>> loss, g, info = hypergrad.forward()(step_fn, loss_fn, state,
    ...                                     task.default_hparams(), 100)
    >>> sorted(task.evaluate(info.final_state, 'test'))
    ['accuracy', 'loss']
  """

  def __init__(self, name: str, spec: TaskSpec, dataset: data_lib.Dataset, *,
               dtype=jnp.float32, fixed_hparams: Mapping[str, float] | None
               = None, eval_batch_size: int = 1000,
               mesh: jax.sharding.Mesh | None = None):
    self.name = name
    self.spec = spec
    self.dataset = dataset
    self.dtype = jnp.dtype(dtype)
    # A uniform predictor's cross-entropy: a trained network at or above it
    # has collapsed to chance level.
    self.chance_loss = math.log(dataset.num_classes)
    self.model = models_lib.make_model(spec.model, dataset.num_classes,
                                       **dict(spec.model_kwargs))
    x_pool, y_pool = data_lib.pooled_train(dataset)
    data_lib.check_fits(dataset)
    self.mesh = check_mesh(mesh, spec.batch_size)
    # Data and state are replicated over the mesh; only batches are split.
    put = self._replicate
    self.x_pool = put(jnp.asarray(x_pool, self.dtype))
    self.y_pool = put(jnp.asarray(y_pool))
    self.x_test = put(jnp.asarray(dataset.x_test, self.dtype))
    self.y_test = put(jnp.asarray(dataset.y_test))
    self.eval_batch_size = eval_batch_size
    # Hyperparameters not learned take the task's plain values.
    fixed = dict(spec.default_hparams)
    fixed.update(fixed_hparams or {})
    self.fixed_hparams = fixed
    if spec.batch_size > len(dataset.train_index):
      raise ValueError(f'batch_size={spec.batch_size} exceeds the '
                       f'{len(dataset.train_index)} training examples.')
    # Stable function identities: new splits and inits re-use the compiled
    # unroll (the estimators key their compilation cache on them).
    self._step_impl = functools.partial(
        _task_step, (self.model, spec.batch_size, spec.augment,
                     {k: v for k, v in fixed.items()}, self.mesh))
    self._val_impl = functools.partial(
        _task_val_loss, (self.model, self.mesh, spec.val_objective))
    self._eval = jax.jit(functools.partial(_evaluate, self.model,
                                           eval_batch_size))

  # -- the core contract -----------------------------------------------------

  def split(self, seed: int) -> Split:
    """A validation split re-drawn from the pool (FDS re-draws it each outer step)."""
    n_pool = self.x_pool.shape[0]
    n_val = len(self.dataset.val_index)
    tr, va = data_lib.split_indices(seed, n_pool, n_val / n_pool)
    return Split(jnp.asarray(tr, jnp.int32), jnp.asarray(va, jnp.int32))

  def default_split(self) -> Split:
    """The split the dataset was loaded with."""
    return Split(jnp.asarray(self.dataset.train_index, jnp.int32),
                 jnp.asarray(self.dataset.val_index, jnp.int32))

  def init_state(self, seed: int) -> TaskState:
    """Fresh parameters, zero velocity, fresh BatchNorm statistics and batch key."""
    k_init, k_data = jax.random.split(jax.random.PRNGKey(seed))
    params, model_state = models_lib.init_model(
        self.model, k_init, self.dataset.input_shape, dtype=self.dtype)
    return self._replicate(TaskState(inner.sgd_init(params, model_state),
                                     k_data))

  def _replicate(self, tree):
    if self.mesh is None:
      return tree
    return jax.device_put(tree, jax.sharding.NamedSharding(
        self.mesh, jax.sharding.PartitionSpec()))

  def step_fn(self, split: Split):
    return jax.tree_util.Partial(self._step_impl, self.x_pool, self.y_pool,
                                 split.train)

  def loss_fn(self, split: Split):
    return jax.tree_util.Partial(self._val_impl, self.x_pool, self.y_pool,
                                 split.val)

  def problem(self, split_seed: int | None = None, init_seed: int = 0
              ) -> Problem:
    """``(step_fn, loss_fn, init_state)`` for a split and an initialisation.

    Args:
      split_seed: seed of the validation split; None keeps the loaded split.
      init_seed: seed of the parameters and batch order.
    """
    split = self._replicate(self.default_split() if split_seed is None
                            else self.split(split_seed))
    return Problem(self.step_fn(split), self.loss_fn(split),
                   self.init_state(init_seed))

  # -- training and evaluation ----------------------------------------------

  def default_hparams(self, intervals: Mapping[str, int] | None = None):
    """The task's plain schedule, as constant schedules of ``intervals`` pieces."""
    intervals = intervals or {}
    return {k: schedule.constant(v, intervals.get(k, 1), self.dtype)
            for k, v in self.spec.default_hparams}

  def train(self, hparams, num_steps: int, *, init_seed: int = 0,
            split: Split | None = None) -> TaskState:
    """Trains from scratch with a schedule (no hypergradient)."""
    num_steps = schedule.validate_num_steps(num_steps)
    hparams = self.check_hparams(schedule.validate_hparams(hparams,
                                                           num_steps))
    split = self._replicate(split or self.default_split())
    return _train(num_steps, self.step_fn(split), self.init_state(init_seed),
                  hparams)

  def check_hparams(self, hparams):
    """Checks a schedule against the task's optimiser; casts it to the task dtype.

    Raises:
      TypeError: ``hparams`` is not a mapping.
      ValueError: a name the SGD step does not know, or a leaf with trailing
        axes (the task's values are one scalar per interval).
    """
    if not isinstance(hparams, Mapping):
      raise TypeError(f'hparams for task {self.name!r} must be a mapping of '
                      f'{list(inner.SGD_HPARAMS)} to schedules, got '
                      f'{type(hparams).__name__}.')
    for name, leaf in hparams.items():
      if name not in inner.SGD_HPARAMS:
        raise ValueError(f'hparams[{name!r}]: task {self.name!r} learns only '
                         f'{list(inner.SGD_HPARAMS)}.')
      if schedule.is_family(leaf):
        continue
      if not hasattr(leaf, 'shape') or len(leaf.shape) != 1:
        raise ValueError(f"hparams[{name!r}] must have shape (n,), one value "
                         f'per interval, or be a schedule family; got '
                         f'{getattr(leaf, "shape", leaf)}.')
    return {k: jax.tree.map(lambda x: jnp.asarray(x).astype(self.dtype), v)
            for k, v in hparams.items()}

  def evaluate(self, state: TaskState, split: str = 'test',
               indices: Split | None = None) -> dict:
    """Loss and accuracy with BatchNorm running statistics.

    Args:
      state: a :class:`TaskState`.
      split: ``'train'``, ``'val'`` or ``'test'``.
      indices: the train/validation split to use for ``'train'``/``'val'``;
        default: the loaded one.

    Returns:
      ``{'loss': float, 'accuracy': float}``.
    """
    if split == 'test':
      x, y = self.x_test, self.y_test
    elif split in ('train', 'val'):
      idx = (indices or self.default_split())[0 if split == 'train' else 1]
      x, y = self.x_pool[idx], self.y_pool[idx]
    else:
      raise ValueError(f"split must be 'train', 'val' or 'test', got "
                       f'{split!r}.')
    loss, acc = self._eval(state.opt.params, state.opt.model_state, x, y)
    return {'loss': float(loss), 'accuracy': float(acc)}


@functools.partial(jax.jit, static_argnums=0)
def _train(num_steps, step_fn, init_state, hparams):
  return unroll_lib.unroll(step_fn, init_state, hparams, num_steps)


def _evaluate(model, batch_size, params, model_state, x, y):
  n = x.shape[0]
  num_batches = -(-n // batch_size)
  pad = num_batches * batch_size - n
  xp = jnp.concatenate([x, jnp.zeros((pad,) + x.shape[1:], x.dtype)])
  yp = jnp.concatenate([y, jnp.zeros((pad,), y.dtype)])
  mask = jnp.arange(num_batches * batch_size) < n

  def one(args):
    xb, yb, mb = args
    logits, _ = models_lib.apply_model(model, params, model_state, xb,
                                       train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, yb)
    correct = jnp.argmax(logits, -1).astype(yb.dtype) == yb
    return (jnp.sum(jnp.where(mb, losses, 0)),
            jnp.sum(jnp.where(mb, correct, False)))

  shape = lambda a: a.reshape((num_batches, batch_size) + a.shape[1:])
  losses, correct = jax.lax.map(one, (shape(xp), shape(yp), shape(mask)))
  return jnp.sum(losses) / n, jnp.sum(correct) / n


def check_mesh(mesh, batch_size):
  if mesh is None:
    return None
  if 'data' not in mesh.axis_names:
    raise ValueError(f"the mesh needs a 'data' axis to split batches over; "
                     f'it has {mesh.axis_names}.')
  n = mesh.shape['data']
  if batch_size % n:
    raise ValueError(f'batch_size={batch_size} is not divisible by the '
                     f"{n} devices of the mesh's data axis.")
  return mesh


MESH_AXES = ('data', 'tangent', 'member')


def make_mesh(spec: str) -> jax.sharding.Mesh | None:
  """A device mesh from ``'data=4'`` or ``'data=2,tangent=2'`` (``''``: None).

  Axes: ``data`` splits every minibatch (data parallel), ``tangent`` splits
  forward mode's tangents (``hypergrad.forward(mesh=...)``) and ``member``
  a population's inner runs (``hypergrad.population(mesh=...)``).
  Each may be given once, and at most one may span more than one device:
  the task's arrays are placed on the ``data`` axis, and inside a tangent or
  member split (``jax.shard_map``) arrays placed on the whole mesh do not
  match the split's mesh. ``data`` is always in the mesh (size 1 when not
  given); the mesh uses the first ``data * tangent * member`` devices. Give
  the task only a mesh that splits data (:func:`data_mesh`).

  Raises:
    ValueError: a malformed spec, an unknown or repeated axis, two axes of
      more than one device, or more devices than JAX sees.
  """
  if not spec:
    return None
  axes = {}
  for item in spec.split(','):
    name, _, size = (x.strip() for x in item.partition('='))
    if (name not in MESH_AXES or name in axes or not size.isdigit()
        or int(size) < 1):
      raise ValueError(
          f"mesh spec must look like 'data=N' or 'data=N,tangent=M' (axes "
          f"{', '.join(MESH_AXES)}, each once, sizes >= 1), got {spec!r}.")
    axes[name] = int(size)
  axes.setdefault('data', 1)
  wide = [f'{a}={n}' for a, n in axes.items() if n > 1]
  if len(wide) > 1:
    raise ValueError(f'mesh {spec!r} splits over {" and ".join(wide)}; '
                     'give one axis more than one device (data, tangent or '
                     'member), not several.')
  names = tuple(a for a in MESH_AXES if a in axes)
  shape = tuple(axes[a] for a in names)
  n = int(np.prod(shape))
  if n > jax.device_count():
    raise ValueError(f'mesh {spec!r} needs {n} devices; JAX sees '
                     f'{jax.device_count()} ({jax.devices()[0].platform}).')
  return jax.sharding.Mesh(np.array(jax.devices()[:n]).reshape(shape), names)


def data_mesh(mesh: jax.sharding.Mesh | None) -> jax.sharding.Mesh | None:
  """``mesh`` when it splits minibatches (``data`` > 1), else None.

  A tangent or member mesh leaves the task on one device's worth of
  arrays, which every device of the split then reads as a closure.
  """
  return mesh if mesh_size(mesh, 'data') > 1 else None


def mesh_size(mesh: jax.sharding.Mesh | None, axis: str) -> int:
  """Devices along ``axis`` of ``mesh`` (1 without a mesh or that axis)."""
  if mesh is None or axis not in mesh.axis_names:
    return 1
  return int(mesh.shape[axis])


def make_task(name: str, *, data_dir: str | None = None, seed: int = 0,
              dtype=jnp.float32, val_fraction: float | None = None,
              mesh: jax.sharding.Mesh | None = None, **overrides) -> Task:
  """Builds a named task.

  Args:
    name: one of :data:`TASKS` (``mnist1d_mlp``, ``digits_mlp``,
      ``fashion_mnist_lenet``, ``mnist_lenet``, ``svhn_lenet``,
      ``cifar10_wrn16_1``, ...).
    data_dir: where prepared datasets live (tfds ``data_dir`` or an IDX
      folder); embedded datasets ignore it.
    seed: seed of the loaded validation split.
    dtype: float dtype of data and parameters.
    val_fraction: override of the task's validation share.
    mesh: a ``jax.sharding.Mesh`` with a ``data`` axis: minibatches are split
      over it (data parallel), everything else is replicated. None: one
      device.
    **overrides: other :class:`TaskSpec` fields, e.g. ``batch_size=32``.

  Raises:
    ValueError: unknown task name or bad override (before loading data).
    DatasetNotFoundError: a dataset that needs preparing is absent.
  """
  if name not in TASKS:
    raise ValueError(f'unknown task {name!r}; known tasks: '
                     f'{", ".join(sorted(TASKS))}.')
  spec = TASKS[name]
  if val_fraction is not None:
    overrides['val_fraction'] = val_fraction
  try:
    spec = dataclasses.replace(spec, **overrides)
  except TypeError as e:
    raise ValueError(f'bad task override for {name!r}: {e}') from None
  if spec.batch_size < 1:
    raise ValueError(f'batch_size must be >= 1, got {spec.batch_size}.')
  if spec.val_objective not in VAL_OBJECTIVES:
    raise ValueError(f'unknown val_objective {spec.val_objective!r}; known: '
                     f'{", ".join(VAL_OBJECTIVES)}.')
  check_mesh(mesh, spec.batch_size)
  dataset = data_lib.load_dataset(spec.dataset, data_dir=data_dir,
                                  val_fraction=spec.val_fraction, seed=seed)
  return Task(name, spec, dataset, dtype=dtype, mesh=mesh)
