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
