"""The Cython backend: every compiled ISA variant this CPU runs holds the torch parity
matrix, and a process without Numba selects it."""

from __future__ import annotations

import importlib
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from cases import CASES, case_id

cython_backend = pytest.importorskip("fusedopt.backends.cython",
                                     reason="the compiled extension is not installed")
base = importlib.import_module("fusedopt._kernels_base")
BF16 = np.dtype(ml_dtypes.bfloat16)
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


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_every_isa_variant_keeps_bf16_state_as_numba_does(case, isa):
    """state_dtype="bfloat16" (uint16 bits, float32 math, round to nearest even):
    kernels/lowbit.pxd against fusedopt/lowbit.py, serial and OpenMP loops. The two
    compilers contract multiply-adds differently, so a few state elements differ by
    a bf16 step, which reaches their parameters and the next steps' state: all but
    0.1% of the elements agree to float32 rounding, and no state element is off by
    more than four bf16 steps (of itself, or of 1% of its array's largest value
    where a state cancels to near zero)."""
    pytest.importorskip("numba")
    import fusedopt
    from cases import ALGORITHMS
    name, kwargs = case
    cls = ALGORITHMS[name][0]
    rng = np.random.default_rng(9)
    shapes = [(300,), (100_000,)]  # below and above the parallel threshold
    ref = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    ours = [p.copy() for p in ref]
    o_ours = cls(ours, **kwargs, state_dtype="bfloat16", backend="cython")
    o_ref = cls(ref, **kwargs, state_dtype="bfloat16", backend="numba")
    for _ in range(6):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        o_ours.step(grads)
        o_ref.step(grads)

    def check(a, b, close, bound, floor):  # error relative to max(|b|, floor)
        err = np.abs(a.astype(np.float64) - b) / np.maximum(np.abs(b), floor)
        assert np.mean(err > close) <= 1e-3 and err.max() <= bound, (err.max(), name)

    for a, b in zip(ours, ref):
        check(a, b, 1e-5, 1e-2, 1.0)  # parameters: unit scale
    for i, st in o_ref.state.items():
        for key, value in st.items():
            if key != "step":
                got = o_ours.state[i][key]
                assert got.dtype == np.uint16
                want = value.view(BF16).astype(np.float32)  # scale: 1% of the largest
                check(got.view(BF16).astype(np.float32), want, 0.0, 2 ** -5,
                      0.01 * np.abs(want).max())
