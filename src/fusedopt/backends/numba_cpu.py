"""Numba CPU backend: one fused pass per call, the rules of ``fusedopt.rules`` in a loop.

Every algorithm runs the same loop (``_template``) around its rule. It takes flat,
C-contiguous arrays of one dtype (float32 or float64; bf16 as uint16 bits) and the
step's scalars as a tuple of Python floats, cast to the array dtype inside the kernel
(building NumPy scalars in Python costs ~3 us per call; a cast inside costs nothing).
Changing a hyperparameter's value therefore never recompiles. Its boolean options
(weight decay on or off, decoupled, Nesterov) are compiled in instead: one
specialisation per dtype, combination in use and layout of state slots.

Each kernel holds a serial loop and a ``prange`` loop over the same body; arrays
of ``policy.PARALLEL_MIN_SIZE`` elements or more take the parallel one.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange

from .. import algorithms, rules
from . import policy, template
from ..lowbit import load
from ..rules import cast_all, cast_like

# error_model="numpy": the "python" model checks every division for zero and blocks
# vectorisation (2x slower). "contract" lets LLVM fuse multiply-adds; no flag that
# assumes finite values, so NaN and inf propagate exactly as in torch.
JIT_OPTIONS = dict(parallel=True, cache=True, nogil=True, error_model="numpy",
                   fastmath={"contract"})
_jit = njit(**JIT_OPTIONS)


def _template(rule, flags: tuple[bool, ...], slots: int):
    """The one loop of every algorithm: ``template.element`` (``rule`` with its options
    ``flags`` frozen) over each element of ``p``, with its ``slots`` state arrays
    ``s0, s1, ...`` (None where a slot is absent, e.g. ``max_exp_avg_sq`` without
    amsgrad) and its per-step host scalars ``h`` (a tuple of floats, cast to the
    compute dtype once, before the loop).

    Each ``(rule, flags)`` is its own closure, so Numba compiles (and caches: the
    cache key hashes the closure) a loop with the options' branches removed, and each
    layout of present and absent slots (None has a type of its own) is one
    specialisation without loads or stores for the absent. A load or store under a
    runtime ``if``, or options passed as arguments (selects on both branches'
    results: 1.13-1.23x the time of a bf16-state Adam step in cache), would cost
    vectorisation. The slots are separate arguments: read through a tuple inside the
    loop, the serial loop does not vectorise (measured 7.7x slower at 1M). The serial
    and ``prange`` loops run the same body; ``parallel`` picks one."""
    step = template.element(rule, flags, slots)

    def loop(p, g, h, grad_scale, seed, out, parallel, s0=None, s1=None, s2=None,
             s3=None):
        h, grad_scale, zero = cast_all(h, p), cast_like(grad_scale, p), cast_like(0.0, p)
        if parallel:
            for i in prange(p.size):
                step(p, g, i, h, grad_scale, zero, seed, out, s0, s1, s2, s3)
        else:
            for i in range(p.size):
                step(p, g, i, h, grad_scale, zero, seed, out, s0, s1, s2, s3)
    return loop


_PARALLEL_AT = 6  # the position of ``parallel`` in the template's arguments

#: compiled kernels (Numba dispatchers), by ``(name, flags, slots)``; see ``kernel``
KERNELS: dict[tuple, object] = {}
_SERIALISED: dict[tuple, object] = {}


def kernel(name: str, flags: tuple[bool, ...], slots: int, parallel: bool = False):
    """The compiled ``_template`` of ``rules.<name>`` for these options
    (``parallel=True``: for a parallel call, see ``_serialised``). NumPy bools find
    the same entry; the closure gets Python's."""
    key = (name, flags, slots)
    k = KERNELS.get(key)
    if k is None:
        k = _jit(_template(getattr(rules, name), tuple(map(bool, flags)), slots))
        _SERIALISED[key] = _serialised(k, _PARALLEL_AT)  # first: another thread may find k
        KERNELS[key] = k
    return _SERIALISED[key] if parallel and not _threadsafe else k


def _call(name, flags, states, h, param, grad, grad_scale, seed=0, out=None):
    """One kernel call over ``param``: ``states`` holds one array or None per slot."""
    par = param.size >= policy.PARALLEL_MIN_SIZE
    k = (_SERIALISED if par and not _threadsafe else KERNELS).get(
        (name, flags, len(states)))
    if k is None:
        k = kernel(name, flags, len(states), parallel=par)
    k(param, grad, h, grad_scale, seed, out, par, *states)


def _stats(sources: int):
    # Sums in float64 (a norm of 100M float32 squares accumulated in float32 loses
    # digits). "reassoc" for this kernel only: a strict left-to-right float sum does
    # not vectorise (measured 2.0x a plain Adam step at 16M instead of ~1.15x), and a
    # norm summed in another order is still the norm. Non-finite is a comparison,
    # which no reassociation can fold: NaN and inf fail it. ``sources``: the cache
    # key of the code it calls (template.SOURCES).
    def grad_stats(g, parallel):
        sources  # noqa: B018 - in the closure: the cache key
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
    return grad_stats


_grad_stats = njit(**{**JIT_OPTIONS, "fastmath": {"reassoc", "contract"}})(
    _stats(template.SOURCES))


# -- the backend contract: flat arrays, raw hyperparameters -------------------------

# Numba's workqueue threading layer (what Numba uses where neither OpenMP nor TBB is
# available) is not thread-safe: two threads entering parallel regions at once abort
# the whole process. Until the first parallel call shows that the layer in use is
# another one, kernels come wrapped (``_serialised``) so that parallel calls take a
# process-wide lock; from then on they are called directly, at no cost.
_PARALLEL_LOCK = threading.Lock()
_threadsafe = False


def _serialised(kernel, parallel_at: int = -1):
    """``kernel``, whose argument at ``parallel_at`` says whether it runs in parallel,
    with its parallel calls made one at a time (while the threading layer may be
    workqueue)."""
    def call(*args):
        global _threadsafe
        if not args[parallel_at]:
            return kernel(*args)
        with _PARALLEL_LOCK:
            result = kernel(*args)
            _threadsafe = numba.threading_layer() != "workqueue"
        return result
    return call


_grad_stats_serialised = _serialised(_grad_stats)


# the backend contract: one function per algorithm, each built from its spec
globals().update({spec.name: algorithms.contract(spec, _call) for spec in algorithms.SPECS})


#: bf16 storage (uint16 bits) for state and parameters; see ``fusedopt.lowbit``
BF16 = ("state", "params")

def grad_stats(grad, parallel):
    return (_grad_stats_serialised if parallel and not _threadsafe
            else _grad_stats)(grad, parallel)
