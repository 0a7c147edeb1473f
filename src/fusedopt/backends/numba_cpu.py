"""Numba CPU backend: one fused pass per call, the rules of ``fusedopt.rules`` in a loop.

Every kernel takes flat, C-contiguous arrays of one dtype (float32 or float64) and the
step's scalars as Python floats, cast to the array dtype inside the kernel (building
NumPy scalars in Python costs ~3 us per call; a cast inside costs nothing). Changing
a hyperparameter's value therefore never recompiles. Its boolean options (weight
decay on or off, decoupled, Nesterov) are compiled in instead (``_unswitched``): one
specialisation per dtype and combination in use.

Each kernel holds a serial loop and a ``prange`` loop over the same rule call; arrays
of ``policy.PARALLEL_MIN_SIZE`` elements or more take the parallel one.
"""

from __future__ import annotations

import inspect
import threading

import numba
import numpy as np
from numba import njit, prange

from .. import rules, scalars
from . import policy
from ..lowbit import load, store, store_param
from ..rules import cast_like

#: sha256 of rules.py + lowbit.py (first 16 hex digits). Numba's cache is keyed on the
#: content of this file only, not on the functions it calls: pinning their hash here
#: makes any change to them change this file too, so stale machine code is never loaded.
#: tests/test_types.py fails with the new value when the two disagree.
RULES_SHA256 = "d846299186272d1f"

# error_model="numpy": the "python" model checks every division for zero and blocks
# vectorisation (2x slower). "contract" lets LLVM fuse multiply-adds; no flag that
# assumes finite values, so NaN and inf propagate exactly as in torch.
JIT_OPTIONS = dict(parallel=True, cache=True, nogil=True, error_model="numpy",
                   fastmath={"contract"})
_jit = njit(**JIT_OPTIONS)


def _unswitched(template):
    """``template(*flags)`` returns a kernel whose boolean options are the closure's
    ``flags``. Numba freezes closure variables as constants, so each combination
    compiles (and caches: the cache key hashes them) a loop with the options' branches
    removed. Passed as arguments, they stay in the vectorised loop as selects on
    both branches' results: measured 1.13-1.23x the time of a bf16-state Adam step in
    cache (float32: no change). ``_adam(decay, decoupled)`` is the compiled kernel
    (``parallel=True``: for a parallel call, see ``_serialised``); ``kernels`` holds
    those compiled so far, ``flags`` names the options."""
    kernels, serialised = {}, {}

    def kernel(*flags, parallel=False):
        k = kernels.get(flags)
        if k is None:  # NumPy bools find the same entry; the closure gets Python's
            k = _jit(template(*map(bool, flags)))
            serialised[flags] = _serialised(k)  # first: another thread may find k
            kernels[flags] = k
        return serialised[flags] if parallel and not _threadsafe else k
    kernel.kernels, kernel.flags = kernels, tuple(inspect.signature(template).parameters)
    kernel.__name__ = template.__name__
    return kernel


@_unswitched
def _sgd(decay):
    def kernel(p, g, lr, weight_decay, grad_scale, seed, out, parallel):
        grad_scale = cast_like(grad_scale, p)
        lr, weight_decay = cast_like(lr, p), cast_like(weight_decay, p)
        zero = cast_like(0.0, p)
        if parallel:
            for i in prange(p.size):
                p_, _ = rules.sgd(load(p, i), load(g, i), zero, lr, weight_decay, zero, zero, decay, False, False, grad_scale)
                store_param(p, i, p_, seed, out)
        else:
            for i in range(p.size):
                p_, _ = rules.sgd(load(p, i), load(g, i), zero, lr, weight_decay, zero, zero, decay, False, False, grad_scale)
                store_param(p, i, p_, seed, out)
    return kernel


