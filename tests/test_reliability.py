"""Non-finite policies, fused gradient clipping and the gradient reduction, on every
backend."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import fusedopt
from cases import ALGORITHMS
from conftest import relative_error

SHAPES = [(37,), (4, 9)]
# first element, last, inside a SIMD block, and only in the second tensor
POSITIONS = {"first": (0, 0), "last": (0, 36), "mid-block": (0, 9), "second": (1, 20)}


def setup(name, backend, **kw):
    cls, _, options = ALGORITHMS[name]
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s) for s in SHAPES]
    opt = cls(params, **options[-1], backend=backend, **kw)
    for _ in range(2):
        opt.step([rng.standard_normal(s) for s in SHAPES])
    return opt, params, rng


def bad_grads(rng, where, value):
    grads = [rng.standard_normal(s) for s in SHAPES]
    t, i = POSITIONS[where]
    grads[t].reshape(-1)[i] = value
    return grads


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", list(POSITIONS))
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_raise_refuses_before_any_write(name, where, value, backend):
    opt, params, rng = setup(name, backend, nonfinite="raise")
    before = [p.copy() for p in params], copy.deepcopy(opt.state)
    tensor = POSITIONS[where][0]
    with pytest.raises(FloatingPointError, match=rf"grads\[{tensor}\]: 1 non-finite"):
        opt.step(bad_grads(rng, where, value))
    for p, b in zip(params, before[0]):
        np.testing.assert_array_equal(p, b, strict=True)
    for i, st in before[1].items():
        for k, v in st.items():
            np.testing.assert_array_equal(opt.state[i][k], v)


@pytest.mark.parametrize("where", list(POSITIONS))
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_skip_leaves_everything_and_training_goes_on(name, where, backend):
    opt, params, rng = setup(name, backend, nonfinite="skip")
    twin, twin_params, _ = setup(name, backend)
    before = [p.copy() for p in params]
    opt.step(bad_grads(rng, where, np.nan))
    assert opt.last_step_skipped and opt.skipped_steps == 1
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b, strict=True)
    good = [np.random.default_rng(9).standard_normal(s) for s in SHAPES]
    opt.step(good)
    twin.step(good)  # never saw the bad step
    assert not opt.last_step_skipped
    for p, q in zip(params, twin_params):
        np.testing.assert_array_equal(p, q)


def test_skip_on_flat_params():
    flat = fusedopt.FlatParams.from_arrays([np.ones(5), np.ones(3)])
    opt = fusedopt.Adam(flat, nonfinite="skip")
    flat.grad_views[1][2] = np.inf
    opt.step()
    assert opt.last_step_skipped and len(opt.state) == 0
    assert all(np.all(v == 1) for v in flat.views)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_clipping_matches_torch_clip_grad_norm(name, backend):
    torch = pytest.importorskip("torch")
    cls, torch_name, options = ALGORITHMS[name]
    kwargs = options[-1]
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(s) for s in SHAPES]
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    ours = cls(params, **kwargs, backend=backend, max_grad_norm=0.7)
    theirs = getattr(torch.optim, torch_name)(tparams, **kwargs)
    for step in range(30):
        grads = [rng.standard_normal(s) * (0.01 if step % 3 == 0 else 3.0) for s in SHAPES]
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g.copy())
        torch.nn.utils.clip_grad_norm_(tparams, max_norm=0.7)
        theirs.step()
        ours.step(grads)
    for p, tp in zip(params, tparams):
        assert relative_error(p, tp.detach().numpy()) <= 1e-10


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_stats_is_the_sum_of_squares_and_the_nonfinite_count(backend, dtype):
    impl = fusedopt.backends.load(backend)
    g = np.random.default_rng(1).standard_normal(100_003).astype(dtype)
    for parallel in (False, True):
        s, bad = impl.grad_stats(g, parallel)
        assert bad == 0
        assert s == pytest.approx(float(np.sum(g.astype(np.float64) ** 2)), rel=1e-12)
    g[[0, 500, 100_002]] = [np.nan, np.inf, -np.inf]
    assert impl.grad_stats(g, True)[1] == 3 and impl.grad_stats(g, False)[1] == 3


def test_bad_policy_arguments_are_named():
    with pytest.raises(ValueError, match=r"nonfinite: expected one of \['propagate'"):
        fusedopt.Adam([np.zeros(2)], nonfinite="ignore")
    with pytest.raises(ValueError, match="max_grad_norm: expected a finite number"):
        fusedopt.SGD([np.zeros(2)], max_grad_norm=-1.0)
