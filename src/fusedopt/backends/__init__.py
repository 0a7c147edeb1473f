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


# "auto" on host arrays: the Cython kernels compiled into the package first. They
# start at once (Numba's first step in a process costs ~0.4 s of imports and cache
# loads, seconds when it compiles), run at Numba's speed (memory-bound) and give
# its bits; a build without OpenMP (serial) leaves the host to Numba's threads.
register(Backend("cython", ("cpu",), "fusedopt.backends.cython", _describe_cython,
                 auto=lambda module: module.OPENMP_THREADS > 0))
register(Backend("numba", ("cpu",), "fusedopt.backends.numba_cpu", _describe_numba))
register(Backend("cuda", ("cuda",), "fusedopt.backends.numba_cuda", _describe_cuda))
register(Backend("numpy", ("cpu",), "fusedopt.backends.numpy_ref",
                 lambda module: "naive NumPy reference (temporaries; oracle and baseline)"))

__all__ = ["Availability", "Backend", "BackendUnavailable", "available", "load",
           "names", "register", "select"]
