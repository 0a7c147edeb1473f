"""Per-step scalars, computed once on the host in float64 for the kernel backends.

The rules in ``fusedopt.rules`` (and their Cython mirror) take these tuples as their
trailing arguments, in this order. torch computes the same quantities in float64 on the
host (``bias_correction1 = 1 - beta1 ** step`` ...), so doing it here keeps float32
kernels within rounding of ``torch.optim``. The NumPy reference does not use this
module: it recomputes everything from the textbook formulas.
"""

from __future__ import annotations

import math

import numpy as np


def sgd(fresh_buffer: bool, lr: float, momentum: float, dampening: float,
        weight_decay: float):
    """``(lr, weight_decay, momentum, buf_grad_scale)``; a fresh (all-zero) momentum
    buffer takes the whole gradient (torch clones it), later steps ``1 - dampening``."""
    buf_grad_scale = 1.0 if fresh_buffer else 1.0 - dampening
    return lr, weight_decay, momentum, buf_grad_scale


def adam(step: int, lr: float, beta1: float, beta2: float, eps: float,
         weight_decay: float, decoupled: bool):
    """``(1-beta1, beta2, 1-beta2, lr/bc1, 1/sqrt(bc2), eps, weight_decay, 1-lr*wd)``."""
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    param_scale = 1.0 - lr * weight_decay if decoupled else 1.0
    return (1.0 - beta1, beta2, 1.0 - beta2, lr / bias_correction1,
            1.0 / math.sqrt(bias_correction2), eps, weight_decay, param_scale)


def adagrad(step: int, lr: float, lr_decay: float, eps: float, weight_decay: float):
    """``(clr, eps, weight_decay)`` with ``clr = lr / (1 + (step - 1) * lr_decay)``."""
    return lr / (1.0 + (step - 1) * lr_decay), eps, weight_decay


def rmsprop(lr: float, alpha: float, eps: float, weight_decay: float, momentum: float):
    """``(lr, alpha, 1-alpha, eps, weight_decay, momentum)``."""
    return lr, alpha, 1.0 - alpha, eps, weight_decay, momentum


def radam(step: int, lr: float, beta1: float, beta2: float, eps: float,
          weight_decay: float, decoupled: bool):
    """``(1-beta1, beta2, 1-beta2, lr/bc1, rect, eps, weight_decay, 1-lr*wd)``: as
    torch, the length of the approximated SMA ``rho_t = rho_inf - 2 t beta2**t / bc2``
    (``rho_inf = 2 / (1 - beta2) - 1``); once ``rho_t > 5``, ``rect = lr/bc1 * r_t *
    sqrt(bc2)`` with the variance rectification ``r_t``, else 0 (no adaptive step)."""
    bias_correction1 = 1.0 - beta1 ** step
    bias_correction2 = 1.0 - beta2 ** step
    rho_inf = 2.0 / (1.0 - beta2) - 1.0
    rho_t = rho_inf - 2.0 * step * beta2 ** step / bias_correction2
    rect = 0.0
    if rho_t > 5.0:
        rect = math.sqrt((rho_t - 4.0) * (rho_t - 2.0) * rho_inf
                         / ((rho_inf - 4.0) * (rho_inf - 2.0) * rho_t)
                         ) * math.sqrt(bias_correction2) * lr / bias_correction1
    param_scale = 1.0 - lr * weight_decay if decoupled else 1.0
    return (1.0 - beta1, beta2, 1.0 - beta2, lr / bias_correction1, rect, eps,
            weight_decay, param_scale)


#: how torch stores an optimizer's scalar state (NAdam's ``mu_product``, ASGD's ``eta``
#: and ``mu``): ``(the NumPy scalar type of its tensor, that of torch's default
#: dtype)``. A new state tensor is float32 (torch's default scalar dtype); a loaded
#: one takes its parameter's dtype (torch's load casts it). The values are rounded to
#: it, as torch computes with the rounded values.
FLOAT32_KINDS = (np.float32, np.float32)


