"""Muon: its fused passes and host stage against the NumPy oracle (the numpy
backend, written from the paper and torch's code, not from the rules), against
torch.optim.Muon through fusedopt.torch, and what it refuses."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest

import fusedopt
from conftest import (TOL, assert_unchanged, relative_error, resume_from_each_other,
                      snapshot, step_beside_torch)

BACKENDS = ["numba", "cython"]
SHAPES = [(6, 10), (12, 4), (7, 7)]  # wide, tall (stepped transposed), square
OPTIONS = [
    dict(lr=0.02),
    dict(lr=0.02, nesterov=False),
    dict(lr=0.02, momentum=0.4, weight_decay=0.2, adjust_lr_fn="match_rms_adamw"),
    dict(lr=0.02, ns_steps=6, ns_coefficients=(3.4, -4.7, 2.0), adjust_lr_fn="original"),
    dict(lr=0.0, weight_decay=0.3),
]


def _ids(options):
    return "-".join(f"{k}={v}" for k, v in options.items())


def _grads(rng, params, dtype):
    return [rng.standard_normal(p.shape).astype(dtype) for p in params]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", OPTIONS, ids=_ids)
@pytest.mark.parametrize("backend", BACKENDS)
def test_muon_matches_the_numpy_oracle(backend, options, dtype):
    rng = np.random.default_rng(0)
    ours = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    ref = [p.astype(np.float64) for p in ours]
    opt = fusedopt.Muon(ours, **options, backend=backend)
    oracle = fusedopt.Muon(ref, **options, backend="numpy")
    for _ in range(20):
        grads = _grads(rng, ours, dtype)
        opt.step(grads)
        oracle.step([g.astype(np.float64) for g in grads])
    for i, (p, r) in enumerate(zip(ours, ref)):
        assert relative_error(p, r) <= TOL[dtype], i
        assert relative_error(opt.state[i]["momentum_buffer"],
                              oracle.state[i]["momentum_buffer"]) <= TOL[dtype], i


@pytest.mark.parametrize("backend", BACKENDS + ["numpy"])
def test_the_update_is_orthogonalised(backend):
    """What makes it Muon: the applied update ``(theta (1 - lr wd) - theta') /
    lr_t`` has the gradient's shape and singular values near 1 (the quintic
    iteration leaves them within about 0.7-1.2), whatever the gradient's scale."""
    rng = np.random.default_rng(1)
    for shape in SHAPES + [(3, 40), (40, 3)]:
        p = rng.standard_normal(shape)
        before = p.copy()
        opt = fusedopt.Muon([p], lr=0.01, weight_decay=0.1, backend=backend)
        opt.step([1e3 * rng.standard_normal(shape)])
        rows, cols = shape
        lr_t = 0.01 * np.sqrt(max(1, rows / cols))
        update = (before * (1 - 0.01 * 0.1) - p) / lr_t
        s = np.linalg.svd(update, compute_uv=False)
        assert s.size == min(shape) and 0.6 < s.min() and s.max() < 1.3, (shape, s)


@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_params_step_as_separate_arrays(backend):
    """In a FlatParams each tensor is orthogonalised with its own shape: the same
    bits as the arrays stepped one by one."""
    rng = np.random.default_rng(2)
    fp = fusedopt.FlatParams(SHAPES, np.float32)
    arrays = []
    for v in fp.views:
        v[...] = rng.standard_normal(v.shape)
        arrays.append(v.copy())
    flat = fusedopt.Muon(fp, lr=0.02, backend=backend)
    single = fusedopt.Muon(arrays, lr=0.02, backend=backend)
    for _ in range(3):
        grads = _grads(rng, arrays, np.float32)
        for gv, g in zip(fp.grad_views, grads):
            gv[...] = g
        flat.step()
        single.step(grads)
    for v, a in zip(fp.views, arrays):
        np.testing.assert_array_equal(v, a)


