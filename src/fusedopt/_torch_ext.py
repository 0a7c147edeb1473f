"""The drop-in's per-step tensor reads in C++, compiled against the running torch.

Before a multi-tensor step writes, ``fusedopt.torch`` reads and checks every tensor
it will touch: about five per parameter (the parameter, its gradient, its state
tensors, its step). Through torch's Python API each costs ~250 ns, which on many
small tensors is most of the step (500 tensors: ~1.1 ms of ~1.7). ``csrc/
tensor_plan.cpp`` reads the same fields from the ``at::Tensor`` behind each Python
object (~50 ns a tensor, most of it the memory it touches). It is C++ against
torch's own headers, so it must be built for the torch that runs: ``plan()``
compiles it on first use (~15 s, once per torch install: the result is cached;
processes that start at once wait for one build) with the system C++ compiler, and
returns None where that is not possible (no compiler, no headers, a platform other
than Linux or macOS), after one warning; the reason is kept beside the cache
(``<module>.failed``) so that later processes do not try again until it is
deleted. The drop-in then reads through the Python API
(``fusedopt._overlap.tensor_plan``), which is slower but checks the same things.

Environment:

- ``FUSEDOPT_TORCH_EXT=0``: do not build or load it (no warning).
- ``FUSEDOPT_CACHE_DIR``: where the compiled module is kept (default
  ``$XDG_CACHE_HOME/fusedopt`` or ``~/.cache/fusedopt``).
- ``CXX``: the compiler (default ``c++``).
"""

from __future__ import annotations

import hashlib
import importlib.machinery
import importlib.util
import logging
import os
import pathlib
import shlex
import subprocess
import sys
import sysconfig
import tempfile
import threading
import warnings

import numpy as np

from . import _guard

__all__ = ["plan", "status", "tensor_plan"]

_SOURCE = pathlib.Path(__file__).with_name("csrc") / "tensor_plan.cpp"
_NAME = "fusedopt_tensor_plan"
_log = logging.getLogger("fusedopt")
_lock = threading.Lock()
_loaded: list = []  # [module or None], once tried


def _cache_dir() -> pathlib.Path:
    root = os.environ.get("FUSEDOPT_CACHE_DIR")
    if root:
        return pathlib.Path(root)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return pathlib.Path(base) / "fusedopt"


def _target() -> pathlib.Path:
    """The compiled module's path: one per source, torch build (its version,
    commit, C++ ABI, and the location and date of its Python bindings: two installs
    of one version get a build each) and Python."""
    import torch
    bindings = pathlib.Path(torch._C.__file__).resolve()
    key = hashlib.sha256()
    for part in (_SOURCE.read_bytes(), torch.__version__,
                 getattr(torch.version, "git_version", ""),
                 torch._C._GLIBCXX_USE_CXX11_ABI, bindings, bindings.stat().st_mtime_ns,
                 sys.implementation.cache_tag, sys.platform, os.environ.get("CXX", "")):
        key.update(str(part).encode() + b"\0")
    suffix = importlib.machinery.EXTENSION_SUFFIXES[0]
    return _cache_dir() / f"{_NAME}-{key.hexdigest()[:16]}{suffix}"


