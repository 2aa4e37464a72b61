"""hypergrad: gradient-based hyperparameter optimisation over long horizons.

Hypergradients of a validation loss with respect to hyperparameter schedules
(shared over contiguous intervals of the run), differentiated through whole
training runs of thousands of pure inner steps.
"""

from hypergrad._src.blackbox import BlackBoxResult
from hypergrad._src.blackbox import blackbox_search
from hypergrad._src.checkpoint import CheckpointError
from hypergrad._src.checkpoint import OuterCheckpointer
from hypergrad._src.finite_difference import finite_difference
from hypergrad._src.forward import forward_hypergrad
from hypergrad._src.hd import HDState
from hypergrad._src.hd import hypergradient_descent
from hypergrad._src.inner import OptaxState
from hypergrad._src.inner import SGD_HPARAMS
from hypergrad._src.inner import SGDState
from hypergrad._src.inner import optax_init
from hypergrad._src.inner import optax_step
from hypergrad._src.inner import sgd_init
from hypergrad._src.inner import sgd_momentum_step
from hypergrad._src.online import SGD_BOUNDS
from hypergrad._src.online import OnlineMethod
from hypergrad._src.online import run_online
from hypergrad._src.outer import SignDescent
from hypergrad._src.outer import SignDescentState
from hypergrad._src.outer import converged
from hypergrad._src.outer import sign_descent
from hypergrad._src.reverse import reverse_hypergrad
from hypergrad._src.rtho import RTHOState
from hypergrad._src.rtho import rtho
from hypergrad._src.schedule import constant
from hypergrad._src.search import DivergenceError
from hypergrad._src.search import OuterState
from hypergrad._src.search import init as outer_init
from hypergrad._src.search import run as fds_search
from hypergrad._src.search import step as outer_step
from hypergrad._src.tasks import TASKS
from hypergrad._src.tasks import Task
from hypergrad._src.tasks import TaskState
from hypergrad._src.tasks import make_task
from hypergrad._src.schedule import expand
from hypergrad._src.schedule import hparams_at
from hypergrad._src.schedule import interval_index
from hypergrad._src.schedule import interval_starts
from hypergrad._src.schedule import resample
from hypergrad._src.transforms import inverse_softplus
from hypergrad._src.transforms import logit
from hypergrad._src.transforms import reparametrize
from hypergrad._src.transforms import sigmoid
from hypergrad._src.transforms import softplus
from hypergrad._src.truncated import TruncatedState
from hypergrad._src.truncated import truncated_greedy
from hypergrad._src.unroll import Progress
from hypergrad._src.unroll import UnrollInfo
from hypergrad._src.unroll import unroll

__version__ = '0.1.0'

__all__ = (
    'BlackBoxResult',
    'blackbox_search',
    'finite_difference',
    'CheckpointError',
    'DivergenceError',
    'OuterCheckpointer',
    'OuterState',
    'SignDescent',
    'SignDescentState',
    'TASKS',
    'Task',
    'TaskState',
    'converged',
    'fds_search',
    'make_task',
    'outer_init',
    'outer_step',
    'sign_descent',
    'HDState',
    'OnlineMethod',
    'OptaxState',
    'Progress',
    'RTHOState',
    'SGDState',
    'SGD_BOUNDS',
    'SGD_HPARAMS',
    'TruncatedState',
    'UnrollInfo',
    'constant',
    'expand',
    'forward_hypergrad',
    'hparams_at',
    'hypergradient_descent',
    'interval_index',
    'interval_starts',
    'inverse_softplus',
    'logit',
    'optax_init',
    'optax_step',
    'reparametrize',
    'resample',
    'reverse_hypergrad',
    'rtho',
    'run_online',
    'sgd_init',
    'sgd_momentum_step',
    'sigmoid',
    'softplus',
    'truncated_greedy',
    'unroll',
)
