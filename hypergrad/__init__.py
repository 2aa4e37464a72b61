"""hypergrad: gradient-based hyperparameter optimisation over long horizons.

Hypergradients of a validation loss with respect to hyperparameter schedules
(shared over contiguous intervals of the run), differentiated through whole
training runs of thousands of pure inner steps.

The core imports jax, optax, chex and numpy only. The experiment kit
(datasets, flax models, tasks, black-box baselines, checkpoints, plots) is
:mod:`hypergrad.experiments`, an optional extra that the core never imports.
"""

from hypergrad._src.aggregate import AGGREGATES
from hypergrad._src.aggregate import PopulationAggregate
from hypergrad._src.aggregate import aggregate_hypergrads
from hypergrad._src.auto import Auto
from hypergrad._src.auto import AutoChoice
from hypergrad._src.auto import ProbeTimes
from hypergrad._src.auto import auto
from hypergrad._src.chain import pytree_chain
from hypergrad._src.estimator import Estimator
from hypergrad._src.estimator import HypergradResult
from hypergrad._src.family import WarmupDecay
from hypergrad._src.family import warmup_decay
from hypergrad._src.finite_difference import HypergradCheck
from hypergrad._src.finite_difference import check_hypergrad
from hypergrad._src.finite_difference import finite_difference
from hypergrad._src.forward import Forward
from hypergrad._src.forward import forward
from hypergrad._src.forward import forward_hypergrad
from hypergrad._src.hd import hypergradient_descent
from hypergrad._src.inner import SGD_HPARAMS
from hypergrad._src.inner import SGDState
from hypergrad._src.inner import optax_init
from hypergrad._src.inner import optax_step
from hypergrad._src.inner import sgd_init
from hypergrad._src.inner import sgd_momentum_step
from hypergrad._src.losses import calibrated_cross_entropy
from hypergrad._src.online import SGD_BOUNDS
from hypergrad._src.online import run_online
from hypergrad._src.population import Population
from hypergrad._src.population import PopulationStats
from hypergrad._src.population import population
from hypergrad._src.projections import box
from hypergrad._src.projections import positive_definite
from hypergrad._src.projections import projection
from hypergrad._src.registry import OPTIMIZERS
from hypergrad._src.reverse import Reverse
from hypergrad._src.reverse import reverse
from hypergrad._src.rtho import rtho
from hypergrad._src.schedule import ConstantLeaf
from hypergrad._src.schedule import constant
from hypergrad._src.schedule import constant_leaf
from hypergrad._src.schedule import expand
from hypergrad._src.schedule import hparams_at
from hypergrad._src.schedule import interval_starts
from hypergrad._src.search import DivergenceError
from hypergrad._src.search import OuterState
from hypergrad._src.search import init as outer_init
from hypergrad._src.search import run as fds_search
from hypergrad._src.search import settled
from hypergrad._src.search import step as outer_step
from hypergrad._src.transformations import meta_optimizer
from hypergrad._src.transformations import scale_by_sign_descent
from hypergrad._src.transformations import sign_descent
from hypergrad._src.transforms import inverse_softplus
from hypergrad._src.transforms import reparametrize
from hypergrad._src.truncated import truncated_greedy
from hypergrad._src.unroll import Progress
from hypergrad._src.unroll import UnrollInfo
from hypergrad._src.unroll import unroll
from hypergrad._src.version import __version__

__all__ = (
    'AGGREGATES',
    'Auto',
    'AutoChoice',
    'ConstantLeaf',
    'DivergenceError',
    'Estimator',
    'Forward',
    'HypergradCheck',
    'HypergradResult',
    'OPTIMIZERS',
    'OuterState',
    'Population',
    'PopulationAggregate',
    'PopulationStats',
    'ProbeTimes',
    'Progress',
    'Reverse',
    'SGDState',
    'SGD_BOUNDS',
    'SGD_HPARAMS',
    'UnrollInfo',
    'WarmupDecay',
    '__version__',
    'aggregate_hypergrads',
    'auto',
    'calibrated_cross_entropy',
    'check_hypergrad',
    'box',
    'constant',
    'constant_leaf',
    'expand',
    'fds_search',
    'finite_difference',
    'forward',
    'forward_hypergrad',
    'hparams_at',
    'hypergradient_descent',
    'interval_starts',
    'inverse_softplus',
    'meta_optimizer',
    'optax_init',
    'optax_step',
    'positive_definite',
    'outer_init',
    'outer_step',
    'population',
    'projection',
    'pytree_chain',
    'reparametrize',
    'reverse',
    'rtho',
    'run_online',
    'scale_by_sign_descent',
    'settled',
    'sgd_init',
    'sgd_momentum_step',
    'sign_descent',
    'truncated_greedy',
    'unroll',
    'warmup_decay',
)
