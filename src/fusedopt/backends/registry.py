"""Backend registry: which implementation of the kernel contract runs a step.

Every backend module implements the same functions, one per algorithm
(``algorithms.SPECS``), over flat, C-contiguous arrays with raw hyperparameters (see
``numpy_ref`` for the plainest statement), for example:

    sgd(param, grad, momentum_buffer, fresh_buffer, lr, momentum, dampening,
        weight_decay, nesterov, grad_scale)
    adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2,
         eps, weight_decay, decoupled, grad_scale)
    adagrad(param, grad, state_sum, step, lr, lr_decay, eps, weight_decay, grad_scale)
    rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha, eps,
            weight_decay, momentum, grad_scale)

Optional state is ``None`` when the option that needs it is off (amsgrad, momentum,
centered). Per-tensor scalar state is a raw hyperparameter, given as the step before
left it (NAdam's ``mu_product`` with ``scalar_kinds``, how it is rounded; ASGD's
``eta`` and ``mu``); the caller keeps it (``Algorithm.scalar_next``). ``grad_scale`` multiplies the gradient before anything else: -1.0 for
maximize, times a clipping coefficient. A backend's ``BF16`` tuple says which arrays
may be bf16 bits (uint16): "state" (beside float32 parameters), "params" (bf16
parameters and gradients); the others are never handed any. Every function also
takes ``seed=0`` and ``out=None``, used with "params" only: ``seed`` drives
stochastic rounding into bf16 parameters, and ``out``, with master weights, is the
bf16 parameter that receives the float32 ``param`` (its master copy) rounded to
nearest even. And one reduction:

    grad_stats(grad, parallel) -> (sum of squares in float64, count of non-finite)

The compiled host backends (numba, cython) also take many tensors in one call, given
by address (the multi-tensor path of ``fusedopt.torch``):

    multi(name, flags, present, h, dtypes, table, counts, seeds, grad_scale, parallel)

``table[t]`` holds the addresses of tensor ``t``'s parameter, gradient and state
slots (``template.TABLE_COLUMNS``; 0 where ``present`` says a slot is absent),
``counts[t]`` its elements; ``flags``, ``h`` and ``grad_scale`` are what the
algorithm's contract function would pass its kernel (``algorithms.ARGUMENTS``).

Callers validate; backends trust their arguments.
"""

from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from types import ModuleType
from typing import Callable, NamedTuple

ENV_VAR = "FUSEDOPT_BACKEND"


class BackendUnavailable(RuntimeError):
    """The requested backend cannot run here; the message says why."""


class Availability(NamedTuple):
    ok: bool
    detail: str


@dataclass(frozen=True)
class Backend:
    """A named implementation of the kernel contract for some devices."""

    name: str
    devices: tuple[str, ...]
    module: str
    describe: Callable[[ModuleType], str] = lambda module: ""
    #: whether "auto" takes it, once imported (it may still be asked for by name)
    auto: Callable[[ModuleType], bool] = lambda module: True


_REGISTRY: dict[str, Backend] = {}  # insertion order is the "auto" preference order
_LOADED: dict[str, ModuleType] = {}
_FAILED: dict[str, str] = {}


def register(backend: Backend) -> None:
    """Add a backend; ``auto`` prefers backends registered earlier."""
    _REGISTRY[backend.name] = backend


def names(device: str | None = None) -> list[str]:
    """Registered backends (for ``device`` only, when given), in "auto" order."""
    return [n for n, b in _REGISTRY.items() if device is None or device in b.devices]


def load(name: str) -> ModuleType:
    """Import a backend's module, or raise ``BackendUnavailable`` with the reason."""
    if name in _LOADED:
        return _LOADED[name]
    if name not in _REGISTRY:
        raise ValueError(f"backend: expected one of {['auto', *_REGISTRY]}, got {name!r}")
    if name in _FAILED:
        raise BackendUnavailable(f"backend {name!r} is not available: {_FAILED[name]}")
    try:
        module = importlib.import_module(_REGISTRY[name].module)
    except Exception as exc:  # ImportError, or a broken install of a dependency
        _FAILED[name] = f"{type(exc).__name__}: {exc}"
        raise BackendUnavailable(
            f"backend {name!r} is not available: {_FAILED[name]}") from exc
    _LOADED[name] = module
    return module


def available() -> dict[str, Availability]:
    """Every registered backend, whether it works here, and a one-line detail:
    versions and threads when it works, the reason when it does not."""
    report = {}
    for name, backend in _REGISTRY.items():
        try:
            module = load(name)
        except BackendUnavailable:
            report[name] = Availability(False, _FAILED[name])
        else:
            report[name] = Availability(True, backend.describe(module))
    return report


def select(requested: str, device: str) -> tuple[str, ModuleType]:
    """Resolve ``requested`` ("auto" or a name) for arrays living on ``device``.

    ``auto`` honours ``FUSEDOPT_BACKEND`` when set, else takes the first registered
    backend for the device that imports and that ``Backend.auto`` accepts (the
    Cython kernels, unless built without OpenMP; then Numba); an explicit name
    (argument or variable) raises ``BackendUnavailable`` with the reason if it
    cannot run.
    """
    if not isinstance(requested, str):
        raise TypeError(f"backend: expected a str, got {type(requested).__name__}")
    if requested == "auto":
        requested = os.environ.get(ENV_VAR, "").strip() or "auto"
    if requested != "auto":
        module = load(requested)
        if device not in _REGISTRY[requested].devices:
            raise BackendUnavailable(
                f"backend {requested!r} runs on {'/'.join(_REGISTRY[requested].devices)} "
                f"arrays, but the parameters are {device} arrays")
        return requested, module
    reasons = []
    for name, backend in _REGISTRY.items():
        if device in backend.devices:
            try:
                module = load(name)
            except BackendUnavailable as exc:
                reasons.append(str(exc))
                continue
            if backend.auto(module):
                return name, module
            reasons.append(f"backend {name!r} is left to be asked for by name here")
    raise BackendUnavailable(f"no backend for {device} arrays: " + "; ".join(reasons))
