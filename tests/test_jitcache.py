"""The on-disk cache of compiled kernels (``fusedopt.backends.jitcache``): a save is
one step to every other process, so two processes compiling at once cannot leave
the index naming one's machine code for the other's variant."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from fusedopt.backends import jitcache

pytestmark = pytest.mark.skipif(jitcache.fcntl is None,
                                reason="fcntl is not available (Windows)")

KERNEL = "def kernel(x):\n    return x + 1\n"

#: a process compiling one variant of ``kernel`` into the cache; "A" pauses inside
#: its save (after reading the index) until the file "release" appears; "B" says
#: when it starts and when it first reads the index
SCRIPT = """
import os, sys, time
import numba
from numba.core import caching
from fusedopt.backends import jitcache
import kernel
role, where = sys.argv[1], sys.argv[2]
flag = lambda name: open(os.path.join(where, name), "w").close()
save, load = caching.IndexDataCacheFile._save_index, caching.IndexDataCacheFile._load_index
def paused_save(self, overloads):
    flag("A_inside")
    while not os.path.exists(os.path.join(where, "release")):
        time.sleep(0.01)
    return save(self, overloads)
def noted_load(self):
    flag("B_read")
    return load(self)
if role == "A":
    caching.IndexDataCacheFile._save_index = paused_save
else:
    caching.IndexDataCacheFile._load_index = noted_load
    flag("B_ready")
f = jitcache.locked(numba.njit(cache=True)(kernel.kernel))
f.compile((numba.int64,) if role == "A" else (numba.float64,))
"""


def _wait(path, process):
    while not os.path.exists(path):
        assert process.poll() is None, process.communicate()
        time.sleep(0.01)


def test_a_save_is_one_step_to_another_process(tmp_path):
    """Process A saves a variant and pauses inside its save, between reading the
    index and writing it; process B compiles another variant meanwhile. Numba
    alone lets B read the index then, number its entry as A did and write its data
    file under the name A's index will give A's variant; locked, B reads nothing
    until A is done. Both variants then load their own code from the cache."""
    (tmp_path / "kernel.py").write_text(KERNEL)
    (tmp_path / "run.py").write_text(SCRIPT)
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([str(tmp_path)] + sys.path)}

    def start(role):
        return subprocess.Popen([sys.executable, str(tmp_path / "run.py"), role,
                                 str(tmp_path)], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)

    a = start("A")
    _wait(tmp_path / "A_inside", a)
    b = start("B")
    try:
        _wait(tmp_path / "B_ready", b)
        time.sleep(1.0)  # (B, unlocked, reads the index at once)
        assert not (tmp_path / "B_read").exists()
    finally:
        (tmp_path / "release").touch()
        outs = [p.communicate(timeout=300) for p in (a, b)]
    assert a.returncode == 0 and b.returncode == 0, outs
    check = subprocess.run(
        [sys.executable, "-c",
         "import numba, kernel; from fusedopt.backends import jitcache\n"
         "f = jitcache.locked(numba.njit(cache=True)(kernel.kernel))\n"
         "assert f(1) == 2 and f(1.5) == 2.5, (f(1), f(1.5))\n"
         "assert sum(f.stats.cache_hits.values()) == 2, f.stats"],
        env=env, capture_output=True, text=True, timeout=300)
    assert check.returncode == 0, check.stderr


def test_a_file_system_without_locks_runs_as_numba_alone(tmp_path, monkeypatch):
    """flock refused (NFS without its lock daemon: ENOLCK): kernels still compile,
    run and are cached, as Numba alone does, instead of every compile failing."""
    import errno

    import numba

    def refused(fd, operation):
        raise OSError(errno.ENOLCK, "No locks available")

    (tmp_path / "nolock_kernel.py").write_text(KERNEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(numba.config, "CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(jitcache.fcntl, "flock", refused)
    import nolock_kernel

    f = jitcache.locked(numba.njit(cache=True)(nolock_kernel.kernel))
    assert f(1) == 2
    again = jitcache.locked(numba.njit(cache=True)(nolock_kernel.kernel))
    assert again(1) == 2 and sum(again.stats.cache_hits.values()) == 1
