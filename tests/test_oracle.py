"""Parity with the float64 NumPy oracle (``backend="numpy"``, written from the
textbook formulas): every algorithm x option x compiled backend x dtype, 50 steps of
random data, params and every state array compared. For the algorithms torch.optim
has, test_parity_torch.py holds the oracle itself to torch; for the others (Lion)
this is the parity test."""

from __future__ import annotations

import numpy as np
import pytest

from cases import ALGORITHMS, CASES, case_id
from conftest import SHAPES, TOL, relative_error

STEPS = 50


def run(name, kwargs, backend, dtype, seed=0):
    cls = ALGORITHMS[name][0]
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    opt = cls(params, **kwargs, backend=backend)
    for _ in range(STEPS):
        opt.step([rng.standard_normal(p.shape).astype(dtype) for p in params])
    return params, opt


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_matches_the_float64_oracle(case, backend, dtype):
    name, kwargs = case
    params, ours = run(name, kwargs, backend, dtype)
    oracle, ref = run(name, kwargs, "numpy", np.float64)
    tol = TOL[dtype]
    for i, (p, q) in enumerate(zip(params, oracle)):
        assert p.dtype == dtype
        err = relative_error(p, q)
        assert err <= tol, f"params[{i}]: relative error {err:.3g} > {tol}"
        assert ours.state[i].keys() == ref.state[i].keys()
        for key, value in ref.state[i].items():
            if isinstance(value, np.ndarray):
                err = relative_error(ours.state[i][key], value)
                assert err <= tol, f"state[{i}][{key!r}]: relative error {err:.3g}"
            else:
                assert ours.state[i][key] == value


@pytest.mark.parametrize("arrays", [1, 5], ids=["per-array", "multi"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_asgd_copy_phase_overwrites_a_non_finite_average(backend, dtype, arrays):
    """Before ``t0`` ASGD's average is the parameter itself, copied (torch's
    ``ax.copy_(param)``): the compiled kernels read the old average there too (a
    select on the bits of both sides, ``rules.pick``), and a NaN or inf in it must
    not reach the copy; the averaging phase after ``t0`` then averages again."""
    import fusedopt

    rng = np.random.default_rng(4)
    params = [rng.standard_normal(7 + k).astype(dtype) for k in range(arrays)]
    opt = fusedopt.ASGD(params, lr=0.05, t0=2, backend=backend)
    opt.step([rng.standard_normal(p.shape).astype(dtype) for p in params])
    for i in range(arrays):
        ax = opt.state[i]["ax"]
        ax[0], ax[1], ax[2:] = np.nan, -np.inf, np.inf
    opt.step([rng.standard_normal(p.shape).astype(dtype) for p in params])
    for i, p in enumerate(params):
        np.testing.assert_array_equal(opt.state[i]["ax"], p)  # the copy, bit for bit
    before = [opt.state[i]["ax"].copy() for i in range(arrays)]
    for _ in range(3):  # past t0: averaging, mu < 1
        opt.step([rng.standard_normal(p.shape).astype(dtype) for p in params])
    for i, p in enumerate(params):
        ax = opt.state[i]["ax"]
        assert np.isfinite(ax).all() and not np.array_equal(ax, p)
        assert not np.array_equal(ax, before[i])
