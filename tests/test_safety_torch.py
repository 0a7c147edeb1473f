"""Never corrupt, never half-write, never train silently wrong: fusedopt.torch.

The PyTorch half of tests/test_safety.py: each test asserts torch.optim's behaviour
(run on a twin) or a clean exception after which parameters, gradients, state and a
canary tensor carved from the same storage are bit-identical; cases that could crash
the interpreter run in a subprocess.
"""

from __future__ import annotations

import copy
import re
import threading

import pytest

torch = pytest.importorskip("torch")

import fusedopt.torch as ft  # noqa: E402

from test_safety import BACKENDS, run_isolated  # noqa: E402


def t_snapshot(opt, tensors):
    def clone(v):
        return v.detach().clone() if isinstance(v, torch.Tensor) else copy.deepcopy(v)
    return ([clone(t) for t in tensors], [clone(getattr(t, "grad", None)) for t in tensors],
            {id(p): {k: clone(v) for k, v in st.items()} for p, st in opt.state.items()})


def assert_t_unchanged(opt, tensors, snap):
    def same(a, b):
        if isinstance(a, torch.Tensor):
            assert isinstance(b, torch.Tensor) and a.dtype == b.dtype
            assert a.shape == b.shape and torch.equal(
                a.contiguous().view(-1).view(torch.uint8),
                b.contiguous().view(-1).view(torch.uint8))
        else:
            assert a == b
    for t, before in zip(tensors, snap[0]):
        same(t.detach(), before)
    for t, before in zip(tensors, snap[1]):
        if before is not None:
            same(t.grad, before)
    assert {id(p) for p in opt.state} == set(snap[2])
    for p, st in opt.state.items():
        assert set(st) == set(snap[2][id(p)])
        for k, v in st.items():
            same(v, snap[2][id(p)][k])


def torch_setup(cls="Adam", backend="numba", flatten=False, dtype=torch.float32,
                steps=2, **kw):
    """Two parameters and a canary carved from one storage, trained ``steps``."""
    gen = torch.Generator().manual_seed(0)
    block = torch.randn(3 * 64, generator=gen, dtype=dtype)
    params = [torch.nn.Parameter(block[:64].clone()), torch.nn.Parameter(block[64:128])]
    canary = block[128:]
    opt = getattr(ft, cls)(params, lr=0.1, backend=backend, flatten=flatten, **kw)
    for _ in range(steps):
        for k, p in enumerate(params):
            p.grad = torch.full_like(p, 0.5 + k)
        opt.step()
    return opt, params, canary


def twin(cls, params, **kw):
    return getattr(torch.optim, cls)(params, lr=0.1, foreach=False, **kw)