@_unswitched
def _sgd_momentum(decay, nesterov):
    def kernel(p, g, buf, lr, weight_decay, momentum, buf_grad_scale, grad_scale, seed,
               out, parallel):
        grad_scale = cast_like(grad_scale, p)
        lr, weight_decay = cast_like(lr, p), cast_like(weight_decay, p)
        momentum, buf_grad_scale = cast_like(momentum, p), cast_like(buf_grad_scale, p)
        if parallel:
            for i in prange(p.size):
                p_, buf_ = rules.sgd(load(p, i), load(g, i), load(buf, i), lr, weight_decay, momentum, buf_grad_scale, decay, True, nesterov, grad_scale)
                store_param(p, i, p_, seed, out)
                store(buf, i, buf_)
        else:
            for i in range(p.size):
                p_, buf_ = rules.sgd(load(p, i), load(g, i), load(buf, i), lr, weight_decay, momentum, buf_grad_scale, decay, True, nesterov, grad_scale)
                store_param(p, i, p_, seed, out)
                store(buf, i, buf_)
    return kernel


@_unswitched
def _adam(decay, decoupled):
    def kernel(p, g, m, v, beta1c, beta2, beta2c, step_size, inv_sqrt_bc2, eps,
               weight_decay, param_scale, grad_scale, seed, out, parallel):
        grad_scale = cast_like(grad_scale, p)
        beta1c, beta2, beta2c = cast_like(beta1c, p), cast_like(beta2, p), cast_like(beta2c, p)
        step_size, inv_sqrt_bc2 = cast_like(step_size, p), cast_like(inv_sqrt_bc2, p)
        eps, weight_decay = cast_like(eps, p), cast_like(weight_decay, p)
        param_scale, zero = cast_like(param_scale, p), cast_like(0.0, p)
        if parallel:
            for i in prange(p.size):
                p_, m_, v_, _ = rules.adam( load(p, i), load(g, i), load(m, i), load(v, i), zero, beta1c, beta2, beta2c, step_size, inv_sqrt_bc2, eps, weight_decay, param_scale, decay, decoupled, False, grad_scale)
                store_param(p, i, p_, seed, out)
                store(m, i, m_)
                store(v, i, v_)
        else:
            for i in range(p.size):
                p_, m_, v_, _ = rules.adam( load(p, i), load(g, i), load(m, i), load(v, i), zero, beta1c, beta2, beta2c, step_size, inv_sqrt_bc2, eps, weight_decay, param_scale, decay, decoupled, False, grad_scale)
                store_param(p, i, p_, seed, out)
                store(m, i, m_)
                store(v, i, v_)
    return kernel


@_unswitched
def _adam_amsgrad(decay, decoupled):
    def kernel(p, g, m, v, vmax, beta1c, beta2, beta2c, step_size, inv_sqrt_bc2, eps,
               weight_decay, param_scale, grad_scale, seed, out, parallel):
        grad_scale = cast_like(grad_scale, p)
        beta1c, beta2, beta2c = cast_like(beta1c, p), cast_like(beta2, p), cast_like(beta2c, p)
        step_size, inv_sqrt_bc2 = cast_like(step_size, p), cast_like(inv_sqrt_bc2, p)
        eps, weight_decay = cast_like(eps, p), cast_like(weight_decay, p)
        param_scale = cast_like(param_scale, p)
        if parallel:
            for i in prange(p.size):
                p_, m_, v_, vmax_ = rules.adam( load(p, i), load(g, i), load(m, i), load(v, i), load(vmax, i), beta1c, beta2, beta2c, step_size, inv_sqrt_bc2, eps, weight_decay, param_scale, decay, decoupled, True, grad_scale)
                store_param(p, i, p_, seed, out)
                store(m, i, m_)
                store(v, i, v_)
                store(vmax, i, vmax_)
        else:
            for i in range(p.size):
                p_, m_, v_, vmax_ = rules.adam( load(p, i), load(g, i), load(m, i), load(v, i), load(vmax, i), beta1c, beta2, beta2c, step_size, inv_sqrt_bc2, eps, weight_decay, param_scale, decay, decoupled, True, grad_scale)
                store_param(p, i, p_, seed, out)
                store(m, i, m_)
                store(v, i, v_)
                store(vmax, i, vmax_)
    return kernel


