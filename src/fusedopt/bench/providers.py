"""One optimizer step per implementation, ready to time.

``make(provider, optimizer, n, dtype)`` builds the arrays (fixed seed) and returns a
zero-argument callable doing one full step as that library's user calls it, Python
overhead included, already run once (JIT compiled, state allocated). Providers:
``fusedopt-<backend>`` for each fusedopt backend (``fusedopt-numpy`` is the naive
textbook baseline), ``torch`` (``torch.optim`` with ``fused=True`` where torch has a
fused CPU kernel: SGD, Adam, AdamW, Adagrad; its default loop for RMSprop),
``deepspeed`` (``DeepSpeedCPUAdam``, Adam and AdamW) and ``roofline``.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from .roofline import bytes_per_element, same_traffic

#: The configuration benchmarked per algorithm (torch defaults; SGD with momentum)
#: and the number of state arrays it keeps.
CONFIGS: dict[str, tuple[str, dict, int]] = {
    "sgd": ("SGD", dict(lr=1e-3, momentum=0.9), 1),
    "adam": ("Adam", dict(lr=1e-3), 2),
    "adamw": ("AdamW", dict(lr=1e-3), 2),
    "adagrad": ("Adagrad", dict(lr=1e-2), 1),
    "rmsprop": ("RMSprop", dict(lr=1e-2), 1),
}
TORCH_FUSED = {"sgd", "adam", "adamw", "adagrad"}


class ProviderUnavailable(RuntimeError):
    pass


def traffic(optimizer: str, dtype) -> int:
    """Bytes per element one step of ``optimizer`` must move at the least."""
    return bytes_per_element(CONFIGS[optimizer][2], np.dtype(dtype).itemsize)


def _arrays(n: int, count: int, dtype) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n).astype(dtype) for _ in range(count)]


def _fusedopt(backend: str) -> Callable:
    def make(optimizer, n, dtype):
        import fusedopt
        name, kwargs, _ = CONFIGS[optimizer]
        p, g = _arrays(n, 2, dtype)
        opt = getattr(fusedopt, name)([p], **kwargs, backend=backend)
        grads = [g]
        return lambda: opt.step(grads)
    return make


def _torch_param(n, dtype):
    try:
        import torch
    except ImportError as exc:
        raise ProviderUnavailable(f"torch is not installed ({exc})") from exc
    p, g = (torch.from_numpy(a) for a in _arrays(n, 2, dtype))
    param = torch.nn.Parameter(p)
    param.grad = g
    return torch, param


def make_torch(optimizer, n, dtype):
    torch, param = _torch_param(n, dtype)
    name, kwargs, _ = CONFIGS[optimizer]
    fused = {"fused": True} if optimizer in TORCH_FUSED else {}
    return getattr(torch.optim, name)([param], **kwargs, **fused).step


def make_deepspeed(optimizer, n, dtype):
    if optimizer not in ("adam", "adamw"):
        raise ProviderUnavailable("DeepSpeed's CPU optimizer here is Adam/AdamW only")
    torch, param = _torch_param(n, dtype)
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except Exception as exc:  # not installed, or its C++ op failed to build
        raise ProviderUnavailable(f"DeepSpeed CPU Adam unavailable ({exc})") from exc
    kwargs = CONFIGS[optimizer][1]
    if optimizer == "adamw":
        return DeepSpeedCPUAdam([param], **kwargs, weight_decay=1e-2, adamw_mode=True).step
    return DeepSpeedCPUAdam([param], **kwargs, adamw_mode=False).step


def make_roofline(optimizer, n, dtype):
    arrays = _arrays(n, 2 + CONFIGS[optimizer][2], dtype)
    return lambda: same_traffic(*arrays)


def providers() -> dict[str, Callable]:
    """Every provider name, fusedopt backends first (in registry order)."""
    from ..backends import names
    out = {f"fusedopt-{b}": _fusedopt(b) for b in names()}
    out.update(torch=make_torch, deepspeed=make_deepspeed, roofline=make_roofline)
    return out


def make(provider: str, optimizer: str, n: int, dtype=np.float32) -> Callable[[], None]:
    """A warmed-up step callable; raises ProviderUnavailable with the reason."""
    from ..backends import BackendUnavailable
    try:
        step = providers()[provider](optimizer, n, dtype)
        step()
    except (ProviderUnavailable, BackendUnavailable) as exc:
        raise ProviderUnavailable(str(exc)) from exc
    except Exception as exc:  # a peer that cannot run this dtype, say
        if provider.startswith("fusedopt-"):
            raise
        raise ProviderUnavailable(f"{provider} failed: {type(exc).__name__}: {exc}") from exc
    return step
