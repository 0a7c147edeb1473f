"""Backend fixture: every test that takes ``backend`` runs on each CPU backend that
imports here; the Numba backend twice, serial and forced parallel (its prange loop)."""

from __future__ import annotations

import os

# The CUDA tests run on Numba's CUDA simulator unless told otherwise: on a machine
# with a GPU, NUMBA_ENABLE_CUDASIM=0 runs them on the device. Set before numba.cuda
# is first imported.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest

import fusedopt
from fusedopt.backends import available

CPU_BACKENDS = [name for name, status in available().items()
                if status.ok and name != "cuda"]  # test_cuda.py tests that one
COMPILED = ("numba", "cython")
MODES = [m for b in CPU_BACKENDS for m in ([b + "-serial", b + "-parallel"]
                                           if b in COMPILED else [b])]


@pytest.fixture(params=MODES)
def backend(request, monkeypatch):
    """The backend name; ``<name>-parallel`` lowers the parallel threshold to 0 so
    even tiny arrays run the parallel (``prange``) loop."""
    name, _, mode = request.param.partition("-")
    if name in COMPILED:
        from fusedopt.backends import policy
        monkeypatch.setattr(policy, "PARALLEL_MIN_SIZE",
                            0 if mode == "parallel" else 1 << 62)
    return name


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def relative_error(ours, reference) -> float:
    """max |ours - ref| / (|ref| + 1e-3): the contract's parity measure."""
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    return float(np.max(np.abs(ours - reference) / (np.abs(reference) + 1e-3),
                        initial=0.0))


TOL = {np.float32: 2e-4, np.float64: 1e-10}
#: a state's entries that are numbers, not arrays: the step and the scalar state of
#: NAdam (mu_product) and ASGD (eta, mu)
NUMBERS = ("step", "mu_product", "eta", "mu")
SHAPES = [(7,), (3, 5), (1,), (2, 3, 4)]

__all__ = ["fusedopt"]


# -- beside torch.optim: what the drop-in tests of several algorithms share --------

def step_beside_torch(name: str, shapes, options: dict, backend: str, dtype: str,
                      steps: int = 50, seed: int = 5, flatten: bool = False):
    """``torch.optim.<name>`` and ``fusedopt.torch.<name>`` (with ``flatten``), each
    over its own copy of float parameters of ``shapes``, after ``steps`` steps with
    the same random gradients: ``(theirs, ours, ref, opt)``."""
    import torch

    import fusedopt.torch as ft

    dt = getattr(torch, dtype)
    rng = np.random.default_rng(seed)
    start = [torch.tensor(rng.standard_normal(s), dtype=dt) for s in shapes]
    theirs = [torch.nn.Parameter(t.clone()) for t in start]
    ours = [torch.nn.Parameter(t.clone()) for t in start]
    ref = getattr(torch.optim, name)(theirs, **options)
    opt = getattr(ft, name)(ours, **options, backend=backend, flatten=flatten)
    for _ in range(steps):
        for a, b in zip(theirs, ours):
            g = torch.tensor(rng.standard_normal(a.shape), dtype=dt)
            a.grad, b.grad = g.clone(), g.clone()
        ref.step()
        opt.step()
    return theirs, ours, ref, opt


def resume_from_each_other(name: str, bias: bool = True, flatten: bool = False,
                           **options) -> None:
    """Five steps of a small float64 model with ``torch.optim.<name>`` and its twin
    ``fusedopt.torch.<name>`` (with ``flatten``); then each resumes from the other's
    ``state_dict`` for five more: the parameters must stay equal (checkpoints
    interchange both ways)."""
    import torch

    import fusedopt.torch as ft

    def model():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(5, 8, bias=bias), torch.nn.Tanh(),
                                   torch.nn.Linear(8, 3, bias=bias)).double()

    def train(m, opt, steps, seed):
        g = torch.Generator().manual_seed(seed)
        for _ in range(steps):
            x = torch.randn(16, 5, generator=g, dtype=torch.float64)
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()

    theirs_cls, ours_cls = getattr(torch.optim, name), getattr(ft, name)
    a, b = model(), model()
    ref = theirs_cls(a.parameters(), **options)
    ours = ours_cls(b.parameters(), **options, flatten=flatten)
    train(a, ref, 5, 0)
    train(b, ours, 5, 0)
    ref2 = theirs_cls(a.parameters(), **options)
    ours2 = ours_cls(b.parameters(), **options, flatten=flatten)
    ref2.load_state_dict(ours.state_dict())
    ours2.load_state_dict(ref.state_dict())
    train(a, ref2, 5, 1)
    train(b, ours2, 5, 1)
    for p, q in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(q, p, rtol=0, atol=1e-12)


def fail_norms_pass(monkeypatch, backend: str, name: str, at: int) -> list:
    """Make the ``at``-th read-only norms pass (``Spec.norms``) of kernel ``name`` on
    the numba or cython backend raise MemoryError, as running out of memory for its
    blocks' sums would; returns the list its calls are counted in."""
    calls = []

    def counted(kernel):
        def call(*args):
            calls.append(1)
            if len(calls) == at:
                raise MemoryError("no memory for the blocks' sums")
            return kernel(*args)
        return call

    if backend == "numba":
        from fusedopt.backends import numba_cpu

        class Counted(dict):
            def get(self, key, default=None):
                k = dict.get(self, key, default)
                return counted(k) if k is not None and key[0] == name else k

        monkeypatch.setattr(numba_cpu, "NORMS", Counted(numba_cpu.NORMS))
        monkeypatch.setattr(numba_cpu, "_threadsafe", True)  # (NORMS, not a wrapper)
    else:
        from fusedopt.backends import cython

        monkeypatch.setattr(cython._k, name + "_norms",
                            counted(getattr(cython._k, name + "_norms")))
    return calls


def snapshot(params, opt) -> tuple:
    """Copies of ``params`` and of ``opt``'s state (its ``state_dict``), for
    ``assert_unchanged``."""
    return ([p.copy() for p in params],
            {i: {k: (v.copy() if hasattr(v, "copy") else v) for k, v in s.items()}
             for i, s in opt.state_dict()["state"].items()})


def assert_unchanged(params, opt, before: tuple) -> None:
    """``params`` and ``opt``'s state are bit for bit as ``snapshot`` saw them, with
    no state entry gained or lost."""
    arrays, state = before
    for p, a in zip(params, arrays):
        np.testing.assert_array_equal(p, a)
    now = opt.state_dict()["state"]
    assert set(now) == set(state)
    for i, s in state.items():
        assert set(now[i]) == set(s)
        for k, v in s.items():
            np.testing.assert_array_equal(now[i][k], v)
