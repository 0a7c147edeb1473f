"""Cython backend: the ahead-of-time compiled kernels (``kernels/_kernels.pyx.tp``),
what ``backend="auto"`` takes on host arrays (no JIT in a process's first step; the
same bits as the Numba kernels), and all there is on machines without Numba.

The kernels are built once per x86-64 level; the highest the CPU runs is imported
(``_kernels_v4`` with AVX-512, ``_kernels_v3`` with AVX2+FMA, else ``_kernels_base``).
``FUSEDOPT_CYTHON_ISA=base|v3|v4`` picks one explicitly (tests run each).
"""

from __future__ import annotations

import importlib
import os

import numpy as np

from .. import algorithms, newton_schulz
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


def _call(name, flags, states, h, param, grad, grad_scale, seed=0, out=None,
          parallel=None):
    """One kernel call over ``param``: ``states`` holds one array or None per slot;
    in parallel when ``param`` is large enough (``parallel`` None) or if told."""
    pad = (None,) * (_SLOTS - len(states))
    getattr(_k, name)(param, grad, *states, *pad, h, flags, grad_scale,
                      param.size >= policy.PARALLEL_MIN_SIZE if parallel is None
                      else parallel, seed, out)



_SLOTS = 4  # the kernels' s0..s3


def _norms(name, flags, states, h, param, grad, grad_scale):
    """The reduction pass of ``rules.<name>_norms`` over ``param`` (``Spec.norms``):
    its two sums of squares."""
    pad = (None,) * (_SLOTS - len(states))
    return getattr(_k, name + "_norms")(param, grad, *states, *pad, h, flags, grad_scale,
                                        param.size >= policy.PARALLEL_MIN_SIZE)

#: the kernels' storage kinds: float32, float64, bf16 bits
_KINDS = {np.dtype(np.float32): 0, np.dtype(np.float64): 1, np.dtype(np.uint16): 2}


def multi(name, flags, present, h, dtypes, table, counts, seeds, grad_scale, parallel):
    """One kernel call over every tensor of ``table`` (``numba_cpu.multi``'s
    contract; an absent slot is a 0 address, so ``present`` is not needed)."""
    if name in algorithms.PER_TENSOR:
        raise ValueError(f"multi: {name} steps tensor by tensor and has no multi-tensor "
                         "call")
    getattr(_k, name + "_multi")(table, counts, seeds, h, flags, grad_scale, parallel,
                                 _KINDS[dtypes[0]], _KINDS[dtypes[2]])

# the backend contract: one function per algorithm, each built from its spec
globals().update({spec.name: algorithms.contract(spec, _call, _norms)
                  for spec in algorithms.SPECS})
#: Muon's momentum pass and SGD's step, on one thread (``algorithms.muon_passes``)
MUON_PASSES = algorithms.muon_passes(_call)
#: Muon: its momentum pass and SGD's step around the Newton-Schulz iteration (BLAS)
muon = algorithms.muon_contract(*MUON_PASSES, newton_schulz.Workspace)
class CythonFactors(algorithms.HostFactors):
    """Adafactor's factored stage on this backend (``algorithms.HostFactors``): the
    row and column sums in one parallel read of the gradient (``adafactor_means``),
    then the norms and update passes with the estimate made per element from the
    factors (``adafactor_factored``): the mirrors of ``numba_cpu.NumbaFactors``."""

    @classmethod
    def means(cls, grad, n: int, m: int, scale2: float):
        rows, parts = cls.sums_arrays(grad, n, m)
        _k.adafactor_means(grad, n, m, policy.MEANS_ROWS, rows, parts,
                           grad.size >= policy.PARALLEL_MIN_SIZE)
        return cls.from_sums(rows, parts, grad, n, m, scale2)

    @staticmethod
    def _passes(reduce, flags, h, param, grad, factors, grad_scale):
        return _k.adafactor_factored(param, grad, *factors, h, flags, grad_scale, reduce,
                                     param.size >= policy.PARALLEL_MIN_SIZE)

    @classmethod
    def norms(cls, flags, h, param, grad, factors, grad_scale):
        return cls._passes(True, flags, h, param, grad, factors, grad_scale)

    @classmethod
    def update(cls, flags, h, param, grad, factors, grad_scale, seed=0, out=None):
        cls._passes(False, flags, h, param, grad, factors, grad_scale)


#: Adafactor: its factored moments on the host around its two passes
adafactor = algorithms.adafactor_contract(globals()["adafactor_update"], CythonFactors)


#: bf16 storage (uint16 bits) for state and parameters (kernels/lowbit.pxd)
BF16 = ("state", "params")


def grad_stats(grad, parallel):
    return _k.grad_stats(grad, parallel)
