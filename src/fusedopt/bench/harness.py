"""Interleaved timing of optimizer steps and the derived columns.

For each (optimizer, size, dtype) every implementation is built once, then timed in
rounds; within a round each implementation runs once, in an order rotated every
round, so machine drift (other tenants, frequency, an OpenMP pool still spinning after
a peer's step) is shared instead of landing on whoever ran at the wrong moment. Each
sample starts with one untimed step, so what is timed is steady-state training (the
step's arrays as warm as repeated steps leave them), not the previous implementation's
cache pollution; small steps are timed in batches long enough for the clock. Reported
times are medians.
"""

from __future__ import annotations

import math
import platform
import time
from dataclasses import asdict, dataclass, field
from statistics import median
from typing import Callable, Iterable

import numpy as np

from . import providers as prov

BASELINE = "fusedopt-numpy"
ROOFLINE = "roofline"
SAMPLE_SECONDS = 2e-4  # a timed sample lasts at least this long (clock resolution)


@dataclass
class Row:
    optimizer: str
    provider: str
    n: int
    dtype: str
    seconds_per_step: float
    gb_per_second: float
    speedup_vs_numpy: float | None
    roofline_fraction: float | None
    rounds: int
    samples: list[float] = field(repr=False, default_factory=list)


def _batch_size(step: Callable[[], None]) -> int:
    t0 = time.perf_counter()
    step()
    once = time.perf_counter() - t0
    return max(1, min(10_000, math.ceil(SAMPLE_SECONDS / max(once, 1e-9))))


class Skipped(dict):
    """Provider name -> why it was skipped: each distinct reason once, with the
    optimizers (or models) it was skipped for."""

    def __init__(self) -> None:
        super().__init__()
        self._reasons: dict[str, dict[str, list[str]]] = {}

    def add(self, name: str, why: str, what: str) -> None:
        whats = self._reasons.setdefault(name, {}).setdefault(why, [])
        if what not in whats:
            whats.append(what)
        self[name] = "; ".join(f"{r} (for {', '.join(w)})"
                               for r, w in self._reasons[name].items())


def skip(skipped: dict[str, str] | None, name: str, why: str, what: str) -> None:
    """Record why provider ``name`` was skipped for ``what``, in ``skipped`` (a
    ``Skipped``, a plain dict: the last reason, or None: not recorded)."""
    if isinstance(skipped, Skipped):
        skipped.add(name, why, what)
    elif skipped is not None:
        skipped[name] = why


def _build(names, optimizer, n, dtype, skipped):
    steps, batches = {}, {}
    for name in names:
        try:
            steps[name] = prov.make(name, optimizer, n, dtype)
        except prov.ProviderUnavailable as exc:
            skip(skipped, name, str(exc), optimizer)
            continue
        batches[name] = _batch_size(steps[name])
    return steps, batches, None


def _time_rounds(steps, batches, samples, budget, rounds, reset=None):
    """``reset``: called before each implementation's untimed step, when the
    implementations share arrays (``lowbit.Arena``)."""
    order = list(steps)
    deadline = time.perf_counter() + budget
    r = 0
    while r < (rounds or 1_000_000):
        if rounds is None and r >= 3 and time.perf_counter() > deadline:
            break
        for name in order[r % len(order):] + order[:r % len(order)]:
            step, k = steps[name], batches[name]
            if reset is not None:
                reset()
            step()  # untimed: brings this implementation's arrays back into cache
            t0 = time.perf_counter()
            for _ in range(k):
                step()
            samples.setdefault(name, []).append((time.perf_counter() - t0) / k)
        r += 1


