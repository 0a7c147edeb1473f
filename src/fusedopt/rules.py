"""Per-element update rules: the one copy of each algorithm's math.

A rule maps one element's ``(param, grad, *state)`` and the step's scalars to the
new ``(param, *state)``. The scalars are computed once per step on the host
(``fusedopt.scalars``) in float64 and cast to the array's dtype inside the kernel,
so a float32 rule runs in float32 end to end (a Python float or an integer literal
here would promote the expression to float64 and halve the SIMD width: measured
3.5x slower at 1M elements). Boolean options are loop-invariant; LLVM unswitches
them out of the kernel loop. ``grad_scale`` multiplies the gradient first: -1 for
``maximize``, times the clipping coefficient (torch scales the gradients in place
before the step; here it costs no extra pass), exactly 1.0 otherwise.

The Numba CPU kernels (``backends/numba_cpu.py``) and CUDA kernels call these
functions; ``kernels/rules.pxd`` mirrors them line by line for the Cython backend.
The NumPy reference (``backends/numpy_ref.py``) is written independently on purpose.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic, overload, register_jitable


def cast_like(x, arr):
    """Return the scalar ``x`` converted to the compute dtype of ``arr`` (its own, or
    float32 for bf16 bits stored as uint16). Compiled code uses
    the overload below; this body runs under Numba's CUDA simulator."""
    return _compute_dtype(np.dtype(arr.dtype))(x)


def _compute_dtype(dtype: np.dtype):
    """float32 for bf16 storage (uint16 bits, see ``lowbit``), else the array's."""
    return np.float32 if dtype == np.uint16 else dtype.type


@overload(cast_like, target="generic")
def _cast_like_impl(x, arr):
    to_dtype = _compute_dtype(np.dtype(str(arr.dtype)))

    def impl(x, arr):
        return to_dtype(x)

    return impl


def cast_all(h, arr):
    """The tuple of scalars ``h`` converted to the compute dtype of ``arr`` (see
    ``cast_like``): a kernel's per-step host scalars, cast once before its loop.
    Compiled code uses the overload below; this body runs under Numba's CUDA
    simulator."""
    return tuple(cast_like(x, arr) for x in h)


@overload(cast_all, target="generic")
def _cast_all_impl(h, arr):
    to_dtype = _compute_dtype(np.dtype(str(arr.dtype)))
    # a tuple's length is part of its type: one straight-line body per length
    body = "".join(f"to_dtype(h[{k}]), " for k in range(len(h)))
    scope = {"to_dtype": to_dtype}
    exec(f"def impl(h, arr):\n    return ({body})\n", scope)
    return scope["impl"]


def sqrt(x):
    """The square root in ``x``'s own precision, NaN below zero. Compiled code uses
    ``math.sqrt`` (CPU and CUDA lower it to the hardware instruction; NumPy's ufunc
    has no CUDA lowering); this body runs under Numba's CUDA simulator."""
    with np.errstate(invalid="ignore"):
        return np.sqrt(x)


@overload(sqrt, target="generic")
def _sqrt_impl(x):
    def impl(x):
        return math.sqrt(x)

    return impl


@register_jitable
def sgd(p, g, buf, lr, weight_decay, momentum, buf_grad_scale,
        decay, has_momentum, nesterov, grad_scale):
    """SGD. ``buf_grad_scale`` is 1 on the first step (the buffer starts as the
    gradient, as in torch) and ``1 - dampening`` afterwards."""
    g = grad_scale * g
    if decay:
        g = g + weight_decay * p
    if has_momentum:
        buf = momentum * buf + buf_grad_scale * g
        if nesterov:
            g = g + momentum * buf
        else:
            g = buf
    p = p - lr * g
    return p, buf


@register_jitable
def _adam_moments(p, g, m, v, beta1c, beta2, beta2c, weight_decay, param_scale, decay,
                  decoupled, grad_scale):
    """Adam's moments, as Adam, RAdam and NAdam update them, after the gradient's
    scale and the weight decay: ``(p, g, m, v)``, with ``p`` decayed (decoupled,
    ``param_scale = 1 - lr * weight_decay``) or ``g`` given the L2 penalty."""
    g = grad_scale * g
    if decay:
        if decoupled:
            p = p * param_scale
        else:
            g = g + weight_decay * p
    m = m + beta1c * (g - m)
    v = beta2 * v + beta2c * g * g
    return p, g, m, v


