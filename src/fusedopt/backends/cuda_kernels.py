"""CUDA kernels of the ``cuda`` backend: grid-stride loops over the rules.

Importable without a GPU (``tests/test_cuda.py`` compiles them to PTX to check the
types); ``numba_cuda`` launches them. Every kernel casts its scalars to the array
dtype first, so a float32 kernel stays float32. State goes through ``lowbit.load``
and ``store``, so it may be bf16 bits (uint16) beside float32 parameters.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .. import _device, rules
from ..lowbit import load, store
from ..rules import cast_like

_jit = cuda.jit(cache=not _device.simulated())


@_jit
def _fill(a, value):
    value = cast_like(value, a)
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        store(a, i, value)


@_jit
def _sgd(p, g, lr, weight_decay, decay, grad_scale):
    grad_scale = cast_like(grad_scale, p)
    lr, weight_decay = cast_like(lr, p), cast_like(weight_decay, p)
    zero = cast_like(0.0, p)
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        p[i], _ = rules.sgd(p[i], g[i], zero, lr, weight_decay, zero, zero,
                            decay, False, False, grad_scale)


@_jit
def _sgd_momentum(p, g, buf, lr, weight_decay, momentum, buf_grad_scale,
                  decay, nesterov, grad_scale):
    grad_scale = cast_like(grad_scale, p)
    lr, weight_decay = cast_like(lr, p), cast_like(weight_decay, p)
    momentum, buf_grad_scale = cast_like(momentum, p), cast_like(buf_grad_scale, p)
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        p[i], b = rules.sgd(p[i], g[i], load(buf, i), lr, weight_decay, momentum,
                            buf_grad_scale, decay, True, nesterov, grad_scale)
        store(buf, i, b)


@_jit
def _adam(p, g, m, v, vmax, beta1c, beta2, beta2c, step_size, inv_sqrt_bc2, eps,
          weight_decay, param_scale, decay, decoupled, amsgrad, grad_scale):
    # one kernel for both layouts: a GPU pays nothing for a predicated load of vmax
    grad_scale = cast_like(grad_scale, p)
    beta1c, beta2, beta2c = cast_like(beta1c, p), cast_like(beta2, p), cast_like(beta2c, p)
    step_size, inv_sqrt_bc2 = cast_like(step_size, p), cast_like(inv_sqrt_bc2, p)
    eps, weight_decay = cast_like(eps, p), cast_like(weight_decay, p)
    param_scale, zero = cast_like(param_scale, p), cast_like(0.0, p)
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        vm = load(vmax, i) if amsgrad else zero
        p[i], m_, v_, vm = rules.adam(
            p[i], g[i], load(m, i), load(v, i), vm, beta1c, beta2, beta2c, step_size,
            inv_sqrt_bc2, eps, weight_decay, param_scale, decay, decoupled, amsgrad,
            grad_scale)
        store(m, i, m_)
        store(v, i, v_)
        if amsgrad:
            store(vmax, i, vm)


@_jit
def _adagrad(p, g, acc, clr, eps, weight_decay, decay, grad_scale):
    grad_scale = cast_like(grad_scale, p)
    clr, eps, weight_decay = cast_like(clr, p), cast_like(eps, p), cast_like(weight_decay, p)
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        p[i], a = rules.adagrad(p[i], g[i], load(acc, i), clr, eps, weight_decay,
                                decay, grad_scale)
        store(acc, i, a)


@_jit
def _rmsprop(p, g, sq, gavg, buf, lr, alpha, alphac, eps, weight_decay, momentum,
             decay, centered, has_momentum, grad_scale):
    grad_scale = cast_like(grad_scale, p)
    lr, alpha, alphac = cast_like(lr, p), cast_like(alpha, p), cast_like(alphac, p)
    eps, weight_decay = cast_like(eps, p), cast_like(weight_decay, p)
    momentum, zero = cast_like(momentum, p), cast_like(0.0, p)
    for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
        mu = load(gavg, i) if centered else zero
        b = load(buf, i) if has_momentum else zero
        p[i], s, mu, b = rules.rmsprop(
            p[i], g[i], load(sq, i), mu, b, lr, alpha, alphac, eps, weight_decay,
            momentum, decay, centered, has_momentum, grad_scale)
        store(sq, i, s)
        if centered:
            store(gavg, i, mu)
        if has_momentum:
            store(buf, i, b)


@_jit
def _grad_stats(g, out):
    # out[0] += sum of squares (float64), out[1] += count of non-finite elements;
    # one atomic pair per thread after its grid-stride partial sums
    sumsq, bad = 0.0, 0.0
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        x = np.float64(g[i])
        sumsq += x * x
        if not (abs(x) <= 1.7976931348623157e308):
            bad += 1.0
    cuda.atomic.add(out, 0, sumsq)
    cuda.atomic.add(out, 1, bad)


KERNELS = (_fill, _sgd, _sgd_momentum, _adam, _adagrad, _rmsprop, _grad_stats)
