"""Backend registry: auto selection, the environment override, clear refusals."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

import fusedopt
from fusedopt.backends import BackendUnavailable, available, registry

from cases import ALGORITHMS, CASES, case_id


def test_available_reports_every_backend():
    report = available()
    assert report["numpy"].ok
    assert set(report) >= {"numba", "numpy"}
    for status in report.values():
        assert status.detail


def test_auto_prefers_the_compiled_kernels_then_numba(monkeypatch):
    """On host arrays "auto" takes the Cython kernels compiled into the package (no
    JIT in a first step; the same bits as Numba's), unless built without OpenMP;
    then Numba."""
    cython = pytest.importorskip("fusedopt.backends.cython")
    assert fusedopt.Adam([np.zeros(3)]).backend == (
        "cython" if cython.OPENMP_THREADS else "numba")
    pytest.importorskip("numba")
    monkeypatch.setattr(cython, "OPENMP_THREADS", 0)
    assert fusedopt.Adam([np.zeros(3)]).backend == "numba"


def test_environment_variable_overrides_auto(monkeypatch):
    monkeypatch.setenv("FUSEDOPT_BACKEND", "numpy")
    assert fusedopt.Adam([np.zeros(3)]).backend == "numpy"
    assert fusedopt.Adam([np.zeros(3)], backend="numpy").backend == "numpy"


def test_environment_variable_with_unknown_name(monkeypatch):
    monkeypatch.setenv("FUSEDOPT_BACKEND", "nope")
    with pytest.raises(ValueError, match="backend: expected one of"):
        fusedopt.Adam([np.zeros(3)])


def test_explicit_backend_that_cannot_import_says_why(monkeypatch):
    monkeypatch.setitem(registry._REGISTRY, "broken",
                        registry.Backend("broken", ("cpu",), "fusedopt_no_such_module"))
    monkeypatch.setattr(registry, "_FAILED", {})
    with pytest.raises(BackendUnavailable, match="backend 'broken' is not available: "
                       "ModuleNotFoundError"):
        fusedopt.SGD([np.zeros(3)], backend="broken")
    assert available()["broken"] == (False, "ModuleNotFoundError: No module named "
                                            "'fusedopt_no_such_module'")


def test_without_numba_auto_falls_back_and_steps():
    """A process where Numba cannot be imported: fusedopt imports, says why numba is
    unavailable, and auto picks a working backend whose step is correct."""
    code = """
import sys
sys.modules["numba"] = None
import numpy as np, fusedopt
status = fusedopt.backends.available()["numba"]
assert not status.ok and "numba" in status.detail, status
p = np.ones(5)
opt = fusedopt.SGD([p], lr=0.5)
opt.step([np.ones(5)])
assert opt.backend != "numba"
assert np.array_equal(p, np.full(5, 0.5)), p
print(opt.backend)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_numba_and_cython_give_the_same_bits(case, dtype):
    """The two host backends compile the same rules with the same operations in the
    same order and no contraction into FMAs (``-ffp-contract=off``; Numba without
    ``fastmath``): every element-wise algorithm gives the same bits on both, so a
    run does not depend on which one a machine has. LAMB's per-tensor norms are
    summed in another order (each backend's vectorised reduction): within a few ulps
    of the largest element."""
    pytest.importorskip("numba")
    name, kwargs = case
    cls = ALGORITHMS[name][0]
    rng = np.random.default_rng(0)
    start = [rng.standard_normal(n).astype(dtype) for n in (257, 1000, 3, 64, 500)]
    grads = [[rng.standard_normal(a.size).astype(dtype) for a in start]
             for _ in range(4)]
    results = []
    for backend in ("numba", "cython"):
        for arrays in ([a.copy() for a in start[:1]], [a.copy() for a in start]):
            opt = cls(arrays, backend=backend, **kwargs)
            for g in grads:
                opt.step(g[:len(arrays)])
            results.append(arrays)
    for ours, theirs in zip(results[:2], results[2:]):
        for a, b in zip(ours, theirs):
            if name == "lamb":
                np.testing.assert_allclose(a, b, rtol=0, atol=8 * np.finfo(dtype).eps
                                           * np.abs(b).max())
            else:
                np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))


def test_a_first_step_on_auto_needs_no_jit():
    """What makes a process's first step fast (README, "Install and run a first
    step"): ``import fusedopt`` and a first step on ``backend="auto"`` import neither
    Numba (whose import and first kernel load cost ~0.4 s, seconds to compile) nor
    ml_dtypes, where the compiled kernels run; checked in a fresh interpreter."""
    cython = pytest.importorskip("fusedopt.backends.cython")
    # (compiled kernels built without OpenMP are serial: auto takes Numba there,
    # whose first step then pays its import, as the README says)
    expected = "cython" if cython.OPENMP_THREADS else "numba"
    code = f"""
import sys
import numpy as np, fusedopt
p = np.ones(1024, np.float32)
opt = fusedopt.Adam([p], lr=0.1)
opt.step([np.ones(1024, np.float32)])
assert opt.backend == {expected!r}, opt.backend
assert p[0] < 1, p[0]
assert "ml_dtypes" not in sys.modules
assert ("numba" in sys.modules) == (opt.backend == "numba")
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items()
                               if k != "FUSEDOPT_BACKEND"})
    assert proc.returncode == 0, proc.stderr[-2000:]