@register_jitable
def adam(p, g, m, v, vmax, beta1c, beta2, beta2c, step_size, inv_sqrt_bc2, eps,
         weight_decay, param_scale, decay, decoupled, amsgrad, grad_scale):
    """Adam / AdamW. ``beta1c = 1 - beta1``, ``beta2c = 1 - beta2``,
    ``step_size = lr / (1 - beta1**t)``, ``inv_sqrt_bc2 = 1 / sqrt(1 - beta2**t)``,
    ``param_scale = 1 - lr * weight_decay`` (decoupled decay, AdamW)."""
    p, g, m, v = _adam_moments(p, g, m, v, beta1c, beta2, beta2c, weight_decay,
                               param_scale, decay, decoupled, grad_scale)
    if amsgrad:
        if v > vmax or v != v:  # torch.maximum: a NaN wins (Python's max drops it)
            vmax = v
        denom = sqrt(vmax) * inv_sqrt_bc2 + eps
    else:
        denom = sqrt(v) * inv_sqrt_bc2 + eps
    p = p - step_size * m / denom
    return p, m, v, vmax


@register_jitable
def adagrad(p, g, acc, clr, eps, weight_decay, decay, grad_scale):
    """Adagrad. ``clr = lr / (1 + (t - 1) * lr_decay)``."""
    g = grad_scale * g
    if decay:
        g = g + weight_decay * p
    acc = acc + g * g
    p = p - clr * g / (sqrt(acc) + eps)
    return p, acc


@register_jitable
def rmsprop(p, g, sq, gavg, buf, lr, alpha, alphac, eps, weight_decay, momentum,
            decay, centered, has_momentum, grad_scale):
    """RMSprop. ``alphac = 1 - alpha``."""
    g = grad_scale * g
    if decay:
        g = g + weight_decay * p
    sq = alpha * sq + alphac * g * g
    if centered:
        gavg = gavg + alphac * (g - gavg)
        avg = sqrt(sq - gavg * gavg) + eps
    else:
        avg = sqrt(sq) + eps
    if has_momentum:
        buf = momentum * buf + g / avg
        p = p - lr * buf
    else:
        p = p - lr * g / avg
    return p, sq, gavg, buf


@register_jitable
def lion(p, g, m, lr, beta1, beta1c, beta2, beta2c, param_scale, decay, grad_scale):
    """Lion (Chen et al., 2023): the sign of an interpolated momentum.
    ``beta1c = 1 - beta1``, ``beta2c = 1 - beta2``, ``param_scale = 1 - lr * wd``
    (decoupled decay). sign(0) is 0 and a NaN propagates, as ``torch.sign``."""
    g = grad_scale * g
    if decay:
        p = p * param_scale
    c = beta1 * m + beta1c * g
    zero = lr - lr  # 0 in the compute dtype (lr is finite); a literal would be float64
    u = lr if c > zero else (-lr if c < zero else c * lr)
    p = p - u
    m = beta2 * m + beta2c * g
    return p, m


@register_jitable
def adamax(p, g, m, u, beta1c, beta2, eps, clr, weight_decay, decay, grad_scale):
    """Adamax: Adam with an infinity norm. ``beta1c = 1 - beta1``,
    ``clr = lr / (1 - beta1**t)``; ``u = max(beta2 * u, |g| + eps)`` (eps inside the
    max, as torch), a NaN winning as in ``torch.maximum``."""
    g = grad_scale * g
    if decay:
        g = g + weight_decay * p
    m = m + beta1c * (g - m)
    a = beta2 * u
    b = abs(g) + eps
    u = a if a > b else b
    u = a if a != a else u  # torch.maximum: a NaN wins (b's by the line above)
    p = p - clr * m / u
    return p, m, u


@register_jitable
def adadelta(p, g, sq, acc, lr, rho, rhoc, eps, weight_decay, decay, grad_scale):
    """Adadelta. ``rhoc = 1 - rho``."""
    g = grad_scale * g
    if decay:
        g = g + weight_decay * p
    sq = rho * sq + rhoc * g * g
    delta = sqrt(acc + eps) / sqrt(sq + eps) * g
    acc = rho * acc + rhoc * delta * delta
    p = p - lr * delta
    return p, sq, acc


