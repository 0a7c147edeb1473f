"""LAMB's per-tensor trust ratio: what defines it, on every backend, per tensor in a
FlatParams segment too (its oracle parity is in test_oracle.py)."""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt
from conftest import assert_unchanged, snapshot


def _norm(x) -> float:
    return float(np.linalg.norm(np.asarray(x, np.float64)))


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_each_tensor_moves_by_lr_times_its_norm(backend, weight_decay):
    """The layer-wise property (You et al., 2020): every step moves each tensor by
    exactly lr * ||theta||, whatever the scale of its gradient, tensor by tensor."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s) * scale for s, scale in
              (((30, 7), 1.0), ((50,), 1e-3), ((4, 4, 4), 100.0))]
    opt = fusedopt.LAMB(params, lr=0.01, weight_decay=weight_decay, backend=backend)
    for step in range(5):
        before = [p.copy() for p in params]
        opt.step([rng.standard_normal(p.shape) * 10.0 ** (step - 2) for p in params])
        for p, q in zip(params, before):
            assert _norm(p - q) == pytest.approx(0.01 * _norm(q), rel=1e-12)


def test_a_zero_tensor_takes_the_unscaled_step(backend):
    """A tensor whose norm is 0 (a bias starting at zero): the ratio is 1 (as optax),
    so it moves by lr times the Adam direction; the others still by lr * norm."""
    zero, other = np.zeros(20), np.ones(20)
    g = np.linspace(-1.0, 1.0, 20)
    fusedopt.LAMB([zero, other], lr=0.1, eps=1e-6, backend=backend).step([g, g.copy()])
    np.testing.assert_allclose(zero, -0.1 * g / (np.abs(g) + 1e-6), rtol=1e-12)
    assert _norm(other - 1.0) == pytest.approx(0.1 * _norm(np.ones(20)), rel=1e-12)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_a_non_finite_gradient_reaches_its_own_element_only(backend, bad):
    """nonfinite="propagate": the bad element's update is not finite, which makes its
    tensor's ratio 1 (a norm that is not finite); no other element turns NaN or
    inf, and they take the unscaled step."""
    p = np.linspace(0.5, 1.5, 40)
    g = np.ones(40)
    g[7] = bad
    before = p.copy()
    opt = fusedopt.LAMB([p], lr=0.01, eps=1e-6, backend=backend)
    with np.errstate(invalid="ignore"):  # the NumPy reference computes inf / inf
        opt.step([g])
    assert not np.isfinite(p[7]) and np.isfinite(np.delete(p, 7)).all()
    np.testing.assert_allclose(np.delete(p, 7), np.delete(before, 7) - 0.01 / (1 + 1e-6),
                               rtol=1e-12)
    assert np.isfinite(np.delete(opt.state[0]["exp_avg"], 7)).all()


def test_flat_segments_take_one_ratio_per_tensor(backend):
    """A FlatParams segment holds many tensors; each gets its own ratio, as a list of
    arrays does (a ratio over the whole segment would move them differently)."""
    rng = np.random.default_rng(1)
    shapes = [(10, 3), (7,), (5, 5)]
    start = [rng.standard_normal(s) * 10.0 ** k for k, s in enumerate(shapes)]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(4)]
    fp = fusedopt.FlatParams(shapes, np.float64)
    for v, a in zip(fp.views, start):
        v[...] = a
    flat = fusedopt.LAMB(fp, lr=0.01, weight_decay=0.1, backend=backend)
    plain = [a.copy() for a in start]
    listed = fusedopt.LAMB(plain, lr=0.01, weight_decay=0.1, backend=backend)
    for gs in grads:
        for gv, g in zip(fp.grad_views, gs):
            gv[...] = g
        flat.step()
        listed.step(gs)
    for v, a in zip(fp.views, plain):
        np.testing.assert_array_equal(v, a)


@pytest.mark.parametrize("backend", ["numba", "cython", "numpy"])
def test_a_segment_failing_at_its_last_norms_writes_nothing(backend, monkeypatch):
    """Over a FlatParams, one segment of three tensors: every tensor's norms pass
    runs before any tensor's element pass, so running out of memory in the last
    one's leaves every parameter, moment and the step count as they were; the next
    step matches the optimizer that never failed."""
    from conftest import fail_norms_pass

    rng = np.random.default_rng(14)
    shapes = [(5,), (3, 4), (7,)]
    arrays = [rng.standard_normal(s) for s in shapes]
    twin = [a.copy() for a in arrays]
    fp = fusedopt.FlatParams.from_arrays(arrays)
    opt = fusedopt.LAMB(fp.views, lr=0.01, backend=backend)
    ref = fusedopt.LAMB(twin, lr=0.01, backend=backend)

    def fill(grads):
        for view, g in zip(fp.grad_views, grads):
            view[...] = g

    grads = [rng.standard_normal(s) for s in shapes]
    fill(grads)
    opt.step()
    ref.step(grads)
    before = snapshot(fp.views, opt)
    if backend == "numpy":  # the oracle's norms: two per tensor, the last tensor's
        real, calls = np.linalg.norm, []

        def norm(*args, **kwargs):
            calls.append(1)
            if len(calls) == 6:
                raise MemoryError("no memory")
            return real(*args, **kwargs)

        monkeypatch.setattr(np.linalg, "norm", norm)
    else:
        calls = fail_norms_pass(monkeypatch, backend, "lamb", 3)
    fill([rng.standard_normal(s) for s in shapes])
    with pytest.raises(MemoryError):
        opt.step()
    assert len(calls) in (3, 6)
    monkeypatch.undo()
    assert_unchanged(fp.views, opt, before)
    grads = [rng.standard_normal(s) for s in shapes]
    fill(grads)
    opt.step()
    ref.step(grads)
    for view, a in zip(fp.views, twin):
        np.testing.assert_array_equal(view, a)


@pytest.mark.parametrize("name", ["LAMB", "Adafactor"])
@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_a_later_segment_failing_writes_no_earlier_one(backend, name, monkeypatch):
    """A FlatParams of float32 and float64 tensors (two segments): every segment's
    reads run before any segment's writes, so running out of memory in the second
    segment's norms pass leaves the first as it was, step counts included."""
    from conftest import fail_norms_pass

    rng = np.random.default_rng(16)
    arrays = [rng.standard_normal(5).astype(np.float32), rng.standard_normal(7)]
    fp = fusedopt.FlatParams.from_arrays(arrays)
    opt = getattr(fusedopt, name)(fp.views, lr=0.01, backend=backend)
    for view in fp.grad_views:
        view[...] = rng.standard_normal(view.shape)
    opt.step()
    before = snapshot(fp.views, opt)
    calls = fail_norms_pass(monkeypatch, backend,
                            "lamb" if name == "LAMB" else "adafactor_update", 2)
    with pytest.raises(MemoryError):
        opt.step()
    assert len(calls) == 2
    assert_unchanged(fp.views, opt, before)
