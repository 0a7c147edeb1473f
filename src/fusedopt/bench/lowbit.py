"""``fusedopt-bench --lowbit``: Adam with fewer bytes per element.

Providers, all one Adam step over ``n`` elements (or a model's tensors), interleaved:

- fp32 peers: ``torch`` (``torch.optim.Adam(fused=True)``), ``deepspeed``
  (``DeepSpeedCPUAdam``), and ``fusedopt`` (numba backend): 28 B/element;
- ``fusedopt-bf16-state``: float32 params and grads, bf16 state: 20 B/element (and
  ``cython-bf16-state``, the same on the Cython backend);
- ``fusedopt-bf16``: bf16 params, grads and state, stochastic rounding: 14 B/element;
- ``fusedopt-bf16-master``: bf16 params and grads through a float32 master copy
  (``master_weights=True``) with float32 state: 28 B/element (reads master, g, m, v;
  writes master, m, v and the bf16 params);
- ``deepspeed-bf16``: DeepSpeed's CPU Adam on bf16 params and grads with bf16 state
  (``fp32_optimizer_states=False``): 14 B/element;
- ``roofline-28``/``-20``/``-14``: the same traffic with trivial math.

Every provider of a placement steps the same memory, an ``Arena``: on the 2-core
development VM where an allocation lands in physical memory moves a DRAM-bound step by
up to 1.7x, so providers on separate allocations differ by their placement's luck as
much as by their bytes (ratios between them moved by +-0.1x from one run to the
next). On shared pages the ratios hold from one placement to the next; samples are
still pooled over ``placements`` arenas (``harness.time_placements``).

Each row reports its own bytes per element, its fraction of the roofline with the
same bytes, and its speedup over the faster fp32 peer (torch or DeepSpeed).
"""

from __future__ import annotations

from statistics import median
from typing import Callable

import numpy as np

from . import harness
from . import providers as prov
from .roofline import same_traffic

BYTES = {"torch": 28, "deepspeed": 28, "fusedopt": 28, "fusedopt-bf16-state": 20,
         "cython-bf16-state": 20, "fusedopt-bf16": 14, "fusedopt-bf16-master": 28,
         "deepspeed-bf16": 14,
         "roofline-28": 28, "roofline-20": 20, "roofline-14": 14}
FP32_PEERS = ("torch", "deepspeed")
LR = 1e-3


def _bf16():
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


class Arena:
    """One placement's memory, shared by every provider: a float32 region of ``n``
    elements (all the ``shapes``, back to back) per role. A provider's float32 arrays
    of a role are views of its region; its bf16 arrays are views of the region's first
    half, at the same element offsets.

    ``reset()`` writes, in every 32-bit word, two copies of one bf16 value, so that a
    float32 and a bf16 view of a region read the same number (params 0.5, grads 0.01,
    state 0): run before each provider's samples, it also clears what the previous
    provider left, which read as the other type would be NaN, inf or subnormal.
    """

    ROLES = {"param": 0.5, "grad": 0.01, "exp_avg": 0.0, "exp_avg_sq": 0.0,
             "bf16_param": 0.5}  # the bf16 image of a float32 master copy

    def __init__(self, shapes) -> None:
        self.shapes = [tuple(int(d) for d in s) for s in shapes]
        self.bounds = np.cumsum([0, *(int(np.prod(s)) for s in self.shapes)])
        block = np.empty((len(self.ROLES), int(self.bounds[-1])), np.float32)
        self.regions = dict(zip(self.ROLES, block))

    def reset(self) -> None:
        for role, x in self.ROLES.items():
            half = np.array(x, np.float32).astype(_bf16()).view(np.uint16)
            self.regions[role].view(np.uint32).fill(np.uint32(half) * 0x10001)

    def flat(self, role: str, bf16: bool = False) -> np.ndarray:
        """The whole region: float32, or the bf16 bits (uint16) of its first half."""
        region = self.regions[role]
        return region.view(np.uint16)[:region.size] if bf16 else region

    def views(self, role: str, bf16: bool = False) -> list[np.ndarray]:
        """One array per shape: float32, or bf16 bits (uint16)."""
        flat = self.flat(role, bf16)
        return [flat[a:b].reshape(s)
                for a, b, s in zip(self.bounds[:-1], self.bounds[1:], self.shapes)]


def _fusedopt(arena: Arena, bf16_params: bool = False, **options) -> Callable[[], None]:
    """``options``: the optimizer's (state_dtype, master_weights, backend).

    A model is stepped as a FlatParams steps it: one kernel call over its tensors laid
    back to back (here the arena's regions; a FlatParams' buffers are its own). The
    state is the arena's too, given before the first step, which then creates none."""
    import fusedopt
    from ..optim.base import MASTER
    options.setdefault("backend", "numba")
    master = options.get("master_weights", False)

    def user(a):  # bf16 params and grads are given as ml_dtypes arrays
        return a.view(_bf16()) if bf16_params else a
    param = user(arena.flat("bf16_param" if master else "param", bf16_params))
    grads = [user(arena.flat("grad", bf16_params))]
    opt = fusedopt.Adam([param], lr=LR, **options)
    bf16_state = options.get("state_dtype") == "bfloat16" or (bf16_params and not master)
    opt.state[0] = {"step": 0, "exp_avg": arena.flat("exp_avg", bf16_state),
                    "exp_avg_sq": arena.flat("exp_avg_sq", bf16_state)}
    if master:
        opt.state[0][MASTER] = arena.flat("param")
    return lambda: opt.step(grads)