@register_jitable
def radam(p, g, m, v, beta1c, beta2, beta2c, step_size, rect, eps, weight_decay,
          param_scale, decay, decoupled, grad_scale):
    """RAdam (Liu et al., 2020). ``beta1c = 1 - beta1``, ``beta2c = 1 - beta2``,
    ``step_size = lr / (1 - beta1**t)``; ``rect = step_size * r_t * sqrt(1 -
    beta2**t)`` once the variance is tractable (rho_t > 5), else 0: the step is then
    SGD with momentum; ``param_scale = 1 - lr * weight_decay`` (decoupled decay)."""
    p, g, m, v = _adam_moments(p, g, m, v, beta1c, beta2, beta2c, weight_decay,
                               param_scale, decay, decoupled, grad_scale)
    # one product after the choice: with a subtraction in each branch, LLVM sinks the
    # two into one (of a select) and contracts it into an FMA in some loops only
    k = rect / (sqrt(v) + eps) if rect > rect - rect else step_size  # rect - rect: 0
    p = p - k * m
    return p, m, v


@register_jitable
def rprop(p, g, prev, size, etaminus, etaplus, size_min, size_max, grad_scale):
    """Rprop (Riedmiller & Braun, 1993), as torch: the step size grows by ``etaplus``
    where the gradient kept its sign, shrinks by ``etaminus`` where it flipped (and
    that gradient is then taken as 0), is clamped to ``[size_min, size_max]``; the
    parameter moves by the step size against the gradient's sign. torch's ``sign``
    is 0 for NaN (on CPU and CUDA): a NaN gradient leaves its step size and parameter
    as they were (the step after, too, whose product with it is NaN), and is kept in
    ``prev``; a NaN step size propagates, as torch's ``clamp``."""
    g = grad_scale * g
    zero = etaplus - etaplus  # 0 in the compute dtype (a literal would be float64)
    s = g * prev
    if s > zero:
        size = size * etaplus
    elif s < zero:
        size = size * etaminus
        g = zero
    size = size_min if size < size_min else size
    size = size_max if size > size_max else size
    p = p - (size if g > zero else (-size if g < zero else zero * size))
    return p, g, size


@register_jitable
def nadam(p, g, m, v, beta1c, beta2, beta2c, inv_bc2, grad_step, avg_step, eps,
          weight_decay, param_scale, decay, decoupled, grad_scale):
    """NAdam (Dozat, 2016), as torch. ``beta1c = 1 - beta1``, ``beta2c = 1 - beta2``,
    ``inv_bc2 = 1 / (1 - beta2**t)``; ``grad_step = lr (1 - mu_t) / (1 - prod_t)`` and
    ``avg_step = lr mu_{t+1} / (1 - prod_t mu_{t+1})`` (the momentum schedule and
    its product, ``fusedopt.scalars.nadam``); ``param_scale = 1 - lr * weight_decay``
    (decoupled decay)."""
    p, g, m, v = _adam_moments(p, g, m, v, beta1c, beta2, beta2c, weight_decay,
                               param_scale, decay, decoupled, grad_scale)
    p = p - (grad_step * g + avg_step * m) / (sqrt(v * inv_bc2) + eps)  # one division
    return p, m, v


@register_jitable
def asgd(p, g, ax, eta, param_scale, weight_decay, mu, average, decay, grad_scale):
    """ASGD (Polyak & Juditsky, 1992), as torch: an SGD step of size ``eta`` with
    ``param_scale = 1 - lambd * eta``, then the running average ``ax`` of the
    parameters: ``ax + mu (p - ax)`` where ``average`` is 1, or ``p`` itself while it
    is 0 (``mu == 1``, torch copies it). ``eta`` and ``mu`` are the step's host
    state. The choice is a ``pick``: ``ax`` is read in both phases."""
    g = grad_scale * g
    if decay:
        g = g + weight_decay * p
    p = p * param_scale
    p = p - eta * g
    ax = pick(average, ax + (p - ax) * mu, p)
    return p, ax


@register_jitable
def _lamb_direction(p, g, m, v, beta1c, beta2, beta2c, inv_bc1, inv_sqrt_bc2, eps,
                    weight_decay, decay, grad_scale):
    """LAMB's new moments and its update direction before the trust ratio:
    ``u = m / bc1 / (sqrt(v / bc2) + eps) + weight_decay * p``."""
    g = grad_scale * g
    m = m + beta1c * (g - m)
    v = beta2 * v + beta2c * g * g
    u = m * inv_bc1 / (sqrt(v) * inv_sqrt_bc2 + eps)
    if decay:
        u = u + weight_decay * p
    return u, m, v


