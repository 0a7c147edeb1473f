"""Parity with torch.optim on CPU: every algorithm x option x backend x dtype,
50 steps of random data, params and every state array compared."""

from __future__ import annotations

import numpy as np
import pytest

from cases import TORCH_ALGORITHMS as ALGORITHMS, TORCH_CASES as CASES, case_id
from conftest import SHAPES, TOL, relative_error

torch = pytest.importorskip("torch")

STEPS = 50
# fusedopt state name -> torch state name (identical by design)
STATE_NAMES = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer", "sum",
               "square_avg", "grad_avg")


def run_both(name, kwargs, backend, dtype, groups=None, steps=STEPS, seed=0):
    cls, torch_name, _ = ALGORITHMS[name]
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    if groups is None:
        ours = cls(params, **kwargs, backend=backend)
        theirs = getattr(torch.optim, torch_name)(tparams, **kwargs)
    else:
        split = [params[:2], params[2:]]
        tsplit = [tparams[:2], tparams[2:]]
        ours = cls([{"params": ps, **g} for ps, g in zip(split, groups)], **kwargs,
                   backend=backend)
        theirs = getattr(torch.optim, torch_name)(
            [{"params": ps, **g} for ps, g in zip(tsplit, groups)], **kwargs)
    for _ in range(steps):
        grads = [rng.standard_normal(p.shape).astype(dtype) for p in params]
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g.copy())
        ours.step(grads)
        theirs.step()
    return params, tparams, ours, theirs


def assert_close(params, tparams, ours, theirs, dtype):
    tol = TOL[dtype]
    for i, (p, tp) in enumerate(zip(params, tparams)):
        assert p.dtype == dtype
        err = relative_error(p, tp.detach().numpy())
        assert err <= tol, f"params[{i}]: relative error {err:.3g} > {tol}"
        tstate = theirs.state[tp]
        for key in STATE_NAMES:
            if key in tstate and tstate[key] is not None:
                err = relative_error(ours.state[i][key],
                                     tstate[key].numpy().reshape(-1))
                assert err <= tol, f"state[{i}][{key!r}]: relative error {err:.3g}"
        if "step" in tstate:
            assert ours.state[i]["step"] == int(tstate["step"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_matches_torch(case, backend, dtype):
    name, kwargs = case
    assert_close(*run_both(name, kwargs, backend, dtype), dtype)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_param_groups_match_torch(name, backend):
    """Two groups with their own lr and weight decay, as a torch user would write."""
    groups = [{"lr": 0.02, "weight_decay": 0.1}, {"lr": 0.005, "weight_decay": 0.0}]
    if name == "rprop":  # no weight decay: its own step-size bounds instead
        groups = [{"lr": 0.02, "step_sizes": (1e-4, 1.0)}, {"lr": 0.005}]
    kwargs = {"momentum": 0.9} if name in ("sgd", "rmsprop") else {}
    assert_close(*run_both(name, kwargs, backend, np.float64, groups), np.float64)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_lr_changed_between_steps_matches_torch(name, backend):
    """param_groups[i]['lr'] mutated every step (a schedule), in both libraries."""
    cls, torch_name, _ = ALGORITHMS[name]
    rng = np.random.default_rng(3)
    p = rng.standard_normal(11)
    tp = torch.tensor(p.copy(), requires_grad=True)
    ours = cls([p], lr=0.1, backend=backend)
    theirs = getattr(torch.optim, torch_name)([tp], lr=0.1)
    for t in range(30):
        for opt in (ours, theirs):
            opt.param_groups[0]["lr"] = 0.1 * 0.9 ** t
        g = rng.standard_normal(11)
        tp.grad = torch.from_numpy(g.copy())
        ours.step([g])
        theirs.step()
    assert relative_error(p, tp.detach().numpy()) <= TOL[np.float64]
