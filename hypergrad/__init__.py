"""hypergrad: gradient-based hyperparameter optimisation over long horizons.

Hypergradients of a validation loss with respect to hyperparameter schedules
(shared over contiguous intervals of the run), differentiated through whole
training runs of thousands of pure inner steps.
"""

from hypergrad._src.forward import forward_hypergrad
from hypergrad._src.inner import OptaxState
from hypergrad._src.inner import SGD_HPARAMS
from hypergrad._src.inner import SGDState
from hypergrad._src.inner import optax_init
from hypergrad._src.inner import optax_step
from hypergrad._src.inner import sgd_init
from hypergrad._src.inner import sgd_momentum_step
from hypergrad._src.schedule import constant
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
from hypergrad._src.unroll import unroll

__version__ = '0.1.0'

__all__ = (
    'OptaxState',
    'SGDState',
    'SGD_HPARAMS',
    'constant',
    'expand',
    'forward_hypergrad',
    'hparams_at',
    'interval_index',
    'interval_starts',
    'inverse_softplus',
    'logit',
    'optax_init',
    'optax_step',
    'reparametrize',
    'resample',
    'sgd_init',
    'sgd_momentum_step',
    'sigmoid',
    'softplus',
    'unroll',
)
