"""One Adam step (float32, torch defaults) per implementation, ready to time.

Each ``make_*`` builds its own arrays from a fixed seed and returns a zero-argument
callable that performs one full optimizer step as that library's user would call it
(Python overhead included). Missing peers raise ``ProviderUnavailable``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

BYTES_PER_ELEMENT = {"adam": 28}  # float32: read p, g, m, v; write p, m, v


class ProviderUnavailable(RuntimeError):
    pass


def _arrays(n: int, count: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n, dtype=np.float32) for _ in range(count)]


def make_fusedopt(n: int, backend: str = "numba") -> Callable[[], None]:
    import fusedopt
    p, g = _arrays(n, 2)
    opt = fusedopt.Adam([p], lr=1e-3, backend=backend)
    grads = [g]
    return lambda: opt.step(grads)


def make_numpy_textbook(n: int) -> Callable[[], None]:
    """What a NumPy user writes: ``m = b1*m + (1-b1)*g`` ... with temporaries."""
    return make_fusedopt(n, backend="numpy")


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise ProviderUnavailable(f"torch is not installed ({exc})") from exc
    return torch


def make_torch_fused(n: int) -> Callable[[], None]:
    torch = _torch()
    p, g = (torch.from_numpy(a) for a in _arrays(n, 2))
    param = torch.nn.Parameter(p)
    param.grad = g
    opt = torch.optim.Adam([param], lr=1e-3, fused=True)
    return opt.step


def make_deepspeed(n: int) -> Callable[[], None]:
    torch = _torch()
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception as exc:  # not installed, or its C++ op failed to build
        raise ProviderUnavailable(f"DeepSpeed CPU Adam unavailable ({exc})") from exc
    p, g = (torch.from_numpy(a) for a in _arrays(n, 2))
    param = torch.nn.Parameter(p)
    param.grad = g
    opt = DeepSpeedCPUAdam([param], lr=1e-3, adamw_mode=False)
    return opt.step


def make_roofline(n: int) -> Callable[[], None]:
    from .roofline import adam_traffic
    p, g, m, v = _arrays(n, 4)
    return lambda: adam_traffic(p, g, m, v)


PROVIDERS: dict[str, Callable[[int], Callable[[], None]]] = {
    "fusedopt-numba": make_fusedopt,
    "numpy-textbook": make_numpy_textbook,
    "torch-fused": make_torch_fused,
    "deepspeed-cpu-adam": make_deepspeed,
    "roofline": make_roofline,
}


def make(name: str, n: int) -> Callable[[], None]:
    """A warmed-up step callable (first call done: JIT compiled, state allocated)."""
    step = PROVIDERS[name](n)
    step()
    return step