def time_placements(build: Callable[[], tuple[dict, dict, Callable | None]],
                    budget: float, rounds: int | None,
                    placements: int) -> dict[str, list[float]]:
    """Samples of the steps ``build()`` returns (``(steps, batches, reset)``, see
    ``_time_rounds``), interleaved, over ``placements`` fresh builds with the samples
    pooled (budget and rounds split between them).

    Beyond the caches, where an allocation lands in physical memory moves a step by up
    to 1.7x on the 2-core development VM (the same kernel: 7 to 12 ms at 16M
    elements); one allocation per implementation would hand that luck to whoever drew
    it. The previous build is kept until the next exists, so the allocator cannot hand
    back the same pages.
    """
    samples: dict[str, list[float]] = {}
    kept = None
    for _ in range(placements):
        steps, batches, reset = build()
        kept = steps  # the previous placement is released only now
        _time_rounds(steps, batches, samples, budget / placements,
                     None if rounds is None else max(1, rounds // placements), reset)
    del kept, steps  # free the arrays before the next group
    return samples


def measure_group(optimizer: str, n: int, dtype, names: Iterable[str],
                  budget: float, rounds: int | None = None,
                  skipped: dict[str, str] | None = None,
                  placements: int = 1) -> list[Row]:
    """Time ``names`` (plus the NumPy baseline and the roofline, always) on one
    (optimizer, n, dtype); unavailable providers go to ``skipped`` with the reason.

    ``placements``: see ``time_placements``.
    """
    names = list(dict.fromkeys([*names, BASELINE, ROOFLINE]))
    samples = time_placements(lambda: _build(names, optimizer, n, dtype, skipped),
                              budget, rounds, placements)
    order = list(samples)
    per_elem = prov.traffic(optimizer, dtype)
    t = {name: median(s) for name, s in samples.items()}
    rows = []
    for name in order:
        rows.append(Row(
            optimizer=optimizer, provider=name, n=n, dtype=np.dtype(dtype).name,
            seconds_per_step=t[name], gb_per_second=per_elem * n / t[name] / 1e9,
            speedup_vs_numpy=t[BASELINE] / t[name] if BASELINE in t else None,
            roofline_fraction=t[ROOFLINE] / t[name] if ROOFLINE in t else None,
            rounds=len(samples[name]), samples=samples[name]))
    return rows


def measure_model(model: str, names: Iterable[str], budget: float,
                  rounds: int | None = None,
                  skipped: dict[str, str] | None = None) -> list[Row]:
    """One Adam float32 step over a whole model's tensors (``providers.MODELS``), per
    implementation, interleaved; ``n`` is the model's element count. No NumPy
    baseline (its temporaries would need gigabytes): speedup_vs_numpy is None."""
    names = list(dict.fromkeys([*names, ROOFLINE]))
    steps, batches = {}, {}
    for name in names:
        try:
            steps[name] = prov.make_model(name, model)
        except prov.ProviderUnavailable as exc:
            skip(skipped, name, str(exc), model)
            continue
        batches[name] = _batch_size(steps[name])
    samples: dict[str, list[float]] = {}
    _time_rounds(steps, batches, samples, budget, rounds)
    del steps
    n = sum(int(np.prod(s)) for s in prov.MODELS[model]())
    t = {name: median(v) for name, v in samples.items()}
    return [Row(optimizer=f"adam:{model}", provider=name, n=n, dtype="float32",
                seconds_per_step=t[name], gb_per_second=28 * n / t[name] / 1e9,
                speedup_vs_numpy=None,
                roofline_fraction=t[ROOFLINE] / t[name] if ROOFLINE in t else None,
                rounds=len(samples[name]), samples=samples[name])
            for name in samples]


def describe(info: dict) -> str:
    """One line naming the machine of ``machine()``'s record, for result files."""
    cpu = info.get("cpu", "?")
    extra = [f"family {info['cpu_family']}" if "cpu_family" in info else None,
             info.get("llvm_cpu"), info.get("simd")]
    extra = ", ".join(e for e in extra if e)
    libs = ", ".join(f"{m} {info[m]}" for m in ("numba", "torch", "deepspeed")
                     if info.get(m))
    return (f"{cpu}{f' ({extra})' if extra else ''}, {info.get('logical_cpus')} logical "
            f"CPUs; {libs}")


def machine() -> dict:
    """What the figures depend on: CPU, threads, library versions."""
    from .._config import cpu
    info = {**cpu(), "platform": platform.platform(),
            "python": platform.python_version(), "numpy": np.__version__}
    import fusedopt
    info["fusedopt"] = fusedopt.__version__
    info["backends"] = {name: status.detail if status.ok else f"unavailable: {status.detail}"
                        for name, status in fusedopt.backends.available().items()}
    for module in ("numba", "torch", "deepspeed"):
        try:
            info[module] = __import__(module).__version__
        except Exception:
            info[module] = None
    try:
        import numba
        info["numba_threads"] = numba.get_num_threads()
    except ImportError:
        pass
    try:
        import torch
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def rows_to_dicts(rows: list[Row], with_samples: bool = False) -> list[dict]:
    out = []
    for row in rows:
        d = asdict(row)
        if not with_samples:
            d.pop("samples")
        out.append(d)
    return out