def _import(path: pathlib.Path):
    spec = importlib.util.spec_from_file_location(_NAME, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _compile(target: pathlib.Path):
    """Build ``target`` from the source and import it. The build goes to a
    temporary name and is renamed into place once it imports: processes that build
    at once each get a whole file, and a build that cannot load is never cached."""
    import torch
    from torch.utils import cpp_extension
    libs = cpp_extension.library_paths()
    cmd = [*shlex.split(os.environ.get("CXX") or "c++"), "-O2", "-std=c++20", "-shared",
           "-fPIC", "-w",
           f"-D_GLIBCXX_USE_CXX11_ABI={int(torch._C._GLIBCXX_USE_CXX11_ABI)}",
           "-I" + sysconfig.get_paths()["include"]]
    cmd += ["-I" + path for path in cpp_extension.include_paths()]
    fd, tmp = tempfile.mkstemp(suffix=target.suffix, prefix=target.stem, dir=target.parent)
    os.close(fd)
    cmd += [str(_SOURCE), "-o", tmp]  # (the libraries after the source that needs them)
    cmd += ["-L" + path for path in libs] + ["-Wl,-rpath," + path for path in libs]
    if sys.platform == "darwin":
        cmd += ["-undefined", "dynamic_lookup"]
    cmd += ["-lc10", "-ltorch", "-ltorch_cpu", "-ltorch_python"]
    try:
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except FileNotFoundError as e:  # (no compiler)
            raise _Lasting(f"{cmd[0]} not found: {e}") from e
        if done.returncode > 0:  # (refused; a negative code: killed, not kept)
            raise _Lasting(f"{cmd[0]} exited with {done.returncode}: "
                           f"{done.stderr.strip()[-800:]}")
        if done.returncode:
            raise RuntimeError(f"{cmd[0]} was stopped by signal {-done.returncode}")
        try:
            module = _import(pathlib.Path(tmp))
        except ImportError as e:
            raise _Lasting(f"the build does not load: {e}") from e
        os.replace(tmp, target)
        return module
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


class _Lasting(Exception):
    """A build failure that would recur (the compiler refused, is missing, or what
    it built cannot load): kept beside the cache so later processes skip it."""


def _failed(target: pathlib.Path) -> pathlib.Path:
    return target.with_name(target.name + ".failed")


def _built(target: pathlib.Path):
    """The module at ``target``, built first where it is not there (or cannot
    load), one process at a time: the others wait for its build and load it. A
    build that fails for good leaves its reason at ``_failed(target)``."""
    if target.exists():  # (a read-only cache of a finished build: no lock needed)
        try:
            return _import(target)
        except ImportError:  # a build this torch cannot load: built again below
            pass
    import fcntl  # (POSIX: only Linux and macOS get here)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.with_name(target.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            failed = _failed(target)
            if failed.exists():  # (another process failed while this one waited)
                raise _Lasting(_reason(failed))
            if target.exists():
                try:
                    return _import(target)
                except ImportError:
                    pass
            import torch
            _log.warning("fusedopt.torch: compiling its C++ tensor reader for torch %s "
                         "(once, ~15 s; FUSEDOPT_TORCH_EXT=0 skips it)",
                         torch.__version__)
            try:
                return _compile(target)
            except _Lasting as e:
                try:
                    failed.write_text(f"{e}\n")
                except OSError:
                    pass
                raise
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _reason(failed: pathlib.Path) -> str:
    try:
        return failed.read_text().strip() or "(no reason kept)"
    except OSError as e:
        return f"(its reason could not be read: {e})"


def _off() -> str | None:
    """Why the reader is not to be built or loaded here, or None."""
    if os.environ.get("FUSEDOPT_TORCH_EXT", "1") == "0":
        return "off (FUSEDOPT_TORCH_EXT=0)"
    if _guard.disjoint is None:  # (the sweep it pairs with)
        return "not available: the compiled overlap check is missing"
    if sys.platform not in ("linux", "darwin"):
        return f"not available on {sys.platform}"
    return None


def _load():
    if _off() is not None:
        return None
    target = None
    try:
        target = _target()
        if _failed(target).exists():  # (a build failed here for good: not retried)
            raise _Lasting(_reason(_failed(target)))
        return _built(target)
    except Exception as e:  # noqa: BLE001 - any failure: the Python reads instead
        why = str(e) if isinstance(e, _Lasting) else f"{type(e).__name__}: {e}"
        retry = (f" Delete {_failed(target)} to try the build again."
                 if isinstance(e, _Lasting) and target is not None else "")
        warnings.warn(f"fusedopt.torch could not build its C++ tensor reader ({why}); "
                      "the drop-in reads its tensors through torch's Python API "
                      "instead, which checks the same but is slower on many small "
                      f"tensors. Set FUSEDOPT_TORCH_EXT=0 to skip the build.{retry}",
                      RuntimeWarning, stacklevel=3)
        return None


def status() -> str:
    """What ``plan()`` finds here, without building anything (``show_config``)."""
    off = _off()
    if off is not None:
        return off
    try:
        target = _target()
    except Exception as e:  # noqa: BLE001 - torch missing or broken: say so
        return f"not available ({type(e).__name__}: {e})"
    failed = _failed(target)
    if failed.exists():
        return f"build failed (delete {failed} to retry): {_reason(failed)}"
    if target.exists():
        return f"built: {target}"
    return f"built on first use of fusedopt.torch, into {target}"


def plan():
    """``tensor_plan`` where the compiled reader is available (built on first call),
    else None."""
    if not _loaded:
        with _lock:
            if not _loaded:
                _loaded.append(None)  # (first: a warning raised as an error leaves
                _loaded[0] = _load()  # it tried, not raising at every construction)
    return tensor_plan if _loaded[0] is not None else None


def tensor_plan(groups: list, state: dict, kinds: dict, types: tuple, has_step: bool,
                max_step: float, memo: list) -> tuple | None:
    """``fusedopt._overlap.tensor_plan``'s contract for CPU tensors, every tensor
    read and checked live in C++ (``csrc/tensor_plan.cpp``): the plan ``(table,
    counts, meta, indices, steps, None, keep, {}, ())``, or None off the common case
    (the Python plan then decides, and names any error). ``memo`` (a list the caller
    keeps, empty at first) holds the byte ranges the last overlap sweep passed: the
    sweep runs again whenever a plan's addresses, sizes or kinds differ from them."""
    total = sum(len(params) for params, _ in groups)
    table = np.zeros((total, 6), np.int64)
    counts = np.zeros(total, np.int64)
    meta = np.zeros((total, 4), np.int64)
    indices = np.zeros(total, np.int64)
    steps = np.zeros(total, np.int64)
    keep: list = []
    try:
        t, same = _loaded[0].read(groups, state, kinds, types, has_step, max_step,
                                  table, counts, meta, indices, steps, keep, memo)
    except Exception:  # noqa: BLE001 - whatever it was, the Python plan names it
        return None
    if t < 0:
        return None
    table, counts, meta, indices, steps = (table[:t], counts[:t], meta[:t], indices[:t],
                                           steps[:t])
    if not same:  # (the ranges the last sweep passed: no two can share a byte)
        if not _guard.disjoint(table, counts, meta, steps):
            return None
        memo[:] = [table.copy(), counts.copy(), meta.copy(), steps.copy()]
    return table, counts, meta, indices, steps, None, keep, {}, ()
