"""``fusedopt.show_config()`` / ``python -m fusedopt``: what a bug report needs; and
what ``import fusedopt`` costs a process that never meets bfloat16."""

from __future__ import annotations

import io
import os
import subprocess
import sys

import fusedopt


def test_show_config_names_what_was_found_and_picked():
    out = io.StringIO()
    fusedopt.show_config(file=out)
    text = out.getvalue()
    for key in ("fusedopt: " + fusedopt.__version__, "python:", "numpy:", "backends:",
                "  numba:", "  cython:", "  numpy:", "auto_backend_for_host_arrays:",
                "cython_isa:", "cpu_x86_64_level:", "openmp_threads:",
                "numba_threads:", "numba_threading_layer:", "numba_cache_dir:",
                "torch:", "environment:"):
        assert key in text, key
    info = fusedopt._config.config()
    assert set(info["backends"]) == set(fusedopt.backends.available())
    assert info["cython_isa"] in ("base", "v3", "v4")


def test_python_m_fusedopt_prints_the_config():
    run = subprocess.run([sys.executable, "-m", "fusedopt"], capture_output=True,
                         text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.startswith(f"fusedopt: {fusedopt.__version__}\n")
    assert "backends:" in run.stdout and "numba_cache_dir:" in run.stdout


def test_import_leaves_ml_dtypes_and_numba_until_needed():
    """``import fusedopt`` imports neither ml_dtypes (most of a second, needed for
    bfloat16 only) nor Numba (imported by the first optimizer on the numba
    backend); a float32 step on the compiled kernels still runs without them, and
    bfloat16 arrays work once the user has made one."""
    code = """
import sys
import numpy as np
import fusedopt
assert "ml_dtypes" not in sys.modules and "numba" not in sys.modules, sorted(
    m for m in sys.modules if m.startswith(("ml_dtypes", "numba")))
p = np.ones(8, np.float32)
fusedopt.Adam([p], lr=0.1, backend="cython").step([np.ones_like(p)])
assert "ml_dtypes" not in sys.modules and np.allclose(p, 0.9)
fp = fusedopt.FlatParams([(4,)], "bfloat16")  # the name, before ml_dtypes is imported
assert str(fp.views[0].dtype) == "bfloat16"
import ml_dtypes
b = np.ones(8, ml_dtypes.bfloat16)
fusedopt.Adam([b], lr=0.5, backend="cython").step([np.ones_like(b)])
assert np.allclose(b.astype(np.float32), 0.5), b
print("ok")
"""
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-3000:]


def test_a_read_only_install_caches_kernels_in_numbas_user_wide_directory(tmp_path):
    """Where the package directory is not writable (a system or container install),
    Numba caches the kernels in its user-wide cache directory instead, and
    show_config says so. Read-only is simulated: Numba's in-tree locator is made to
    fail as it does on a read-only directory (root writes through chmod)."""
    code = """
import numba.core.caching as caching
def read_only(self):
    raise PermissionError("read-only file system")
caching.InTreeCacheLocator.ensure_cache_path = read_only
import numpy as np
import fusedopt
where = fusedopt._config.config()["numba_cache_dir"]
assert "UserWideCacheLocator" in where, where
p = np.ones(8, np.float32)
fusedopt.Adam([p], lr=0.1, backend="numba").step([np.ones_like(p)])
assert np.allclose(p, 0.9)
print(where)
"""
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path)}
    env.pop("NUMBA_CACHE_DIR", None)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=600, env=env)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.startswith(str(tmp_path)), run.stdout
    assert any(tmp_path.rglob("*.nbi")), "the kernels were cached there"
