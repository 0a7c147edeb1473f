"""The Cython backend: every compiled ISA variant this CPU runs holds the torch parity
matrix, and a process without Numba selects it."""

from __future__ import annotations

import importlib
import subprocess
import sys

import ml_dtypes
import numpy as np
import pytest

from cases import CASES, TORCH_CASES, case_id
from conftest import NUMBERS

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
@pytest.mark.parametrize("case", TORCH_CASES, ids=[case_id(c) for c in TORCH_CASES])
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


LOWBIT = {"bf16 state": (np.float32, dict(state_dtype="bfloat16")),
          "bf16 params": (BF16, dict(seed=5)),
          "master weights": (BF16, dict(master_weights=True, state_dtype="bfloat16"))}


@pytest.mark.parametrize("lowbit", list(LOWBIT))
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_every_isa_variant_stores_bf16_as_numba_does(case, lowbit, isa):
    """bf16 state (uint16 bits, float32 math, round to nearest even), bf16 parameters
    (stochastic rounding from the counter hash) and master weights, serial and OpenMP
    loops: kernels/lowbit.pxd stores what fusedopt/lowbit.py stores. At least 90% of
    the stored bf16 elements are bit-identical to the numba backend's (another hash
    or rounding would leave about half) and 95% of the float32 ones agree to 1e-5.
    Not all: Numba contracts multiply-adds into FMAs and the Cython kernels do not
    (-ffp-contract=off, so that their bits do not depend on placement), so a value at
    a bf16 rounding boundary lands on the other side, and the next steps carry it.
    How closely bf16 tracks float32 is test_bf16's."""
    pytest.importorskip("numba")
    from cases import ALGORITHMS
    name, kwargs = case
    cls = ALGORITHMS[name][0]
    dtype, options = LOWBIT[lowbit]
    rng = np.random.default_rng(9)
    shapes = [(300,), (100_000,)]  # below and above the parallel threshold
    ours = [rng.standard_normal(s).astype(dtype) for s in shapes]
    ref = [p.copy() for p in ours]
    o_ours = cls(ours, **kwargs, **options, backend="cython")
    o_ref = cls(ref, **kwargs, **options, backend="numba")
    for _ in range(6):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        o_ours.step(grads)
        o_ref.step(grads)

    def same_as_numba(got, want, what):
        assert got.dtype == want.dtype, what
        if got.dtype.itemsize == 2:  # bf16 bits
            assert np.mean(got.view(np.uint16) == want.view(np.uint16)) >= 0.9, what
        else:
            close = np.isclose(got, want, rtol=1e-5, atol=1e-6)
            assert np.mean(close) >= 0.95, what

    for a, b in zip(ours, ref):
        same_as_numba(a, b, name)
    for i, st in o_ref.state.items():
        for key, value in st.items():
            if key not in NUMBERS:
                same_as_numba(o_ours.state[i][key], value, key)


def test_grad_stats_reads_bf16_gradients():
    """Clipping and the non-finite policies read bf16 gradients (uint16 bits) too."""
    g = np.linspace(-3, 3, 70_001).astype(BF16)
    g[[5, 9_000]] = [np.inf, np.nan]
    sumsq, bad = cython_backend.grad_stats(g.view(np.uint16), True)
    finite = g.astype(np.float64)[np.isfinite(g.astype(np.float64))]
    assert bad == 2 and not np.isfinite(sumsq)
    g[[5, 9_000]] = 0
    sumsq, bad = cython_backend.grad_stats(g.view(np.uint16), False)
    assert bad == 0 and sumsq == pytest.approx(float(np.sum(finite ** 2)), rel=1e-12)



@pytest.mark.parametrize("state", [np.float32, np.uint16])
def test_an_elements_bits_do_not_depend_on_where_the_array_lies(state, isa):
    """The same values stepped at 16 placements (alignments, and distances between
    the arrays), by the per-array and the multi-tensor entry points, give the same
    bits: every
    version of a loop GCC makes (vectorised body, peeled and remainder scalar
    copies) rounds alike, which GCC's default FMA contraction did not guarantee
    (AdamW with amsgrad and bf16 state differed in the last bit with placement)."""
    cy = cython_backend
    rng = np.random.default_rng(0)
    h = (0.2, 0.99, 0.01, 0.0125, 1.02, 1e-8, 0.1, 0.999)  # scalars.adam's eight
    results = set()
    for n in (17, 1000):
        values = [rng.standard_normal(n).astype(np.float32) for _ in range(5)]
        values[2:] = [np.abs(v) if state == np.float32 else
                      (np.abs(v).view(np.uint32) >> 16).astype(np.uint16)
                      for v in values[2:]]
        out = set()
        for offset in range(16):
            for multi in (False, True):
                # the arrays of one dtype side by side in one buffer, ``offset``
                # elements apart: near enough that GCC's runtime alias checks may
                # pick a loop's scalar copy, at every alignment
                pool = {dt: np.empty(5 * (n + offset) + 16, dt)
                        for dt in {v.dtype for v in values}}
                arrays = []
                for k, v in enumerate(values):
                    at = k * (n + offset) + offset
                    a = pool[v.dtype][at:at + n]
                    a[...] = v
                    arrays.append(a)
                p, g, m, v, vmax = arrays
                flags = (True, True, True)  # decay, decoupled, amsgrad
                if multi:
                    table = np.array([[a.ctypes.data for a in arrays] + [0]], np.int64)
                    cy.multi("adam", flags, (True, True, True), h,
                             (p.dtype, g.dtype, m.dtype), table,
                             np.array([n], np.int64), np.zeros(1, np.int64), -1.0, False)
                else:
                    cy._call("adam", flags, (m, v, vmax), h, p, g, -1.0)
                out.add(b"".join(a.tobytes() for a in (p, m, v, vmax)))
        results.add(len(out))
    assert results == {1}
