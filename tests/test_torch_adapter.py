"""fusedopt.torch against torch.optim: training, checkpoints both ways, schedulers,
GradScaler, clipping, closures, flattening, and the refusals."""

from __future__ import annotations

import copy
import re

import pytest

torch = pytest.importorskip("torch")
import fusedopt.torch as ft  # noqa: E402
from cases import TORCH_ALGORITHMS as ALGORITHMS, TORCH_CASES as CASES, case_id  # noqa: E402

TOL = 1e-9
F32_TOL = 2e-4  # the parity contract's float32 bound


def mlp(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(),
                               torch.nn.Linear(12, 12), torch.nn.Tanh(),
                               torch.nn.Linear(12, 3)).to(dtype)


def batches(steps, seed=1, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 6, generator=gen, dtype=dtype),
             torch.randn(16, 3, generator=gen, dtype=dtype)) for _ in range(steps)]


def train(model, opt, data, scheduler=None):
    for x, y in data:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        if scheduler is not None:
            scheduler.step()


def max_diff(m1, m2):
    """The contract's measure: max |ours - ref| / (|ref| + 1e-3)."""
    return max(((a - b).abs() / (b.abs() + 1e-3)).max().item()
               for a, b in zip(m1.parameters(), m2.parameters()))


def pair(name, kwargs, **ours):
    torch_name = ALGORITHMS[name][1]
    m1, m2 = mlp(), mlp()
    return (m1, getattr(ft, torch_name)(m1.parameters(), **kwargs, **ours),
            m2, getattr(torch.optim, torch_name)(m2.parameters(), **kwargs))


@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_training_matches_torch(case, backend):
    name, kwargs = case
    m1, o1, m2, o2 = pair(name, kwargs, backend=backend)
    data = batches(40)
    train(m1, o1, data)
    train(m2, o2, data)
    assert max_diff(m1, m2) <= TOL


#: algorithms with per-tensor scalar state (NAdam's mu_product)
SCALAR_STATE = [name for name, (cls, _, _) in ALGORITHMS.items()
                if cls._algorithm.scalar_state]


@pytest.mark.parametrize("backend", ["numba", "cython", "numpy"])
@pytest.mark.parametrize("name", SCALAR_STATE)
def test_scalar_state_per_tensor_as_torch(name, backend):
    """Scalar state (NAdam's mu_product, ASGD's eta and mu) is per tensor: tensors
    that have stepped different numbers of times carry different values, stepped
    by one launch each (multi-tensor path) and kept as torch's 0-d tensors, in
    place; a bad value is refused before any write, naming the tensor."""
    kwargs = ALGORITHMS[name][2][-1]
    m1, o1, m2, o2 = pair(name, kwargs, backend=backend)
    data = batches(12)
    first = [p for p in m1.parameters()][0], [p for p in m2.parameters()][0]
    for i, (x, y) in enumerate(data):
        for model, opt, p0 in ((m1, o1, first[0]), (m2, o2, first[1])):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            if i % 3:  # the first tensor steps one time in three
                p0.grad = None
            opt.step()
    assert max_diff(m1, m2) <= TOL
    p1, p2 = list(m1.parameters()), list(m2.parameters())
    for a, b in zip(p1, p2):
        assert o1.state[a].keys() == o2.state[b].keys()
        for key, value in o2.state[b].items():
            if value.dim() == 0:
                assert o1.state[a][key].dtype == value.dtype
                assert float(o1.state[a][key]) == float(value), key
    assert float(o1.state[p1[0]]["step"]) != float(o1.state[p1[1]]["step"])
    held = {k: v for k, v in o1.state[p1[1]].items() if v.dim() == 0 and k != "step"}
    x, y = data[0]
    o1.zero_grad()
    torch.nn.functional.mse_loss(m1(x), y).backward()
    o1.step()
    for key, value in held.items():  # filled in place, as torch's
        assert o1.state[p1[1]][key] is value
    # a bad value: refused before any write
    key = next(iter(held))
    o1.state[p1[2]][key] = torch.tensor(float("nan"))
    before = [p.detach().clone() for p in p1]
    with pytest.raises(ValueError, match=re.escape(
            f"state[params[2]]['{key}']: expected a finite number")):
        o1.step()
    for p, b in zip(p1, before):
        assert torch.equal(p.detach(), b)


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("name", SCALAR_STATE)
def test_scalar_state_resumes_in_the_dtype_torch_loads_it(name, flatten):
    """torch's load casts scalar state to its parameter's dtype (float64 here) and
    computes on in it: a checkpoint resumed on either side goes on exactly as
    torch's, values and dtypes."""
    kwargs = ALGORITHMS[name][2][-1]
    m1, o1, m2, o2 = pair(name, kwargs, flatten=flatten)
    data = batches(20)
    train(m1, o1, data[:10])
    train(m2, o2, data[:10])
    torch_name = ALGORITHMS[name][1]
    sd1, sd2 = copy.deepcopy(o1.state_dict()), copy.deepcopy(o2.state_dict())
    o1 = getattr(ft, torch_name)(m1.parameters(), **kwargs, flatten=flatten)
    o1.load_state_dict(sd2)  # torch's checkpoint into fusedopt, and back
    o2 = getattr(torch.optim, torch_name)(m2.parameters(), **kwargs)
    o2.load_state_dict(sd1)
    train(m1, o1, data[10:])
    train(m2, o2, data[10:])
    assert max_diff(m1, m2) <= 1e-12
    for a, b in zip(m1.parameters(), m2.parameters()):
        for key in o1._scalars:
            ours, theirs = o1.state[a][key], o2.state[b][key]
            assert ours.dtype == theirs.dtype == torch.float64
            assert ours.item() == theirs.item(), key


