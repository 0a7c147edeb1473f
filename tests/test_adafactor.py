"""Adafactor: the factored moments on the host and the fused passes, against the NumPy
oracle (the numpy backend, written from the paper and torch's docs) and against
torch.optim.Adafactor through fusedopt.torch, its state shapes, and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt
from conftest import (TOL, assert_unchanged, relative_error, resume_from_each_other,
                      snapshot, step_beside_torch)

BACKENDS = ["numba", "cython"]
#: a vector, a matrix, a batch of matrices, a scalar, a column
SHAPES = [(7,), (3, 5), (2, 3, 4), (), (6, 1)]
OPTIONS = [
    dict(lr=0.02),
    dict(lr=0.02, weight_decay=0.1, maximize=True),
    dict(lr=0.05, beta2_decay=-0.5, eps=(1e-3, 1e-2), d=1.5),
]


def _ids(options):
    return "-".join(f"{k}={v}" for k, v in options.items())


def _params(rng, dtype):
    return [np.asarray(rng.standard_normal(s), dtype=dtype) for s in SHAPES]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("options", OPTIONS, ids=_ids)
@pytest.mark.parametrize("backend", BACKENDS)
def test_adafactor_matches_the_numpy_oracle(backend, options, dtype):
    rng = np.random.default_rng(0)
    ours = _params(rng, dtype)
    ref = [p.astype(np.float64) for p in ours]
    opt = fusedopt.Adafactor(ours, **options, backend=backend)
    oracle = fusedopt.Adafactor(ref, **options, backend="numpy")
    for _ in range(30):
        grads = [np.asarray(rng.standard_normal(p.shape), dtype=dtype) for p in ours]
        opt.step(grads)
        oracle.step([g.astype(np.float64) for g in grads])
    for i, (p, r) in enumerate(zip(ours, ref)):
        assert relative_error(p, r) <= TOL[dtype], i
        for name, a in opt.state[i].items():
            if name != "step":
                assert relative_error(a, oracle.state[i][name]) <= TOL[dtype], (i, name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("backend", BACKENDS)
def test_factored_passes_cross_rows_blocks_and_matrices(backend, dtype):
    """Tensors large enough for the parallel loops, whose blocks of
    REDUCE_BLOCK elements (and of MEANS_ROWS rows) start and end inside rows and
    span matrices of a batch, and a wide and a tall matrix, against the oracle; on
    numba, the same bits with one thread as with all (the blocks are fixed)."""
    import numba

    rng = np.random.default_rng(8)
    shapes = [(3, 129, 257), (7, 5003), (5003, 7)]
    runs = []
    for threads in (numba.get_num_threads(), 1):
        numba.set_num_threads(threads)
        try:
            rng = np.random.default_rng(8)
            ours = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]
            ref = [p.astype(np.float64) for p in ours]
            opt = fusedopt.Adafactor(ours, lr=0.02, weight_decay=0.1, backend=backend)
            oracle = fusedopt.Adafactor(ref, lr=0.02, weight_decay=0.1, backend="numpy")
            for _ in range(3):
                grads = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in shapes]
                opt.step(grads)
                oracle.step([g.astype(np.float64) for g in grads])
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
        for i, (p, r) in enumerate(zip(ours, ref)):
            assert relative_error(p, r) <= TOL[dtype], i
        runs.append(ours)
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)


def test_state_is_factored():
    """A matrix keeps n + m moments (Adam: 2 n m); a batch of matrices, per matrix;
    a vector keeps its full second moment."""
    params = [np.zeros((300, 200)), np.zeros((4, 30, 20)), np.zeros(50)]
    opt = fusedopt.Adafactor(params)
    opt.step([np.ones_like(p) for p in params])
    sd = opt.state_dict()["state"]
    assert (sd[0]["row_var"].shape, sd[0]["col_var"].shape) == ((300, 1), (1, 200))
    assert (sd[1]["row_var"].shape, sd[1]["col_var"].shape) == ((4, 30, 1), (4, 1, 20))
    assert set(sd[2]) == {"step", "variance"} and sd[2]["variance"].shape == (50,)
    assert sum(a.size for a in opt.state[0].values() if hasattr(a, "size")) == 500


@pytest.mark.parametrize("backend", BACKENDS + ["numpy"])
def test_refuses_what_it_cannot_step(backend):
    with pytest.raises(ValueError, match="beta2_decay"):
        fusedopt.Adafactor([np.ones(3)], beta2_decay=0.5, backend=backend)
    with pytest.raises(ValueError, match=r"^d: expected a finite number in \[1.0"):
        fusedopt.Adafactor([np.ones(3)], d=0.5, backend=backend)
    with pytest.raises(TypeError, match="eps"):
        fusedopt.Adafactor([np.ones(3)], eps=1e-3, backend=backend)


@pytest.mark.parametrize("state_dtype", [None, "bfloat16"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_flat_params_keep_each_tensor_state_of_its_shape(backend, state_dtype):
    """Over a FlatParams (two groups, two dtypes): the factors of each tensor in flat
    buffers of their own layout, each segment's state one range of them; the same
    bits and checkpoint as the optimizer over the arrays, and a checkpoint loaded
    back resumes identically."""
    rng = np.random.default_rng(9)
    shapes = [(7,), (3, 5), (2, 3, 4), (), (6, 1), (40, 33)]
    dtypes = [np.float32, np.float32, np.float32, np.float32, np.float32, np.float32]
    if state_dtype is None:  # float64 tensors too: one buffer per dtype
        dtypes[1] = dtypes[4] = np.float64
    arrays = [np.asarray(rng.standard_normal(s), dtype=d) for s, d in zip(shapes, dtypes)]
    fp = fusedopt.FlatParams.from_arrays(arrays)
    groups = lambda ps: [{"params": ps[:3]}, {"params": ps[3:], "lr": 0.05}]  # noqa: E731
    opts = dict(lr=0.02, weight_decay=0.1, state_dtype=state_dtype, backend=backend)
    flat = fusedopt.Adafactor(groups(fp.views), **opts)
    listed = fusedopt.Adafactor(groups(arrays), **opts)
    assert flat.flat_params is fp
    grads = [[np.asarray(rng.standard_normal(s), dtype=d) for s, d in zip(shapes, dtypes)]
             for _ in range(6)]

    def step(gs):
        for view, g in zip(fp.grad_views, gs):
            view[...] = g
        flat.step()
        listed.step(gs)

    for gs in grads[:4]:
        step(gs)
    for view, a in zip(fp.views, arrays):
        np.testing.assert_array_equal(view, a)
    sd, ref = flat.state_dict()["state"], listed.state_dict()["state"]
    for i in ref:
        assert set(sd[i]) == set(ref[i])
        for name, value in ref[i].items():
            np.testing.assert_array_equal(sd[i][name], value)
    assert flat.state[1]["row_var"].size == 3 and "variance" not in flat.state[1]
    saved = {i: {k: (v if k == "step" else v.copy()) for k, v in st.items()}
             for i, st in sd.items()}
    again_fp = fusedopt.FlatParams.from_arrays(fp.views)
    again = fusedopt.Adafactor(groups(again_fp.views), **opts)
    again.load_state_dict({"state": saved, "param_groups": flat.state_dict()[
        "param_groups"]})
    for gs in grads[4:]:
        for view, g in zip(again_fp.grad_views, gs):
            view[...] = g
        again.step()
        step(gs)
    for a, b in zip(again_fp.views, fp.views):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("backend", BACKENDS + ["numpy"])
def test_functional_step_keeps_the_state_of_each_shape(backend):
    """fusedopt.functional.adafactor_step on a vector (variance) and a batch of
    matrices (factors), against the optimizer; state of the wrong shape, missing or
    not kept for that shape is refused by name before any write."""
    rng = np.random.default_rng(5)
    for shape in [(9,), (2, 3, 4)]:
        p = rng.standard_normal(shape)
        twin = p.copy()
        opt = fusedopt.Adafactor([twin], lr=0.03, backend=backend)
        state = ({"variance": np.zeros(shape)} if len(shape) == 1 else
                 {"row_var": np.zeros((2, 3, 1)), "col_var": np.zeros((2, 1, 4))})
        for t in range(1, 6):
            g = rng.standard_normal(shape)
            fusedopt.functional.adafactor_step(p, g, **state, step=t, lr=0.03,
                                               backend=backend)
            opt.step([g])
        np.testing.assert_array_equal(p, twin)
        for name, a in state.items():
            np.testing.assert_array_equal(a, opt.state[0][name].reshape(a.shape))
    p, g = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    row, col = np.full((3, 1), 0.5), np.full((1, 4), 0.5)
    before = [a.copy() for a in (p, row, col)]
    bad = [(dict(row_var=row, col_var=np.zeros(4)),
            r"^col_var: expected shape \(1, 4\) \(for param of shape \(3, 4\)\)"),
           (dict(row_var=row), r"^col_var: expected an array of shape \(1, 4\)"),
           (dict(row_var=row, col_var=col, variance=np.zeros((3, 4))),
            r"^variance: not kept for a parameter of shape \(3, 4\); pass None"),
           (dict(row_var=row.astype(np.float32), col_var=col),
            "^row_var: expected dtype float64")]
    for state, match in bad:
        with pytest.raises((ValueError, TypeError), match=match):
            fusedopt.functional.adafactor_step(p, g, **state, step=2, backend=backend)
        for a, b in zip((p, row, col), before):
            np.testing.assert_array_equal(a, b)


# -- the drop-in against torch.optim.Adafactor --------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("options", OPTIONS, ids=_ids)
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropin_matches_torch_adafactor(backend, options, dtype):
    """50 steps of random gradients: parameters and every state tensor within the
    contract, with torch's keys and shapes."""
    pytest.importorskip("torch")
    _assert_like_torch(*step_beside_torch("Adafactor", SHAPES, options, backend, dtype),
                       dtype)


