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

import math
from typing import Callable

import numpy as np

from .roofline import bytes_per_element, read_each, read_traffic, same_traffic

#: The configuration benchmarked per algorithm (torch defaults; SGD with momentum)
#: and the number of state arrays it keeps.
CONFIGS: dict[str, tuple[str, dict, int]] = {
    "sgd": ("SGD", dict(lr=1e-3, momentum=0.9), 1),
    "adam": ("Adam", dict(lr=1e-3), 2),
    "adamw": ("AdamW", dict(lr=1e-3), 2),
    "adagrad": ("Adagrad", dict(lr=1e-2), 1),
    "rmsprop": ("RMSprop", dict(lr=1e-2), 1),
    "lion": ("Lion", dict(lr=1e-4), 1),
    "adamax": ("Adamax", dict(lr=2e-3), 2),
    "adadelta": ("Adadelta", dict(lr=1.0), 2),
    "radam": ("RAdam", dict(lr=1e-3), 2),
    "rprop": ("Rprop", dict(lr=1e-2), 2),
    "nadam": ("NAdam", dict(lr=2e-3), 2),
    "asgd": ("ASGD", dict(lr=1e-2), 1),
    "lamb": ("LAMB", dict(lr=1e-3), 2),
}
#: the algorithms whose step reads parameter, gradient and state once more first, in
#: a read-only reduction pass (LAMB's per-tensor norms): their traffic and roofline
#: include it
REDUCING = {"lamb", "lamb-bf16"}
#: Every other state layout, timed when asked for by name (``--optimizer
#: adam-amsgrad,...``; ``layouts`` for all): one kernel specialisation each.
LAYOUTS: dict[str, tuple[str, dict, int]] = {
    "sgd-plain": ("SGD", dict(lr=1e-3), 0),
    "sgd-nesterov": ("SGD", dict(lr=1e-3, momentum=0.9, nesterov=True), 1),
    "adam-amsgrad": ("Adam", dict(lr=1e-3, amsgrad=True), 3),
    "adamw-amsgrad": ("AdamW", dict(lr=1e-3, amsgrad=True), 3),
    "rmsprop-centered": ("RMSprop", dict(lr=1e-2, centered=True), 2),
    "rmsprop-momentum": ("RMSprop", dict(lr=1e-2, momentum=0.9), 2),
    "rmsprop-centered-momentum": ("RMSprop", dict(lr=1e-2, centered=True, momentum=0.9),
                                  3),
}
CONFIGS.update(LAYOUTS)
#: Each layout that keeps state, with bfloat16 state (``state_dtype="bfloat16"``: 2
#: bytes per state element beside float32 parameters), timed on request
#: (``--optimizer adam-bf16,...``; ``bf16`` for all); torch's row is its float32 step.
BF16_STATE: dict[str, tuple[str, dict, int]] = {
    f"{name}-bf16": (torch_name, {**kwargs, "state_dtype": "bfloat16"}, k)
    for name, (torch_name, kwargs, k) in CONFIGS.items() if k > 0}
CONFIGS.update(BF16_STATE)
#: The algorithms that step matrices, timed on an ``n``-element matrix as near square
#: as ``n`` allows (``shape_of``; 1M: 1024 x 1024): Adafactor, whose state is two
#: factors (n + m elements, so none in the count) and whose least traffic is
#: ``MATRIX_TRAFFIC`` arrays (its means read the gradient; its norms the parameter and
#: gradient; its update those and the parameter's write), and Muon, whose
#: Newton-Schulz products bound it by compute: it has no roofline row, and is timed
#: only when asked for by name (its 16M matrix takes seconds a step).
MATRIX: dict[str, tuple[str, dict, int]] = {
    "adafactor": ("Adafactor", dict(lr=1e-2), 0),
    "muon": ("Muon", dict(lr=1e-3), 1),
}
MATRIX_TRAFFIC = {"adafactor": 6}
COMPUTE_BOUND = {"muon"}
CONFIGS.update(MATRIX)
TORCH_FUSED = {"sgd", "adam", "adamw", "adagrad", "sgd-plain", "sgd-nesterov",
               "adam-amsgrad", "adamw-amsgrad"}


class ProviderUnavailable(RuntimeError):
    pass


def _state_dtype(optimizer: str, dtype) -> np.dtype:
    bf16 = "state_dtype" in CONFIGS[optimizer][1]
    return np.dtype(np.uint16) if bf16 else np.dtype(dtype)  # bf16: its bits


