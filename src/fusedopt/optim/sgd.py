"""SGD with momentum, dampening, Nesterov momentum and weight decay."""

from __future__ import annotations

from typing import Any

import math

from .. import _checks
from .base import Optimizer, ParamsT


class SGD(Optimizer):
    r"""Stochastic gradient descent, as ``torch.optim.SGD``.

    For each parameter :math:`\theta` with gradient :math:`g` (units: lr multiplies the
    gradient; the update has the parameter's units when the gradient is per-unit)::

        g = -g if maximize
        g = g + weight_decay * theta                         if weight_decay != 0
        b = g                           on the first step    if momentum != 0
        b = momentum * b + (1 - dampening) * g   afterwards
        g = g + momentum * b if nesterov else b              if momentum != 0
        theta = theta - lr * g

    Nesterov momentum (Sutskever et al., 2013) needs ``momentum > 0`` and
    ``dampening == 0``. State: ``momentum_buffer`` when ``momentum != 0``.
    Defaults are torch's: ``lr=1e-3``, everything else off.
    """

    _state_names = ("momentum_buffer",)

    def __init__(self, params: ParamsT, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, *, maximize: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize), **options)

    @staticmethod
    def _check_group(group, prefix):
        lr = _checks.number(group["lr"], (prefix, "lr"))
        momentum = _checks.number(group["momentum"], (prefix, "momentum"))
        dampening = _checks.number(group["dampening"], (prefix, "dampening"),
                                   low=-math.inf)
        weight_decay = _checks.number(group["weight_decay"],
                                      (prefix, "weight_decay"))
        nesterov = _checks.flag(group["nesterov"], (prefix, "nesterov"))
        maximize = _checks.flag(group["maximize"], (prefix, "maximize"))
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(f"{_checks._name((prefix, 'nesterov'))}: Nesterov momentum needs "
                             f"momentum > 0 and dampening == 0, got momentum={momentum}, "
                             f"dampening={dampening}")
        return lr, momentum, dampening, weight_decay, nesterov, maximize

    @staticmethod
    def _state_spec(hyper):
        return (("momentum_buffer", 0.0),) if hyper[1] != 0 else ()

    @classmethod
    def _update(cls, impl, p, g, state, hyper, fresh, scale=1.0, seed=0, out=None):
        lr, momentum, dampening, weight_decay, nesterov, maximize = hyper
        state["step"] += 1
        buf = state["momentum_buffer"] if momentum != 0 else None
        impl.sgd(p, g, buf, fresh, lr, momentum, dampening, weight_decay, nesterov,
                 -scale if maximize else scale, seed, out)
