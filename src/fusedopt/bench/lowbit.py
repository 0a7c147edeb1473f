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


def _bf16():
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)


def _fusedopt(shapes, params_bf16=False, **options) -> Callable[[], None]:
    """``options``: the optimizer's (state_dtype, master_weights, backend)."""
    import fusedopt
    options.setdefault("backend", "numba")
    params = prov._model_arrays(shapes, _bf16() if params_bf16 else np.float32)
    if len(shapes) == 1:
        grads = [np.full_like(params[0], 0.01)]
        opt = fusedopt.Adam(params, lr=1e-3, **options)
        return lambda: opt.step(grads)
    fp = fusedopt.FlatParams.from_arrays(params)
    for gv in fp.grad_views:
        gv[...] = 0.01
    opt = fusedopt.Adam(fp, lr=1e-3, **options)
    return opt.step


def _cython(shapes, **options) -> Callable[[], None]:
    from .. import backends
    if not backends.available()["cython"].ok:
        raise prov.ProviderUnavailable(backends.available()["cython"].detail)
    return _fusedopt(shapes, backend="cython", **options)


def _deepspeed_bf16(shapes) -> Callable[[], None]:
    try:
        import torch
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception as exc:
        raise prov.ProviderUnavailable(f"DeepSpeed CPU Adam unavailable ({exc})") from exc
    params = []
    for a in prov._model_arrays(shapes):
        p = torch.nn.Parameter(torch.from_numpy(a).to(torch.bfloat16))
        p.grad = torch.full_like(p, 0.01)
        params.append(p)
    return DeepSpeedCPUAdam(params, lr=1e-3, adamw_mode=False,
                            fp32_optimizer_states=False).step


def _roofline(shapes, k_bytes) -> Callable[[], None]:
    n = sum(int(np.prod(s)) for s in shapes)
    f32 = prov._arrays(n, 2, np.float32)
    u16 = [np.zeros(n, np.uint16) for _ in range(4)]
    arrays = {28: (*f32, *prov._arrays(n, 2, np.float32)), 20: (*f32, *u16[:2]),
              14: tuple(u16)}[k_bytes]
    return lambda: same_traffic(*arrays)


MAKERS = {
    "torch": prov.make_model_torch,
    "deepspeed": prov.make_model_deepspeed,
    "fusedopt": _fusedopt,
    "fusedopt-bf16-state": lambda s: _fusedopt(s, state_dtype="bfloat16"),
    "cython-bf16-state": lambda s: _cython(s, state_dtype="bfloat16"),
    "fusedopt-bf16": lambda s: _fusedopt(s, params_bf16=True),
    "fusedopt-bf16-master": lambda s: _fusedopt(s, params_bf16=True, master_weights=True),
    "deepspeed-bf16": _deepspeed_bf16,
    "roofline-28": lambda s: _roofline(s, 28),
    "roofline-20": lambda s: _roofline(s, 20),
    "roofline-14": lambda s: _roofline(s, 14),
}


def _build(shapes, skipped: dict[str, str]):
    steps, batches = {}, {}
    for name, make in MAKERS.items():
        try:
            steps[name] = make(shapes)
            steps[name]()
        except prov.ProviderUnavailable as exc:
            skipped[name] = str(exc)
            continue
        batches[name] = harness._batch_size(steps[name])
    return steps, batches


def measure(label: str, shapes, budget: float, rounds: int | None,
            skipped: dict[str, str], placements: int = 1) -> list[dict]:
    """Rows for one workload (``label``: a size or a model name), over ``placements``
    allocations of every provider's arrays (``harness.time_placements``)."""
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
