"""Backends: ``available()`` tells which work here and why the others don't."""

from __future__ import annotations

from .registry import (Availability, Backend, BackendUnavailable, available, load,
                       names, register, select)


def _describe_numba(module) -> str:
    import numba

    return (f"numba {numba.__version__}, {numba.get_num_threads()} threads, "
            f"parallel above {module.PARALLEL_MIN_SIZE} elements")


register(Backend("numba", ("cpu",), "fusedopt.backends.numba_cpu", _describe_numba))
register(Backend("numpy", ("cpu",), "fusedopt.backends.numpy_ref",
                 lambda module: "naive NumPy reference (temporaries; oracle and baseline)"))

__all__ = ["Availability", "Backend", "BackendUnavailable", "available", "load",
           "names", "register", "select"]