# for run_isolated: two parameters and a canary carved from one storage, one step
SETUP = ("block = torch.randn(3 * 64); "
         "params = [torch.nn.Parameter(block[:64].clone()), "
         "torch.nn.Parameter(block[64:128])]; "
         "canary = block[128:].clone(); "
         "opt = ft.Adam(params, lr=0.1, backend={backend!r}); "
         "[setattr(p, 'grad', torch.ones_like(p)) for p in params]; "
         "opt.step()")


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_wrong_size_state_load_is_refused(backend):
    out = run_isolated(f"""
        import copy, torch, fusedopt.torch as ft
        {SETUP.format(backend=backend)}
        sd = copy.deepcopy(opt.state_dict())
        before = copy.deepcopy(opt.state_dict()), [p.detach().clone() for p in params]
        for bad in (torch.zeros(4), torch.zeros(1 << 16), torch.zeros(8, 8)):
            sd["state"][1]["exp_avg"] = bad
            try:
                opt.load_state_dict(sd)
            except ValueError as exc:
                assert "state_dict['state'][1]['exp_avg']: expected shape (64,)" in str(exc), exc
            else:
                raise AssertionError("loaded")
            now = opt.state_dict()
            for i in (0, 1):
                for k, v in before[0]["state"][i].items():
                    assert torch.equal(now["state"][i][k], v), (i, k)
        opt.step()
        assert torch.equal(block[128:], canary)
        print("ok")
    """)
    assert out.strip() == "ok"


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_repointed_parameter_is_checked_against_its_state(backend):
    out = run_isolated(f"""
        import torch, fusedopt.torch as ft
        {SETUP.format(backend=backend)}
        state = {{k: v.clone() for k, v in opt.state[params[1]].items()}}
        params[1].data = torch.randn(1 << 16)    # larger, gradient still the old size
        big = params[1].detach().clone()
        for grad in (None, torch.ones(1 << 16)):
            if grad is not None:
                params[1].grad = grad
            try:
                opt.step()
            except ValueError as exc:
                assert "params[1]" in str(exc) or "Adam:" in str(exc), exc
            else:
                raise AssertionError("stepped")
            assert torch.equal(params[1].detach(), big)
            for k, v in state.items():
                assert torch.equal(opt.state[params[1]][k], v), k
        assert torch.equal(block[128:], canary)
        print("ok")
    """)
    assert out.strip() == "ok"


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_model_double_after_steps_raises_like_torch(backend):
    out = run_isolated(f"""
        import torch, fusedopt.torch as ft
        for make in (lambda m: ft.Adam(m.parameters(), backend={backend!r}),
                     lambda m: torch.optim.Adam(m.parameters(), foreach=False)):
            torch.manual_seed(0)
            model = torch.nn.Linear(8, 4)
            opt = make(model)
            model(torch.randn(3, 8)).sum().backward()
            opt.step()
            model.double()
            model(torch.randn(3, 8, dtype=torch.float64)).sum().backward()
            before = [p.detach().clone() for p in model.parameters()]
            state = [{{k: v.clone() for k, v in opt.state[p].items()}} for p in model.parameters()]
            try:
                opt.step()
            except (TypeError, RuntimeError) as exc:
                print(type(opt).__module__.split(".")[0], type(exc).__name__)
            else:
                raise AssertionError("stepped float64 params with float32 state")
            if isinstance(opt, torch.optim.Adam):
                continue  # torch raises too (after counting the step): not our contract
            for p, b, st in zip(model.parameters(), before, state):
                assert torch.equal(p.detach(), b)
                for k, v in st.items():
                    assert torch.equal(opt.state[p][k], v)
    """)
    assert out.split() == ["fusedopt", "TypeError", "torch", "RuntimeError"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_torch_model_double_before_the_first_step_trains_like_torch(backend):
    results = []
    for make in (lambda m: ft.Adam(m.parameters(), lr=0.1, backend=backend),
                 lambda m: twin("Adam", m.parameters())):
        torch.manual_seed(0)
        model = torch.nn.Linear(8, 4)
        opt = make(model)
        model.double()
        for _ in range(3):
            opt.zero_grad()
            model(torch.randn(3, 8, dtype=torch.float64)).square().sum().backward()
            opt.step()
        results.append([p.detach().clone() for p in model.parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("reset", ["entry", "whole state", "one tensor"])
def test_torch_replaced_state_is_what_the_next_step_uses(reset):
    runs = []
    for make in (lambda ps: ft.Adam(ps, lr=0.1), lambda ps: twin("Adam", ps)):
        params = [torch.nn.Parameter(torch.linspace(-1, 1, 16, dtype=torch.float64))]
        opt = make(params)
        for step in range(4):
            params[0].grad = torch.cos(params[0].detach() * (step + 1))
            if step == 2:
                if reset == "entry":
                    opt.state[params[0]] = {}
                elif reset == "whole state":
                    from collections import defaultdict
                    opt.state = defaultdict(dict)
                else:
                    opt.state[params[0]]["exp_avg"] = torch.zeros_like(params[0])
            opt.step()
        runs.append((params[0].detach().clone(), float(opt.state[params[0]]["step"])))
    torch.testing.assert_close(runs[0][0], runs[1][0], rtol=1e-12, atol=1e-12)
    assert runs[0][1] == runs[1][1]


def test_torch_state_aliasing_a_parameter_is_refused():
    opt, params, canary = torch_setup()
    snap = t_snapshot(opt, params + [canary])
    good = opt.state[params[1]]["exp_avg"]
    opt.state[params[1]]["exp_avg"] = params[0].detach()
    with pytest.raises(ValueError, match=r"shares memory with params\[0\]"):
        opt.step()
    opt.state[params[1]]["exp_avg"] = good
    params[1].grad = params[0].detach()[:]  # torch accepts it; the kernel must not
    with pytest.raises(ValueError, match=r"grads\[1\]: shares memory with params\[0\]"):
        opt.step()
    params[1].grad = snap[1][1].clone()
    assert_t_unchanged(opt, params + [canary], snap)


def test_torch_non_contiguous_loaded_state_is_the_state_trained():
    torch.manual_seed(0)
    shape = (6, 4)
    sds = []
    for make in (lambda ps: ft.Adam(ps, lr=0.1), lambda ps: twin("Adam", ps)):
        p = torch.nn.Parameter(torch.randn(*shape, dtype=torch.float64))
        opt = make([p])
        src = torch.arange(24, dtype=torch.float64).reshape(4, 6).t() / 100
        assert not src.is_contiguous()
        opt.load_state_dict({"state": {0: {"step": torch.tensor(3.0), "exp_avg": src,
                                           "exp_avg_sq": src.square()}},
                             "param_groups": [{**opt.defaults, "params": [0]}]})
        for _ in range(3):
            p.grad = torch.ones_like(p)
            opt.step()
        sds.append(copy.deepcopy(opt.state_dict()["state"][0]))
    for k in sds[1]:
        torch.testing.assert_close(sds[0][k], sds[1][k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("step", [3, 3.0, torch.tensor(3), torch.tensor([3.0])])
def test_torch_old_step_formats_load_like_torch(step):
    results = []
    for make in (lambda ps: ft.Adam(ps, lr=0.1), lambda ps: twin("Adam", ps)):
        p = torch.nn.Parameter(torch.linspace(0, 1, 8, dtype=torch.float64))
        opt = make([p])
        st = {"step": step, "exp_avg": torch.full_like(p, 0.1),
              "exp_avg_sq": torch.full_like(p, 0.01)}
        opt.load_state_dict({"state": {0: st},
                             "param_groups": [{**opt.defaults, "params": [0]}]})
        p.grad = torch.ones_like(p)
        opt.step()
        results.append((p.detach().clone(), float(opt.state[p]["step"])))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=1e-12)
    assert results[0][1] == results[1][1] == 4.0


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("breaker, exc, message", [
    (lambda st: st.update(step=10 ** 400), ValueError, r"\['step'\]: expected an int"),
    (lambda st: st.pop("exp_avg_sq"), ValueError, r"incomplete state, missing "
     r"\['exp_avg_sq'\]"),
    (lambda st: st.pop("step"), ValueError, r"incomplete state, missing \['step'\]"),
    (lambda st: st.update(exp_avg=torch.zeros(63)), ValueError, r"\['exp_avg'\]: expected"),
])
def test_torch_bad_loads_change_nothing(flatten, breaker, exc, message):
    opt, params, canary = torch_setup(flatten=flatten)
    sd = copy.deepcopy(opt.state_dict())
    breaker(sd["state"][1])
    snap = t_snapshot(opt, params + [canary])
    with pytest.raises(exc, match=message):
        opt.load_state_dict(sd)
    assert_t_unchanged(opt, params + [canary], snap)
    for p in params:
        p.grad = torch.ones_like(p)
    opt.step()  # still consistent


def test_torch_parameter_appended_to_a_group_trains_like_torch():
    results = []
    for make in (lambda ps: ft.SGD(ps, lr=0.1, momentum=0.9),
                 lambda ps: twin("SGD", ps, momentum=0.9)):
        a = torch.nn.Parameter(torch.ones(8, dtype=torch.float64))
        b = torch.nn.Parameter(torch.full((5,), 2.0, dtype=torch.float64))
        opt = make([a])
        for step in range(3):
            if step == 1:
                opt.param_groups[0]["params"].append(b)
            a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
            opt.step()
        results.append((a.detach().clone(), b.detach().clone()))
    for x, y in zip(*results):
        torch.testing.assert_close(x, y, rtol=1e-12, atol=1e-12)


def test_torch_out_of_memory_on_first_step_state_writes_nothing(monkeypatch):
    params = [torch.nn.Parameter(torch.ones(16)) for _ in range(3)]
    opt = ft.Adam(params, lr=0.1)
    for p in params:
        p.grad = torch.ones_like(p)
    real, calls = torch.full_like, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise MemoryError("simulated")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "full_like", failing)
    with pytest.raises(MemoryError):
        opt.step()
    assert all(torch.equal(p.detach(), torch.ones(16)) for p in params)
    assert len(opt.state) == 0
    monkeypatch.setattr(torch, "full_like", real)
    opt.step()
    assert all(float(opt.state[p]["step"]) == 1 for p in params)


def test_torch_one_optimizer_from_two_threads_equals_sequential_steps():
    n = 50_000
    p = torch.nn.Parameter(torch.ones(n))
    ref = torch.nn.Parameter(torch.ones(n))
    opt, opt_ref = ft.Adam([p], lr=1e-3), ft.Adam([ref], lr=1e-3)
    p.grad = ref.grad = torch.linspace(-1, 1, n)
    barrier = threading.Barrier(2)

    def worker():
        barrier.wait()
        for _ in range(40):
            opt.step()

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in range(80):
        opt_ref.step()
    assert float(opt.state[p]["step"]) == 80
    assert torch.equal(p.detach(), ref.detach())


# -- flatten=True -------------------------------------------------------------------

def test_flatten_frozen_parameters_are_never_moved():
    torch.manual_seed(0)
    results = []
    for make in (lambda ps: ft.AdamW(ps, lr=0.1, flatten=True),
                 lambda ps: twin("AdamW", ps)):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.Linear(8, 2))
        model[0].requires_grad_(False)
        frozen = [p.detach().clone() for p in model[0].parameters()]
        opt = make(model.parameters())
        x = torch.randn(16, 4)
        for _ in range(100):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
        for p, f in zip(model[0].parameters(), frozen):
            assert torch.equal(p.detach(), f)
        results.append([p.detach().clone() for p in model[1].parameters()])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=1e-6)


def test_flatten_refuses_a_frozen_parameter_that_later_gets_a_gradient():
    model = torch.nn.Linear(4, 2)
    model.bias.requires_grad_(False)
    opt = ft.Adam(model.parameters(), flatten=True)
    model.bias.requires_grad_(True)
    model(torch.randn(3, 4)).sum().backward()
    snap = t_snapshot(opt, list(model.parameters()))
    with pytest.raises(ValueError, match=r"params\[1\]: has a gradient, but had "
                       "requires_grad=False"):
        opt.step()
    assert_t_unchanged(opt, list(model.parameters()), snap)


@pytest.mark.parametrize("move", ["data", "double", "channels_last"])
def test_flatten_refuses_a_repointed_parameter(move):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(2, 3, 3), torch.nn.Flatten(),
                                torch.nn.Linear(12, 1))
    opt = ft.Adam(model.parameters(), flatten=True)
    x = torch.randn(2, 2, 4, 4)
    model(x).sum().backward()
    opt.step()
    if move == "data":
        model[2].weight.data = model[2].weight.data.clone()
    elif move == "double":
        model.double()
        x = x.double()
    else:
        model.to(memory_format=torch.channels_last)
    opt.zero_grad()
    model(x.contiguous(memory_format=torch.channels_last) if move == "channels_last"
          else x).sum().backward()
    snap = t_snapshot(opt, list(model.parameters()))
    with pytest.raises(ValueError, match=r"no longer a view of its place in the flat "
                       "buffer"):
        opt.step()
    assert_t_unchanged(opt, list(model.parameters()), snap)


