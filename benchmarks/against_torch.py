"""What benchmarks/muon.py and benchmarks/adafactor.py share: the parameters and
gradients of one row, and the interleaved rounds against torch's implementation."""

from __future__ import annotations

import statistics
import time
from typing import Callable

import numpy as np
import torch


def tensors(shapes) -> list[torch.nn.Parameter]:
    """float32 parameters of ``shapes`` (fixed seed), each with its gradient."""
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    return params


def numpy_step(cls, params, **kwargs) -> Callable[[], None]:
    """A step of ``cls`` (a ``fusedopt`` class) over NumPy views of ``params``, run
    once (state allocated, kernels compiled)."""
    arrays = [p.detach().numpy() for p in params]
    grads = [p.grad.numpy() for p in params]
    opt = cls(arrays, **kwargs)
    opt.step(grads)
    return lambda: opt.step(grads)


def compare(rows: dict, impls: list[str], make: Callable, steps: int = 2,
            rounds: int = 3) -> None:
    """Per row, ``make(impl, shapes)`` of each implementation (a zero-argument step,
    already run once), timed in interleaved rounds of ``steps`` steps; prints the
    median time per step and the median over rounds of the first implementation's
    time / this one's."""
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy "
          f"{np.__version__}")
    print(f"{'row':24s} {'implementation':22s} {'time/step':>11s} {'vs torch':>9s}")
    for row, shapes in rows.items():
        calls = [make(impl, shapes) for impl in impls]
        times: list[list[float]] = [[] for _ in impls]
        for _ in range(rounds):
            for step, out in zip(calls, times):
                t0 = time.perf_counter()
                for _ in range(steps):
                    step()
                out.append((time.perf_counter() - t0) / steps * 1e3)
        for impl, t in zip(impls, times):
            ratio = statistics.median(a / b for a, b in zip(times[0], t))
            print(f"{row:24s} {impl:22s} {statistics.median(t):8.2f} ms {ratio:8.2f}x")
