"""Adagrad (Duchi, Hazan & Singer, 2011)."""

from __future__ import annotations

from typing import Any

from .. import _checks
from .base import Optimizer, ParamsT


class Adagrad(Optimizer):
    r"""Adagrad, as ``torch.optim.Adagrad``.

    At step :math:`t` (1-based), for each parameter :math:`\theta` with gradient g::

        g = -g if maximize
        g = g + weight_decay * theta
        lr_t = lr / (1 + (t - 1) * lr_decay)
        sum = sum + g**2                 (sum starts at initial_accumulator_value)
        theta = theta - lr_t * g / (sqrt(sum) + eps)

    State: ``step``, ``sum``. Defaults are torch's: ``lr=1e-2, lr_decay=0,
    weight_decay=0, initial_accumulator_value=0, eps=1e-10``.
    """

    _state_names = ("sum",)

    def __init__(self, params: ParamsT, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, maximize: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize), **options)

    @staticmethod
    def _check_group(group, prefix):
        lr = _checks.number(group["lr"], (prefix, "lr"))
        lr_decay = _checks.number(group["lr_decay"], (prefix, "lr_decay"))
        weight_decay = _checks.number(group["weight_decay"], (prefix, "weight_decay"))
        initial = _checks.number(group["initial_accumulator_value"],
                                 (prefix, "initial_accumulator_value"))
        eps = _checks.number(group["eps"], (prefix, "eps"))
        maximize = _checks.flag(group["maximize"], (prefix, "maximize"))
        return lr, lr_decay, weight_decay, initial, eps, maximize

    @staticmethod
    def _state_spec(hyper):
        return (("sum", hyper[3]),)

    @classmethod
    def _update(cls, impl, p, g, state, hyper, fresh, scale=1.0, seed=0, out=None):
        lr, lr_decay, weight_decay, _, eps, maximize = hyper
        state["step"] = step = state["step"] + 1
        impl.adagrad(p, g, state["sum"], step, lr, lr_decay, eps, weight_decay,
                     -scale if maximize else scale, seed, out)