@_unswitched
def _adagrad(decay):
    def kernel(p, g, acc, clr, eps, weight_decay, grad_scale, seed, out, parallel):
        grad_scale = cast_like(grad_scale, p)
        clr, eps, weight_decay = cast_like(clr, p), cast_like(eps, p), cast_like(weight_decay, p)
        if parallel:
            for i in prange(p.size):
                p_, acc_ = rules.adagrad(load(p, i), load(g, i), load(acc, i), clr, eps, weight_decay, decay, grad_scale)
                store_param(p, i, p_, seed, out)
                store(acc, i, acc_)
        else:
            for i in range(p.size):
                p_, acc_ = rules.adagrad(load(p, i), load(g, i), load(acc, i), clr, eps, weight_decay, decay, grad_scale)
                store_param(p, i, p_, seed, out)
                store(acc, i, acc_)
    return kernel


# RMSprop has four state layouts (centered adds grad_avg, momentum adds a buffer);
# one kernel each, so no kernel reads or writes an array it does not need.
@_unswitched
def _rmsprop(decay):
    def kernel(p, g, sq, lr, alpha, alphac, eps, weight_decay, momentum, grad_scale,
               seed, out, parallel):
        grad_scale = cast_like(grad_scale, p)
        lr, alpha, alphac = cast_like(lr, p), cast_like(alpha, p), cast_like(alphac, p)
        eps, weight_decay = cast_like(eps, p), cast_like(weight_decay, p)
        momentum, zero = cast_like(momentum, p), cast_like(0.0, p)
        if parallel:
            for i in prange(p.size):
                p_, sq_, _, _ = rules.rmsprop( load(p, i), load(g, i), load(sq, i), zero, zero, lr, alpha, alphac, eps, weight_decay, momentum, decay, False, False, grad_scale)
                store_param(p, i, p_, seed, out)
                store(sq, i, sq_)
        else:
            for i in range(p.size):
                p_, sq_, _, _ = rules.rmsprop( load(p, i), load(g, i), load(sq, i), zero, zero, lr, alpha, alphac, eps, weight_decay, momentum, decay, False, False, grad_scale)
                store_param(p, i, p_, seed, out)
                store(sq, i, sq_)
    return kernel


@_unswitched
def _rmsprop_centered(decay):
    def kernel(p, g, sq, gavg, lr, alpha, alphac, eps, weight_decay, momentum,
               grad_scale, seed, out, parallel):
        grad_scale = cast_like(grad_scale, p)
        lr, alpha, alphac = cast_like(lr, p), cast_like(alpha, p), cast_like(alphac, p)
        eps, weight_decay = cast_like(eps, p), cast_like(weight_decay, p)
        momentum, zero = cast_like(momentum, p), cast_like(0.0, p)
        if parallel:
            for i in prange(p.size):
                p_, sq_, gavg_, _ = rules.rmsprop( load(p, i), load(g, i), load(sq, i), load(gavg, i), zero, lr, alpha, alphac, eps, weight_decay, momentum, decay, True, False, grad_scale)
                store_param(p, i, p_, seed, out)
                store(sq, i, sq_)
                store(gavg, i, gavg_)
        else:
            for i in range(p.size):
                p_, sq_, gavg_, _ = rules.rmsprop( load(p, i), load(g, i), load(sq, i), load(gavg, i), zero, lr, alpha, alphac, eps, weight_decay, momentum, decay, True, False, grad_scale)
                store_param(p, i, p_, seed, out)
                store(sq, i, sq_)
                store(gavg, i, gavg_)
    return kernel