@register_jitable
def lamb(p, g, m, v, beta1c, beta2, beta2c, inv_bc1, inv_sqrt_bc2, eps, weight_decay,
         step_size, decay, grad_scale):
    """LAMB (You et al., 2020, Algorithm 2): Adam's direction plus decoupled weight
    decay, scaled per tensor by the trust ratio. ``beta1c = 1 - beta1``, ``beta2c = 1 -
    beta2``, ``inv_bc1 = 1 / (1 - beta1**t)``, ``inv_sqrt_bc2 = 1 / sqrt(1 -
    beta2**t)``; ``step_size = lr * ||p|| / ||u||`` (1 for a zero norm), from the
    norms ``lamb_norms`` summed over the tensor before this pass."""
    u, m, v = _lamb_direction(p, g, m, v, beta1c, beta2, beta2c, inv_bc1, inv_sqrt_bc2,
                              eps, weight_decay, decay, grad_scale)
    p = p - step_size * u
    return p, m, v


@register_jitable
def lamb_norms(p, g, m, v, beta1c, beta2, beta2c, inv_bc1, inv_sqrt_bc2, eps,
               weight_decay, step_size, decay, grad_scale):
    """The two vectors whose L2 norms LAMB's trust ratio needs, element by element:
    ``(p, u)``, with ``u`` as ``lamb`` computes it (``step_size`` unused). Read
    only: the reduction pass sums their squares in float64."""
    u, m, v = _lamb_direction(p, g, m, v, beta1c, beta2, beta2c, inv_bc1, inv_sqrt_bc2,
                              eps, weight_decay, decay, grad_scale)
    return p, u


def muladd(a, b, c):
    """``a * b + c`` rounded once (one FMA) where the CPU has FMA, as torch's
    vectorised kernels compute a lerp and as the Cython mirror's
    ``fusedopt_muladd`` does; nothing else is contracted, on either backend, so
    both give the same bits. This body runs under Numba's CUDA simulator."""
    return a * b + c


@intrinsic
def _fmuladd(typingctx, a, b, c):
    if not (isinstance(a, types.Float) and a == b == c):
        return None

    def codegen(context, builder, signature, args):
        t = args[0].type
        fn = builder.module.declare_intrinsic("llvm.fmuladd", [t],
                                              ir.FunctionType(t, [t, t, t]))
        return builder.call(fn, args)
    return a(a, b, c), codegen


@overload(muladd, target="generic")
def _muladd_generic(a, b, c):  # (CUDA: ptxas contracts a multiply-add by default)
    return lambda a, b, c: a * b + c


@overload(muladd, target="cpu")
def _muladd_cpu(a, b, c):
    return lambda a, b, c: _fmuladd(a, b, c)


def pick(first, a, b):
    """``a`` where the host scalar ``first`` is 1, ``b`` where it is 0. Compiled for
    the CPU, a select made on the bits of both (``(a & m) | (b & ~m)``, ``m`` all
    ones or zero from ``first``), which no compiler can reduce to one side: so a
    loop whose output is ``pick(first, a, f(x))`` reads ``x`` whatever ``first`` is.
    ASGD's copy phase needs it: written only, its average's stream costs a CPU's
    memory system more than read and written (16M float32 on a Xeon: 7.5 ms
    against 5.8 ms a step in a bare loop); a NaN in the side not picked never
    reaches the result. On CUDA (not measured there) and under Numba's CUDA
    simulator, a plain select: this body. ``first`` is exactly 0 or 1."""
    return a if first else b


@intrinsic
def _bit_pick(typingctx, first, a, b):
    if not (isinstance(a, types.Float) and a == b and isinstance(first, types.Float)):
        return None

    def codegen(context, builder, signature, args):
        f, x, y = args
        bits = ir.IntType(a.bitwidth)
        m = builder.neg(builder.fptoui(f, bits))  # 1.0: all ones; 0.0: zero
        r = builder.or_(builder.and_(builder.bitcast(x, bits), m),
                        builder.and_(builder.bitcast(y, bits), builder.not_(m)))
        return builder.bitcast(r, x.type)
    return a(first, a, b), codegen


@overload(pick, target="generic")
def _pick_generic(first, a, b):
    return lambda first, a, b: a if first else b


@overload(pick, target="cpu")
def _pick_cpu(first, a, b):
    return lambda first, a, b: _bit_pick(first, a, b)