def test_nadam_product_rounding_to_one_is_refused_before_any_write():
    """beta1 that rounds to 1 in float32 makes mu_product 1 (torch then divides by
    zero after writing its moments): refused before any write, saying why."""
    p = torch.nn.Parameter(torch.ones(3))
    opt = ft.NAdam([p], betas=(1 - 1e-9, 0.999), momentum_decay=1e4)
    p.grad = torch.ones(3)
    with pytest.raises(ValueError, match="mu_product rounds to 1.0 at step 1"):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(3)) and not opt.state[p]


@pytest.mark.parametrize("name", SCALAR_STATE)
def test_flat_scalar_state_is_shared_per_segment_and_checked(name):
    """flatten=True: a segment's scalar state is one 0-d tensor its parameters
    share (as its step); spoiled in place, the step refuses before any write."""
    kwargs = ALGORITHMS[name][2][-1]
    m1, o1, _, _ = pair(name, kwargs, flatten=True)
    train(m1, o1, batches(3))
    params = list(m1.parameters())
    key = o1._scalars[0]
    assert all(o1.state[p][key] is o1.state[params[0]][key] for p in params)
    assert o1.state_dict()["state"][1][key] is not o1.state[params[1]][key]
    o1.state[params[0]][key].fill_(float("inf"))
    before = [p.detach().clone() for p in params]
    x, y = batches(1)[0]
    torch.nn.functional.mse_loss(m1(x), y).backward()
    with pytest.raises(ValueError, match=re.escape(
            f"the state of params[0]'s segment['{key}']: expected a finite number")):
        o1.step()
    for p, b in zip(params, before):
        assert torch.equal(p.detach(), b)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_flatten_matches_torch(name):
    kwargs = ALGORITHMS[name][2][-1]
    m1, o1, m2, o2 = pair(name, kwargs, flatten=True)
    assert o1._flat is not None and len(o1._flat.segments) == 1
    data = batches(40)
    train(m1, o1, data)
    train(m2, o2, data)
    assert max_diff(m1, m2) <= TOL


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_checkpoints_move_both_ways(name, flatten):
    """20 steps in one library, a checkpoint into the other, 20 more in each: the
    same parameters as 40 steps in either."""
    kwargs = ALGORITHMS[name][2][-1]
    torch_name = ALGORITHMS[name][1]
    data = batches(40)
    ref, ref_opt = mlp(), None
    ref_opt = getattr(torch.optim, torch_name)(ref.parameters(), **kwargs)
    train(ref, ref_opt, data)
    for first, second in ((ft, torch.optim), (torch.optim, ft)):
        m = mlp()
        extra = {"flatten": flatten} if first is ft else {}
        o = getattr(first, torch_name)(m.parameters(), **kwargs, **extra)
        train(m, o, data[:20])
        ckpt = copy.deepcopy(o.state_dict())
        m2 = mlp()
        m2.load_state_dict(m.state_dict())
        extra = {"flatten": flatten} if second is ft else {}
        o2 = getattr(second, torch_name)(m2.parameters(), **kwargs, **extra)
        o2.load_state_dict(ckpt)
        train(m2, o2, data[20:])
        assert max_diff(m2, ref) <= TOL, (first.__name__, second.__name__)


