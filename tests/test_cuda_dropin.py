"""fusedopt.torch on the ``cuda`` backend: every algorithm and option against
torch.optim, checkpoints both ways, the device wrappers reused per tensor but never
trusted over a re-pointed tensor, and the refusals before any write.

Under Numba's CUDA simulator (``conftest`` sets ``NUMBA_ENABLE_CUDASIM=1``) device
memory is host memory: ``backend="cuda"`` steps CPU tensors there, through the same
plan, checks and kernels as CUDA tensors on a GPU. ``NUMBA_ENABLE_CUDASIM=0`` runs
this file on a GPU's CUDA tensors, against torch.optim on the same device.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("numba_cuda", reason="numba-cuda is not installed")
import fusedopt  # noqa: E402
import fusedopt.torch as ft  # noqa: E402
from fusedopt import _device  # noqa: E402
from cases import TORCH_ALGORITHMS as ALGORITHMS, TORCH_CASES as CASES, case_id  # noqa: E402
from test_torch_adapter import max_diff, train  # noqa: E402

SIM = _device.simulated()
pytestmark = pytest.mark.skipif(
    not fusedopt.backends.available()["cuda"].ok or not (SIM or torch.cuda.is_available()),
    reason=f"cuda backend: {fusedopt.backends.available()['cuda'].detail}; or torch "
           "without CUDA")
DEVICE = "cpu" if SIM else "cuda"
TOL = 1e-9
STEPS = 6


def model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(),
                               torch.nn.Linear(6, 2)).to(DEVICE, dtype)


def batches(steps, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(8, 4, generator=gen, dtype=dtype).to(DEVICE),
             torch.randn(8, 2, generator=gen, dtype=dtype).to(DEVICE))
            for _ in range(steps)]


def trains_as_torch(name, kwargs, **ours):
    """``STEPS`` of training by ``fusedopt.torch`` on the ``cuda`` backend and by
    torch.optim: the same parameters, and state of torch's keys, devices, dtypes
    and shapes. Returns fusedopt's optimizer."""
    torch_name = ALGORITHMS[name][1]
    m1, m2, data = model(), model(), batches(STEPS)
    o1 = getattr(ft, torch_name)(m1.parameters(), **kwargs, backend="cuda", **ours)
    o2 = getattr(torch.optim, torch_name)(m2.parameters(), **kwargs)
    assert o1.backend == "cuda"
    train(m1, o1, data)
    train(m2, o2, data)
    assert max_diff(m1, m2) <= TOL
    for p1, p2 in zip(m1.parameters(), m2.parameters()):
        s1, s2 = o1.state[p1], o2.state[p2]
        assert sorted(s1) == sorted(s2)
        for key, t in s2.items():
            assert (s1[key].device, s1[key].dtype, s1[key].shape) == (
                t.device, t.dtype, t.shape), key
    return o1


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_training_matches_torch(case):
    trains_as_torch(*case)


def test_float32_and_complex_match_torch():
    m1, m2 = model(dtype=torch.float32), model(dtype=torch.float32)
    data = batches(STEPS, dtype=torch.float32)
    o1 = ft.AdamW(m1.parameters(), lr=0.01, backend="cuda")
    o2 = torch.optim.AdamW(m2.parameters(), lr=0.01)
    train(m1, o1, data)
    train(m2, o2, data)
    assert max_diff(m1, m2) <= 2e-4
    gen = torch.Generator().manual_seed(3)
    z = torch.randn(7, dtype=torch.complex128, generator=gen).to(DEVICE)
    p1, p2 = z.clone().requires_grad_(), z.clone().requires_grad_()
    o1 = ft.Adam([p1], lr=0.05, weight_decay=0.1, backend="cuda")
    o2 = torch.optim.Adam([p2], lr=0.05, weight_decay=0.1)
    for _ in range(STEPS):
        g = torch.randn(7, dtype=torch.complex128, generator=gen).to(DEVICE)
        p1.grad, p2.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    assert (p1 - p2).abs().max().item() <= TOL


