"""The Cython backend: every compiled ISA variant this CPU runs holds the torch parity
matrix, and a process without Numba selects it."""

from __future__ import annotations

import importlib
import subprocess
import sys

import numpy as np
import pytest

from cases import CASES, case_id

cython_backend = pytest.importorskip("fusedopt.backends.cython",
                                     reason="the compiled extension is not installed")
base = importlib.import_module("fusedopt._kernels_base")
ISAS = [isa for isa, level in (("base", 0), ("v3", 3), ("v4", 4))
        if base.cpu_level() >= level and importlib.util.find_spec(f"fusedopt._kernels_{isa}")]


@pytest.fixture(params=ISAS)
def isa(request, monkeypatch):
    """Reload the backend on one ISA variant; restore the default afterwards."""
    monkeypatch.setenv(cython_backend.ISA_VAR, request.param)
    importlib.reload(cython_backend)
    assert cython_backend.ISA == request.param
    yield request.param
    monkeypatch.delenv(cython_backend.ISA_VAR)
    importlib.reload(cython_backend)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_every_isa_variant_matches_torch(case, dtype, isa):
    pytest.importorskip("torch")
    from test_parity_torch import assert_close, run_both
    name, kwargs = case
    assert_close(*run_both(name, kwargs, "cython", dtype), dtype)


def test_unknown_isa_is_refused_with_the_reason(monkeypatch):
    monkeypatch.setenv(cython_backend.ISA_VAR, "sse9")
    with pytest.raises(ImportError, match=r"FUSEDOPT_CYTHON_ISA: expected one of"):
        importlib.reload(cython_backend)
    monkeypatch.delenv(cython_backend.ISA_VAR)
    importlib.reload(cython_backend)


def test_parallel_loops_use_openmp():
    assert cython_backend.OPENMP_THREADS >= 1, "built without OpenMP: loops run serially"


def test_process_without_numba_selects_cython_and_steps():
    code = """
import sys
sys.modules["numba"] = None
import numpy as np, fusedopt
assert not fusedopt.backends.available()["numba"].ok
p = np.ones(100_000, np.float32)
opt = fusedopt.Adam([p], lr=0.1)
assert opt.backend == "cython", opt.backend
opt.step([np.full_like(p, 2.0)])
# first Adam step: p - lr * m_hat / (sqrt(v_hat) + eps) = 1 - 0.1 * 2 / (2 + 1e-8)
assert np.allclose(p, 0.9, rtol=1e-6), p[:3]
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
