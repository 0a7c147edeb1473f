"""PyTorch's own optimizer test database (``optim_db``) run against fusedopt.torch.

For every optimizer fusedopt.torch provides, every input torch lists for CPU
float64 (``optim_inputs_func``) trains a small model for 25 steps beside the
torch.optim twin with the same arguments, and the parameters must agree to 1e-9;
every error input (``optim_error_inputs_func``) must raise torch's error type with
a message matching torch's pattern, at construction or at the step, as torch does.
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("expecttest")  # torch's testing helpers import it
from torch.testing._internal.common_optimizers import (  # noqa: E402
    OptimizerErrorEnum, optim_db)

import fusedopt.torch as ft  # noqa: E402

BACKENDS = ["numba", "cython"]
STEPS = 25
INFOS = [info for info in optim_db if info.optim_cls.__name__ in ft.CLASSES]


def _inputs():
    out = []
    for info in INFOS:
        for inp in info.optim_inputs_func(device="cpu", dtype=torch.float64):
            out.append(pytest.param(info, inp,
                                    id=f"{info.optim_cls.__name__}-{inp.desc}"))
    return out


def _errors():
    out = []
    for info in INFOS:
        for err in info.optim_error_inputs_func(device="cpu", dtype=torch.float64):
            out.append(pytest.param(info, err, id=f"{info.optim_cls.__name__}-"
                                    f"{err.optimizer_error_input.desc}"))
    return out


def test_every_provided_optimizer_is_in_optim_db():
    assert {info.optim_cls.__name__ for info in INFOS} == set(ft.CLASSES) - {"Lion", "LAMB"}


#: inputs where fusedopt departs from torch by design, with the bound it keeps: with
#: ``lr`` a Tensor, torch.optim.Muon computes its step's scalars (1 - lr * wd, the
#: adjusted lr) in the Tensor's float32, fusedopt in float64 as for every algorithm;
#: its bfloat16 Newton-Schulz then magnifies the difference over 25 steps of training
ATOL = {("Muon", "Tensor lr"): 1e-5}


def _model(info=None):
    """Two layers; without biases for Muon, which steps matrices only (torch's
    constructor refuses anything else)."""
    torch.manual_seed(0)
    bias = info is None or info.optim_cls.__name__ != "Muon"
    return torch.nn.Sequential(torch.nn.Linear(5, 8, bias=bias), torch.nn.Tanh(),
                               torch.nn.Linear(8, 3, bias=bias)).double()


def _kwargs(kwargs):
    """The same arguments, Tensors cloned (each optimizer its own)."""
    return {k: (v.clone() if isinstance(v, torch.Tensor) else
                tuple(x.clone() if isinstance(x, torch.Tensor) else x for x in v)
                if isinstance(v, tuple) else v) for k, v in kwargs.items()}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("info, inp", _inputs())
def test_optim_db_input_trains_as_torch(info, inp, backend):
    assert inp.params is None  # torch lists none other for CPU
    ours_cls = ft.CLASSES[info.optim_cls.__name__]
    models = [_model(info), _model(info)]
    opts = [info.optim_cls(models[0].parameters(), **_kwargs(inp.kwargs)),
            ours_cls(models[1].parameters(), **_kwargs(inp.kwargs), backend=backend)]
    g = torch.Generator().manual_seed(1)
    for _ in range(STEPS):
        x = torch.randn(16, 5, generator=g, dtype=torch.float64)
        y = torch.randn(16, 3, generator=g, dtype=torch.float64)
        for model, opt in zip(models, opts):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    for p, q in zip(*(m.parameters() for m in models)):
        torch.testing.assert_close(
            q, p, rtol=0, atol=ATOL.get((info.optim_cls.__name__, inp.desc), 1e-9))
    ref, ours = (o.state_dict() for o in opts)
    assert ours["param_groups"] == ref["param_groups"]
    for k, st in ref["state"].items():
        assert ours["state"][k].keys() == st.keys()


@pytest.mark.parametrize("info, err", _errors())
def test_optim_db_error_input_raises_as_torch(info, err):
    ours_cls = ft.CLASSES[info.optim_cls.__name__]
    inp = err.optimizer_error_input
    params = inp.params if inp.params is not None else _model(info).parameters()
    expect = (pytest.warns if issubclass(err.error_type, Warning) else pytest.raises)(
        err.error_type, match=err.error_regex)
    if err.error_on == OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with expect:
            ours_cls(params, **inp.kwargs)
    else:
        opt = ours_cls(params, **inp.kwargs)
        with expect:
            opt.step()