def test_flatten_refuses_group_edits_and_replaced_state():
    opt, params, canary = torch_setup(flatten=True)
    with pytest.raises(ValueError, match="add_param_group: with flatten=True"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.ones(3))]})
    extra = torch.nn.Parameter(torch.ones(3))
    extra.grad = torch.ones(3)
    opt.param_groups[0]["params"].append(extra)
    snap = t_snapshot(opt, params + [canary])
    with pytest.raises(ValueError, match="param_groups: changed since the optimizer "
                       "was built"):
        opt.step()
    opt.param_groups[0]["params"].pop()
    saved = opt.state[params[0]]
    opt.state[params[0]] = {}
    with pytest.raises(ValueError, match=r"state: replaced since the last step"):
        opt.step()
    opt.state[params[0]] = saved
    assert_t_unchanged(opt, params + [canary], snap)
    opt.step()


def test_flatten_round_trip_without_a_copy_keeps_the_state():
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = ft.Adam([p], lr=0.1, flatten=True)
    p.grad = torch.randn(5, dtype=torch.float64)
    opt.step()
    before = {k: v.clone() for k, v in opt.state[p].items()}
    opt.load_state_dict(opt.state_dict())  # its tensors are views of the flat state
    for k, v in before.items():
        assert torch.equal(opt.state[p][k], v), k