def test_layouts_and_float16_match_torch():
    """Any dense layout stepped over its storage, a parameter with gaps through a
    copy written back, a gradient in another layout read through a copy; float16
    through float32 working copies, as torch's fused step."""
    gen = torch.Generator().manual_seed(5)

    def params():
        base = torch.randn(6, 8, dtype=torch.float64, generator=gen).to(DEVICE)
        return [torch.randn(5, 4, dtype=torch.float64, generator=gen).to(DEVICE).t(),
                base[:, ::2], torch.randn(3, 4, 5, 2, dtype=torch.float64,
                                          generator=gen).to(DEVICE).to(
                                              memory_format=torch.channels_last)]
    ps = [t.requires_grad_() for t in params()]
    qs = [t.detach().clone().requires_grad_() for t in ps]
    o1 = ft.Adam(ps, lr=0.05, weight_decay=0.1, backend="cuda")
    o2 = torch.optim.Adam(qs, lr=0.05, weight_decay=0.1)
    for _ in range(STEPS):
        for p, q in zip(ps, qs):
            g = torch.randn(p.shape, dtype=torch.float64, generator=gen).to(DEVICE)
            # the gradient in another layout than its parameter
            p.grad, q.grad = g.mT.contiguous().mT, g.clone()
        o1.step()
        o2.step()
    for p, q in zip(ps, qs):
        assert (p - q).abs().max().item() <= TOL
    assert ps[2].is_contiguous(memory_format=torch.channels_last)
    h1 = torch.randn(50, dtype=torch.float16, generator=gen).to(DEVICE).requires_grad_()
    h2 = h1.detach().clone().requires_grad_()
    o1 = ft.AdamW([h1], lr=0.01, backend="cuda")
    o2 = torch.optim.AdamW([h2], lr=0.01, fused=True)
    for _ in range(STEPS):
        g = torch.randn(50, dtype=torch.float16, generator=gen).to(DEVICE)
        h1.grad, h2.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    assert o1.state[h1]["exp_avg"].dtype == torch.float16
    assert ((h1.float() - h2.float()).abs() / (h2.float().abs() + 1e-3)).max() <= 2e-3


@pytest.mark.parametrize("name", ["AdamW", "Adam", "Adagrad"])
def test_bfloat16_parameters_match_torch_fused(name):
    """bfloat16 parameters on the device: float32 working copies of the parameter,
    gradient and state, stepped and rounded back to nearest, as torch's fused step
    computes and stores them; the state in bfloat16, as torch keeps it. (Not SGD:
    torch 2.13's fused SGD on CPU float16 and bfloat16 tensors steps all but the
    last tensor of a list unlike its own loop, which fusedopt matches.)"""
    gen = torch.Generator().manual_seed(9)
    kwargs = {"AdamW": dict(lr=0.01, weight_decay=0.1),
              "Adam": dict(lr=0.01, amsgrad=True, maximize=True),
              "Adagrad": dict(lr=0.05, lr_decay=0.01)}[name]
    start = [torch.randn(s, generator=gen).to(DEVICE, torch.bfloat16)
             for s in ((50,), (3, 7), (1,))]
    ours = [t.clone().requires_grad_() for t in start]
    theirs = [t.clone().requires_grad_() for t in start]
    o1 = getattr(ft, name)(ours, **kwargs, backend="cuda")
    o2 = getattr(torch.optim, name)(theirs, **kwargs, fused=True)
    for _ in range(STEPS):
        for a, b in zip(ours, theirs):
            g = torch.randn(a.shape, generator=gen).to(DEVICE, torch.bfloat16)
            a.grad, b.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    for a, b in zip(ours, theirs):
        assert a.dtype == torch.bfloat16 and a.device == b.device
        # one bf16 step apart at most: float32 math contracted in other orders
        assert ((a.float() - b.float()).abs() / (b.float().abs() + 1e-2)).max() <= 2 ** -7
        for key, t in o2.state[b].items():
            assert (o1.state[a][key].dtype, o1.state[a][key].device) == (t.dtype, t.device)


@pytest.mark.parametrize("name", ALGORITHMS)
def test_flatten_matches_torch_in_one_segment(name):
    opt = trains_as_torch(name, ALGORITHMS[name][2][-1], flatten=True)
    assert len(opt._flat.segments) == 1


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("name", [n for n in ALGORITHMS if n != "muon"])
def test_checkpoints_move_both_ways(name, flatten):
    """Half the steps in one library, a checkpoint into the other, the rest there:
    the parameters of all the steps in torch."""
    kwargs, torch_name = ALGORITHMS[name][2][-1], ALGORITHMS[name][1]
    data = batches(2 * STEPS)
    ref = model()
    train(ref, getattr(torch.optim, torch_name)(ref.parameters(), **kwargs), data)
    for first, second in ((ft, torch.optim), (torch.optim, ft)):
        extra = {"backend": "cuda", "flatten": flatten}
        m = model()
        o = getattr(first, torch_name)(m.parameters(), **kwargs,
                                       **(extra if first is ft else {}))
        train(m, o, data[:STEPS])
        ckpt = copy.deepcopy(o.state_dict())
        m2 = model()
        m2.load_state_dict(m.state_dict())
        o2 = getattr(second, torch_name)(m2.parameters(), **kwargs,
                                         **(extra if second is ft else {}))
        o2.load_state_dict(ckpt)
        train(m2, o2, data[STEPS:])
        assert max_diff(m2, ref) <= TOL, (first.__name__, second.__name__)


