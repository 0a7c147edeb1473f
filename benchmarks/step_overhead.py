"""Per-step overhead (Python, checks, dispatch) of small steps, where it dominates.

    python benchmarks/step_overhead.py                      # the installed fusedopt
    python benchmarks/step_overhead.py --compare OTHER/src  # against another tree
    python benchmarks/step_overhead.py --backend cython     # another backend

Rows: ``fusedopt.Adam.step`` on one 1K-element float32 array and on 500 tensors of
256-4096 elements (one array each), and ``fusedopt.torch.Adam.step`` on the same,
per tensor and with ``flatten=True``; numba backend (or ``--backend``),
microseconds per step, medians of rounds. ``--compare`` imports the other tree's
package in the same process (as ``fusedopt_before``, from a renamed copy) and
interleaves the two round by round, so both see the same machine state; the ratio
is the median over rounds of after/before. Timings of this size are noisy on
shared VMs: read the ratios.
"""

from __future__ import annotations

import argparse
import importlib
import os
import shutil
import statistics
import sys
import tempfile
import time

ROUNDS_OF = {"numpy 1K": 2000, "numpy 500 tensors": 30, "torch 1K": 2000,
             "torch 500 tensors": 20, "torch 500 tensors flatten": 100}


def _sizes():
    import numpy as np

    return [int(n) for n in np.random.default_rng(0).integers(256, 4097, 500)]


def make(row: str, package: str, backend: str = "numba"):
    """A zero-argument step of ``row`` built with ``package`` (fusedopt or a copy)."""
    import numpy as np
    import torch

    sizes = [1024] if "1K" in row else _sizes()
    if row.startswith("numpy"):
        mod = importlib.import_module(package)
        params = [np.zeros(n, np.float32) for n in sizes]
        grads = [np.full(n, 1e-3, np.float32) for n in sizes]
        opt = mod.Adam(params, backend=backend)
        return lambda: opt.step(grads)
    mod = importlib.import_module(package + ".torch")
    params = [torch.nn.Parameter(torch.zeros(n)) for n in sizes]
    opt = mod.Adam(params, backend=backend, flatten="flatten" in row)
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    return opt.step


def _per_step(step, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        step()
    return (time.perf_counter() - t0) / n * 1e6


def import_copy(src: str) -> str:
    """Import the ``fusedopt`` package under ``src`` as ``fusedopt_before``."""
    root = tempfile.mkdtemp(prefix="fusedopt-before-")
    dst = os.path.join(root, "fusedopt_before")
    shutil.copytree(os.path.join(src, "fusedopt"), dst)
    registry = os.path.join(dst, "backends", "__init__.py")
    with open(registry) as f:  # backends are registered by absolute module name
        text = f.read().replace('"fusedopt.backends.', '"fusedopt_before.backends.')
    with open(registry, "w") as f:
        f.write(text)
    sys.path.insert(0, root)
    importlib.import_module("fusedopt_before")
    return "fusedopt_before"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--compare", metavar="SRC", help="a source tree (its src/ folder) "
                    "to interleave with the installed fusedopt")
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--backend", default="numba", help="numba (default) or cython")
    args = ap.parse_args()
    packages = ["fusedopt"] + ([import_copy(args.compare)] if args.compare else [])
    if args.compare:
        print(f"{'row':28s} {'before':>12s} {'after':>12s} {'after/before':>13s}")
    for row, n in ROUNDS_OF.items():
        steps = [make(row, pkg, args.backend) for pkg in packages]
        for step in steps:
            _per_step(step, n)  # warm: JIT, caches, the allocator
        times: list[list[float]] = [[] for _ in steps]
        for _ in range(args.rounds):
            for step, out in zip(steps, times):
                out.append(_per_step(step, n))
        after = statistics.median(times[0])
        if not args.compare:
            print(f"{row:28s} {after:10.1f} us")
            continue
        before = statistics.median(times[1])
        ratio = statistics.median(a / b for a, b in zip(times[0], times[1]))
        print(f"{row:28s} {before:9.1f} us {after:9.1f} us {ratio:12.2f}x")


if __name__ == "__main__":
    main()
