"""Cython backend: the ahead-of-time compiled kernels (``kernels/_kernels.pyx``), for
machines without Numba or where JIT compilation is unwanted.

The kernels are built once per x86-64 level; the highest the CPU runs is imported
(``_kernels_v4`` with AVX-512, ``_kernels_v3`` with AVX2+FMA, else ``_kernels_base``).
``FUSEDOPT_CYTHON_ISA=base|v3|v4`` picks one explicitly (tests run each).
"""

from __future__ import annotations

import importlib
import os

from .. import scalars
from . import policy

ISA_VAR = "FUSEDOPT_CYTHON_ISA"
_LEVELS = {"v4": 4, "v3": 3, "base": 0}


def _load():
    base = importlib.import_module("fusedopt._kernels_base")
    level = base.cpu_level()
    wanted = os.environ.get(ISA_VAR, "").strip()
    if wanted:
        if wanted not in _LEVELS:
            raise ImportError(f"{ISA_VAR}: expected one of {list(_LEVELS)}, got {wanted!r}")
        if _LEVELS[wanted] > level:
            raise ImportError(f"{ISA_VAR}={wanted}: this CPU runs x86-64 level {level}")
        return wanted, importlib.import_module(f"fusedopt._kernels_{wanted}")
    for isa in ("v4", "v3"):
        if level >= _LEVELS[isa]:
            try:
                return isa, importlib.import_module(f"fusedopt._kernels_{isa}")
            except ImportError:  # not built for this platform or compiler
                continue
    return "base", base


ISA, _k = _load()
#: OpenMP threads of the parallel loops; 0: built without OpenMP, loops run serially.
OPENMP_THREADS = _k.openmp_threads()


def sgd(param, grad, momentum_buffer, fresh_buffer, lr, momentum, dampening,
        weight_decay, nesterov, grad_scale, seed=0, out=None):
    lr, weight_decay, momentum, buf_grad_scale = scalars.sgd(
        fresh_buffer, lr, momentum, dampening, weight_decay)
    par = param.size >= policy.PARALLEL_MIN_SIZE
    _k.sgd(param, grad, momentum_buffer, lr, weight_decay, momentum, buf_grad_scale,
           weight_decay != 0.0, nesterov, grad_scale, par, seed, out)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps,
         weight_decay, decoupled, grad_scale, seed=0, out=None):
    s = scalars.adam(step, lr, beta1, beta2, eps, weight_decay, decoupled)
    _k.adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, *s, weight_decay != 0.0,
            decoupled, grad_scale, param.size >= policy.PARALLEL_MIN_SIZE, seed, out)


def adagrad(param, grad, state_sum, step, lr, lr_decay, eps, weight_decay, grad_scale,
            seed=0, out=None):
    s = scalars.adagrad(step, lr, lr_decay, eps, weight_decay)
    _k.adagrad(param, grad, state_sum, *s, weight_decay != 0.0, grad_scale,
               param.size >= policy.PARALLEL_MIN_SIZE, seed, out)


def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha, eps,
            weight_decay, momentum, grad_scale, seed=0, out=None):
    s = scalars.rmsprop(lr, alpha, eps, weight_decay, momentum)
    par = param.size >= policy.PARALLEL_MIN_SIZE
    _k.rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, *s,
               weight_decay != 0.0, grad_scale, par, seed, out)


#: bf16 storage (uint16 bits) for state and parameters (kernels/lowbit.pxd)
BF16 = ("state", "params")


def grad_stats(grad, parallel):
    return _k.grad_stats(grad, parallel)