@pytest.mark.parametrize("flatten", [False, True])
def test_torch_state_with_a_step_but_no_tensors_is_refused(flatten):
    opt, params, canary = torch_setup(flatten=flatten)
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][1] = {"step": sd["state"][1]["step"]}
    snap = t_snapshot(opt, params + [canary])
    with pytest.raises(ValueError, match=r"incomplete state, missing \['exp_avg', "
                       r"'exp_avg_sq'\] beside \['step'\]"):
        opt.load_state_dict(sd)
    assert_t_unchanged(opt, params + [canary], snap)


@pytest.mark.parametrize("flatten", [False, True])
def test_adagrad_creates_its_state_in_the_constructor_like_torch(flatten):
    p = torch.nn.Parameter(torch.ones(3))
    opt = ft.Adagrad([p], initial_accumulator_value=0.5, flatten=flatten)
    ref = torch.optim.Adagrad([torch.nn.Parameter(torch.ones(3))],
                              initial_accumulator_value=0.5)
    ours, theirs = opt.state_dict()["state"], ref.state_dict()["state"]
    assert set(ours[0]) == set(theirs[0])
    for k in theirs[0]:
        assert torch.equal(ours[0][k], theirs[0][k]) and ours[0][k].dtype == theirs[0][k].dtype
    if not flatten:  # re-pointed before the first step: refused, as torch refuses it
        p.data, p.grad = torch.ones(4), torch.ones(4)
        with pytest.raises(ValueError, match=r"\['sum'\]: expected 4 elements"):
            opt.step()


def test_flatten_refuses_a_gradient_aliasing_the_flat_buffers():
    p = torch.nn.Parameter(torch.ones(3))
    opt = ft.AdamW([p], lr=0.1, weight_decay=0.1, flatten=True)
    p.grad = torch.as_strided(p.detach(), p.shape, p.stride(), p.storage_offset())
    with pytest.raises(ValueError, match=r"grads\[0\]: shares memory with the flat "
                       "buffers"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3))


def test_flatten_refuses_a_repointed_state_tensor():
    opt, params, canary = torch_setup(flatten=True)
    snap = t_snapshot(opt, params + [canary])
    old = opt.state[params[0]]["exp_avg"].data
    opt.state[params[0]]["exp_avg"].data = torch.full((64,), 100.0)
    with pytest.raises(ValueError, match="state: replaced since the last step"):
        opt.step()
    opt.state[params[0]]["exp_avg"].data = old
    assert_t_unchanged(opt, params + [canary], snap)


@pytest.mark.parametrize("step", [torch.tensor(2 ** 31 - 1, dtype=torch.int32),
                                  torch.tensor(7, dtype=torch.int16)])
def test_torch_step_tensor_of_a_narrow_dtype_becomes_float32(step):
    opt, params, canary = torch_setup()
    opt.state[params[0]]["step"] = step
    opt.step()
    assert opt.state[params[0]]["step"].dtype == torch.float32
    assert float(opt.state[params[0]]["step"]) == float(step) + 1