@pytest.mark.parametrize("backend", BACKENDS + ["numpy"])
def test_refuses_what_it_cannot_step_before_any_write(backend):
    rng = np.random.default_rng(3)
    with pytest.raises(ValueError, match=r"params\[1\]: Muon only supports 2D parameters "
                       r".*got shape \(5,\).*AdamW"):
        fusedopt.Muon([np.ones((2, 3)), np.ones(5)], backend=backend)
    with pytest.raises(TypeError, match=r"params\[0\]: Muon steps float32 or float64 "
                       "parameters"):
        fusedopt.Muon([np.ones((2, 3), ml_dtypes.bfloat16)], backend=backend)
    with pytest.raises(ValueError, match="Adjust learning rate function x is not "
                       "supported"):
        fusedopt.Muon([np.ones((2, 3))], adjust_lr_fn="x", backend=backend)
    with pytest.raises(ValueError, match=r"ns_steps.*\[0, 100\)"):
        fusedopt.Muon([np.ones((2, 3))], ns_steps=100, backend=backend)
    with pytest.raises(TypeError, match="ns_coefficients.*three numbers"):
        fusedopt.Muon([np.ones((2, 3))], ns_coefficients=(1.0, 2.0), backend=backend)
    # a bad gradient among good ones: nothing written, no state
    params = [rng.standard_normal((4, 3)), rng.standard_normal((3, 4))]
    before = [p.copy() for p in params]
    opt = fusedopt.Muon(params, backend=backend)
    with pytest.raises(ValueError, match=r"grads\[1\]"):
        opt.step([np.ones((4, 3)), np.ones((4, 3))])
    assert all(np.array_equal(a, b) for a, b in zip(params, before))
    assert not opt.state


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_failing_host_stage_leaves_parameters_and_buffers_untouched(backend,
                                                                      monkeypatch):
    """Nothing the caller owns is written before the Newton-Schulz stage returns:
    running out of memory there leaves the parameter and its momentum as they were."""
    from fusedopt import newton_schulz

    rng = np.random.default_rng(4)
    p = rng.standard_normal((5, 3))
    opt = fusedopt.Muon([p], backend=backend)
    opt.step([rng.standard_normal((5, 3))])
    before, buf = p.copy(), opt.state[0]["momentum_buffer"].copy()

    def fail(*args, **kwargs):
        raise MemoryError("no memory")

    monkeypatch.setattr(newton_schulz.Workspace, "orthogonalise", fail)
    with pytest.raises(MemoryError):
        opt.step([rng.standard_normal((5, 3))])
    np.testing.assert_array_equal(p, before)
    np.testing.assert_array_equal(opt.state[0]["momentum_buffer"], buf)


def test_cuda_arrays_are_refused_by_name():
    from fusedopt.backends import numba_cuda

    with pytest.raises(TypeError, match="step CUDA tensors with fusedopt.torch.Muon"):
        numba_cuda.muon(None)
    with pytest.raises(ValueError, match="step CUDA tensors with fusedopt.torch.Muon"):
        fusedopt.Muon([numba_cuda.cuda.to_device(np.ones((3, 4), np.float32))])


# -- the drop-in against torch.optim.Muon ------------------------------------------