def _cython(arena: Arena, **options) -> Callable[[], None]:
    from .. import backends
    if not backends.available()["cython"].ok:
        raise prov.ProviderUnavailable(backends.available()["cython"].detail)
    return _fusedopt(arena, backend="cython", **options)


def _torch_params(arena: Arena, bf16: bool):
    """torch's view of the arena: Parameters with their grads, and the state arrays."""
    try:
        import torch
    except ImportError as exc:
        raise prov.ProviderUnavailable(f"torch is not installed ({exc})") from exc

    def tensors(role):
        out = [torch.from_numpy(a) for a in arena.views(role, bf16)]
        return [t.view(torch.bfloat16) for t in out] if bf16 else out
    params = []
    for p, g in zip(tensors("param"), tensors("grad")):
        params.append(torch.nn.Parameter(p))
        params[-1].grad = g
    return torch, params, tensors("exp_avg"), tensors("exp_avg_sq")


def _torch(arena: Arena) -> Callable[[], None]:
    torch, params, ms, vs = _torch_params(arena, bf16=False)
    opt = torch.optim.Adam(params, lr=LR, fused=True)
    for p, m, v in zip(params, ms, vs):
        opt.state[p] = {"step": torch.tensor(0.0), "exp_avg": m, "exp_avg_sq": v}
    return opt.step


def _deepspeed(arena: Arena, bf16: bool = False) -> Callable[[], None]:
    """DeepSpeed's CPU Adam; ``bf16``: on bf16 params, grads and state."""
    _, params, ms, vs = _torch_params(arena, bf16)
    opt = prov._deepspeed_adam()(params, lr=LR, adamw_mode=False,
                           fp32_optimizer_states=not bf16)
    for p, m, v in zip(params, ms, vs):
        opt.state[p] = {"step": 0, "exp_avg": m, "exp_avg_sq": v}
    return opt.step


def _roofline(arena: Arena, k_bytes: int) -> Callable[[], None]:
    f32, u16 = arena.flat, (lambda role: arena.flat(role, bf16=True))
    arrays = {28: (f32("param"), f32("grad"), f32("exp_avg"), f32("exp_avg_sq")),
              20: (f32("param"), f32("grad"), u16("exp_avg"), u16("exp_avg_sq")),
              14: (u16("param"), u16("grad"), u16("exp_avg"), u16("exp_avg_sq"))}[k_bytes]
    return lambda: same_traffic(*arrays)


MAKERS = {
    "torch": _torch,
    "deepspeed": _deepspeed,
    "fusedopt": _fusedopt,
    "fusedopt-bf16-state": lambda a: _fusedopt(a, state_dtype="bfloat16"),
    "cython-bf16-state": lambda a: _cython(a, state_dtype="bfloat16"),
    "fusedopt-bf16": lambda a: _fusedopt(a, bf16_params=True),
    "fusedopt-bf16-master": lambda a: _fusedopt(a, bf16_params=True, master_weights=True),
    "deepspeed-bf16": lambda a: _deepspeed(a, bf16=True),
    "roofline-28": lambda a: _roofline(a, 28),
    "roofline-20": lambda a: _roofline(a, 20),
    "roofline-14": lambda a: _roofline(a, 14),
}


def _build(shapes, skipped: dict[str, str]):
    arena = Arena(shapes)
    steps, batches = {}, {}
    for name, make in MAKERS.items():
        arena.reset()
        try:
            steps[name] = make(arena)
            steps[name]()
        except prov.ProviderUnavailable as exc:
            skipped[name] = str(exc)
            continue
        batches[name] = harness._batch_size(steps[name])
    return steps, batches, arena.reset


def measure(label: str, shapes, budget: float, rounds: int | None,
            skipped: dict[str, str], placements: int = 1) -> list[dict]:
    """Rows for one workload (``label``: a size or a model name), over ``placements``
    arenas (``harness.time_placements``), every provider of one placement on the same
    arena."""
    samples = harness.time_placements(lambda: _build(shapes, skipped), budget, rounds,
                                      placements)
    n = sum(int(np.prod(s)) for s in shapes)
    t = {name: median(s) for name, s in samples.items()}
    peer = min((t[p] for p in FP32_PEERS if p in t), default=None)
    rows = []
    for name in samples:
        roof = t.get(f"roofline-{BYTES[name]}")
        rows.append({"workload": label, "provider": name, "n": n,
                     "bytes_per_element": BYTES[name], "seconds_per_step": t[name],
                     "gb_per_second": BYTES[name] * n / t[name] / 1e9,
                     "roofline_fraction": roof / t[name] if roof else None,
                     "vs_fp32_peer": peer / t[name] if peer else None,
                     "rounds": len(samples[name])})
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| workload | provider | B/elem | ms/step | GB/s | of same-bytes roofline "
             "| vs faster fp32 peer |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        frac = f"{r['roofline_fraction']:.2f}" if r["roofline_fraction"] else "-"
        vs = f"{r['vs_fp32_peer']:.2f}x" if r["vs_fp32_peer"] else "-"
        lines.append(f"| {r['workload']} | {r['provider']} | {r['bytes_per_element']} | "
                     f"{r['seconds_per_step'] * 1e3:.2f} | {r['gb_per_second']:.1f} | "
                     f"{frac} | {vs} |")
    return "\n".join(lines)
