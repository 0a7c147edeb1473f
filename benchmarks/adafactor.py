"""Adafactor against torch.optim.Adafactor on CPU: one step over tensors of transformer
shapes, float32, each implementation on its own copy of the parameters and
gradients, rounds interleaved (each round: one timed batch of steps per
implementation, in turn).

    python benchmarks/adafactor.py

Rows: a 768 x 3072 matrix (GPT-2 small's MLP layer), and GPT-2 small's 148 tensors
(124M elements). Printed: the median time per
step and the median over rounds of torch's time / this one's (higher is better).
torch's default on CPU is its single-tensor loop (``foreach=None``); its
``foreach=True`` row is timed too.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
import torch

import fusedopt
import fusedopt.torch as ft

D = 768
V, CTX = 50257, 1024
BLOCK = [(D,), (D,), (D, 3 * D), (3 * D,), (D, D), (D,), (D,), (D,), (D, 4 * D), (4 * D,),
         (4 * D, D), (D,)]
ROWS = {"768x3072": [(D, 4 * D)],
        "GPT-2 small (148)": [(V, D), (CTX, D)] + BLOCK * 12 + [(D,), (D,)]}


def make(impl: str, shapes):
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter(torch.randn(s, generator=g) * 0.02) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=g) * 1e-3
    if impl == "torch.optim.Adafactor":
        opt = torch.optim.Adafactor(params)
    elif impl == "torch foreach=True":
        opt = torch.optim.Adafactor(params, foreach=True)
    elif impl == "fusedopt.torch":
        opt = ft.Adafactor(params)
    else:
        arrays = [p.detach().numpy() for p in params]
        grads = [p.grad.numpy() for p in params]
        opt = fusedopt.Adafactor(arrays)
        opt.step(grads)
        return lambda: opt.step(grads)
    opt.step()
    return opt.step


def main() -> None:
    impls = ["torch.optim.Adafactor", "torch foreach=True", "fusedopt.torch",
             "fusedopt.Adafactor"]
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