def test_tables_are_uploaded_once_but_follow_a_repointed_tensor():
    """A step reads every address from the live tensors; the device copy of the
    table is reused while they are the same, and a re-pointed parameter is stepped
    where it now is."""
    from fusedopt.backends import numba_cuda

    p = torch.zeros(10, dtype=torch.float64, device=DEVICE, requires_grad=True)
    q = torch.zeros(3, dtype=torch.float64, device=DEVICE, requires_grad=True)
    opt = ft.SGD([p, q], lr=1.0, backend="cuda")
    p.grad, q.grad = torch.ones_like(p), torch.ones_like(q)
    opt.step()
    tables = len(numba_cuda._TABLES)
    opt.step()
    assert len(numba_cuda._TABLES) == tables  # nothing new uploaded
    assert torch.equal(p.detach(), torch.full_like(p, -2.0))
    p.data = torch.full((10,), 5.0, dtype=torch.float64, device=DEVICE)
    opt.step()  # the live tensor, not the table of the old one
    assert torch.equal(p.detach(), torch.full_like(p, 4.0))
    assert torch.equal(q.detach(), torch.full_like(q, -3.0))


def fresh_adam():
    p = torch.randn(6, 5, dtype=torch.float64, device=DEVICE, requires_grad=True)
    canary = torch.randn(8, dtype=torch.float64, device=DEVICE)
    opt = ft.Adam([p], lr=0.1, backend="cuda")
    p.grad = torch.randn_like(p)
    opt.step()
    return p, canary, opt


def snapshot(p, canary, opt):
    return ([p.detach().clone(), canary.clone()]
            + [t.clone() for t in opt.state[p].values()])


@pytest.mark.parametrize("break_it, error, match", [
    (lambda p, c, o: setattr(p, "data", p.detach().float()), TypeError, "float32"),
    (lambda p, c, o: o.state[p].__setitem__("exp_avg", torch.zeros(
        29, dtype=torch.float64, device=DEVICE)), ValueError, "exp_avg"),
    (lambda p, c, o: o.state[p].__setitem__("exp_avg_sq", torch.zeros(
        6, 5, dtype=torch.float32, device=DEVICE)), TypeError, "exp_avg_sq"),
    (lambda p, c, o: o.state[p].__setitem__("exp_avg", p.grad), ValueError,
     "shares memory"),
    (lambda p, c, o: o.state[p].__setitem__("exp_avg_sq", o.state[p]["exp_avg"]),
     ValueError, "shares memory"),
    (lambda p, c, o: setattr(p, "grad", torch.ones(6, 5, dtype=torch.float64,
                                                   device=DEVICE).to_sparse()),
     RuntimeError, "sparse"),
    (lambda p, c, o: o.state[p].__setitem__("step", torch.tensor([1.0, 2.0])),
     ValueError, "step"),
], ids=["param-dtype", "state-shape", "state-dtype", "state-is-grad", "state-aliased",
        "grad-sparse", "step-shape"])
def test_refusals_leave_params_state_and_a_neighbour_untouched(break_it, error, match):
    p, canary, opt = fresh_adam()
    break_it(p, canary, opt)
    before = snapshot(p, canary, opt)
    with pytest.raises(error, match=match):
        opt.step()
    for a, b in zip(before, snapshot(p, canary, opt)):
        assert torch.equal(a, b)


