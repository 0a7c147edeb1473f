"""Adafactor: the factored moments on the host and the fused passes, against the NumPy
oracle (the numpy backend, written from the paper and torch's docs) and against
torch.optim.Adafactor through fusedopt.torch, its state shapes, and what it refuses."""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt
from conftest import TOL, relative_error

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
    fp = fusedopt.FlatParams([(3, 4)], np.float32)
    with pytest.raises(ValueError, match="FlatParams; Adafactor keeps state of other "
                       "shapes"):
        fusedopt.Adafactor(fp, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bf16_state_is_refused_before_any_write(backend):
    p = np.ones((3, 4), np.float32)
    opt = fusedopt.Adafactor([p], state_dtype="bfloat16", backend=backend)
    with pytest.raises(TypeError, match="Adafactor keeps its state in the parameters' "
                       "dtype"):
        opt.step([np.ones((3, 4), np.float32)])
    assert (p == 1).all() and not opt.state.get(0)


def test_cuda_arrays_are_refused_by_name():
    from fusedopt.backends import numba_cuda

    with pytest.raises(TypeError, match="Adafactor's row and column means run on the "
                       "host"):
        numba_cuda.adafactor(None)


# -- the drop-in against torch.optim.Adafactor --------------------------------------

@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("options", OPTIONS, ids=_ids)
@pytest.mark.parametrize("backend", BACKENDS)
def test_dropin_matches_torch_adafactor(backend, options, dtype):
    """50 steps of random gradients: parameters and every state tensor within the
    contract, with torch's keys and shapes."""
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    dt = getattr(torch, dtype)
    rng = np.random.default_rng(5)
    start = [torch.tensor(rng.standard_normal(s), dtype=dt) for s in SHAPES]
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    ref = torch.optim.Adafactor(theirs, **options)
    opt = ft.Adafactor(ours, **options, backend=backend)
    for _ in range(50):
        for a, b in zip(theirs, ours):
            g = torch.tensor(rng.standard_normal(a.shape), dtype=dt)
            a.grad, b.grad = g.clone(), g.clone()
        ref.step()
        opt.step()
    tol = TOL[np.dtype(dtype).type]
    for a, b in zip(theirs, ours):
        assert relative_error(b.detach(), a.detach()) <= tol
        assert opt.state[b].keys() == ref.state[a].keys()
        for name, t in ref.state[a].items():
            assert opt.state[b][name].shape == t.shape, name
            assert relative_error(opt.state[b][name], t) <= tol, name
    assert opt.state_dict()["param_groups"] == ref.state_dict()["param_groups"]


def test_dropin_checkpoints_interchange_with_torch():
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.Tanh(),
                                   torch.nn.Linear(8, 3)).double()

    def train(m, opt, steps, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            x = torch.randn(16, 5, generator=g, dtype=torch.float64)
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()

    a, b = model(), model()
    ref, ours = torch.optim.Adafactor(a.parameters()), ft.Adafactor(b.parameters())
    train(a, ref, 5, 0)
    train(b, ours, 5, 0)
    ref2, ours2 = torch.optim.Adafactor(a.parameters()), ft.Adafactor(b.parameters())
    ref2.load_state_dict(ours.state_dict())
    ours2.load_state_dict(ref.state_dict())
    train(a, ref2, 5, 1)
    train(b, ours2, 5, 1)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-12)
    bad = ref.state_dict()
    bad["state"][0]["row_var"] = torch.zeros(8, 5)
    with pytest.raises(ValueError, match=r"\['row_var'\]: expected shape \(8, 1\)"):
        ft.Adafactor(b.parameters()).load_state_dict(bad)


def test_dropin_refuses_as_torch_and_by_name():
    torch = pytest.importorskip("torch")
    import fusedopt.torch as ft

    z = torch.nn.Parameter(torch.ones(2, 3, dtype=torch.complex64))
    z.grad = torch.ones_like(z)
    with pytest.raises(RuntimeError, match="Adafactor does not support complex "
                       "parameters"):
        ft.Adafactor([z]).step()
    p = torch.nn.Parameter(torch.ones(2, 3))
    with pytest.raises(ValueError, match="flatten=True: Adafactor keeps state of other "
                       "shapes"):
        ft.Adafactor([p], flatten=True)
    h = torch.nn.Parameter(torch.ones(2, 3, dtype=torch.bfloat16))
    h.grad = torch.ones_like(h)
    opt = ft.Adafactor([h])
    with pytest.raises(TypeError, match="Adafactor"):
        opt.step()
    assert torch.equal(h.detach(), torch.ones(2, 3, dtype=torch.bfloat16))
    assert not opt.state