def test_state_dict_has_torchs_keys():
    m1, o1, m2, o2 = pair("adam", dict(lr=0.01, amsgrad=True))
    data = batches(2)
    train(m1, o1, data)
    train(m2, o2, data)
    ours, theirs = o1.state_dict(), o2.state_dict()
    assert ours["state"].keys() == theirs["state"].keys()
    for i in theirs["state"]:
        assert ours["state"][i].keys() == theirs["state"][i].keys()
        assert ours["state"][i]["step"].dtype == theirs["state"][i]["step"].dtype
        assert ours["state"][i]["step"].item() == 2.0


def test_scheduler_drives_the_learning_rate():
    m1, o1, m2, o2 = pair("sgd", dict(lr=0.1, momentum=0.9))
    s1 = torch.optim.lr_scheduler.CosineAnnealingLR(o1, T_max=10)
    s2 = torch.optim.lr_scheduler.CosineAnnealingLR(o2, T_max=10)
    data = batches(25)
    train(m1, o1, data, s1)
    train(m2, o2, data, s2)
    assert s1.get_last_lr() == s2.get_last_lr()
    assert max_diff(m1, m2) <= TOL


def test_grad_scaler_and_clipping():
    runs = []
    for lib in (ft, torch.optim):
        model = mlp(dtype=torch.float32)
        opt = lib.Adam(model.parameters(), lr=0.01)
        scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
        for x, y in batches(15, dtype=torch.float32):
            opt.zero_grad()
            loss = torch.nn.functional.mse_loss(model(x), y)
            scaler.scale(loss).backward()
            scaler.unscale_(opt)
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.1)
            scaler.step(opt)
            scaler.update()
        runs.append(model)
    # float32 against torch's foreach Adam: the contract's float32 bound (rounding
    # order differs between AVX2 and AVX-512 builds); an unscale or clip the step
    # missed would be off by orders of magnitude
    assert max_diff(*runs) <= F32_TOL


def test_closure_is_called_and_its_loss_returned():
    model = mlp()
    opt = ft.SGD(model.parameters(), lr=0.1)
    x, y = batches(1)[0]
    calls = []

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        calls.append(loss.item())
        return loss

    loss = opt.step(closure)
    assert calls and loss.item() == calls[0]


def test_params_without_grad_are_skipped():
    model = mlp()
    frozen = model[0].weight
    frozen.requires_grad_(False)
    before = frozen.clone()
    opt = ft.Adam(model.parameters(), lr=0.1)
    train(model, opt, batches(3))
    assert torch.equal(frozen, before) and frozen not in opt.state


def test_sparse_gradients_are_refused_before_any_write():
    emb = torch.nn.Embedding(10, 4, sparse=True).double()
    lin = torch.nn.Linear(4, 1).double()
    opt = ft.Adam([*lin.parameters(), *emb.parameters()], lr=0.1)
    before = [p.clone() for p in (*lin.parameters(), *emb.parameters())]
    lin(emb(torch.tensor([1, 2]))).sum().backward()
    with pytest.raises(RuntimeError, match="does not support sparse gradients"):
        opt.step()
    for p, b in zip((*lin.parameters(), *emb.parameters()), before):
        assert torch.equal(p, b)
    assert len(opt.state) == 0


def test_bad_hyperparameters_are_named():
    # torch's constructor, torch's message; then fusedopt's checks (torch takes inf)
    with pytest.raises(ValueError, match=r"^Invalid learning rate: -1.0"):
        ft.Adam(mlp().parameters(), lr=-1.0)
    with pytest.raises(ValueError, match=r"lr'?\]?: expected a finite number"):
        ft.Adam(mlp().parameters(), lr=float("inf"))
    opt = ft.Adam(mlp().parameters())
    opt.param_groups[0]["betas"] = (0.9, 1.5)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['betas'\]"):
        opt.step()


def test_flatten_makes_views_of_one_buffer_and_keeps_grads_there():
    model = mlp(dtype=torch.float32)
    opt = ft.AdamW(model.parameters(), lr=0.01, flatten=True)
    (buf,) = opt._flat.buffers.values()
    (gbuf,) = opt._flat.grad_buffers.values()
    for p in model.parameters():
        assert p.untyped_storage().data_ptr() == buf.untyped_storage().data_ptr()
    train(model, opt, batches(3, dtype=torch.float32))
    for p in model.parameters():
        assert p.grad.untyped_storage().data_ptr() == gbuf.untyped_storage().data_ptr()
    # a gradient replaced behind the optimizer's back is copied in, not lost
    p0 = next(model.parameters())
    p0.grad = torch.ones_like(p0)
    opt.step()
    assert p0.grad.untyped_storage().data_ptr() == gbuf.untyped_storage().data_ptr()


