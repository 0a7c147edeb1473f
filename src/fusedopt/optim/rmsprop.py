"""RMSprop (Hinton, lecture 6e) with the centered variant of Graves (2013)."""

from __future__ import annotations

from typing import Any

from .. import _checks
from .base import Optimizer, ParamsT


class RMSprop(Optimizer):
    r"""RMSprop, as ``torch.optim.RMSprop``.

    For each parameter :math:`\theta` with gradient g::

        g = -g if maximize
        g = g + weight_decay * theta
        v = alpha * v + (1 - alpha) * g**2
        mu = alpha * mu + (1 - alpha) * g         if centered (then v - mu**2 below)
        u = g / (sqrt(v [- mu**2]) + eps)
        b = momentum * b + u ; u = b              if momentum > 0
        theta = theta - lr * u

    State: ``step``, ``square_avg`` (v), ``grad_avg`` (mu, centered) and
    ``momentum_buffer`` (b, momentum > 0), all starting at zero. Defaults are
    torch's: ``lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0``.
    """

    _state_names = ("square_avg", "grad_avg", "momentum_buffer")

    def __init__(self, params: ParamsT, lr: float = 1e-2, alpha: float = 0.99,
                 eps: float = 1e-8, weight_decay: float = 0.0, momentum: float = 0.0,
                 centered: bool = False, *, maximize: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps,
                                      weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize), **options)

    @staticmethod
    def _check_group(group, prefix):
        lr = _checks.number(group["lr"], (prefix, "lr"))
        alpha = _checks.number(group["alpha"], (prefix, "alpha"), high=1.0)
        eps = _checks.number(group["eps"], (prefix, "eps"))
        weight_decay = _checks.number(group["weight_decay"], (prefix, "weight_decay"))
        momentum = _checks.number(group["momentum"], (prefix, "momentum"))
        centered = _checks.flag(group["centered"], (prefix, "centered"))
        maximize = _checks.flag(group["maximize"], (prefix, "maximize"))
        return lr, alpha, eps, weight_decay, momentum, centered, maximize

    @staticmethod
    def _state_spec(hyper):
        spec = [("square_avg", 0.0)]
        if hyper[5]:
            spec.append(("grad_avg", 0.0))
        if hyper[4] > 0:
            spec.append(("momentum_buffer", 0.0))
        return tuple(spec)

    @classmethod
    def _update(cls, impl, p, g, state, hyper, fresh, scale=1.0, seed=0, out=None):
        lr, alpha, eps, weight_decay, momentum, centered, maximize = hyper
        state["step"] += 1
        impl.rmsprop(p, g, state["square_avg"], state["grad_avg"] if centered else None,
                     state["momentum_buffer"] if momentum > 0 else None, lr, alpha, eps,
                     weight_decay, momentum, -scale if maximize else scale, seed, out)
