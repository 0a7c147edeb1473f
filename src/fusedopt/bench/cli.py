"""``fusedopt-bench``: per-step throughput of every optimizer and backend here,
against naive NumPy, the memory roofline and (when importable) torch and DeepSpeed.

    fusedopt-bench --quick
    fusedopt-bench --optimizer adam --sizes 1K,1M,16M --json bench.json --plot bench.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time

from . import harness
from . import providers as prov

OPTIMIZERS = [name for name in prov.CONFIGS if name not in prov.LAYOUTS
              and name not in prov.BF16_STATE and name not in prov.COMPUTE_BOUND]
DEFAULT_SIZES = "1K,64K,1M,16M"
QUICK_SIZES = "1K,64K,1M"


def parse_size(text: str) -> int:
    text = text.strip().upper()
    scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
    digits = text[:-1] if text[-1:] in "KMG" else text
    try:
        exact = float(digits) * scale
    except ValueError:
        exact = math.nan
    if not (math.isfinite(exact) and exact.is_integer()):
        raise argparse.ArgumentTypeError(
            f"not a size: {text!r} (expected a whole count, e.g. 1000, 1K, 1.5K, 16M)")
    value = int(exact)
    if value < 1:
        raise argparse.ArgumentTypeError(f"size must be >= 1, got {text!r}")
    return value


def comma_list(choices, groups=None):
    """Parse a comma-separated subset of ``choices``; a name in ``groups`` stands for
    its list."""
    groups = groups or {}

    def parse(text: str) -> list[str]:
        items = [t.strip() for t in text.split(",") if t.strip()]
        items = [x for t in items for x in groups.get(t, [t])]
        bad = [t for t in items if t not in choices]
        if bad or not items:
            raise argparse.ArgumentTypeError(
                f"invalid choice(s) {bad or text!r}; expected a comma-separated subset "
                f"of {', '.join(choices)}")
        return items
    return parse


def build_parser() -> argparse.ArgumentParser:
    provider_names = list(prov.providers())
    backends = [p.removeprefix("fusedopt-") for p in provider_names
                if p.startswith("fusedopt-")]
    ap = argparse.ArgumentParser(
        prog="fusedopt-bench",
        description="Time one optimizer step per algorithm x backend x dtype x size, "
                    "interleaved, and report medians with throughput, speedup over "
                    "naive NumPy and the fraction of a same-traffic roofline kernel.")
    ap.add_argument("--optimizer", default=OPTIMIZERS,
                    type=comma_list(list(prov.CONFIGS), {"layouts": list(prov.LAYOUTS),
                                                         "bf16": list(prov.BF16_STATE)}),
                    help=f"comma-separated subset of {','.join(OPTIMIZERS)} (default all), "
                         f"or {','.join(prov.COMPUTE_BOUND)} (compute-bound: by name only), "
                         f"or of the other state layouts {','.join(prov.LAYOUTS)} "
                         "('layouts': all of them), or any with bfloat16 state, "
                         "'<name>-bf16' ('bf16': all of them)")
    ap.add_argument("--backend", type=comma_list(backends), default=None,
                    help=f"fusedopt backends to time (default: every available one of "
                         f"{','.join(backends)})")
    ap.add_argument("--sizes", default=None,
                    help=f"comma-separated element counts, K/M suffixes allowed "
                         f"(default {DEFAULT_SIZES}; --quick: {QUICK_SIZES})")
    ap.add_argument("--dtype", type=comma_list(["float32", "float64"]),
                    default=["float32"], help="float32 and/or float64 (default float32)")
    ap.add_argument("--guarded", action="store_true",
                    help="also time each backend with nonfinite='skip' and "
                         "max_grad_norm (the reliability options' cost)")
    ap.add_argument("--no-peers", action="store_true",
                    help="skip torch and DeepSpeed even when importable")
    ap.add_argument("--budget", type=float, default=None,
                    help="seconds of timing per (optimizer, size, dtype) (default 2, "
                         "--quick 0.25)")
    ap.add_argument("--rounds", type=int, default=None,
                    help="fixed number of interleaved rounds instead of a time budget")
    ap.add_argument("--placements", type=int, default=None,
                    help="fresh allocations per implementation, samples pooled: "
                         "physical placement moves DRAM-bound steps by up to 1.7x "
                         "(default 3, --quick 1; --lowbit: one arena shared by every "
                         "implementation per placement)")
    ap.add_argument("--quick", action="store_true",
                    help="small sizes and short budgets: every algorithm and backend "
                         "in well under 2 minutes")
    ap.add_argument("--model", type=comma_list(list(prov.MODELS)), default=[],
                    help="also time Adam float32 over whole models' tensors: "
                         f"{', '.join(prov.MODELS)} (FlatParams vs per-tensor vs peers)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                    help="cuda: Adam float32 on the GPU against torch's fused CUDA Adam "
                         "and the device-to-device copy bandwidth (--sizes, --rounds, "
                         "--json, --markdown apply)")
    ap.add_argument("--lowbit", action="store_true",
                    help="Adam with bf16 state and bf16 params against the fp32 peers "
                         "and DeepSpeed on bf16, at --sizes and on --model shapes (each "
                         "row against the roofline of its own bytes per element)")
    ap.add_argument("--json", metavar="PATH", help="write rows and machine info as JSON")
    ap.add_argument("--plot", metavar="PATH", help="write a PNG of GB/s against size "
                                                   "(needs matplotlib)")
    ap.add_argument("--markdown", metavar="PATH", help="write the table as Markdown")
    return ap


def _fmt_time(seconds: float) -> str:
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        if seconds >= scale:
            return f"{seconds / scale:.3g} {unit}"
    return f"{seconds / 1e-9:.3g} ns"


def _fmt_n(n: int) -> str:
    for suffix, scale in (("M", 1 << 20), ("K", 1 << 10)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{suffix}"
    return str(n)


HEADER = ["optimizer", "provider", "n", "dtype", "time/step", "GB/s", "x numpy",
          "roofline"]


def provider_label(row) -> str:
    """The provider as a reader should read it: torch's row says which torch step it
    is (``fused=True`` where torch has a fused CPU kernel, else its default loop)."""
    if row.provider != "torch":
        return row.provider
    fused = row.optimizer in prov.TORCH_FUSED or row.optimizer.startswith("adam:")
    return "torch fused=True" if fused else "torch default"


#: marks a roofline fraction above 1.0, which is no fact: see ``ROOFLINE_NOTE``
OVER = "*"
ROOFLINE_NOTE = (f"{OVER} above 1.0: the roofline kernel, which moves the same bytes, ran "
                 "slower than this step in this run (a busy or noisy machine); re-measure "
                 "before reading it")


def table_cells(rows) -> list[list[str]]:
    cells = []
    for r in rows:
        roof = "-" if r.roofline_fraction is None else f"{r.roofline_fraction:.2f}"
        if r.roofline_fraction is not None and r.roofline_fraction > 1.005:
            roof += OVER
        cells.append([r.optimizer, provider_label(r), _fmt_n(r.n), r.dtype,
                      _fmt_time(r.seconds_per_step), f"{r.gb_per_second:.1f}",
                      "-" if r.speedup_vs_numpy is None else f"{r.speedup_vs_numpy:.1f}x",
                      roof])
    return cells


def _notes(cells) -> list[str]:
    return [ROOFLINE_NOTE] if any(row[-1].endswith(OVER) for row in cells) else []


def format_table(rows) -> str:
    body = table_cells(rows)
    cells = [HEADER, *body]
    widths = [max(len(row[i]) for row in cells) for i in range(len(HEADER))]
    lines = ["  ".join(c.rjust(w) if i >= 4 else c.ljust(w)
                       for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines + _notes(body))


def format_markdown(rows) -> str:
    body = table_cells(rows)
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(row) + " |" for row in body]
    return "\n".join(lines + [""] * bool(_notes(body)) + _notes(body))


def write_plot(rows, path: str, machine: str = ""):
    """GB/s against size, one panel per optimizer with data (higher is better),
    titled with the machine it was measured on; returns the figure."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise SystemExit(f"fusedopt-bench: --plot needs matplotlib "
                         f"(pip install matplotlib): {exc}") from None
    rows = [r for r in rows if r.gb_per_second > 0]
    optimizers = list(dict.fromkeys(r.optimizer for r in rows))
    series = list(dict.fromkeys((provider_label(r), r.dtype) for r in rows))
    colors = {key: f"C{i % 10}" for i, key in enumerate(series)}  # same color everywhere
    cols = min(3, len(optimizers))
    nrows = -(-len(optimizers) // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.6 * cols, 3.4 * nrows + 0.6),
                             squeeze=False, sharey=True)
    for ax, opt in zip(axes.flat, optimizers):
        mine = [r for r in rows if r.optimizer == opt]
        for key in series:
            pts = sorted((r.n, r.gb_per_second) for r in mine
                         if (provider_label(r), r.dtype) == key)
            if pts:
                ax.plot(*zip(*pts), marker="o", color=colors[key],
                        label=f"{key[0]} ({key[1]})",
                        linestyle="--" if key[0] == harness.ROOFLINE else "-")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_title(opt)
        ax.set_xlabel("elements")
        ax.grid(True, which="both", alpha=0.3)
    for ax in axes.flat[len(optimizers):]:
        ax.set_visible(False)
    for ax in axes[:, 0]:
        ax.set_ylabel("GB/s (minimal traffic / time),\nhigher is better")
    handles = [plt.Line2D([], [], color=colors[k], marker="o",
                          linestyle="--" if k[0] == harness.ROOFLINE else "-")
               for k in series]
    fig.legend(handles, [f"{p} ({d})" for p, d in series], loc="lower center",
               ncol=min(len(series), 6), fontsize=8, frameon=False)
    if machine:
        fig.suptitle(f"Measured on: {machine}", fontsize=8)
    fig.tight_layout(rect=(0, 0.6 / (3.4 * nrows + 0.6) + 0.02, 1, 1))
    fig.savefig(path, dpi=110)
    return fig