def test_flat_checkpoint_with_unequal_steps_is_refused_unchanged():
    model = mlp()
    opt = ft.Adam(model.parameters(), flatten=True)
    train(model, opt, batches(2))
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][1]["step"] = torch.tensor(9.0)
    before = copy.deepcopy(opt.state_dict())
    with pytest.raises(ValueError, match=r"flatten=True steps each segment as one"):
        opt.load_state_dict(sd)
    after = opt.state_dict()
    for i in before["state"]:
        for k, v in before["state"][i].items():
            assert torch.equal(after["state"][i][k], v)


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_bf16_model_steps_as_fusedopt_does_and_checkpoints_to_torch(backend):
    """A bfloat16 model: the same bits as fusedopt.AdamW on the ml_dtypes arrays of
    its parameters and gradients (float32 math, stochastic rounding with the same
    seed, bf16 state); the state is torch.bfloat16 with torch's keys, so the
    checkpoint loads into torch.optim.AdamW."""
    np = pytest.importorskip("numpy")
    ml_dtypes = pytest.importorskip("ml_dtypes")
    import fusedopt
    pytest.importorskip(f"fusedopt.backends.{'numba_cpu' if backend == 'numba' else backend}")
    model = mlp(dtype=torch.bfloat16)
    params = [p.detach().to(torch.float32).numpy().astype(ml_dtypes.bfloat16)
              for p in model.parameters()]
    opt = ft.AdamW(model.parameters(), lr=1e-2, amsgrad=True, backend=backend, seed=7)
    ref = fusedopt.AdamW(params, lr=1e-2, amsgrad=True, backend=backend, seed=7)
    for x, y in batches(5, dtype=torch.bfloat16):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        ref.step([p.grad.to(torch.float32).numpy().astype(ml_dtypes.bfloat16)
                  for p in model.parameters()])
        opt.step()
    for p, q in zip(model.parameters(), params):
        assert p.dtype == torch.bfloat16
        np.testing.assert_array_equal(p.detach().view(torch.int16).numpy().view(np.uint16),
                                      q.view(np.uint16).reshape(p.shape))
    sd = opt.state_dict()
    assert sd["state"][0]["exp_avg"].dtype == torch.bfloat16
    twin = mlp(dtype=torch.bfloat16)
    theirs = torch.optim.AdamW(twin.parameters(), lr=1e-2, amsgrad=True)
    theirs.load_state_dict(sd)
    assert torch.equal(theirs.state_dict()["state"][0]["max_exp_avg_sq"],
                       sd["state"][0]["max_exp_avg_sq"])