def _assert_like_torch(theirs, ours, ref, opt, dtype) -> None:
    tol = TOL[np.dtype(dtype).type]
    for a, b in zip(theirs, ours):
        assert relative_error(b.detach(), a.detach()) <= tol
        assert opt.state[b].keys() == ref.state[a].keys()
        for name, t in ref.state[a].items():
            assert opt.state[b][name].shape == t.shape, name
            assert relative_error(opt.state[b][name], t) <= tol, name
    assert opt.state_dict()["param_groups"] == ref.state_dict()["param_groups"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropin_flatten_matches_torch_adafactor(backend, dtype):
    """flatten=True: each parameter's factors (or variance) views of flat buffers of
    their own layout, exposed in opt.state with torch's shapes; 50 steps against
    torch, and checkpoints both ways."""
    pytest.importorskip("torch")
    _assert_like_torch(*step_beside_torch("Adafactor", SHAPES, OPTIONS[1], backend, dtype,
                                          flatten=True), dtype)
    resume_from_each_other("Adafactor", flatten=True, weight_decay=0.1)


@pytest.mark.parametrize("flatten", [False, True])
def test_loaded_state_a_parameter_does_not_keep_is_refused(flatten):
    """A checkpoint giving a matrix a ``variance`` (a vector's state) is refused by
    name before anything changes, in the drop-in (flatten or not) and the NumPy API."""
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    a, v = torch.nn.Parameter(torch.ones(4, 3)), torch.nn.Parameter(torch.ones(5))
    opt = ft.Adafactor([a, v], flatten=flatten)
    a.grad, v.grad = torch.full((4, 3), 0.5), torch.full((5,), 0.5)
    opt.step()
    sd = opt.state_dict()
    before = {k: t.clone() for k, t in opt.state[v].items()}
    bad = {"state": {0: {**sd["state"][0], "variance": torch.zeros(4, 3)},
                     1: sd["state"][1]}, "param_groups": sd["param_groups"]}
    with pytest.raises(ValueError, match=r"\['variance'\]: a parameter of shape \(4, 3\) "
                       r"keeps \['col_var', 'row_var'\], not 'variance'"):
        opt.load_state_dict(bad)
    for k, t in before.items():
        assert torch.equal(opt.state[v][k], t), k
    opt.step()
    ours = fusedopt.Adafactor([np.ones((4, 3)), np.ones(5)])
    ours.step([np.full((4, 3), 0.5), np.full(5, 0.5)])
    sd = ours.state_dict()
    sd["state"][0]["variance"] = np.zeros((4, 3))
    with pytest.raises(ValueError, match=r"\['variance'\]: a parameter of shape \(4, 3\) "
                       r"keeps \['row_var', 'col_var'\], not 'variance'"):
        ours.load_state_dict(sd)


def test_dropin_refuses_bad_state_and_layouts_by_name_before_any_write():
    """What a probe of the drop-in found: each refused by name with nothing written
    (flatten=True: a state name it cannot hold, a bad step in a later segment, an
    empty parameter; both: a live factor of the wrong shape, a gradient that is its
    parameter); a checkpoint whose tensors require grad loads."""
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    def model():
        torch.manual_seed(0)
        return torch.nn.Linear(5, 3).double()

    def step(m, opt):
        opt.zero_grad()
        m(torch.ones(2, 5, dtype=torch.float64)).square().sum().backward()
        opt.step()

    def snapshot(m, opt):
        return ([p.detach().clone() for p in m.parameters()],
                {k: t.clone() for st in opt.state.values() for k, t in st.items()})

    def unchanged(m, opt, snap):
        now = snapshot(m, opt)
        assert all(torch.equal(a, b) for a, b in zip(now[0], snap[0]))
        assert now[1].keys() == snap[1].keys()
        assert all(torch.equal(now[1][k], snap[1][k]) for k in now[1])

    m = model()
    opt = ft.Adafactor(m.parameters(), flatten=True)
    step(m, opt)
    good = opt.state_dict()
    bad = {"state": {0: dict(good["state"][0]), 1: {**good["state"][1],
                                                    "exp_avg": torch.zeros(3)}},
           "param_groups": good["param_groups"]}
    snap = snapshot(m, opt)
    with pytest.raises(ValueError, match=r"state_dict\['state'\]\[1\]: unknown state "
                       r"\['exp_avg'\]; flatten=True keeps only"):
        opt.load_state_dict(bad)
    unchanged(m, opt, snap)
    grad_tracking = {"state": {i: {k: (t.clone().requires_grad_(True)
                                       if t.is_floating_point() and t.dim() else t)
                                   for k, t in st.items()}
                               for i, st in good["state"].items()},
                     "param_groups": good["param_groups"]}
    opt.load_state_dict(grad_tracking)
    step(m, opt)
    two = torch.nn.Linear(5, 3).double()
    opt = ft.Adafactor([{"params": [two.weight]}, {"params": [two.bias], "lr": 0.1}],
                       flatten=True)
    step(two, opt)
    opt.state[two.bias]["step"].fill_(-1)
    snap = snapshot(two, opt)
    with pytest.raises(ValueError, match=r"state\[params\[1\]\]\['step'\]: expected "
                       "an int >= 0"):
        step(two, opt)
    unchanged(two, opt, snap)
    with pytest.raises(ValueError, match=r"params\[1\]: Adafactor steps tensors with "
                       "elements"):
        ft.Adafactor([torch.nn.Parameter(torch.ones(2, 3)),
                      torch.nn.Parameter(torch.ones(0, 3))], flatten=True)
    for flatten in (False, True):
        m = model()
        opt = ft.Adafactor(m.parameters(), flatten=flatten)
        step(m, opt)
        if not flatten:
            opt.state[m.weight]["row_var"] = torch.zeros(3, dtype=torch.float64)
            snap = snapshot(m, opt)
            with pytest.raises(ValueError, match=r"\['row_var'\]: expected shape "
                               r"\(3, 1\) \(shape \(3, 5\) is its parameter's\), got "
                               r"shape \(3,\)"):
                opt.step()
            unchanged(m, opt, snap)
            opt.state[m.weight]["row_var"] = torch.zeros(3, 1, dtype=torch.float64)
        m.bias.grad = m.bias.data
        snap = snapshot(m, opt)
        with pytest.raises(ValueError, match=r"grads\[1\]: shares memory with "
                           r"(params\[1\]|the flat buffers)"):
            opt.step()
        unchanged(m, opt, snap)


def test_dropin_checkpoints_interchange_with_torch():
    """Both ways; a loaded factor of another shape is refused by name."""
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    resume_from_each_other("Adafactor")
    model = torch.nn.Linear(5, 8).double()
    ref = torch.optim.Adafactor(model.parameters())
    model(torch.ones(2, 5, dtype=torch.float64)).sum().backward()
    ref.step()
    bad = ref.state_dict()
    bad["state"][0]["row_var"] = torch.zeros(8, 5, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"\['row_var'\]: expected shape \(8, 1\)"):
        ft.Adafactor(model.parameters()).load_state_dict(bad)


def test_dropin_refuses_as_torch_and_by_name():
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    z = torch.nn.Parameter(torch.ones(2, 3, dtype=torch.complex64))
    z.grad = torch.ones_like(z)
    with pytest.raises(RuntimeError, match="Adafactor does not support complex "
                       "parameters"):
        ft.Adafactor([z]).step()
    h = torch.nn.Parameter(torch.ones(2, 3, dtype=torch.bfloat16))
    h.grad = torch.ones_like(h)
    opt = ft.Adafactor([h])
    with pytest.raises(TypeError, match="Adafactor"):
        opt.step()
    assert torch.equal(h.detach(), torch.ones(2, 3, dtype=torch.bfloat16))
    assert not opt.state


@pytest.mark.parametrize("backend", BACKENDS)
def test_refuses_at_construction_what_a_step_could_not_finish(backend):
    """bfloat16 parameters and tensors without elements are refused when the
    optimizer is built, not part-way through a step."""
    import ml_dtypes

    with pytest.raises(TypeError, match=r"params\[1\]: Adafactor steps float32 or "
                       "float64"):
        fusedopt.Adafactor([np.ones(3), np.ones(3, ml_dtypes.bfloat16)],
                           backend=backend)
    with pytest.raises(ValueError, match=r"params\[0\]: Adafactor steps tensors with "
                       "elements"):
        fusedopt.Adafactor([np.ones((0, 5))], backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_state_is_float32_math_rounded_when_stored(backend):
    """state_dtype="bfloat16": the factors (and a vector's variance) are read
    exactly, updated in float32 and rounded to nearest even when stored, as every
    algorithm's bf16 state. A float32 run whose state is rounded after each step
    is the reference; the state leaves as bfloat16 of torch's shapes and resumes."""
    bf16 = fusedopt._checks.bf16()
    rng = np.random.default_rng(6)
    ours = [np.asarray(rng.standard_normal(s), np.float32) for s in SHAPES]
    twin = [p.copy() for p in ours]
    opt = fusedopt.Adafactor(ours, lr=0.02, weight_decay=0.1, state_dtype="bfloat16",
                             backend=backend)
    ref = fusedopt.Adafactor(twin, lr=0.02, weight_decay=0.1, backend=backend)
    grads = [[np.asarray(rng.standard_normal(s), np.float32) for s in SHAPES]
             for _ in range(12)]
    for gs in grads[:8]:
        opt.step(gs)
        ref.step(gs)
        for st in ref.state.values():
            for name, a in st.items():
                if name != "step":
                    a[...] = a.astype(bf16).astype(np.float32)
    for p, q in zip(ours, twin):
        np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-6)
    sd, ref_sd = opt.state_dict(), ref.state_dict()
    for i, st in sd["state"].items():
        for name, a in st.items():
            if name != "step":
                assert a.dtype == bf16 and a.shape == ref_sd["state"][i][name].shape
                np.testing.assert_allclose(a.astype(np.float32), ref_sd["state"][i][name],
                                           rtol=2 ** -7, atol=1e-30)
    resumed = [p.copy() for p in ours]
    again = fusedopt.Adafactor(resumed, lr=0.02, weight_decay=0.1,
                               state_dtype="bfloat16", backend=backend)
    again.load_state_dict(sd)
    for gs in grads[8:]:
        opt.step(gs)
        again.step(gs)
    for p, q in zip(ours, resumed):
        np.testing.assert_array_equal(p, q)


def test_dropin_refuses_an_empty_tensor_before_any_write():
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    a, e = torch.nn.Parameter(torch.ones(3, 4)), torch.nn.Parameter(torch.ones(0, 4))
    a.grad, e.grad = torch.ones(3, 4), torch.ones(0, 4)
    opt = ft.Adafactor([a, e])
    with pytest.raises(ValueError, match=r"Adafactor: params\[1\] has no elements"):
        opt.step()
    assert torch.equal(a.detach(), torch.ones(3, 4)) and not opt.state


@pytest.mark.parametrize("backend", BACKENDS + ["numpy"])
def test_a_segment_failing_in_a_later_tensor_writes_nothing(backend, monkeypatch):
    """Over a FlatParams, one segment of matrices and vectors: every tensor's reads
    and allocations run before any tensor's writes, so a failure in the last
    tensor's host stage (out of memory) leaves every parameter, factor and the
    segment's step count as they were; the next step matches the optimizer that
    never failed."""
    from fusedopt import algorithms

    rng = np.random.default_rng(12)
    shapes = [(3, 5), (7,), (2, 3, 4), (40, 33)]
    arrays = [rng.standard_normal(s) for s in shapes]
    twin = [a.copy() for a in arrays]
    fp = fusedopt.FlatParams.from_arrays(arrays)
    opt = fusedopt.Adafactor(fp.views, lr=0.02, backend=backend)
    ref = fusedopt.Adafactor(twin, lr=0.02, backend=backend)
    # a host-stage function each matrix calls: the oracle's np.mean, else torch's lerp
    owner, name = (np, "mean") if backend == "numpy" else (algorithms, "_torch_lerp")
    real, calls = getattr(owner, name), []

    def counted(*args, **kwargs):
        calls.append(1)
        if fail_at and len(calls) == fail_at:
            raise MemoryError("no memory")
        return real(*args, **kwargs)

    def step(grads):
        for view, g in zip(fp.grad_views, grads):
            view[...] = g
        opt.step()
        ref.step(grads)

    monkeypatch.setattr(owner, name, counted)
    fail_at = 0
    step([rng.standard_normal(s) for s in shapes])
    # the last call of one optimizer's step (both stepped): the last matrix's
    fail_at, calls[:] = len(calls) // 2, []
    before = snapshot(fp.views, opt)
    for view, g in zip(fp.grad_views, [rng.standard_normal(s) for s in shapes]):
        view[...] = g
    with pytest.raises(MemoryError):
        opt.step()
    monkeypatch.setattr(owner, name, real)
    assert_unchanged(fp.views, opt, before)
    step([rng.standard_normal(s) for s in shapes])
    for view, a in zip(fp.views, twin):
        np.testing.assert_array_equal(view, a)


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_vector_after_a_matrix_in_a_segment_reads_before_any_write(backend,
                                                                     monkeypatch):
    """A segment [matrix, vector, matrix]: the vector's norms pass (a read, which
    allocates its blocks' sums) runs before the first matrix is written, so running
    out of memory there changes nothing, the segment's step count included."""
    from conftest import fail_norms_pass

    rng = np.random.default_rng(13)
    shapes = [(4, 5), (6,), (3, 3)]
    fp = fusedopt.FlatParams.from_arrays([rng.standard_normal(s) for s in shapes])
    opt = fusedopt.Adafactor(fp.views, lr=0.02, backend=backend)
    for view in fp.grad_views:
        view[...] = rng.standard_normal(view.shape)
    opt.step()
    before = snapshot(fp.views, opt)
    calls = fail_norms_pass(monkeypatch, backend, "adafactor_update", 1)
    with pytest.raises(MemoryError):
        opt.step()
    assert calls
    assert_unchanged(fp.views, opt, before)
