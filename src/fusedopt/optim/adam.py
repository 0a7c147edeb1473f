"""Adam (Kingma & Ba, 2015) with L2 weight decay and AMSGrad."""

from __future__ import annotations

from typing import Any

from .. import _checks
from .base import Optimizer, ParamsT


class Adam(Optimizer):
    r"""Adam, as ``torch.optim.Adam``.

    At step :math:`t` (1-based), for each parameter :math:`\theta` with gradient g::

        g = -g if maximize
        g = g + weight_decay * theta                     (L2 penalty in the gradient)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        v_max = max(v_max, v)                            if amsgrad (then v := v_max)
        theta = theta - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    lr is in the parameter's units per step (the normalised update m/sqrt(v) is
    unitless). State: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v) and, with amsgrad,
    ``max_exp_avg_sq``. Defaults are torch's: ``lr=1e-3, betas=(0.9, 0.999),
    eps=1e-8, weight_decay=0``. For decoupled weight decay use :class:`AdamW`.
    """

    _state_names = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")
    _decoupled = False

    def __init__(self, params: ParamsT, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *,
                 maximize: bool = False, **options: Any) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize), **options)

    @staticmethod
    def _check_group(group, prefix):
        lr = _checks.number(group["lr"], (prefix, "lr"))
        beta1, beta2 = _checks.betas(group["betas"], (prefix, "betas"))
        eps = _checks.number(group["eps"], (prefix, "eps"))
        weight_decay = _checks.number(group["weight_decay"], (prefix, "weight_decay"))
        amsgrad = _checks.flag(group["amsgrad"], (prefix, "amsgrad"))
        maximize = _checks.flag(group["maximize"], (prefix, "maximize"))
        return lr, beta1, beta2, eps, weight_decay, amsgrad, maximize

    @staticmethod
    def _state_spec(hyper):
        if hyper[5]:
            return ("exp_avg", 0.0), ("exp_avg_sq", 0.0), ("max_exp_avg_sq", 0.0)
        return ("exp_avg", 0.0), ("exp_avg_sq", 0.0)

    @classmethod
    def _update(cls, impl, p, g, state, hyper, fresh, scale=1.0, seed=0, out=None):
        lr, beta1, beta2, eps, weight_decay, amsgrad, maximize = hyper
        state["step"] = step = state["step"] + 1
        impl.adam(p, g, state["exp_avg"], state["exp_avg_sq"],
                  state["max_exp_avg_sq"] if amsgrad else None, step, lr, beta1, beta2,
                  eps, weight_decay, cls._decoupled, -scale if maximize else scale, seed,
                  out)
