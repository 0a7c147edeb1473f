"""The drop-in against torch's fused AdamW: ``fusedopt.torch.AdamW`` (default path:
one multi-tensor kernel call per group and dtype) beside ``torch.optim.AdamW(fused=True)``,
float32 CPU tensors; with ``--device cuda``, CUDA tensors (the ``cuda`` backend, one
launch per tensor, and with ``flatten=True`` one per group).

    python benchmarks/dropin.py                # 500 small tensors and GPT-2 small
    python benchmarks/dropin.py --rows small   # the 500 small tensors only
    python benchmarks/dropin.py --device cuda  # on the GPU (torch with CUDA)

Rows: 500 tensors of 256-4096 elements (1.1M in all), where per-tensor overhead
dominates; the 148 tensors of GPT-2 small (124M elements, 2 GB of state), where
memory bandwidth does. On CUDA the device is synchronised around each batch of
steps. Each implementation has its own copy of the parameters and
gradients; rounds interleave them (each round: one timed batch of steps per
implementation, in turn), so all see the same machine state. Printed: the median
time per step and the median over rounds of torch's time / fusedopt's (higher is
better for fusedopt).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

import fusedopt.torch as ft


def small_shapes() -> list[tuple[int, ...]]:
    return [(int(n),) for n in np.random.default_rng(0).integers(256, 4097, 500)]


def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """GPT-2 small (124M): token and position embeddings, 12 blocks, final norm."""
    d, v, ctx = 768, 50257, 1024
    block = [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,), (d,), (d,),
             (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return [(v, d), (ctx, d)] + block * 12 + [(d,), (d,)]


ROWS = {"small": (small_shapes, 20, 15), "gpt2": (gpt2_small_shapes, 2, 5)}


IMPLS = {"cpu": ["torch fused", "fusedopt numba", "fusedopt cython"],
         "cuda": ["torch fused", "fusedopt cuda", "fusedopt cuda flatten"]}


def make(impl: str, shapes, device: str = "cpu") -> callable:
    g = torch.Generator().manual_seed(0)
    params = [torch.nn.Parameter((torch.randn(s, generator=g) * 0.02).to(device))
              for s in shapes]
    for p in params:
        p.grad = (torch.randn(p.shape, generator=g) * 1e-3).to(device)
    if impl == "torch fused":
        opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    else:
        words = impl.split()
        opt = ft.AdamW(params, lr=1e-4, backend=words[1], flatten="flatten" in words)
    opt.step()  # state allocated, kernels compiled
    return opt.step


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def per_step(step, n: int, device: str = "cpu") -> float:
    sync(device)
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    sync(device)
    return (time.perf_counter() - t0) / n * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", default="small,gpt2")
    ap.add_argument("--device", choices=list(IMPLS), default="cpu")
    args = ap.parse_args()
    impls, device = IMPLS[args.device], args.device
    if device == "cuda":
        from fusedopt import _device
        if _device.simulated():  # the simulator's device memory is host memory
            device = "cpu"
        print(_device.describe()["name"])
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'row':8s} {'implementation':16s} {'time/step':>12s} {'vs torch fused':>15s}")
    for row in args.rows.split(","):
        shapes, n, rounds = ROWS[row]
        steps = [make(impl, shapes(), device) for impl in impls]
        times: list[list[float]] = [[] for _ in steps]
        for _ in range(rounds):
            for step, out in zip(steps, times):
                out.append(per_step(step, n, device))
        for impl, t in zip(impls, times):
            ratio = statistics.median(a / b for a, b in zip(times[0], t))
            med = statistics.median(t)
            shown = f"{med / 1000:9.2f} ms" if med >= 1000 else f"{med:9.1f} us"
            print(f"{row:8s} {impl:16s} {shown:>12s} {ratio:14.2f}x")
        del steps


if __name__ == "__main__":
    main()