torch_options = [{k: v for k, v in o.items()} for o in OPTIONS]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("options", torch_options, ids=_ids)
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropin_matches_torch_muon(backend, options, dtype):
    """50 steps of random gradients: the momentum buffers bit for bit (torch's lerps,
    mirrored), the parameters within the contract (torch's own bfloat16
    Newton-Schulz runs in both)."""
    torch = pytest.importorskip("torch")
    theirs, ours, ref, opt = step_beside_torch("Muon", SHAPES, options, backend, dtype)
    tol = TOL[np.dtype(dtype).type]
    for a, b in zip(theirs, ours):
        assert relative_error(b.detach(), a.detach()) <= tol
        assert torch.equal(opt.state[b]["momentum_buffer"], ref.state[a]["momentum_buffer"])
    assert opt.state_dict()["param_groups"] == ref.state_dict()["param_groups"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_dropin_lerp_switch_is_decided_in_float32(backend):
    """momentum = 0.5 + 2**-26: 1 - momentum is below 0.5 in float64 but rounds to 0.5
    in float32, where torch's lerp decides which formula to use: the buffers stay
    bit for bit torch's."""
    torch = pytest.importorskip("torch")
    options = dict(lr=0.02, momentum=0.5 + 2.0 ** -26, nesterov=True)
    theirs, ours, ref, opt = step_beside_torch("Muon", SHAPES, options, backend,
                                               "float32", steps=5)
    for a, b in zip(theirs, ours):
        assert torch.equal(opt.state[b]["momentum_buffer"], ref.state[a]["momentum_buffer"])


def test_dropin_checkpoints_interchange_with_torch():
    pytest.importorskip("torch")
    resume_from_each_other("Muon", bias=False, lr=0.02)


def test_dropin_refuses_as_torch_and_by_name():
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        ft.Muon([torch.nn.Parameter(torch.ones(3))])
    z = torch.nn.Parameter(torch.ones(2, 3, dtype=torch.complex64))
    z.grad = torch.ones_like(z)
    with pytest.raises(RuntimeError, match="Muon does not support complex parameters"):
        ft.Muon([z]).step()
    for dt in (torch.bfloat16, torch.float16):
        p = torch.nn.Parameter(torch.ones(2, 3, dtype=dt))
        p.grad = torch.ones_like(p)
        opt = ft.Muon([p])
        with pytest.raises(TypeError, match="Muon"):
            opt.step()
        assert torch.equal(p.detach(), torch.ones(2, 3, dtype=dt)) and not opt.state
    t = torch.nn.Parameter(torch.ones(4, 3).t())  # not contiguous
    t.grad = torch.ones_like(t)
    with pytest.raises(ValueError, match="Muon: steps each tensor in one call"):
        ft.Muon([t]).step()


def test_dropin_flatten_matches_per_tensor():
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    rng = np.random.default_rng(6)
    start = [torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in SHAPES]
    flat = [torch.nn.Parameter(t.clone()) for t in start]
    each = [torch.nn.Parameter(t.clone()) for t in start]
    opts = [ft.Muon(flat, lr=0.02, flatten=True), ft.Muon(each, lr=0.02)]
    for _ in range(3):
        grads = [torch.tensor(rng.standard_normal(s), dtype=torch.float32) for s in SHAPES]
        for a, b, g in zip(flat, each, grads):
            a.grad.copy_(g)  # (a view of the flat gradient buffer)
            b.grad = g.clone()
        for opt in opts:
            opt.step()
    for a, b in zip(flat, each):
        assert torch.equal(a.detach(), b.detach())


def test_dropin_refuses_a_matrix_that_is_no_longer_one_and_runs_on_numpy():
    """torch checks the shape in its constructor only: a vector added to a group
    later is refused at the step, before any write; the numpy backend runs its own
    Muon under the drop-in; eps=0 with a zero update gives NaN, as torch."""
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    torch.manual_seed(0)
    a = torch.nn.Parameter(torch.randn(4, 3))
    b = torch.nn.Parameter(torch.randn(5))
    a.grad, b.grad = torch.randn(4, 3), torch.randn(5)
    opt = ft.Muon([a])
    opt.add_param_group({"params": [b]})
    before = a.detach().clone()
    with pytest.raises(ValueError, match=r"Muon only supports 2D parameters; params\[1\]"):
        opt.step()
    assert torch.equal(a.detach(), before) and not opt.state
    ours, theirs = (torch.nn.Parameter(before.double()) for _ in range(2))
    ours.grad, theirs.grad = (torch.ones(4, 3, dtype=torch.float64) for _ in range(2))
    ft.Muon([ours], backend="numpy").step()
    torch.optim.Muon([theirs]).step()
    # its own float64 iteration against torch's bfloat16 one: the update differs by
    # bfloat16's precision (~0.4%) times lr
    assert relative_error(ours.detach(), theirs.detach()) < 1e-2
    zero = np.ones((3, 2))
    fusedopt.Muon([zero], eps=0.0).step([np.zeros((3, 2))])
    assert np.isnan(zero).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_step_failing_at_its_second_tensor_leaves_each_state_whole(backend,
                                                                     monkeypatch):
    """Out of memory in the second tensor's host stage: the first tensor has taken
    its step, the second is as it was and has no half-made state, and the next step
    runs (starting the second afresh)."""
    from fusedopt import newton_schulz

    rng = np.random.default_rng(7)
    params = [rng.standard_normal((4, 3)), rng.standard_normal((3, 5))]
    second = params[1].copy()
    opt = fusedopt.Muon(params, backend=backend)
    real, calls = newton_schulz.Workspace.orthogonalise, []

    def second_fails(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise MemoryError("no memory")
        return real(self, *args)

    monkeypatch.setattr(newton_schulz.Workspace, "orthogonalise", second_fails)
    with pytest.raises(MemoryError):
        opt.step(_grads(rng, params, np.float64))
    np.testing.assert_array_equal(params[1], second)
    assert opt.state[0]["step"] == 1 and "momentum_buffer" in opt.state[0]
    assert not opt.state.get(1)
    opt.step(_grads(rng, params, np.float64))
    assert opt.state[0]["step"] == 2 and opt.state[1]["step"] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_momentum_tracks_the_float_oracle(backend):
    """state_dtype="bfloat16": the momentum buffer kept as bf16 bits, the parameters
    within bf16's precision of the float64 oracle's."""
    rng = np.random.default_rng(8)
    p = rng.standard_normal((6, 4)).astype(np.float32)
    q = p.astype(np.float64)
    opt = fusedopt.Muon([p], state_dtype="bfloat16", backend=backend)
    ref = fusedopt.Muon([q], backend="numpy")
    for _ in range(10):
        g = rng.standard_normal((6, 4)).astype(np.float32)
        opt.step([g])
        ref.step([g.astype(np.float64)])
    assert opt.state[0]["momentum_buffer"].dtype == np.uint16
    assert relative_error(p, q) < 1e-3


@pytest.mark.parametrize("flat", [False, True], ids=["arrays", "flat"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_a_step_reserves_its_scratch_before_any_write(backend, flat, monkeypatch):
    """Muon's scratch arrays (``newton_schulz.Workspace``) for every matrix of a step
    are made before its first write, once per step: a step that cannot have them
    (out of memory) changes nothing, a FlatParams segment's step count included;
    one workspace serves every matrix of a step."""
    from fusedopt import newton_schulz

    rng = np.random.default_rng(11)
    shapes = SHAPES + [(3, 5)]
    arrays = [rng.standard_normal(s) for s in shapes]
    twin = [a.copy() for a in arrays]
    params = arrays
    if flat:
        fp = fusedopt.FlatParams.from_arrays(arrays)
        params = fp.views
    opt = fusedopt.Muon(params, lr=0.02, backend=backend)
    ref = fusedopt.Muon(twin, lr=0.02, backend=backend)

    def step(grads):
        if flat:
            for view, g in zip(fp.grad_views, grads):
                view[...] = g
            opt.step()
        else:
            opt.step(grads)

    grads = _grads(rng, params, np.float64)
    step(grads)
    ref.step(grads)
    real, made = newton_schulz.Workspace.__init__, []

    def none_left(self, *args):
        made.append(args)
        raise MemoryError("no memory")

    monkeypatch.setattr(newton_schulz.Workspace, "__init__", none_left)
    before = snapshot(params, opt)
    with pytest.raises(MemoryError):
        step(_grads(rng, params, np.float64))
    assert_unchanged(params, opt, before)
    assert len(made) == 1

    def one_left(self, *args):  # a second workspace in the step would fail
        made.append(args)
        if len(made) > 2:
            raise MemoryError("no memory")
        real(self, *args)

    monkeypatch.setattr(newton_schulz.Workspace, "__init__", one_left)
    grads = _grads(rng, params, np.float64)
    step(grads)
    monkeypatch.setattr(newton_schulz.Workspace, "__init__", real)
    ref.step(grads)
    for a, b in zip(params, twin):
        np.testing.assert_array_equal(a, b)
    assert opt.state_dict()["state"][3]["step"] == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_every_segment_scratch_is_reserved_before_the_first_write(backend,
                                                                   monkeypatch):
    """A FlatParams of float32 and float64 matrices (two segments): the scratch of
    both is made before either is written, so a step that cannot have the second
    segment's changes nothing in the first."""
    from fusedopt import newton_schulz

    rng = np.random.default_rng(15)
    arrays = [rng.standard_normal((4, 6)).astype(np.float32),
              rng.standard_normal((5, 3))]
    fp = fusedopt.FlatParams.from_arrays(arrays)
    opt = fusedopt.Muon(fp.views, lr=0.02, backend=backend)
    for view in fp.grad_views:
        view[...] = rng.standard_normal(view.shape)
    opt.step()
    before = snapshot(fp.views, opt)
    real, made = newton_schulz.Workspace.__init__, []

    def second_fails(self, *args):
        made.append(args)
        if len(made) == 2:
            raise MemoryError("no memory")
        real(self, *args)

    monkeypatch.setattr(newton_schulz.Workspace, "__init__", second_fails)
    with pytest.raises(MemoryError):
        opt.step()
    assert_unchanged(fp.views, opt, before)