def load_json(path: str) -> tuple[dict, list[harness.Row]]:
    """Read a ``--json`` file back: (machine info, rows)."""
    with open(path) as f:
        data = json.load(f)
    return data["machine"], [harness.Row(**row) for row in data["rows"]]


def _progress(done: int, total: int, label: str) -> None:
    if not sys.stderr.isatty():
        return
    width = 30
    filled = int(width * done / total)
    sys.stderr.write(f"\r[{'#' * filled}{'.' * (width - filled)}] {done}/{total} "
                     f"{label:<40}")
    if done == total:
        sys.stderr.write("\n")
    sys.stderr.flush()


def main(argv: list[str] | None = None) -> int:
    ap = build_parser()
    args = ap.parse_args(argv)
    try:
        sizes = [parse_size(s) for s in (args.sizes if args.sizes is not None else (
            QUICK_SIZES if args.quick else DEFAULT_SIZES)).split(",") if s.strip()]
    except argparse.ArgumentTypeError as exc:
        ap.error(f"argument --sizes: {exc}")
    if not sizes:
        ap.error(f"argument --sizes: no size in {args.sizes!r} (expected e.g. 1K,1M)")
    if args.rounds is not None and args.rounds < 1:
        ap.error("argument --rounds: must be >= 1")
    if args.placements is not None and args.placements < 1:
        ap.error("argument --placements: must be >= 1")
    if args.device == "cuda":
        return _main_cuda(args, sizes, argv)
    if args.lowbit:
        return _main_lowbit(args, sizes, argv)
    placements = args.placements or (1 if args.quick or args.rounds else 3)
    budget = args.budget if args.budget is not None else (0.25 if args.quick else 2.0)

    from ..backends import available, names as backend_names
    status = available()
    backends = args.backend or [b for b in backend_names("cpu") if status[b].ok]
    names = [f"fusedopt-{b}" for b in backends]
    if args.guarded:
        names += [f"fusedopt-{b}-guarded" for b in backends if b != "numpy"]
    if not args.no_peers:
        names += ["torch", "deepspeed"]

    groups = [(o, n, d) for o in args.optimizer for d in args.dtype for n in sizes]
    rows, skipped = [], harness.Skipped()
    started = time.perf_counter()
    for i, (opt, n, dtype) in enumerate(groups):
        _progress(i, len(groups), f"{opt} {_fmt_n(n)} {dtype}")
        rows += harness.measure_group(opt, n, dtype, names, budget, args.rounds, skipped,
                                      placements)
    for model in args.model:
        _progress(len(groups), len(groups), f"model {model}")
        model_names = [f"fusedopt-{b}{suffix}" for b in backends if b != "numpy"
                       for suffix in ("-flat", "")]
        model_names += ["fusedopt.torch-flat", "fusedopt.torch"]  # the adapter
        if not args.no_peers:
            model_names += ["torch", "deepspeed"]
        rows += harness.measure_model(model, model_names, budget, args.rounds, skipped)
    _progress(len(groups), len(groups), f"done in {time.perf_counter() - started:.0f} s")

    print(format_table(rows))
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    machine = harness.machine()
    _write(args, argv, harness.rows_to_dicts(rows), format_markdown(rows), machine)
    if args.plot:
        write_plot(rows, args.plot, harness.describe(machine))
    return 0