def test_torch_step_tensor_aliasing_a_parameter_is_refused():
    opt, params, canary = torch_setup()
    params[0].data[0] = 3.0  # a valid count: only the aliasing is wrong
    snap = t_snapshot(opt, params + [canary])
    real = opt.state[params[1]]["step"]
    opt.state[params[1]]["step"] = params[0].detach()[:1]
    with pytest.raises(ValueError, match=r"state\[params\[1\]\]\['step'\]: shares memory "
                       r"with params\[0\]"):
        opt.step()
    opt.state[params[1]]["step"] = real
    assert_t_unchanged(opt, params + [canary], snap)


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_a_gradient_read_through_a_copy_may_not_alias_a_parameter(backend):
    """A gradient in another layout than its parameter is read through a private
    copy; the gradient itself must still not share a byte with what the step writes
    (here a strided parameter, written back from its own copy, is its own gradient):
    refused before any write, as when the layouts agree."""
    import fusedopt.torch as ft

    p = torch.nn.Parameter(torch.randn(14, dtype=torch.float64)[::2])  # gaps
    q = torch.nn.Parameter(torch.randn(7, dtype=torch.float64))
    p.grad, q.grad = p.detach(), torch.randn(7, dtype=torch.float64)
    opt = ft.AdamW([p, q], lr=0.1, backend=backend)
    before = [t.detach().clone() for t in (p, q)]
    with pytest.raises(ValueError, match=r"grads\[0\]: shares memory with"):
        opt.step()
    assert all(torch.equal(a, t.detach()) for a, t in zip(before, (p, q)))
    assert not opt.state


def test_gradients_read_through_copies_may_share_a_buffer():
    """Column slices of one gradient buffer (a fused QKV projection's) are read
    through copies and only read: stepped, not refused."""
    import fusedopt.torch as ft

    g = torch.randn(4, 4, dtype=torch.float64)
    q, k = (torch.nn.Parameter(torch.randn(4, 2, dtype=torch.float64)) for _ in range(2))
    tq, tk = (torch.nn.Parameter(t.detach().clone()) for t in (q, k))
    q.grad, k.grad = g[:, :2], g[:, 2:]
    tq.grad, tk.grad = g[:, :2].clone(), g[:, 2:].clone()
    ft.AdamW([q, k], backend="cython").step()
    torch.optim.AdamW([tq, tk]).step()
    torch.testing.assert_close(q, tq, rtol=0, atol=1e-12)
    torch.testing.assert_close(k, tk, rtol=0, atol=1e-12)


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_a_gradient_or_state_of_another_shape_is_refused_on_every_path(backend):
    """The multi-tensor plan in C (the common case) refuses what its Python twin
    refuses: a gradient or a state tensor of the parameter's size but another shape
    (after ``p.data`` was replaced by a transposed copy), before any write."""
    gen = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(3, 4, generator=gen))
    canary = torch.randn(8, generator=gen)
    opt = ft.Adam([p], lr=0.1, backend=backend)
    p.grad = torch.randn(3, 4, generator=gen)
    opt.step()
    opt.step()  # the state now as the C plan expects it
    p.data = p.data.t().contiguous()
    p.grad = torch.randn(4, 3, generator=gen)
    snap = t_snapshot(opt, [p, canary])
    with pytest.raises(ValueError, match=r"exp_avg.*shape \(4, 3\)"):
        opt.step()
    assert_t_unchanged(opt, [p, canary], snap)
    p.data = p.data.t().contiguous()  # back to (3, 4), the gradient still (4, 3)
    snap = t_snapshot(opt, [p, canary])
    with pytest.raises(ValueError, match=r"gradient of shape \(4, 3\)"):
        opt.step()
    assert_t_unchanged(opt, [p, canary], snap)