def test_bf16_is_refused_by_name_where_the_backend_has_no_bf16():
    model = mlp(dtype=torch.bfloat16)
    opt = ft.SGD(model.parameters(), lr=0.1, backend="numpy")
    torch.nn.functional.mse_loss(model(torch.ones(2, 6, dtype=torch.bfloat16)),
                                 torch.zeros(2, 3, dtype=torch.bfloat16)).backward()
    before = [p.detach().clone() for p in model.parameters()]
    with pytest.raises(TypeError, match=r"expected parameters of float32, float64, "
                       r"complex64, complex128 on backend 'numpy' \(bfloat16 on numba, "
                       r"cython and"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
    with pytest.raises(ValueError, match="seed: expected an int >= 0"):
        ft.AdamW(model.parameters(), seed=-1)


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("name, kwargs, keys", [
    ("Lion", dict(lr=0.01, weight_decay=0.1), {"exp_avg"}),  # lion-pytorch's: no step
    ("LAMB", dict(lr=0.01, weight_decay=0.1), {"step", "exp_avg", "exp_avg_sq"})])
def test_an_algorithm_torch_lacks_trains_as_its_numpy_oracle(flatten, name, kwargs, keys):
    """fusedopt.torch.Lion and LAMB (no torch.optim twin): a model trains as the
    float64 NumPy oracle steps the same gradients (LAMB's trust ratio per tensor, in
    a flat segment too), and its state_dict round-trips."""
    import numpy as np

    import fusedopt

    model = mlp()
    opt = getattr(ft, name)(model.parameters(), **kwargs, flatten=flatten)
    params = [p.detach().numpy().copy() for p in model.parameters()]
    oracle = getattr(fusedopt, name)(params, **kwargs, backend="numpy")
    for x, y in batches(20):
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        oracle.step([p.grad.numpy().copy() for p in model.parameters()])
        opt.step()
    for p, q in zip(model.parameters(), params):
        assert np.abs(p.detach().numpy() - q).max() <= 1e-12
    state = opt.state_dict()
    assert set(state["state"][0]) == keys
    again = getattr(ft, name)(mlp().parameters(), **kwargs)
    again.load_state_dict(copy.deepcopy(state))
    assert torch.equal(again.state_dict()["state"][0]["exp_avg"],
                       state["state"][0]["exp_avg"])


@pytest.mark.parametrize("module", ["fusedopt", "fusedopt.torch"])
@pytest.mark.parametrize("name, advice", [
    ("LBFGS", "Use torch.optim.LBFGS"), ("SparseAdam", "Use torch.optim.SparseAdam")])
def test_importing_what_fusedopt_lacks_says_what_to_use(module, name, advice):
    """torch.optim's optimizers without a fused twin: an ImportError naming them, why
    and what to use instead; any other missing name stays an AttributeError."""
    with pytest.raises(ImportError, match=f"{module} does not provide {name}: .*{advice}"):
        exec(f"from {module} import {name}")
    mod = __import__(module, fromlist=["_"])
    assert getattr(mod, "NoSuchOptimizer", None) is None
    with pytest.raises(AttributeError, match="has no attribute 'NoSuchOptimizer'"):
        mod.NoSuchOptimizer  # noqa: B018


def test_every_torch_optimizer_is_provided_or_explained():
    """Each torch.optim optimizer is a fusedopt.torch class or says why it is not."""
    from fusedopt.algorithms import NOT_PROVIDED
    names = {n for n, c in vars(torch.optim).items()
             if isinstance(c, type) and issubclass(c, torch.optim.Optimizer)
             and c is not torch.optim.Optimizer}
    assert names <= set(ft.CLASSES) | set(NOT_PROVIDED), names - set(ft.CLASSES)
    assert not set(ft.CLASSES) & set(NOT_PROVIDED)


def test_lamb_refuses_by_name_what_only_multi_tensor_calls_step():
    """LAMB steps tensor by tensor (its norms are per tensor): a channels_last
    parameter or a float16 one is refused before any write, saying why and what to
    do, where the element-wise optimizers step them in multi-tensor calls."""
    conv = torch.nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
    opt = ft.LAMB(conv.parameters(), lr=0.01)
    conv(torch.randn(2, 3, 8, 8).to(memory_format=torch.channels_last)).sum().backward()
    before = [p.detach().clone() for p in conv.parameters()]
    with pytest.raises(ValueError, match=r"LAMB: steps each tensor in one call over its "
                       r"flat view \(tensor by tensor\), so it needs contiguous "
                       r".*or use flatten=True"):
        opt.step()
    assert all(torch.equal(a, b) for a, b in zip(before, conv.parameters()))
    assert not opt.state
    half = torch.nn.Parameter(torch.ones(8, dtype=torch.float16))
    half.grad = torch.ones_like(half)
    with pytest.raises(TypeError, match="LAMB: float16 parameters are stepped by "
                       "multi-tensor calls"):
        ft.LAMB([half]).step()
    assert torch.equal(half.detach(), torch.ones(8, dtype=torch.float16))


@pytest.mark.parametrize("flatten", [False, True])
@pytest.mark.parametrize("name", ["AdamW", "NAdam", "Adagrad"])
def test_a_copied_or_pickled_optimizer_trains_on_as_the_original(name, flatten):
    """``copy.deepcopy`` of a model and its optimizer after some steps, and
    ``torch.save``/``torch.load`` of both, give an optimizer over the copied
    parameters (rebuilt as the constructor builds it: backend, flat buffers) that
    trains on exactly as the original does."""
    import io
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.Tanh(),
                                torch.nn.Linear(5, 2))
    opt = getattr(ft, name)(model.parameters(), lr=0.01, flatten=flatten)
    x = torch.randn(8, 6)

    def train(m, o, steps):
        for _ in range(steps):
            o.zero_grad()
            m(x).square().mean().backward()
            o.step()

    train(model, opt, 2)
    buffer = io.BytesIO()
    torch.save((model, opt), buffer)
    buffer.seek(0)
    copies = [copy.deepcopy((model, opt)),
              torch.load(buffer, weights_only=False)]
    train(model, opt, 3)
    for twin, twin_opt in copies:
        assert twin_opt.backend == opt.backend
        assert (twin_opt._flat is None) == (not flatten)
        train(twin, twin_opt, 3)
        for p, q in zip(model.parameters(), twin.parameters()):
            assert torch.equal(p, q) and p is not q
        for p, q in zip(model.parameters(), twin.parameters()):
            st, tw = opt.state[p], twin_opt.state[q]
            assert st.keys() == tw.keys()
            assert all(torch.equal(st[k], tw[k]) for k in st)