@_unswitched
def _rmsprop_momentum(decay):
    def kernel(p, g, sq, buf, lr, alpha, alphac, eps, weight_decay, momentum,
               grad_scale, seed, out, parallel):
        grad_scale = cast_like(grad_scale, p)
        lr, alpha, alphac = cast_like(lr, p), cast_like(alpha, p), cast_like(alphac, p)
        eps, weight_decay = cast_like(eps, p), cast_like(weight_decay, p)
        momentum, zero = cast_like(momentum, p), cast_like(0.0, p)
        if parallel:
            for i in prange(p.size):
                p_, sq_, _, buf_ = rules.rmsprop( load(p, i), load(g, i), load(sq, i), zero, load(buf, i), lr, alpha, alphac, eps, weight_decay, momentum, decay, False, True, grad_scale)
                store_param(p, i, p_, seed, out)
                store(sq, i, sq_)
                store(buf, i, buf_)
        else:
            for i in range(p.size):
                p_, sq_, _, buf_ = rules.rmsprop( load(p, i), load(g, i), load(sq, i), zero, load(buf, i), lr, alpha, alphac, eps, weight_decay, momentum, decay, False, True, grad_scale)
                store_param(p, i, p_, seed, out)
                store(sq, i, sq_)
                store(buf, i, buf_)
    return kernel


@_unswitched
def _rmsprop_centered_momentum(decay):
    def kernel(p, g, sq, gavg, buf, lr, alpha, alphac, eps, weight_decay, momentum,
               grad_scale, seed, out, parallel):
        grad_scale = cast_like(grad_scale, p)
        lr, alpha, alphac = cast_like(lr, p), cast_like(alpha, p), cast_like(alphac, p)
        eps, weight_decay = cast_like(eps, p), cast_like(weight_decay, p)
        momentum = cast_like(momentum, p)
        if parallel:
            for i in prange(p.size):
                p_, sq_, gavg_, buf_ = rules.rmsprop( load(p, i), load(g, i), load(sq, i), load(gavg, i), load(buf, i), lr, alpha, alphac, eps, weight_decay, momentum, decay, True, True, grad_scale)
                store_param(p, i, p_, seed, out)
                store(sq, i, sq_)
                store(gavg, i, gavg_)
                store(buf, i, buf_)
        else:
            for i in range(p.size):
                p_, sq_, gavg_, buf_ = rules.rmsprop( load(p, i), load(g, i), load(sq, i), load(gavg, i), load(buf, i), lr, alpha, alphac, eps, weight_decay, momentum, decay, True, True, grad_scale)
                store_param(p, i, p_, seed, out)
                store(sq, i, sq_)
                store(gavg, i, gavg_)
                store(buf, i, buf_)
    return kernel


@njit(**{**JIT_OPTIONS, "fastmath": {"reassoc", "contract"}})
def _grad_stats(g, parallel):
    # Sums in float64 (a norm of 100M float32 squares accumulated in float32 loses
    # digits). "reassoc" for this kernel only: a strict left-to-right float sum does
    # not vectorise (measured 2.0x a plain Adam step at 16M instead of ~1.15x), and a
    # norm summed in another order is still the norm. Non-finite is a comparison,
    # which no reassociation can fold: NaN and inf fail it.
    sumsq, bad = 0.0, 0
    if parallel:
        for i in prange(g.size):
            x = np.float64(load(g, i))
            sumsq += x * x
            bad += not (abs(x) <= 1.7976931348623157e308)
    else:
        for i in range(g.size):
            x = np.float64(load(g, i))
            sumsq += x * x
            bad += not (abs(x) <= 1.7976931348623157e308)
    return sumsq, bad


# -- the backend contract: flat arrays, raw hyperparameters -------------------------

# Numba's workqueue threading layer (what Numba uses where neither OpenMP nor TBB is
# available) is not thread-safe: two threads entering parallel regions at once abort
# the whole process. Until the first parallel call shows that the layer in use is
# another one, kernels come wrapped (``_serialised``) so that parallel calls take a
# process-wide lock; from then on they are called directly, at no cost.
_PARALLEL_LOCK = threading.Lock()
_threadsafe = False


