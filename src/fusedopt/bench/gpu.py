"""``fusedopt-bench --device cuda``: Adam steps on float32 parameters on the GPU.

Providers: ``fusedopt-cuda`` (the ``cuda`` backend on Numba device arrays),
``fusedopt-cuda-bf16-state`` (the same with ``state_dtype="bfloat16"``),
``fusedopt.torch`` (the drop-in ``fusedopt.torch.Adam`` on a torch CUDA tensor: its
per-step checks and launch on torch's stream), ``torch-fused``
(``torch.optim.Adam(fused=True)`` on CUDA tensors; both when torch has CUDA) and ``copy``, a device-to-device copy, which sets the bandwidth ceiling. Each
row gives the effective bandwidth of a step at its bytes per element (float32
state: read p, g, m, v and write p, m, v, 28 bytes; bf16 state: 20) and its
fraction of the measured copy bandwidth (a copy of B bytes moves 2B). Timing: the
device is synchronised around a batch of steps, and the median over rounds of
(batch time / batch size) is reported.
"""

from __future__ import annotations

import time
from statistics import median
from typing import Callable

import numpy as np

ADAM_BYTES = 28  # float32 Adam: 4 reads + 3 writes of 4 bytes
BYTES = {"fusedopt-cuda-bf16-state": 20}  # the others: ADAM_BYTES


def _fusedopt(n: int, state_dtype: str | None = None) -> Callable[[], None]:
    from numba import cuda

    import fusedopt

    rng = np.random.default_rng(0)
    p = cuda.to_device(rng.standard_normal(n, dtype=np.float32))
    g = cuda.to_device(rng.standard_normal(n, dtype=np.float32))
    opt = fusedopt.Adam([p], lr=1e-3, backend="cuda", state_dtype=state_dtype)
    return lambda: opt.step([g])


def _torch(n: int) -> Callable[[], None]:
    import torch

    if not torch.cuda.is_available():
        raise RuntimeError("torch has no CUDA device here")
    p = torch.randn(n, device="cuda", requires_grad=True)
    p.grad = torch.randn(n, device="cuda")
    opt = torch.optim.Adam([p], lr=1e-3, fused=True)
    return opt.step


def _dropin(n: int) -> Callable[[], None]:
    import torch

    import fusedopt.torch as ft
    from .. import _device

    device = "cpu" if _device.simulated() else "cuda"  # the simulator's "device"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("torch has no CUDA device here")
    p = torch.randn(n, device=device, requires_grad=True)
    p.grad = torch.randn(n, device=device)
    opt = ft.Adam([p], lr=1e-3, backend="cuda")
    return opt.step


def _copy(n: int) -> Callable[[], None]:
    from numba import cuda

    src = cuda.to_device(np.zeros(n * ADAM_BYTES // 8, dtype=np.float32))
    dst = cuda.device_array_like(src)
    return lambda: dst.copy_to_device(src)  # reads and writes n * 28 bytes


PROVIDERS = {"fusedopt-cuda": _fusedopt,
             "fusedopt-cuda-bf16-state": lambda n: _fusedopt(n, "bfloat16"),
             "fusedopt.torch": _dropin, "torch-fused": _torch, "copy": _copy}


def _sync() -> None:
    from numba import cuda

    cuda.synchronize()
    try:
        import torch
        if torch.cuda.is_available():
            torch.cuda.synchronize()
    except ImportError:
        pass


def measure(sizes: list[int], rounds: int = 20, batch: int = 10,
            skipped: dict[str, str] | None = None) -> list[dict]:
    """One row per (size, provider): seconds per step, GB/s at its bytes per
    element, and the fraction of the copy's bandwidth. Providers that cannot run go to
    ``skipped`` with the reason."""
    skipped = {} if skipped is None else skipped
    rows = []
    for n in sizes:
        steps = {}
        for name, make in PROVIDERS.items():
            try:
                steps[name] = make(n)
                steps[name]()  # compile and allocate outside the timing
            except Exception as exc:  # no torch, no CUDA torch, out of memory
                skipped[name] = f"{type(exc).__name__}: {exc}"
        samples: dict[str, list[float]] = {name: [] for name in steps}
        for _ in range(rounds):  # interleaved: drift hits every provider alike
            for name, step in steps.items():
                _sync()
                t = time.perf_counter()
                for _ in range(batch):
                    step()
                _sync()
                samples[name].append((time.perf_counter() - t) / batch)
        t_copy = median(samples["copy"]) if "copy" in samples else None
        for name, s in samples.items():
            t, nbytes = median(s), BYTES.get(name, ADAM_BYTES)
            rows.append({"provider": name, "n": n, "seconds_per_step": t,
                         "bytes_per_element": nbytes,
                         "gb_per_second": nbytes * n / t / 1e9,
                         "copy_fraction": (t_copy * nbytes / ADAM_BYTES / t if t_copy
                                           else None),
                         "rounds": len(s)})
        del steps
    return rows


def markdown(rows: list[dict], device: str) -> str:
    lines = [f"Adam on float32 parameters, {device}",
             "", "| n | provider | B/elem | us/step | GB/s | of copy bandwidth "
             "| vs torch-fused |", "|---|---|---|---|---|---|---|"]
    torch_t = {r["n"]: r["seconds_per_step"] for r in rows if r["provider"] == "torch-fused"}
    for r in rows:
        vs = (f"{torch_t[r['n']] / r['seconds_per_step']:.2f}x" if r["n"] in torch_t
              else "-")
        frac = f"{r['copy_fraction']:.2f}" if r["copy_fraction"] else "-"
        lines.append(f"| {r['n']:,} | {r['provider']} | {r['bytes_per_element']} "
                     f"| {r['seconds_per_step'] * 1e6:.1f} "
                     f"| {r['gb_per_second']:.0f} | {frac} | {vs} |")
    return "\n".join(lines)