@register_jitable
def _lerp(start, end, w, small):
    """torch's lerp, as its vectorised CPU kernel computes it: ``w (end - start) +
    start`` where ``|w| < 0.5`` (``small``), else ``(w - 1)(end - start) + end``, the
    coefficient and the base chosen first so that both are one multiply-add
    (``muladd``: one FMA where the CPU has it); ``w / w`` is 1 in ``w``'s own
    precision (``|w| >= 0.5`` there; a literal 1 would be float64)."""
    coeff = w if small else w - w / w
    base = start if small else end
    return muladd(coeff, end - start, base)


@register_jitable
def muon_momentum(u, g, buf, w, mu, nesterov, small_w, small_mu, grad_scale):
    """Muon's momentum, its first pass (``fusedopt.algorithms.muon_contract``), as
    torch's ``buf.lerp_(g, w)`` with ``w = 1 - momentum`` and, with Nesterov,
    ``u = g.lerp(buf, mu)`` with ``mu = momentum``, else ``u = buf``: the update the
    Newton-Schulz iteration orthogonalises, written into ``u`` (a scratch array in
    the parameter's place). ``small_w``, ``small_mu``: ``|w| < 0.5``, ``|mu| <
    0.5`` (which formula each lerp takes)."""
    g = grad_scale * g
    buf = _lerp(buf, g, w, small_w)
    if nesterov:
        u = _lerp(g, buf, mu, small_mu)
    else:
        u = buf
    return u, buf


@register_jitable
def adafactor_root(a, c, s, t, eps1sq, floor):
    """The reciprocal square root of Adafactor's factored estimate at row i, column j:
    ``1 / sqrt(max(v, eps1**2))`` with ``v = a c`` (``a = r_i / max(mean(r), eps1)``
    of the row, ``c = c_j`` of the column), made as ``s t`` from the row's ``s = 1 /
    sqrt(a)`` and the column's ``t = 1 / sqrt(c)`` (both made once on the host), or
    ``floor = 1 / sqrt(eps1**2)`` where ``v < eps1**2`` (torch's clamp; a NaN stays
    NaN, as does ``0 * inf``). Two multiplications per element in the place of
    torch's division, square root and division, which bound the factored passes on
    the CPU (memory no longer does): within a few ulp of torch's ``((r c) /
    denom).clamp(eps1**2).rsqrt()``, not its bits."""
    return floor if a * c < eps1sq else s * t


@register_jitable
def _adafactor_direction(g, v, w, one, eps1sq, factored, small, grad_scale):
    """Adafactor's update direction ``u = g / sqrt(max(v, eps1**2))`` (torch's
    ``clamp_(min=eps1 * eps1).rsqrt_()`` then ``mul_(grad)``): ``(u, v)``. For a
    vector, ``v`` is its second moment, after torch's ``variance.lerp_(g * g, w)``
    here; for a factored estimate, ``v`` is already its reciprocal square root
    (``adafactor_root``). ``one``: 1 in the compute dtype."""
    g = grad_scale * g
    if factored:
        return v * g, v
    v = _lerp(v, g * g, w, small)
    m = eps1sq if v < eps1sq else v  # (torch's clamp: a NaN stays NaN)
    return one / sqrt(m) * g, v


@register_jitable
def adafactor_update(p, g, v, w, one, eps1sq, param_scale, eps2, rho, d, numel,
                     step_size, factored, small, decay, grad_scale):
    """Adafactor's element pass (``fusedopt.algorithms.adafactor_contract``): ``p =
    p (1 - lr weight_decay) - step_size u``; ``step_size = alpha / denom`` from the
    norms ``adafactor_update_norms`` summed before this pass (``eps2``, ``rho``,
    ``d``, ``numel``: the host's, unused here)."""
    u, v = _adafactor_direction(g, v, w, one, eps1sq, factored, small, grad_scale)
    if decay:
        p = p * param_scale
    p = p - step_size * u
    return p, v


@register_jitable
def adafactor_update_norms(p, g, v, w, one, eps1sq, param_scale, eps2, rho, d, numel,
                           step_size, factored, small, decay, grad_scale):
    """The two vectors whose norms Adafactor's step size needs: ``(p, u)`` (the
    parameter before its decay, the update direction). Read only."""
    u, v = _adafactor_direction(g, v, w, one, eps1sq, factored, small, grad_scale)
    return p, u