def traffic(optimizer: str, dtype) -> int:
    """Bytes per element one step of ``optimizer`` must move at the least (with its
    reduction pass, for ``REDUCING``)."""
    k, size = CONFIGS[optimizer][2], np.dtype(dtype).itemsize
    if optimizer in MATRIX_TRAFFIC:
        return MATRIX_TRAFFIC[optimizer] * size
    state = _state_dtype(optimizer, dtype).itemsize
    reads = 2 * size + k * state if optimizer in REDUCING else 0
    return bytes_per_element(k, size, state) + reads


def _float_state_kwargs(optimizer: str) -> dict:
    """The configuration's arguments without fusedopt's ``state_dtype``: torch.optim's,
    and the NumPy baseline's (both keep float32/float64 state)."""
    return {k: v for k, v in CONFIGS[optimizer][1].items() if k != "state_dtype"}


def shape_of(optimizer: str, n: int) -> tuple[int, ...]:
    """The shape ``n`` elements of ``optimizer``'s parameter are timed in: ``(n,)``,
    or for ``MATRIX`` algorithms ``(r, n // r)`` with ``r`` the largest divisor of
    ``n`` not above its square root."""
    if optimizer not in MATRIX:
        return (n,)
    r = math.isqrt(n)
    while n % r:
        r -= 1
    return (r, n // r)


def _arrays(n: int, count: int, dtype, shape: tuple[int, ...] | None = None
            ) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal(n).astype(dtype).reshape(shape or (n,))
            for _ in range(count)]


def _fusedopt(backend: str, guarded: bool = False) -> Callable:
    """``guarded``: with nonfinite="skip" and max_grad_norm=1.0 (one more read of the
    gradient per step, the clipping factor folded into the update)."""
    def make(optimizer, n, dtype):
        import fusedopt
        name, kwargs, _ = CONFIGS[optimizer]
        if backend == "numpy":  # the baseline: NumPy keeps float32/float64 state only
            kwargs = _float_state_kwargs(optimizer)
        p, g = _arrays(n, 2, dtype, shape_of(optimizer, n))
        extra = dict(nonfinite="skip", max_grad_norm=1.0) if guarded else {}
        opt = getattr(fusedopt, name)([p], **kwargs, **extra, backend=backend)
        grads = [g]
        return lambda: opt.step(grads)
    return make


def _torch_param(n, dtype, shape=None):
    try:
        import torch
    except ImportError as exc:
        raise ProviderUnavailable(f"torch is not installed ({exc})") from exc
    p, g = (torch.from_numpy(a) for a in _arrays(n, 2, dtype, shape))
    param = torch.nn.Parameter(p)
    param.grad = g
    return torch, param


def make_torch(optimizer, n, dtype):
    torch, param = _torch_param(n, dtype, shape_of(optimizer, n))
    name, kwargs = CONFIGS[optimizer][0], _float_state_kwargs(optimizer)
    if not hasattr(torch.optim, name):
        raise ProviderUnavailable(f"not applicable: torch.optim has no {name}")
    fused = {"fused": True} if optimizer in TORCH_FUSED else {}
    return getattr(torch.optim, name)([param], **kwargs, **fused).step


def make_deepspeed(optimizer, n, dtype):
    if optimizer not in ("adam", "adamw"):
        raise ProviderUnavailable("not applicable: DeepSpeed's CPU optimizer is Adam "
                                  "and AdamW only")
    torch, param = _torch_param(n, dtype)
    DeepSpeedCPUAdam = _deepspeed_adam()
    kwargs = _float_state_kwargs(optimizer)
    if optimizer == "adamw":
        return DeepSpeedCPUAdam([param], **kwargs, weight_decay=1e-2, adamw_mode=True).step
    return DeepSpeedCPUAdam([param], **kwargs, adamw_mode=False).step


def _deepspeed_adam():
    """DeepSpeed's CPU Adam class, or ProviderUnavailable saying why: not installed,
    or installed but failing to import or to build its C++ op."""
    try:
        from deepspeed.ops.adam import DeepSpeedCPUAdam
    except ModuleNotFoundError as exc:
        raise ProviderUnavailable(f"DeepSpeed is not installed ({exc})") from exc
    except Exception as exc:
        raise ProviderUnavailable(f"DeepSpeed CPU Adam failed to load: "
                                  f"{type(exc).__name__}: {exc}") from exc
    return DeepSpeedCPUAdam


def make_roofline(optimizer, n, dtype):
    if optimizer in COMPUTE_BOUND:
        raise ProviderUnavailable(f"not applicable: {CONFIGS[optimizer][0]}'s step is "
                                  "bound by its matrix products, not by memory")
    p, g, *state = _arrays(n, 2 + CONFIGS[optimizer][2], dtype)
    if optimizer in MATRIX_TRAFFIC:  # Adafactor: g; then p, g; then the update's
        def step():
            read_each(g, p, g)
            same_traffic(p, g, *state)
        return step
    state = [a.astype(_state_dtype(optimizer, dtype)) for a in state]
    if optimizer in REDUCING:  # a read-only pass first, then the update's traffic
        def step():
            read_traffic(p, g, *state)
            same_traffic(p, g, *state)
        return step
    return lambda: same_traffic(p, g, *state)