def _serialised(kernel):
    """``kernel``, whose last argument says whether it runs in parallel, with its
    parallel calls made one at a time (while the threading layer may be workqueue)."""
    def call(*args):
        global _threadsafe
        if not args[-1]:
            return kernel(*args)
        with _PARALLEL_LOCK:
            result = kernel(*args)
            _threadsafe = numba.threading_layer() != "workqueue"
        return result
    return call


_grad_stats_serialised = _serialised(_grad_stats)


def sgd(param, grad, momentum_buffer, fresh_buffer, lr, momentum, dampening, weight_decay,
        nesterov, grad_scale, seed=0, out=None):
    par = param.size >= policy.PARALLEL_MIN_SIZE
    decay = weight_decay != 0.0
    if momentum_buffer is None:
        _sgd(decay, parallel=par)(param, grad, lr, weight_decay, grad_scale, seed, out, par)
    else:
        lr, weight_decay, momentum, buf_grad_scale = scalars.sgd(
            fresh_buffer, lr, momentum, dampening, weight_decay)
        _sgd_momentum(decay, nesterov, parallel=par)(param, grad, momentum_buffer, lr, weight_decay,
                                       momentum, buf_grad_scale, grad_scale, seed, out,
                                       par)


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps,
         weight_decay, decoupled, grad_scale, seed=0, out=None):
    par = param.size >= policy.PARALLEL_MIN_SIZE
    decay = weight_decay != 0.0
    s = scalars.adam(step, lr, beta1, beta2, eps, weight_decay, decoupled)
    if max_exp_avg_sq is None:
        _adam(decay, decoupled, parallel=par)(param, grad, exp_avg, exp_avg_sq, *s, grad_scale, seed,
                                out, par)
    else:
        _adam_amsgrad(decay, decoupled, parallel=par)(param, grad, exp_avg, exp_avg_sq,
                                        max_exp_avg_sq, *s, grad_scale, seed, out, par)


def adagrad(param, grad, state_sum, step, lr, lr_decay, eps, weight_decay, grad_scale,
            seed=0, out=None):
    par = param.size >= policy.PARALLEL_MIN_SIZE
    s = scalars.adagrad(step, lr, lr_decay, eps, weight_decay)
    _adagrad(weight_decay != 0.0, parallel=par)(param, grad, state_sum, *s, grad_scale, seed, out, par)


def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha, eps,
            weight_decay, momentum, grad_scale, seed=0, out=None):
    par = param.size >= policy.PARALLEL_MIN_SIZE
    decay = weight_decay != 0.0
    s = scalars.rmsprop(lr, alpha, eps, weight_decay, momentum)
    if grad_avg is None and momentum_buffer is None:
        _rmsprop(decay, parallel=par)(param, grad, square_avg, *s, grad_scale, seed, out, par)
    elif momentum_buffer is None:
        _rmsprop_centered(decay, parallel=par)(param, grad, square_avg, grad_avg, *s, grad_scale, seed,
                                 out, par)
    elif grad_avg is None:
        _rmsprop_momentum(decay, parallel=par)(param, grad, square_avg, momentum_buffer, *s,
                                 grad_scale, seed, out, par)
    else:
        _rmsprop_centered_momentum(decay, parallel=par)(param, grad, square_avg, grad_avg,
                                          momentum_buffer, *s, grad_scale, seed, out, par)


#: bf16 storage (uint16 bits) for state and parameters; see ``fusedopt.lowbit``
BF16 = ("state", "params")

KERNELS = (_sgd, _sgd_momentum, _adam, _adam_amsgrad, _adagrad, _rmsprop,
           _rmsprop_centered, _rmsprop_momentum, _rmsprop_centered_momentum)


def grad_stats(grad, parallel):
    return (_grad_stats_serialised if parallel and not _threadsafe
            else _grad_stats)(grad, parallel)
