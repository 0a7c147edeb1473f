"""Muon against torch.optim.Muon on CPU: one step over matrices of transformer
shapes, float32, each implementation on its own copy of the parameters and
gradients, rounds interleaved (each round: one timed batch of steps per
implementation, in turn).

    python benchmarks/muon.py

Rows: a 768 x 768 and a 768 x 3072 matrix (GPT-2 small's attention projection and
MLP layer). Printed: the median time per
step and the median over rounds of torch's time / this one's (higher is better).
``fusedopt.Muon`` runs the Newton-Schulz iteration in float32 on NumPy's BLAS,
``fusedopt.torch.Muon`` torch's own (bfloat16, as torch.optim.Muon).
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

import fusedopt
import fusedopt.torch as ft

D = 768
ROWS = {"768x768": [(D, D)], "768x3072": [(D, 4 * D)]}


def make(impl: str, shapes):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    if impl == "torch.optim.Muon":
        opt = torch.optim.Muon(params, lr=0.02)
    elif impl == "fusedopt.torch.Muon":
        opt = ft.Muon(params, lr=0.02)
    else:
        arrays = [p.detach().numpy() for p in params]
        grads = [p.grad.numpy() for p in params]
        opt = fusedopt.Muon(arrays, lr=0.02)
        opt.step(grads)
        return lambda: opt.step(grads)
    opt.step()
    return opt.step


def main() -> None:
    impls = ["torch.optim.Muon", "fusedopt.torch.Muon", "fusedopt.Muon"]
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, numpy "
          f"{np.__version__}")
    print(f"{'row':24s} {'implementation':20s} {'time/step':>11s} {'vs torch':>9s}")
    for row, shapes in ROWS.items():
        steps = [make(impl, shapes) for impl in impls]
        n = 2
        times = [[] for _ in impls]
        for _ in range(3):
            for step, out in zip(steps, times):
                t0 = time.perf_counter()
                for _ in range(n):
                    step()
                out.append((time.perf_counter() - t0) / n * 1e3)
        for impl, t in zip(impls, times):
            ratio = statistics.median(a / b for a, b in zip(times[0], t))
            print(f"{row:24s} {impl:20s} {statistics.median(t):8.2f} ms {ratio:8.2f}x")


if __name__ == "__main__":
    main()