def nadam_mu(step: int, beta1: float, momentum_decay: float) -> float:
    """NAdam's momentum coefficient at ``step``: ``beta1 (1 - 0.96**(t psi) / 2)``."""
    return beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))


def nadam_mu_product(mu_product: float, step: int, beta1: float, momentum_decay: float,
                     kinds: tuple = FLOAT32_KINDS) -> float:
    """The product of the momentum coefficients through ``step``, from the one through
    the step before: as torch, ``mu_product *= mu`` in its tensor's dtype. A product
    that rounds to 1 is refused (the update divides by ``1 - mu_product``)."""
    kind = kinds[0]
    product = float(kind(kind(mu_product) * kind(nadam_mu(step, beta1,
                                                           momentum_decay))))
    if product >= 1.0:
        raise ValueError(f"NAdam's mu_product rounds to {product} at step {step} (beta1 "
                         f"{beta1} is too close to 1 for its {np.dtype(kind).name} "
                         "state), and the update divides by 1 - mu_product")
    return product


def nadam(step: int, mu_product: float, kinds: tuple, lr: float, beta1: float,
          beta2: float, eps: float, weight_decay: float, momentum_decay: float,
          decoupled: bool):
    """``(1-beta1, beta2, 1-beta2, 1/bc2, lr (1-mu_t) / (1-prod_t), lr mu_{t+1} /
    (1-prod_t mu_{t+1}), eps, weight_decay, 1-lr*wd)``, ``mu_product`` being the
    product through the step before (``prod_t`` the one through this step), stored
    as ``kinds`` says (``FLOAT32_KINDS``)."""
    mu = nadam_mu(step, beta1, momentum_decay)
    mu_next = nadam_mu(step + 1, beta1, momentum_decay)
    product = nadam_mu_product(mu_product, step, beta1, momentum_decay, kinds)
    param_scale = 1.0 - lr * weight_decay if decoupled else 1.0
    return (1.0 - beta1, beta2, 1.0 - beta2, 1.0 / (1.0 - beta2 ** step),
            lr * (1.0 - mu) / (1.0 - product), lr * mu_next / (1.0 - product * mu_next),
            eps, weight_decay, param_scale)


def asgd(eta: float, mu: float, lambd: float, weight_decay: float):
    """``(eta, 1 - lambd * eta, weight_decay, mu, average)``: the step's ``eta`` and
    ``mu`` (as the step before left them); ``average`` is 0 while ``mu == 1`` (the
    average is then the parameter itself, copied as torch copies it), else 1."""
    return eta, 1.0 - lambd * eta, weight_decay, mu, 0.0 if mu == 1.0 else 1.0


def asgd_first(lr: float, kinds: tuple = FLOAT32_KINDS) -> tuple[float, float]:
    """ASGD's first ``(eta, mu)``: ``(lr, 1)``, stored as ``kinds`` says."""
    return float(kinds[0](kinds[1](lr))), 1.0


def asgd_next(step: int, lr: float, lambd: float, alpha: float, t0: float,
              kinds: tuple = FLOAT32_KINDS) -> tuple[float, float]:
    """ASGD's ``(eta, mu)`` for the step after ``step``, as torch: ``eta = lr /
    (1 + lambd lr t)**alpha``, ``mu = 1 / max(1, t - t0)``, each made a tensor of
    the default dtype and copied into its state tensor (``kinds``)."""
    tensor, default = kinds
    try:
        eta = lr / ((1.0 + lambd * lr * step) ** alpha)
    except OverflowError:
        raise OverflowError(f"ASGD: lr / (1 + lambd * lr * t)**alpha overflows at step "
                            f"{step} (lr={lr}, lambd={lambd}, alpha={alpha})") from None
    return (float(tensor(default(eta))),
            float(tensor(default(1.0 / max(1.0, step - t0)))))


