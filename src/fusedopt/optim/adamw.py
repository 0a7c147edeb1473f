"""AdamW: Adam with decoupled weight decay (Loshchilov & Hutter, 2019)."""

from __future__ import annotations

from typing import Any

from .adam import Adam
from .base import ParamsT


class AdamW(Adam):
    r"""AdamW, as ``torch.optim.AdamW``: Adam whose weight decay shrinks the parameter
    directly instead of entering the gradient (and so the moments)::

        theta = theta * (1 - lr * weight_decay)
        ... then the Adam update of :class:`Adam` with weight_decay = 0.

    Defaults are torch's: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=1e-2``. State as :class:`Adam`.
    """

    _decoupled = True

    def __init__(self, params: ParamsT, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, **options: Any) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, **options)