def test_a_lazily_conjugated_gradient_is_read_as_its_values():
    gen = torch.Generator().manual_seed(1)
    p = torch.nn.Parameter(torch.randn(6, dtype=torch.complex128, generator=gen))
    q = torch.nn.Parameter(p.detach().clone())
    ours = ft.SGD([p], lr=0.1, momentum=0.9)
    theirs = torch.optim.SGD([q], lr=0.1, momentum=0.9)
    for _ in range(3):
        g = torch.randn(6, dtype=torch.complex128, generator=gen)
        p.grad, q.grad = g.conj(), g.conj()
        ours.step()
        theirs.step()
    assert (p - q).abs().max().item() <= 1e-12
    buf = ours.state[p]["momentum_buffer"] = ours.state[p]["momentum_buffer"].conj()
    before = p.detach().clone(), buf.resolve_conj()
    with pytest.raises(ValueError, match="momentum_buffer.*conjugated"):
        ours.step()
    assert torch.equal(p.detach(), before[0])
    assert torch.equal(ours.state[p]["momentum_buffer"].resolve_conj(), before[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_lazily_negated_gradient_is_read_as_its_values_on_every_step(backend):
    """A real gradient with torch's negative bit (as ``.imag`` of a conjugated view
    has it; ``_neg_view()``): its memory holds the negation of what it shows. Every step
    reads its values (the C plans decline it, the Python plan copies it), and a
    negated parameter or state tensor is refused; torch trains it as it shows."""
    gen = torch.Generator().manual_seed(2)
    p = torch.nn.Parameter(torch.randn(64, dtype=torch.float64, generator=gen))
    q = torch.nn.Parameter(p.detach().clone())
    ours = ft.AdamW([p], lr=0.1, backend=backend)
    theirs = torch.optim.AdamW([q], lr=0.1, foreach=False)
    for _ in range(4):
        g = torch.randn(64, dtype=torch.float64, generator=gen)._neg_view()
        p.grad, q.grad = g, g
        ours.step()
        theirs.step()
        assert (p - q).abs().max().item() <= 1e-12
    state = ours.state[p]
    state["exp_avg"] = state["exp_avg"]._neg_view()
    p.grad = torch.ones(64, dtype=torch.float64)
    before = [p.detach().clone(), state["exp_avg"].resolve_neg(),
              state["exp_avg_sq"].clone(), state["step"].clone()]
    with pytest.raises(ValueError, match="exp_avg.*negated"):
        ours.step()
    after = [p.detach(), state["exp_avg"].resolve_neg(), state["exp_avg_sq"],
             state["step"]]
    assert all(torch.equal(a, b) for a, b in zip(before, after))


def test_refused_options_are_refused_however_they_arrive():
    p = torch.nn.Parameter(torch.ones(4))
    q = torch.nn.Parameter(torch.ones(4))
    opt = ft.Adam([p], lr=0.1)
    with pytest.raises(ValueError, match=r"param_groups\[1\]: differentiable=True"):
        opt.add_param_group({"params": [q], "differentiable": True})
    assert len(opt.param_groups) == 1
    opt.param_groups[0]["capturable"] = True
    p.grad = torch.ones(4)
    snap = t_snapshot(opt, [p])
    with pytest.raises(ValueError, match=r"param_groups\[0\]: capturable=True"):
        opt.step()
    assert_t_unchanged(opt, [p], snap)


def test_a_grad_scale_is_read_as_torch_reads_it():
    """``fused=True`` with a GradScaler's attributes: a scale of 0 divides as torch's
    (the step is inf/NaN, as torch's); a scale or inf flag of more than one element
    is refused by name, before any write."""
    p = torch.nn.Parameter(torch.ones(4))
    q = torch.nn.Parameter(torch.ones(4))
    ours, theirs = ft.SGD([p], lr=0.1, fused=True), torch.optim.SGD([q], lr=0.1, fused=True)
    for opt, t in ((ours, p), (theirs, q)):
        t.grad = torch.ones(4)
        opt.grad_scale, opt.found_inf = torch.tensor(0.0), torch.tensor(0.0)
        opt.step()
    torch.testing.assert_close(p.detach(), q.detach(), equal_nan=True)
    for name in ("grad_scale", "found_inf"):
        setattr(ours, name, torch.ones(2))
        snap = t_snapshot(ours, [p])
        with pytest.raises(ValueError, match=f"{name}: expected a number or a one-element"):
            ours.step()
        assert_t_unchanged(ours, [p], snap)
        setattr(ours, name, torch.tensor(0.0 if name == "found_inf" else 1.0))


def test_flatten_copies_in_a_replaced_gradient_of_any_layout():
    gen = torch.Generator().manual_seed(2)
    p = torch.nn.Parameter(torch.randn(3, 4, dtype=torch.float64, generator=gen))
    q = torch.nn.Parameter(p.detach().clone())
    ours = ft.Adam([p], lr=0.1, flatten=True)
    theirs = torch.optim.Adam([q], lr=0.1)
    for _ in range(2):
        g = torch.randn(3, 8, dtype=torch.float64, generator=gen)[:, ::2]
        p.grad, q.grad = g, g.clone()
        ours.step()
        theirs.step()
    assert (p - q).abs().max().item() <= 1e-12


def test_a_meta_step_is_refused_by_name():
    p = torch.nn.Parameter(torch.ones(4))
    opt = ft.Adam([p], lr=0.1, backend="numpy")
    p.grad = torch.ones(4)
    opt.step()
    opt.state[p]["step"] = torch.tensor(1.0, device="meta")
    with pytest.raises(ValueError, match="'step'.*one-element real tensor"):
        opt.step()


def test_strided_parameters_of_one_storage_are_named_when_refused():
    """Column halves of one matrix are stepped through copies written back over
    every byte between their first and last elements, so they are refused (as
    overlapping, conservatively), by name and before any write."""
    w = torch.randn(3, 8, dtype=torch.float64)
    a, b = torch.nn.Parameter(w[:, :4]), torch.nn.Parameter(w[:, 4:])
    opt = ft.Adam([a, b], lr=0.01)
    a.grad, b.grad = torch.ones(3, 4, dtype=torch.float64), torch.ones(3, 4,
                                                                       dtype=torch.float64)
    before = w.clone()
    with pytest.raises(ValueError, match=r"params\[1\]: shares memory with params\[0\]"):
        opt.step()
    assert torch.equal(w, before) and not opt.state


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_storage_resized_under_its_tensor_is_refused(backend):
    """A parameter, gradient or state tensor whose storage was resized under it
    (``untyped_storage().resize_()``: to nothing, as FSDP frees parameters, or
    smaller) is refused by name before any write, on the C plan, the Python plan
    (float16: through copies) and ``flatten=True``; torch's own optimizers write
    past it (and crash), so this runs in a subprocess."""
    run_isolated(f"""
        import torch, fusedopt.torch as ft
        for dtype in (torch.float32, torch.float16)[:1 if {backend!r} == "numpy" else 2]:
            for which in ("params", "grads", "exp_avg", "step"):
                for size in (0, 2):
                    block = torch.randn(3 * 4096).to(dtype)
                    params = [torch.nn.Parameter(block[:4096].clone()),
                              torch.nn.Parameter(block[4096:8192].clone())]
                    canary = block[8192:]
                    opt = ft.AdamW(params, lr=0.1, backend={backend!r})
                    for _ in range(2):
                        for p in params:
                            p.grad = torch.ones_like(p)
                        opt.step()
                    # a new tensor (one the per-tensor path has made no NumPy view
                    # of yet, which would make its storage refuse a resize)
                    if which == "params":
                        params[1].data = victim = params[1].detach().clone()
                    elif which == "grads":
                        params[1].grad = victim = params[1].grad.clone()
                    else:
                        victim = opt.state[params[1]][which].clone()
                        opt.state[params[1]][which] = victim
                    before = [params[0].detach().clone(), canary.clone(),
                              *(t.clone() for t in opt.state[params[0]].values())]
                    victim.untyped_storage().resize_(size)
                    try:
                        opt.step()
                    except ValueError as e:
                        assert "its storage holds" in str(e), e
                        name = {{"params": "params[1]", "grads": "grads[1]"}}.get(
                            which, f"state[params[1]]['{{which}}']")
                        assert str(e).startswith(name), (name, e)
                    else:
                        raise AssertionError(f"{{dtype}} {{which}} {{size}}: stepped")
                    after = [params[0].detach(), canary,
                             *opt.state[params[0]].values()]
                    assert all(torch.equal(a, b) for a, b in zip(before, after))
        # scalar state (NAdam's mu_product: read, then written back), and a negated
        # gradient (read through a copy: its storage checked before the copy)
        p = torch.nn.Parameter(torch.randn(8))
        opt = ft.NAdam([p], backend={backend!r})
        p.grad = torch.randn(8)
        opt.step()
        opt.state[p]["mu_product"].untyped_storage().resize_(1)
        try:
            opt.step()
        except ValueError as e:
            assert "['mu_product']: its storage holds 1 bytes" in str(e), e
        else:
            raise AssertionError("stepped with a shrunk mu_product")
        for name in ("AdamW", "LAMB"):
            p = torch.nn.Parameter(torch.randn(4096))
            opt = getattr(ft, name)([p], backend={backend!r})
            p.grad = torch.randn(4096)
            opt.step()
            before = p.detach().clone()
            p.grad = torch.randn(4096)._neg_view()
            p.grad.untyped_storage().resize_(0)
            try:
                opt.step()
            except ValueError as e:
                assert str(e).startswith("grads[0]: its storage holds 0 bytes"), e
            else:
                raise AssertionError(f"{{name}}: stepped with a freed gradient")
            assert torch.equal(p.detach(), before)
        # flatten=True: its buffers refuse a resize; the step count it exposes
        params = [torch.nn.Parameter(torch.randn(64)) for _ in range(2)]
        opt = ft.AdamW(params, lr=0.1, backend={backend!r}, flatten=True)
        for p in params:
            p.grad = torch.ones_like(p)
        opt.step()
        for t in (params[0], params[0].grad, opt.state[params[0]]["exp_avg"]):
            try:
                t.untyped_storage().resize_(0)
            except RuntimeError as e:
                assert "not resizable" in str(e)
            else:
                raise AssertionError("a flat buffer was resized")
        opt.state[params[0]]["step"].untyped_storage().resize_(0)
        try:
            opt.step()
        except ValueError as e:
            assert "['step']: its storage holds 0 bytes" in str(e), e
        else:
            raise AssertionError("stepped with a freed step count")
        """)


def test_a_wrapper_tensor_subclass_is_refused_by_name():
    """A wrapper subclass (its values in other tensors, ``data_ptr()`` 0, as
    float8 and NF4 tensors are built) as a gradient, a parameter or a state tensor:
    refused by name before any write, not stepped at address 0 (a crash, so in a
    subprocess)."""
    run_isolated("""
        import torch, fusedopt.torch as ft
        from torch.testing._internal.two_tensor import TwoTensor
        for where in ("grads", "params", "exp_avg"):
            p, q = torch.nn.Parameter(torch.randn(4)), torch.nn.Parameter(torch.randn(4))
            opt = ft.Adam([q, p], lr=0.1)
            for _ in range(2):
                p.grad, q.grad = torch.ones(4), torch.ones(4)
                opt.step()
            t = torch.randn(4)
            if where == "grads":
                p.grad = TwoTensor(t, t.clone())
            elif where == "params":
                p.data = TwoTensor(t, t.clone())
            else:
                opt.state[p]["exp_avg"] = TwoTensor(t, t.clone())
            before = [q.detach().clone(), opt.state[q]["step"].clone()]
            try:
                opt.step()
            except TypeError as e:
                name = {"grads": "grads[1]", "params": "params[1]"}.get(
                    where, "state[params[1]]['exp_avg']")
                assert str(e).startswith(name + ": a tensor without memory"), e
            else:
                raise AssertionError(f"{where}: stepped a wrapper subclass")
            assert torch.equal(q.detach(), before[0])
            assert torch.equal(opt.state[q]["step"], before[1])
        """)


@pytest.mark.parametrize("name", ["Adam", "NAdam"])
def test_inference_tensors_are_refused_as_torch_refuses_them(name):
    """A parameter, state tensor or step made under ``torch.inference_mode()``
    (state loaded there): torch updates none of them in place outside inference
    mode, and neither does the drop-in, by name and before any write (the step
    counts it advances after the kernels included); inside inference mode it steps
    them as torch does."""
    gen = torch.Generator().manual_seed(3)
    for where in ("step", "exp_avg", "params"):
        ps = [torch.nn.Parameter(torch.randn(6, generator=gen)) for _ in range(3)]
        opt = getattr(ft, name)(ps, lr=0.1)
        for _ in range(2):
            for p in ps:
                p.grad = torch.ones(6)
            opt.step()
        with torch.inference_mode():
            if where == "params":
                ps[1].data = ps[1].detach().clone()
            else:
                opt.state[ps[1]][where] = opt.state[ps[1]][where].clone()
        assert (ps[1] if where == "params" else opt.state[ps[1]][where]).is_inference()
        snap = t_snapshot(opt, ps)
        label = "params[1]" if where == "params" else f"state[params[1]]['{where}']"
        with pytest.raises(RuntimeError, match=re.escape(label) + ": an inference tensor"):
            opt.step()
        assert_t_unchanged(opt, ps, snap)
    with torch.inference_mode():  # where torch steps them, so does the drop-in
        qs = [torch.nn.Parameter(p.detach().clone()) for p in ps]
        theirs = getattr(torch.optim, name)(qs, lr=0.1, foreach=False)
        theirs.load_state_dict(copy.deepcopy(opt.state_dict()))  # (not shared)
        for p, q in zip(ps, qs):
            p.grad = q.grad = torch.ones(6)
        opt.step()
        theirs.step()
        for p, q in zip(ps, qs):
            torch.testing.assert_close(p.detach(), q.detach())


def test_an_expanded_parameter_is_refused_before_any_write():
    """A parameter whose elements share memory (``expand``: stride 0) cannot be
    written back element by element; refused by name before any kernel runs (torch
    fails in its write, the other parameters already updated)."""
    p = torch.nn.Parameter(torch.randn(6))
    q = torch.nn.Parameter(torch.randn(1).expand(6))
    opt = ft.Adam([p, q], lr=0.1)
    p.grad, q.grad = torch.ones(6), torch.ones(6)
    snap = t_snapshot(opt, [p, q])
    with pytest.raises(ValueError, match=r"params\[1\]: elements that share memory"):
        opt.step()
    assert_t_unchanged(opt, [p, q], snap)


def test_a_state_tensor_of_another_shape_is_refused_on_the_per_tensor_path():
    """Muon (stepped tensor by tensor) after ``p.data`` was reshaped: its momentum
    buffer of the old shape is refused by name, as torch refuses it (the same
    number of elements laid out as another matrix)."""
    p = torch.nn.Parameter(torch.randn(4, 6))
    opt = ft.Muon([p], lr=0.1)
    p.grad = torch.randn(4, 6)
    opt.step()
    p.data = p.data.reshape(6, 4).clone()
    p.grad = torch.randn(6, 4)
    snap = t_snapshot(opt, [p])
    with pytest.raises(ValueError, match=r"momentum_buffer'\]: expected shape \(6, 4\)"):
        opt.step()
    assert_t_unchanged(opt, [p], snap)


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_a_flat_first_step_failing_in_a_later_segment_leaves_a_usable_optimizer(
        backend, monkeypatch):
    """flatten=True Adafactor over a float32 and a float64 tensor (two segments),
    its first step running out of memory in the second segment's norms pass: no
    parameter is written, and the next steps run (the state the failed step made is
    recorded, not taken for an edit) and match torch.optim.Adafactor's."""
    from conftest import fail_norms_pass

    torch.manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(5)),
            torch.nn.Parameter(torch.randn(7, dtype=torch.float64))]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opt = ft.Adafactor(ours, lr=0.01, flatten=True, backend=backend)
    ref = torch.optim.Adafactor(theirs, lr=0.01)

    def grads():
        for p, q in zip(ours, theirs):
            p.grad = torch.randn_like(p)
            q.grad = p.grad.clone()

    grads()
    warm = [torch.nn.Parameter(p.detach().clone()) for p in ours]  # (compiled: the
    for w, p in zip(warm, ours):                                    # failing call is
        w.grad = p.grad.clone()                                     # the kernel's)
    ft.Adafactor(warm, lr=0.01, flatten=True, backend=backend).step()
    calls = fail_norms_pass(monkeypatch, backend, "adafactor_update", 2)
    with pytest.raises(MemoryError):
        opt.step()
    monkeypatch.undo()
    assert len(calls) == 2
    assert all(torch.equal(p, q) for p, q in zip(ours, theirs))
    for _ in range(3):
        grads()
        opt.step()
        ref.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)
        assert float(opt.state[p]["step"]) == float(ref.state[q]["step"]) == 3
