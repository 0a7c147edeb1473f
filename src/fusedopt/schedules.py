"""Learning-rate schedules: set ``param_groups[i]["lr"]`` once per step.

Each schedule is a closed-form function of the step count ``t`` and a group's base lr
(its lr when the schedule was created), with the same sequence as its
``torch.optim.lr_scheduler`` twin. They work with any optimizer that has
``param_groups`` (fusedopt's, ``fusedopt.torch``'s, torch's). The kernels take lr as a
runtime scalar, so a new lr every step never recompiles anything.

    sched = WarmupThen(LinearWarmup(opt, start_factor=0.1, total_steps=5),
                       CosineAnnealing(opt, total_steps=95))
    for batch in data:
        ...; opt.step(grads); sched.step()
"""

from __future__ import annotations

import math
from typing import Any


class Schedule:
    """Base class: ``factor(t)`` times each group's base lr (or ``lr_at`` itself)."""

    def __init__(self, optimizer: Any) -> None:
        if not hasattr(optimizer, "param_groups"):
            raise TypeError(f"optimizer: expected an object with param_groups, got "
                            f"{type(optimizer).__name__}")
        self.optimizer = optimizer
        self.base_lrs = [float(g["lr"]) for g in optimizer.param_groups]
        self.t = 0
        self._apply()

    def lr_at(self, t: int, base_lr: float) -> float:
        return base_lr * self.factor(t)

    def factor(self, t: int) -> float:
        raise NotImplementedError

    def step(self) -> None:
        """Advance one step and set every group's lr."""
        self.t += 1
        self._apply()

    def _apply(self) -> None:
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = self.lr_at(self.t, base)

    def get_last_lr(self) -> list[float]:
        return [g["lr"] for g in self.optimizer.param_groups]


def _positive_int(x, name: str) -> int:
    if isinstance(x, bool) or not isinstance(x, int) or x < 1:
        raise ValueError(f"{name}: expected an int >= 1, got {x!r}")
    return x


def _finite(x, name: str, low: float = 0.0) -> float:
    if isinstance(x, bool) or not isinstance(x, (int, float)) or not math.isfinite(x) \
            or x < low:
        raise ValueError(f"{name}: expected a finite number >= {low}, got {x!r}")
    return float(x)


class StepDecay(Schedule):
    """``lr = base * gamma ** (t // step_size)`` (torch's StepLR)."""

    def __init__(self, optimizer, step_size: int, gamma: float = 0.1) -> None:
        self.step_size = _positive_int(step_size, "step_size")
        self.gamma = _finite(gamma, "gamma")
        super().__init__(optimizer)

    def factor(self, t: int) -> float:
        return self.gamma ** (t // self.step_size)


class ExponentialDecay(Schedule):
    """``lr = base * gamma ** t`` (torch's ExponentialLR)."""

    def __init__(self, optimizer, gamma: float) -> None:
        self.gamma = _finite(gamma, "gamma")
        super().__init__(optimizer)

    def factor(self, t: int) -> float:
        return self.gamma ** t


class CosineAnnealing(Schedule):
    """``lr = eta_min + (base - eta_min) * (1 + cos(pi * t / total_steps)) / 2``
    (torch's CosineAnnealingLR, closed form; it keeps going past ``total_steps``)."""

    def __init__(self, optimizer, total_steps: int, eta_min: float = 0.0) -> None:
        self.total_steps = _positive_int(total_steps, "total_steps")
        self.eta_min = _finite(eta_min, "eta_min")
        super().__init__(optimizer)

    def lr_at(self, t: int, base_lr: float) -> float:
        cos = (1 + math.cos(math.pi * t / self.total_steps)) / 2
        return self.eta_min + (base_lr - self.eta_min) * cos


class LinearWarmup(Schedule):
    """``factor`` from ``start_factor`` to ``end_factor`` linearly over
    ``total_steps``, then constant (torch's LinearLR)."""

    def __init__(self, optimizer, start_factor: float = 1 / 3, end_factor: float = 1.0,
                 total_steps: int = 5) -> None:
        self.start_factor = _finite(start_factor, "start_factor")
        self.end_factor = _finite(end_factor, "end_factor")
        if self.start_factor == 0 or self.start_factor > 1 or self.end_factor > 1:
            raise ValueError("start_factor, end_factor: expected 0 < start_factor <= 1 "
                             f"and end_factor <= 1, got {start_factor}, {end_factor}")
        self.total_steps = _positive_int(total_steps, "total_steps")
        super().__init__(optimizer)

    def factor(self, t: int) -> float:
        progress = min(t, self.total_steps) / self.total_steps
        return self.start_factor + (self.end_factor - self.start_factor) * progress


class WarmupThen(Schedule):
    """``warmup`` for its ``total_steps``, then ``after`` restarted from its step 0
    (torch's SequentialLR with one milestone): warmup then cosine, say. Both must be
    built on the same optimizer; this one drives them."""

    def __init__(self, warmup: LinearWarmup, after: Schedule) -> None:
        if warmup.optimizer is not after.optimizer:
            raise ValueError("warmup, after: expected schedules of the same optimizer")
        self.warmup, self.after = warmup, after
        # the bases recorded by the warmup: building ``after`` saw warmed-up lrs
        self.optimizer, self.base_lrs, self.t = warmup.optimizer, list(warmup.base_lrs), 0
        self._apply()

    def lr_at(self, t: int, base_lr: float) -> float:
        if t < self.warmup.total_steps:
            return self.warmup.lr_at(t, base_lr)
        return self.after.lr_at(t - self.warmup.total_steps, base_lr)
