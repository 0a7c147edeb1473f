"""Backends: ``available()`` tells which work here and why the others don't."""

from __future__ import annotations

from .registry import (Availability, Backend, BackendUnavailable, available, load,
                       names, register, select)


from . import policy


def _describe_numba(module) -> str:
    import numba

    return (f"numba {numba.__version__}, {numba.get_num_threads()} threads, "
            f"parallel from {policy.PARALLEL_MIN_SIZE} elements")


def _describe_cython(module) -> str:
    isa = {"v4": "x86-64-v4 (AVX-512)", "v3": "x86-64-v3 (AVX2, FMA)",
           "base": "baseline"}[module.ISA]
    threads = (f"OpenMP, {module.OPENMP_THREADS} threads" if module.OPENMP_THREADS
               else "built without OpenMP: serial")
    return f"compiled kernels, {isa}, {threads}"


def _describe_cuda(module) -> str:
    from .. import _device

    if _device.simulated():
        return "Numba CUDA simulator (NUMBA_ENABLE_CUDASIM=1): correctness only, slow"
    return f"Numba CUDA on {_device.describe()['name']}"


register(Backend("numba", ("cpu",), "fusedopt.backends.numba_cpu", _describe_numba))
register(Backend("cuda", ("cuda",), "fusedopt.backends.numba_cuda", _describe_cuda))
register(Backend("cython", ("cpu",), "fusedopt.backends.cython", _describe_cython))
register(Backend("numpy", ("cpu",), "fusedopt.backends.numpy_ref",
                 lambda module: "naive NumPy reference (temporaries; oracle and baseline)"))

__all__ = ["Availability", "Backend", "BackendUnavailable", "available", "load",
           "names", "register", "select"]