def _main_lowbit(args, sizes: list[int], argv) -> int:
    from . import lowbit

    budget = args.budget if args.budget is not None else 4.0
    placements = args.placements or (1 if args.rounds else 3)
    rows, skipped = [], {}
    workloads = [(_fmt_n(n), [(n,)]) for n in sizes]
    workloads += [(m, prov.MODELS[m]()) for m in args.model]
    for label, shapes in workloads:
        rows += lowbit.measure(label, shapes, budget, args.rounds, skipped, placements)
    table = lowbit.markdown(rows)
    print(table)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    _write(args, argv, rows, table, harness.machine())
    return 0


def _write(args, argv, rows, table: str, machine: dict) -> None:
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": machine, "command": ["fusedopt-bench", *(
                argv if argv is not None else sys.argv[1:])], "rows": rows}, f, indent=1)
    if args.markdown:  # the machine first: figures mean little without it
        with open(args.markdown, "w") as f:
            f.write(f"Measured on: {harness.describe(machine)}\n\n{table}\n")


def _main_cuda(args, sizes: list[int], argv) -> int:
    from .. import _device
    from ..backends import available
    from . import gpu

    status = available()["cuda"]
    if not status.ok:
        print(f"fusedopt-bench: the cuda backend is not available: {status.detail}",
              file=sys.stderr)
        return 2
    device = _device.describe()["name"]
    skipped: dict[str, str] = {}
    rows = gpu.measure(sizes, rounds=args.rounds or 20, skipped=skipped)
    table = gpu.markdown(rows, device)
    print(table)
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    _write(args, argv, rows, table, {**harness.machine(), "gpu": device})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