def providers() -> dict[str, Callable]:
    """Every provider name, fusedopt backends first (in registry order)."""
    from ..backends import names
    out = {f"fusedopt-{b}": _fusedopt(b) for b in names("cpu")}
    out.update({f"fusedopt-{b}-guarded": _fusedopt(b, guarded=True)
                for b in names("cpu") if b != "numpy"})
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


# -- whole models: many tensors, one Adam step ------------------------------------

def gpt2_small_shapes() -> list[tuple[int, ...]]:
    """GPT-2 small (124M): token and position embeddings, 12 blocks of layer norms,
    attention and MLP weights and biases, the final layer norm: 148 tensors."""
    d = 768
    shapes = [(50257, d), (1024, d)]
    for _ in range(12):
        shapes += [(d,), (d,), (d, 3 * d), (3 * d,), (d, d), (d,),
                   (d,), (d,), (d, 4 * d), (4 * d,), (4 * d, d), (d,)]
    return shapes + [(d,), (d,)]


def many_small_shapes(count: int = 500, seed: int = 0) -> list[tuple[int, ...]]:
    """``count`` tensors of 256 to 4096 elements (small MLPs, RL policies, norms)."""
    rng = np.random.default_rng(seed)
    return [(int(n),) for n in rng.integers(256, 4097, size=count)]


MODELS = {"gpt2-small": gpt2_small_shapes, "many-small": many_small_shapes}


def _model_arrays(shapes):
    rng = np.random.default_rng(0)
    return [rng.standard_normal(s, dtype=np.float32) for s in shapes]


def _model_fusedopt(backend: str, flat: bool) -> Callable:
    def make(shapes):
        import fusedopt
        params = _model_arrays(shapes)
        if flat:
            fp = fusedopt.FlatParams.from_arrays(params)
            for gv in fp.grad_views:
                gv[...] = 0.01
            opt = fusedopt.Adam(fp, lr=1e-3, backend=backend)
            return opt.step
        grads = [np.full_like(p, 0.01) for p in params]
        opt = fusedopt.Adam(params, lr=1e-3, backend=backend)
        return lambda: opt.step(grads)
    return make


def _model_torch_params(shapes):
    try:
        import torch
    except ImportError as exc:
        raise ProviderUnavailable(f"torch is not installed ({exc})") from exc
    params = []
    for a in _model_arrays(shapes):
        p = torch.nn.Parameter(torch.from_numpy(a))
        p.grad = torch.full_like(p, 0.01)
        params.append(p)
    return torch, params


def make_model_torch(shapes):
    torch, params = _model_torch_params(shapes)
    return torch.optim.Adam(params, lr=1e-3, fused=True).step


def _model_torch_adapter(flatten: bool) -> Callable:
    def make(shapes):
        _, params = _model_torch_params(shapes)
        import fusedopt.torch as ft
        return ft.Adam(params, lr=1e-3, flatten=flatten).step
    return make


def make_model_deepspeed(shapes):
    torch, params = _model_torch_params(shapes)
    return _deepspeed_adam()(params, lr=1e-3, adamw_mode=False).step


def make_model_roofline(shapes):
    n = sum(int(np.prod(s)) for s in shapes)
    arrays = _arrays(n, 4, np.float32)
    return lambda: same_traffic(*arrays)


def model_providers() -> dict[str, Callable]:
    from ..backends import names
    out = {}
    for b in names("cpu"):
        if b != "numpy":  # the textbook baseline would need GBs of temporaries
            out[f"fusedopt-{b}-flat"] = _model_fusedopt(b, flat=True)
            out[f"fusedopt-{b}"] = _model_fusedopt(b, flat=False)
    out["fusedopt.torch-flat"] = _model_torch_adapter(flatten=True)
    out["fusedopt.torch"] = _model_torch_adapter(flatten=False)
    out.update(torch=make_model_torch, deepspeed=make_model_deepspeed,
               roofline=make_model_roofline)
    return out


def make_model(provider: str, model: str) -> Callable[[], None]:
    """A warmed-up Adam step over ``model``'s shapes; ProviderUnavailable if not here."""
    from ..backends import BackendUnavailable
    try:
        step = model_providers()[provider](MODELS[model]())
        step()
    except (ProviderUnavailable, BackendUnavailable) as exc:
        raise ProviderUnavailable(str(exc)) from exc
    return step