def test_what_the_cuda_backend_cannot_step_is_refused():
    """bfloat16 parameters of an algorithm that steps tensor by tensor (its working
    copies are the multi-tensor plan's), by name, with nothing written."""
    q = torch.randn(4, device=DEVICE, dtype=torch.bfloat16, requires_grad=True)
    q.grad = torch.ones_like(q)
    before = q.detach().clone()
    for opt in (ft.LAMB([q], backend="cuda"), ft.Adafactor([q], backend="cuda")):
        with pytest.raises(TypeError, match="bfloat16"):
            opt.step()
        assert torch.equal(q.detach(), before) and not opt.state


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("options", [
    dict(lr=0.02),
    dict(lr=0.02, momentum=0.4, weight_decay=0.2, nesterov=False,
         adjust_lr_fn="match_rms_adamw"),
], ids=["default", "options"])
def test_muon_matches_torch_on_the_device(options, flatten):
    """Muon on the device: its momentum pass and step by the ``cuda`` backend's
    kernels around torch's Newton-Schulz on the device (a workspace of torch
    tensors there, reserved before the first write): the momentum buffers within
    rounding of torch.optim.Muon's (the simulator and a GPU's FMA round the lerps
    their own ways), the parameters too (the same bf16 iteration runs in both),
    state on the parameters' device."""
    gen = torch.Generator().manual_seed(7)
    shapes = [(6, 10), (12, 4), (7, 7)]  # wide, tall (stepped transposed), square
    start = [torch.randn(s, generator=gen).to(DEVICE) for s in shapes]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    o1 = ft.Muon(ours, **options, backend="cuda", flatten=flatten)
    o2 = torch.optim.Muon(theirs, **options)
    assert o1.backend == "cuda"
    for _ in range(STEPS):
        for a, b in zip(ours, theirs):
            g = torch.randn(a.shape, generator=gen).to(DEVICE)
            a.grad, b.grad = g.clone(), g.clone()
        o1.step()
        o2.step()
    for a, b in zip(ours, theirs):
        assert ((a - b).abs().max() / b.abs().max()).item() <= 2e-4
        buf, ref = o1.state[a]["momentum_buffer"], o2.state[b]["momentum_buffer"]
        assert buf.device == a.device
        assert ((buf - ref).abs().max() / ref.abs().max()).item() <= 1e-6


def test_lamb_steps_tensor_by_tensor_on_the_device():
    """LAMB's norms are reduced on the device, one tensor at a time: as the numpy
    backend steps the same model on the host."""
    m1, m2, data = model(), model().cpu(), batches(STEPS)
    o1 = ft.LAMB(m1.parameters(), lr=0.01, weight_decay=0.01, backend="cuda")
    o2 = ft.LAMB(m2.parameters(), lr=0.01, weight_decay=0.01, backend="numpy")
    train(m1, o1, data)
    train(m2, o2, [(x.cpu(), y.cpu()) for x, y in data])
    assert max_diff(m1.cpu(), m2) <= TOL


@pytest.mark.parametrize("flatten", [False, True])
def test_one_launch_per_group_and_dtype(flatten, monkeypatch):
    """Two groups of two tensors: one launch each, over their tables (or, with
    ``flatten=True``, over their segments of the flat buffers)."""
    from fusedopt.backends import numba_cuda

    launches = []
    launch, multi = numba_cuda._launch, numba_cuda.multi
    monkeypatch.setattr(numba_cuda, "_launch",
                        lambda kernel, n: launches.append(n) or launch(kernel, n))
    monkeypatch.setattr(numba_cuda, "multi", lambda *a: launches.append(
        int(a[6].sum())) or multi(*a))
    m = model()
    layers = [list(m[0].parameters()), list(m[2].parameters())]
    opt = ft.AdamW([{"params": layers[0]}, {"params": layers[1], "lr": 0.1}],
                   backend="cuda", flatten=flatten)
    train(m, opt, batches(2))
    sizes = [p.numel() for group in layers for p in group]
    assert launches == [sum(sizes[:2]), sum(sizes[2:])] * 2


def test_many_groups_upload_their_tables_once(monkeypatch):
    """One table per launch, kept while its tensors stay where they are: a step of
    a model with 40 param groups uploads nothing once the first has."""
    from fusedopt.backends import numba_cuda

    gen = torch.Generator().manual_seed(4)
    params = [torch.randn(5, dtype=torch.float64, generator=gen).to(DEVICE)
              .requires_grad_() for _ in range(80)]
    opt = ft.AdamW([{"params": params[k:k + 2], "lr": 0.01 * (1 + k)}
                    for k in range(0, 80, 2)], backend="cuda")
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()
    uploads = []
    to_device = numba_cuda.cuda.to_device
    monkeypatch.setattr(numba_cuda.cuda, "to_device",
                        lambda *a, **k: uploads.append(1) or to_device(*a, **k))
    opt.step()
    assert uploads == []