def lamb(step: int, lr: float, beta1: float, beta2: float, eps: float,
         weight_decay: float):
    """``(1-beta1, beta2, 1-beta2, 1/bc1, 1/sqrt(bc2), eps, weight_decay, lr)``; the
    last, the step size, becomes ``lr`` times the trust ratio (``lamb_trust``) once
    the tensor's norms are summed."""
    return (1.0 - beta1, beta2, 1.0 - beta2, 1.0 / (1.0 - beta1 ** step),
            1.0 / math.sqrt(1.0 - beta2 ** step), eps, weight_decay, lr)


def lamb_trust(h: tuple, param_sumsq: float, update_sumsq: float) -> tuple:
    """``h`` (``lamb``) with its step size multiplied by the trust ratio ``||p|| /
    ||u||`` of one tensor, from the sums of squares of its parameter and its update
    direction; 1 where either norm is 0 (a zero tensor, as optax) or not finite (a
    NaN or inf in the tensor, which then reaches its own elements only; optax's
    ratio spreads it over the whole tensor)."""
    p, u = math.sqrt(param_sumsq), math.sqrt(update_sumsq)
    ratio = p / u if 0.0 < p < math.inf and 0.0 < u < math.inf else 1.0
    return (*h[:-1], h[-1] * ratio)


def rounding_seed(seed: int, step: int, index: int) -> int:
    """The 32-bit seed of one tensor's (or segment's) stochastic rounding at ``step``:
    distinct tensors and steps draw unrelated bits."""
    x = (seed * 0x9E3779B97F4A7C15 + step * 0xBF58476D1CE4E5B9
         + index * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    x ^= x >> 31
    x = (x * 0xD6E8FEB86659FD93) & 0xFFFFFFFFFFFFFFFF
    return (x ^ (x >> 32)) & 0xFFFFFFFF


def muon(shape: tuple[int, int], lr: float, weight_decay: float, *rest) -> tuple:
    """``(lr_t, decay)`` of Muon's last pass (``algorithms.muon_contract``): the
    learning rate adjusted to the parameter's ``shape = (A, B)`` as torch's
    ``adjust_lr_fn`` (the last of ``rest``) says: None or "original", ``lr *
    sqrt(max(1, A / B))`` (Keller Jordan's); "match_rms_adamw", ``0.2 lr sqrt(max(A,
    B))`` (Moonshot's: the update's RMS matches AdamW's); and the weight decay
    expressed as SGD's, ``lr * weight_decay / lr_t`` (0 when lr is)."""
    rows, cols = shape
    adjust = rest[-1]
    if adjust == "match_rms_adamw":
        lr_t = lr * (0.2 * math.sqrt(max(rows, cols)))
    else:
        lr_t = lr * math.sqrt(max(1, rows / cols))  # (torch's order)
    return lr_t, (lr * weight_decay / lr_t if lr_t else 0.0)


def adafactor_update(w: float, eps1: float, param_scale: float, eps2: float, rho: float,
                     d: float, numel: int, factored: bool, small: bool, decay: bool):
    """``(w, 1, eps1**2, 1 - lr wd, eps2, rho, d, numel, step_size)`` of Adafactor's
    element pass (``rules.adafactor_update``); the step size becomes ``alpha /
    denom`` once the tensor's norms are summed (``adafactor_step_size``)."""
    return w, 1.0, eps1 * eps1, param_scale, eps2, rho, d, float(numel), 0.0


def adafactor_step_size(h: tuple, param_sumsq: float, update_sumsq: float) -> tuple:
    """``h`` (``adafactor_update``) with its step size ``alpha / denom``, as torch:
    ``alpha = max(eps2, RMS(p)) * rho`` (the parameter before its decay) and
    ``denom = max(1, RMS(u) / d)``."""
    eps2, rho, d, numel = h[4], h[5], h[6], h[7]
    alpha = max(eps2, math.sqrt(param_sumsq) / numel ** 0.5) * rho
    denom = max(1.0, math.sqrt(update_sumsq) / (numel ** 0.5 * d))
    return (*h[:-1], alpha / denom)
