"""Every dense layout and complex parameter through fusedopt.torch, as torch steps them.

Dense parameters in any order of dimensions (channels_last, transposed, permuted)
are stepped in place over their own storage, their state created in their layout
(``torch.preserve_format``, as torch does); a gradient in another layout is read
through a copy; a parameter with gaps (a slice) through a row-major copy written
back; complex parameters as their real views. Each against torch.optim, float64.
"""

from __future__ import annotations

import copy

import pytest
from conftest import NUMBERS

torch = pytest.importorskip("torch")
import fusedopt.torch as ft  # noqa: E402
from cases import TORCH_ALGORITHMS  # noqa: E402

BACKENDS = ["numba", "cython"]


def _params():
    g = torch.Generator().manual_seed(0)

    def randn(*shape, dtype=torch.float64):
        return torch.randn(*shape, generator=g, dtype=dtype)

    base = randn(6, 10)
    return [
        torch.nn.Parameter(randn(2, 3, 4, 5).to(memory_format=torch.channels_last)),
        torch.nn.Parameter(randn(5, 7).t()),                   # transposed
        torch.nn.Parameter(randn(3, 1, 4).permute(2, 1, 0)),   # permuted
        torch.nn.Parameter(base[:, :4]),                       # a slice with gaps
        torch.nn.Parameter(randn(3, 4, dtype=torch.complex128)),
        torch.nn.Parameter(randn(6)),
    ]


def _train(cls, kwargs, steps=6, **extra):
    params = _params()
    opt = cls(params, **kwargs, **extra)
    for i in range(steps):
        for j, p in enumerate(params):
            grad = torch.randn(p.shape, dtype=p.dtype,
                               generator=torch.Generator().manual_seed(10 * i + j))
            # the channels_last parameter's gradient alternates layouts
            p.grad = (grad.to(memory_format=torch.channels_last) if j == 0 and i % 2
                      else grad)
        opt.step()
    return params, opt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(TORCH_ALGORITHMS))
def test_layouts_and_complex_step_as_torch(name, backend):
    _, torch_name, options = TORCH_ALGORITHMS[name]
    kwargs = options[-1]
    ref, ref_opt = _train(getattr(torch.optim, torch_name), kwargs)
    ours, opt = _train(ft.CLASSES[torch_name], kwargs, backend=backend)
    for j, (p, q) in enumerate(zip(ref, ours)):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-12, msg=f"params[{j}]")
        assert q.stride() == p.stride()  # stepped in place, layout kept
        for key, v in opt.state[q].items():
            if key not in NUMBERS and p.is_contiguous() is False and j != 3:
                assert v.stride() == q.stride(), (j, key)  # preserve_format
    # a checkpoint from torch (state in its own layouts) loads and steps on as torch
    ckpt = copy.deepcopy(ref_opt.state_dict())
    for st in ckpt["state"].values():  # made contiguous on the way: converted back
        for key, v in st.items():
            if key not in NUMBERS:
                st[key] = v.contiguous()
    opt.load_state_dict(ckpt)
    for q, p in zip(ours, ref):
        q.data.copy_(p)
    for o, params in ((ref_opt, ref), (opt, ours)):
        for j, p in enumerate(params):
            p.grad = torch.ones_like(p)
        o.step()
    for p, q in zip(ref, ours):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-12)


def test_the_numpy_backend_names_what_it_cannot_step():
    p = torch.nn.Parameter(torch.randn(4, 5, dtype=torch.float64).t())
    p.grad = torch.ones_like(p)
    opt = ft.Adam([p], backend="numpy")
    before = p.detach().clone()
    with pytest.raises(ValueError, match="numba and cython backends step any layout"):
        opt.step()
    assert torch.equal(p, before)


def _train_dtype(cls, kwargs, dtype, steps=10, **extra):
    g = torch.Generator().manual_seed(0)
    p = torch.nn.Parameter(torch.randn(4, 300, generator=g).to(dtype))
    opt = cls([p], **kwargs, **extra)
    for _ in range(steps):
        p.grad = torch.randn(p.shape, generator=g).to(dtype)
        opt.step()
    return p, opt


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_float16_steps_as_torch_fused(name, backend):
    """float16 parameters: float32 math, float16 state, as torch's fused step: Adam
    bit for bit, AdamW within one float16 rounding (its decay is ordered otherwise)."""
    kwargs = dict(lr=1e-2, amsgrad=True)
    ref, ref_opt = _train_dtype(getattr(torch.optim, name), kwargs, torch.float16,
                                fused=True)
    ours, opt = _train_dtype(ft.CLASSES[name], kwargs, torch.float16, backend=backend)
    tol = dict(rtol=0, atol=0) if name == "Adam" else dict(rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(ours, ref, **tol)
    for key, v in ref_opt.state[ref].items():
        assert opt.state[ours][key].dtype == v.dtype
        torch.testing.assert_close(opt.state[ours][key], v, **tol, msg=key)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", sorted(TORCH_ALGORITHMS))
def test_float16_follows_the_float32_step(name, backend):
    """Every algorithm on float16 parameters stays within float16 rounding of the
    same training in float32 (torch's own float16 paths differ more: its RMSprop
    computes in float16 and overflows here, its fused SGD drifts)."""
    _, torch_name, options = TORCH_ALGORITHMS[name]
    kwargs = options[-1]
    ref, _ = _train_dtype(getattr(torch.optim, torch_name), kwargs, torch.float32)
    ours, opt = _train_dtype(ft.CLASSES[torch_name], kwargs, torch.float16,
                             backend=backend)
    assert ours.dtype == torch.float16
    assert all(v.dtype == torch.float16 for k, v in opt.state[ours].items()
               if k not in NUMBERS)
    err = ((ours.float() - ref) / (ref.abs() + 1)).abs().max().item()
    assert err <= 2e-2, err
