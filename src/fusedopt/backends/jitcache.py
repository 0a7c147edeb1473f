"""Numba's on-disk cache of compiled kernels, read and written under a lock file.

Numba keeps one index file per kernel function (its name and line) mapping each
compiled variant (signature, and for fusedopt's closures the options baked into
them) to a numbered data file, and numbers a new entry from the index it has just
read, without a lock. Two processes compiling variants of one kernel at once (the
workers of pytest-xdist, the ranks of torchrun, DataLoader workers: any start on a
fresh cache) can each read the same index, each number their entry 1, and each
write index and data file: the index one wrote then names the machine code the
other wrote, and a later process loads, for its variant, another's. With
fusedopt's kernels that is a step running another option set's math (Adafactor
with weight decay stepped without it; with another signature, worse), silently
(numba#4807, numba#10128).

``locked(dispatcher)`` swaps a dispatcher's cache for one whose loads take a
shared lock and whose saves (read the index, number, write data then index) an
exclusive one, on a file beside the index (``fcntl.flock``): a save is then one
step to every other process. Where there is no ``fcntl`` (Windows), the lock file
cannot be opened (a read-only cache directory, which no process writes either) or
the file system refuses locks (NFS without its lock daemon), the cache runs as
Numba's own.
"""

from __future__ import annotations

import contextlib

try:
    import fcntl
except ImportError:  # (Windows)
    fcntl = None


class _Locked:
    """The mixin over a Numba cache class (``FunctionCache``, ``CUDACache``)."""

    @contextlib.contextmanager
    def _lock(self, mode: int):
        f = None
        try:
            if mode == fcntl.LOCK_EX:  # a save: its directory (made again if removed)
                self._impl.locator.ensure_cache_path()
            f = open(self._cache_file._index_path + ".lock", "a+b")
            fcntl.flock(f.fileno(), mode)
        except OSError:  # no cache directory yet (a load: nothing to read), one no
            if f is not None:  # process can write, a file system without locks (NFS
                f.close()      # without lockd): Numba's own way
            f = None
        try:
            yield
        finally:
            if f is not None:
                fcntl.flock(f.fileno(), fcntl.LOCK_UN)
                f.close()

    def load_overload(self, sig, target_context):
        with self._lock(fcntl.LOCK_SH):
            return super().load_overload(sig, target_context)

    def save_overload(self, sig, data):
        with self._lock(fcntl.LOCK_EX):
            return super().save_overload(sig, data)


_CLASSES: dict[type, type] = {}


def locked(dispatcher):
    """``dispatcher`` (a Numba CPU or CUDA dispatcher made with ``cache=True``), its
    on-disk cache read and written under a lock file (see the module). Returned for
    use as a decorator; a dispatcher without a cache is returned as it is."""
    cache = getattr(dispatcher, "_cache", None)
    if fcntl is None or cache is None or not hasattr(cache, "_cache_file"):
        return dispatcher
    base = type(cache)
    if base not in _CLASSES:
        _CLASSES[base] = type("Locked" + base.__name__, (_Locked, base), {})
    dispatcher._cache = _CLASSES[base](dispatcher.py_func)
    return dispatcher


def jit(decorator):
    """The Numba decorator ``decorator`` (``numba.njit(**options)``, ``cuda.jit(...)``)
    whose dispatchers' caches are ``locked``."""
    return lambda fn: locked(decorator(fn))
