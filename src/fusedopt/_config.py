"""``fusedopt.show_config()`` and ``python -m fusedopt``: what fusedopt found and picked on
this machine, in the form a bug report needs."""

from __future__ import annotations

import os
import platform
import re
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

#: the environment variables that change what fusedopt picks or how its kernels run
ENV_VARS = ("FUSEDOPT_BACKEND", "FUSEDOPT_CYTHON_ISA", "FUSEDOPT_TORCH_EXT",
            "FUSEDOPT_CACHE_DIR", "CXX", "NUMBA_NUM_THREADS",
            "NUMBA_THREADING_LAYER", "NUMBA_CACHE_DIR", "NUMBA_DISABLE_JIT",
            "NUMBA_ENABLE_CUDASIM", "OMP_NUM_THREADS")


def widest_simd(flags: list[str]) -> str:
    """The widest x86 vector extension among /proc/cpuinfo's ``flags``: what bounds
    the kernels' arithmetic (bf16 conversions, sqrt and division per element)."""
    for flag in ("avx512f", "avx2", "avx", "sse2"):
        if flag in flags:
            return flag
    return "none"


def cpu() -> dict[str, Any]:
    """The CPU: model, family, logical CPUs, its widest SIMD extension (Linux's
    /proc/cpuinfo), and the CPU name LLVM compiles the Numba kernels for."""
    info: dict[str, Any] = {"cpu": platform.processor() or platform.machine(),
                            "logical_cpus": os.cpu_count()}
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        cpuinfo = ""
    first: dict[str, str] = {}  # each key's first line (one per logical CPU in the file)
    for key, value in re.findall(r"^(model name|cpu family|flags)\s*:\s*(.*)$",
                                 cpuinfo, re.M):
        first.setdefault(key, value.strip())
    if "model name" in first:
        info["cpu"] = first["model name"]
    if "cpu family" in first:
        info["cpu_family"] = int(first["cpu family"])
    if "flags" in first:
        info["simd"] = widest_simd(first["flags"].split())
    try:  # (znver3, znver5, skylake-avx512, ...)
        import llvmlite.binding
        info["llvm_cpu"] = llvmlite.binding.get_host_cpu_name()
    except Exception:  # llvmlite missing or broken: Numba is then unavailable too
        pass
    return info


def _version(dist: str) -> str | None:
    """An installed distribution's version, read from its metadata (not imported:
    importing torch alone takes seconds)."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _numba() -> dict[str, Any]:
    try:
        import numba
    except Exception as exc:
        return {"numba": f"not importable ({type(exc).__name__}: {exc})"}
    info: dict[str, Any] = {"numba_threads": numba.get_num_threads()}
    try:  # known once a parallel kernel has run in this process
        info["numba_threading_layer"] = numba.threading_layer()
    except ValueError:
        requested = numba.config.THREADING_LAYER
        info["numba_threading_layer"] = (
            f"chosen at the first parallel step (requested: {requested!r}; omp, then "
            "tbb, then workqueue)")
    info["numba_cache_dir"] = _numba_cache()
    return info


def _numba_cache() -> str:
    """Where Numba caches fusedopt's compiled kernels, as Numba itself picks it for
    one of them: NUMBA_CACHE_DIR when set, else ``__pycache__`` beside the package
    when writable, else its user-wide cache directory (a read-only install)."""
    try:
        from numba.core.caching import FunctionCache

        from .backends import numba_cpu
        cache = FunctionCache(numba_cpu._grad_stats.py_func)
        return f"{cache._cache_path} ({type(cache._impl.locator).__name__})"
    except Exception as exc:  # no writable place at all: Numba compiles every time
        return (f"none found ({type(exc).__name__}: {exc}): kernels compile in every "
                "process; set NUMBA_CACHE_DIR to a writable directory")


def _cython() -> dict[str, Any]:
    try:
        from .backends import cython
    except Exception as exc:
        return {"cython_kernels": f"not importable ({type(exc).__name__}: {exc})"}
    return {"cython_isa": cython.ISA, "cpu_x86_64_level": cython._k.cpu_level(),
            "openmp_threads": cython.OPENMP_THREADS}


def config() -> dict[str, Any]:
    """Everything ``show_config`` prints, as a dict."""
    import numpy as np

    from . import __version__, backends
    info: dict[str, Any] = {"fusedopt": __version__,
                            "python": platform.python_version(),
                            "platform": platform.platform(), "numpy": np.__version__}
    for dist in ("numba", "llvmlite", "numba-cuda", "ml_dtypes", "torch"):
        info[dist] = _version(dist)
    info.update(cpu())
    info["backends"] = {name: (status.detail if status.ok else
                               f"unavailable: {status.detail}")
                        for name, status in backends.available().items()}
    try:
        info["auto_backend_for_host_arrays"] = backends.select("auto", "cpu")[0]
    except backends.BackendUnavailable as exc:
        info["auto_backend_for_host_arrays"] = f"none: {exc}"
    info.update(_cython())
    info.update(_numba())
    if info["torch"] is not None:  # the drop-in's C++ reads (fusedopt._torch_ext)
        from . import _torch_ext
        info["torch_tensor_reader"] = _torch_ext.status()
    info["environment"] = {k: os.environ[k] for k in ENV_VARS if k in os.environ}
    return info


def show_config(file=None) -> None:
    """Print what fusedopt found and picked here: its version, each backend and why
    it is or is not available, which one ``backend="auto"`` takes, the Cython
    kernels' instruction set and the CPU that chose it, thread counts, Numba's
    threading layer and cache directory, library versions and the environment
    variables that change any of it. Paste it into a bug report."""
    file = sys.stdout if file is None else file
    for key, value in config().items():
        if isinstance(value, dict):
            print(f"{key}:", file=file)
            for k, v in value.items():
                print(f"  {k}: {v}", file=file)
            if not value:
                print("  (none set)", file=file)
        else:
            print(f"{key}: {value}", file=file)
