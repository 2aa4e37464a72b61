"""The experiment kit: datasets, flax models, tasks, black-box baselines, outputs.

Everything here is optional: the core (``import hypergrad``) never imports
it. It needs the ``experiments`` extra (``pip install 'jax-hypergrad[experiments]'``);
the black-box baselines need ``baselines`` (optuna), and checkpoints and
plots need ``launch`` (orbax-checkpoint, matplotlib). A missing extra raises an
ImportError naming the exact ``pip install`` line, when the part that needs it
is first used.

Modules:

* :mod:`hypergrad.experiments.data`: datasets held whole on device (MNIST-1D,
  digits, Fashion-MNIST IDX, tensorflow-datasets without TensorFlow).
* :mod:`hypergrad.experiments.models`: MLP, LeNet and WRN-16-k in flax, built
  from :mod:`hypergrad.experiments.layers` (where the CPU convolution as
  patches and a matmul is chosen, once per model call).
* :mod:`hypergrad.experiments.tasks`: a dataset, a model and the FDS inner
  optimiser as the core contract's ``step_fn`` / ``loss_fn`` / ``init_state``.
* :mod:`hypergrad.experiments.fds`: the FDS outer ``hypergrad_fn`` (validation
  split re-drawn and a fresh initialisation per outer step) shared by the
  launch script and the benchmarks.
* :mod:`hypergrad.experiments.blackbox`: random search, TPE and Hyperband
  through optuna on an inner-step budget.
* :mod:`hypergrad.experiments.checkpoint`, :mod:`hypergrad.experiments.plotting`:
  outer-loop checkpoints (orbax) and plots (matplotlib).
* :mod:`hypergrad.experiments.cache`: the persistent compilation cache the
  launch script and the benchmarks turn on, so a rerun skips compiling.
"""

from hypergrad._src.extras import require

require('experiments', 'flax', 'sklearn', 'mnist1d')

from hypergrad.experiments.tasks import TASKS  # noqa: E402
from hypergrad.experiments.tasks import Task  # noqa: E402
from hypergrad.experiments.tasks import TaskSpec  # noqa: E402
from hypergrad.experiments.tasks import TaskState  # noqa: E402
from hypergrad.experiments.tasks import make_task  # noqa: E402

__all__ = ('TASKS', 'Task', 'TaskSpec', 'TaskState', 'make_task')
