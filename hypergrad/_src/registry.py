"""One registry per inner optimiser of its hyperparameters.

Names, plain defaults, valid ranges, FDS outer step sizes and black-box search
ranges live here and nowhere else: the inner step builders, the outer and
meta optimisers, the tasks, the black-box baselines and the launch script all
read them from here.
"""

from __future__ import annotations

import dataclasses
import math
import types
from typing import Mapping


@dataclasses.dataclass(frozen=True)
class HParamSpec:
  """One hyperparameter of an inner optimiser.

  Attributes:
    name: its key in ``hparams`` (e.g. ``'lr'``).
    default: the plain value a practitioner tries first (one interval): the
      baseline a learned schedule is compared with.
    bounds: ``(lo, hi)`` valid range; values are projected into it after
      every outer or meta step.
    outer_step: the FDS outer loop's initial sign-descent step (the FDS
      reference's values).
    search: ``(low, high, log)``: the black-box baselines' range, covering
      what FDS's outer loop reaches from 0.
  """
  name: str
  default: float
  bounds: tuple[float, float]
  outer_step: float
  search: tuple[float, float, bool]


@dataclasses.dataclass(frozen=True)
class InnerOptimizerSpec:
  """The learnable hyperparameters of one inner optimiser."""
  name: str
  hparams: tuple[HParamSpec, ...]

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(h.name for h in self.hparams)

  def _field(self, field: str) -> Mapping:
    return types.MappingProxyType(
        {h.name: getattr(h, field) for h in self.hparams})

  @property
  def defaults(self) -> Mapping[str, float]:
    return self._field('default')

  @property
  def bounds(self) -> Mapping[str, tuple[float, float]]:
    return self._field('bounds')

  @property
  def outer_steps(self) -> Mapping[str, float]:
    return self._field('outer_step')

  @property
  def search_space(self) -> Mapping[str, tuple[float, float, bool]]:
    return self._field('search')

  def check_names(self, names, what: str = 'hyperparameter') -> None:
    unknown = sorted(set(names) - set(self.names))
    if unknown:
      raise ValueError(f'{self.name} has no {what}(s) {unknown}; known: '
                       f'{list(self.names)}.')


# SGD with momentum and coupled weight decay, the FDS inner optimiser. A
# learning rate or weight decay below zero and a momentum of 1 or more make
# the inner run diverge; 0.999 leaves a margin.
SGD = InnerOptimizerSpec('sgd', (
    HParamSpec('lr', 0.1, (0.0, math.inf), 0.1, (1e-3, 1.0, True)),
    HParamSpec('momentum', 0.9, (0.0, 0.999), 0.1, (0.0, 0.99, False)),
    HParamSpec('weight_decay', 5e-4, (0.0, math.inf), 3e-4,
               (1e-5, 1e-2, True)),
))

# The injectable hyperparameters of optax's adam family, for ``optax_step``.
ADAM = InnerOptimizerSpec('adam', (
    HParamSpec('learning_rate', 1e-3, (0.0, math.inf), 1e-3,
               (1e-5, 1e-1, True)),
    HParamSpec('b1', 0.9, (0.0, 0.999), 0.05, (0.5, 0.99, False)),
    HParamSpec('b2', 0.999, (0.0, 0.9999), 0.005, (0.9, 0.9999, False)),
))

OPTIMIZERS = types.MappingProxyType({'sgd': SGD, 'adam': ADAM})

# Every known kind's valid range and outer step, by name, for optimisers
# that are given a mapping of hyperparameters without saying whose.
ALL_BOUNDS = types.MappingProxyType(
    {**ADAM.bounds, **SGD.bounds})
ALL_OUTER_STEPS = types.MappingProxyType(
    {**ADAM.outer_steps, **SGD.outer_steps})
