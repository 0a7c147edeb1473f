"""Per-step overhead (Python, checks, dispatch) of small steps, where it dominates.

    python benchmarks/step_overhead.py                      # the installed fusedopt
    python benchmarks/step_overhead.py --src OTHER/src      # another tree (before/after)
    python benchmarks/step_overhead.py --compare OTHER/src  # both, alternating processes

Rows: ``fusedopt.Adam.step`` on one 1K-element float32 array and on 500 tensors of
256-4096 elements (one array each), and ``fusedopt.torch.Adam.step`` on the same,
per tensor and with ``flatten=True``; numba backend. Medians of many steps, in
microseconds; ``--compare`` alternates the two trees in fresh processes and reports
the median over rounds of each row's ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROWS = ["numpy 1K", "numpy 500 tensors", "torch 1K", "torch 500 tensors",
        "torch 500 tensors flatten"]


def _sizes():
    import numpy as np

    return np.random.default_rng(0).integers(256, 4097, 500)


def _time(step, repeat: int) -> float:
    for _ in range(max(20, repeat)):  # warm: caches, branch predictors, the GC's gens
        step()
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        step()
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples) * 1e6


def measure(repeat: int) -> dict[str, float]:
    import numpy as np
    import torch

    import fusedopt
    import fusedopt.torch as ft

    out = {}
    p = [np.zeros(1024, np.float32)]
    g = [np.full(1024, 1e-3, np.float32)]
    opt = fusedopt.Adam(p, backend="numba")
    out["numpy 1K"] = _time(lambda: opt.step(g), repeat * 10)
    ps = [np.zeros(n, np.float32) for n in _sizes()]
    gs = [np.full(n, 1e-3, np.float32) for n in _sizes()]
    opt = fusedopt.Adam(ps, backend="numba")
    out["numpy 500 tensors"] = _time(lambda: opt.step(gs), repeat)
    for label, sizes, flatten in (("torch 1K", [1024], False),
                                  ("torch 500 tensors", _sizes(), False),
                                  ("torch 500 tensors flatten", _sizes(), True)):
        params = [torch.nn.Parameter(torch.zeros(int(n))) for n in sizes]
        opt = ft.Adam(params, backend="numba", flatten=flatten)
        for t in params:
            t.grad = torch.full_like(t, 1e-3)
        out[label] = _time(opt.step, repeat * (10 if len(sizes) == 1 else 1))
    return out


def run_tree(src: str | None, repeat: int) -> dict[str, float]:
    """``measure`` in a fresh process, importing fusedopt from ``src`` if given."""
    code = ("import sys, json\n"
            + (f"sys.path.insert(0, {src!r})\n"
               "sys.meta_path[:] = [f for f in sys.meta_path\n"
               "                    if 'fusedopt' not in repr(f).lower()\n"
               "                    and 'scikit' not in type(f).__module__.lower()]\n"
               if src else "")
            + "sys.path.insert(0, %r)\n" % os.path.dirname(os.path.abspath(__file__))
            + "import step_overhead, fusedopt\n"
            + (f"assert fusedopt.__file__.startswith({os.path.abspath(src)!r}), "
               "fusedopt.__file__\n" if src else "")
            + f"print(json.dumps(step_overhead.measure({repeat})))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", help="measure the fusedopt package under this directory")
    ap.add_argument("--compare", metavar="SRC", help="alternate this tree with the "
                    "installed one, in fresh processes")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--repeat", type=int, default=300)
    args = ap.parse_args()
    if not args.compare:
        for row, us in run_tree(args.src, args.repeat).items():
            print(f"{row:28s} {us:10.1f} us")
        return
    runs: dict[str, list] = {"other": [], "installed": []}
    for _ in range(args.rounds):
        runs["other"].append(run_tree(args.compare, args.repeat))
        runs["installed"].append(run_tree(None, args.repeat))
    print(f"{'row':28s} {args.compare[-24:]:>24s} {'installed':>12s} {'ratio':>8s}")
    for row in ROWS:
        a = statistics.median(r[row] for r in runs["other"])
        b = statistics.median(r[row] for r in runs["installed"])
        ratio = statistics.median(y[row] / x[row]
                                  for x, y in zip(runs["other"], runs["installed"]))
        print(f"{row:28s} {a:21.1f} us {b:9.1f} us {ratio:7.2f}x")


if __name__ == "__main__":
    main()
