"""Whole training loops as users write them, fusedopt.torch beside torch.optim.

A channels_last CNN with BatchNorm, and a small transformer with a tied embedding,
param groups, OneCycleLR, a GradScaler, gradient clipping, gradient accumulation
and a checkpoint resume: in float64 each must end at torch.optim's parameters.
"""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
import fusedopt.torch as ft  # noqa: E402

BACKENDS = ["numba", "cython"]
TOL = 1e-9


def _cnn():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        torch.nn.Conv2d(8, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8),
        torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
        torch.nn.Linear(8, 4)).double().to(memory_format=torch.channels_last)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, kwargs", [("SGD", dict(lr=0.05, momentum=0.9,
                                                        nesterov=True)),
                                           ("AdamW", dict(lr=3e-3, amsgrad=True))])
def test_channels_last_cnn_trains_as_torch(name, kwargs, backend):
    models = [_cnn(), _cnn()]
    opts = [getattr(torch.optim, name)(models[0].parameters(), **kwargs),
            ft.CLASSES[name](models[1].parameters(), **kwargs, backend=backend)]
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        x = torch.randn(6, 3, 8, 8, generator=g, dtype=torch.float64).to(
            memory_format=torch.channels_last)
        y = torch.randint(0, 4, (6,), generator=g)
        for model, opt in zip(models, opts):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    for (n, p), q in zip(models[0].named_parameters(), models[1].parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=TOL, msg=n)
        assert q.stride() == p.stride(), n  # stepped in place, channels_last kept
    for a, b in zip(models[0].buffers(), models[1].buffers()):
        torch.testing.assert_close(b, a, rtol=0, atol=TOL)


class _TinyLM(torch.nn.Module):
    def __init__(self, vocab=17, dim=16):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.block = torch.nn.TransformerEncoderLayer(dim, 2, 32, dropout=0.0,
                                                      batch_first=True)
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight  # tied

    def forward(self, x):
        return self.head(self.norm(self.block(self.embed(x))))


def _lm():
    torch.manual_seed(0)
    return _TinyLM().double()


def _groups(model):
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    rest = [p for n, p in model.named_parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}]


def _setup(lib, backend=None):
    model = _lm()
    extra = {} if lib is torch.optim else {"backend": backend}
    opt = lib.AdamW(_groups(model), lr=1e-3, betas=(0.9, 0.95), **extra)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=30)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    return model, opt, sched, scaler


def _batches(n):
    g = torch.Generator().manual_seed(2)
    return [(torch.randint(0, 17, (4, 6), generator=g),
             torch.randint(0, 17, (4, 6), generator=g)) for _ in range(n)]


def _train(model, opt, sched, scaler, batches):
    for step_batches in zip(batches[::2], batches[1::2]):  # 2 micro-batches a step
        opt.zero_grad()
        for x, y in step_batches:
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1),
                                                     y.flatten()) / 2
            scaler.scale(loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        scaler.step(opt)
        scaler.update()
        sched.step()


@pytest.mark.parametrize("backend", BACKENDS)
def test_transformer_with_the_usual_machinery_trains_as_torch(backend):
    data = _batches(40)
    ref = _setup(torch.optim)
    _train(*ref, data)
    model, opt, sched, scaler = _setup(ft, backend)
    _train(model, opt, sched, scaler, data[:20])
    # checkpoint, rebuild everything, resume
    ckpt = copy.deepcopy({"model": model.state_dict(), "opt": opt.state_dict(),
                          "sched": sched.state_dict(), "scaler": scaler.state_dict()})
    model, opt, sched, scaler = _setup(ft, backend)
    model.load_state_dict(ckpt["model"])
    opt.load_state_dict(ckpt["opt"])
    sched.load_state_dict(ckpt["sched"])
    scaler.load_state_dict(ckpt["scaler"])
    _train(model, opt, sched, scaler, data[20:])
    assert model.head.weight is model.embed.weight
    for (n, p), q in zip(ref[0].named_parameters(), model.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=TOL, msg=n)


@pytest.mark.parametrize("backend", BACKENDS)
def test_fused_true_takes_the_gradscaler_scale_and_skips_inf(backend):
    """``fused=True``, as torch's fused step: the scaler hands over its scale (no
    unscale pass) and a step whose gradients hold an inf is skipped."""
    runs = []
    for lib, extra in ((torch.optim, {}), (ft, {"backend": backend})):
        model = _lm()
        opt = lib.Adam(model.parameters(), lr=1e-2, fused=True, **extra)
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 8)
        for i, (x, y) in enumerate(_batches(8)):
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
            scaler.scale(loss).backward()
            if i == 3:
                model.norm.bias.grad[0] = float("inf")
            scaler.step(opt)
            scaler.update()
        runs.append((model, opt))
    (a, oa), (b, ob) = runs
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=TOL, msg=n)
    assert float(ob.state[b.embed.weight]["step"]) == float(
        oa.state[a.embed.weight]["step"]) == 7
