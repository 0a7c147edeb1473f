"""One fused, in-place pass over one parameter buffer and its state.

Each ``<algo>_step`` checks its arrays (same shape, same float dtype, C-contiguous,
writeable where written, no overlap with the parameter) and hyperparameters, then
makes one backend call. Arrays of any shape are accepted and updated through flat
views; nothing is ever copied. CUDA arrays (``__cuda_array_interface__``: Numba, CuPy,
PyTorch) run on the ``cuda`` backend, launched on ``stream`` (None: the default
stream); host and device arrays never mix in one call. ``step`` is the 1-based count
of this update (bias corrections, Adagrad's lr decay and SGD's first momentum step
depend on it).
"""

from __future__ import annotations

import math

import numpy as np

import contextlib

from . import _checks, _device, _guard
from .backends import select

__all__ = ["adagrad_step", "adam_step", "adamw_step", "lion_step", "rmsprop_step",
           "sgd_step"]


def _sign(maximize) -> float:
    """The gradient's scale in the backend contract: -1 ascends (``maximize``)."""
    return -1.0 if _checks.flag(maximize, "maximize") else 1.0


def _space(param):
    """The checks for ``param``'s kind of array and the device it lives on."""
    return (_device, "cuda") if _device.is_device_array(param) else (_checks, "cpu")


def _state(chk, x, param, name):
    return chk.like_param(x, param, name, "param", writeable=True)


def _run(backend: str, device: str, stream, **arrays):
    """The backend module for ``device``, and the context its call runs in; first,
    no two of ``arrays`` (flat kernel views, None for absent state) share memory."""
    given = {name: a for name, a in arrays.items() if a is not None}
    names = lambda: list(given)  # noqa: E731
    if device == "cuda":
        _guard.check_spans([_device.span(a, name) for name, a in given.items()], names)
    else:
        _guard.check_arrays(list(given.values()), names)
    _, impl = select(backend, device)
    if device == "cuda":
        return impl, impl.on_stream(stream)
    if stream is not None:
        raise ValueError("stream: only CUDA arrays run on a stream; these are host "
                         "arrays")
    return impl, contextlib.nullcontext()


def sgd_step(param: np.ndarray, grad: np.ndarray, momentum_buffer: np.ndarray | None = None,
             *, step: int = 1, lr: float = 1e-3, momentum: float = 0.0,
             dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False,
             maximize: bool = False, backend: str = "auto", stream=None) -> None:
    """SGD step (see :class:`fusedopt.SGD` for the formula). ``momentum_buffer`` is
    needed when ``momentum != 0``; at ``step == 1`` it is set to the gradient."""
    chk, device = _space(param)
    p = chk.param_array(param, "param")
    g = chk.like_param(grad, param, "grad", "param")
    _checks.step_count(step, "step")
    momentum = _checks.number(momentum, "momentum")
    dampening = _checks.number(dampening, "dampening", low=-math.inf)
    nesterov = _checks.flag(nesterov, "nesterov")
    if nesterov and (momentum <= 0 or dampening != 0):
        raise ValueError("nesterov: Nesterov momentum needs momentum > 0 and "
                         f"dampening == 0, got momentum={momentum}, dampening={dampening}")
    buf = None
    if momentum != 0:
        if momentum_buffer is None:
            raise ValueError("momentum_buffer: expected an array when momentum != 0")
        buf = _state(chk, momentum_buffer, param, "momentum_buffer")
    impl, context = _run(backend, device, stream, param=p, momentum_buffer=buf, grad=g)
    with context:
        impl.sgd(p, g, buf, step == 1, _checks.number(lr, "lr"), momentum, dampening,
                 _checks.number(weight_decay, "weight_decay"), nesterov,
                 _sign(maximize))


def adam_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray,
              exp_avg_sq: np.ndarray, max_exp_avg_sq: np.ndarray | None = None, *,
              step: int, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
              eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = False,
              maximize: bool = False, backend: str = "auto", stream=None) -> None:
    """Adam step (see :class:`fusedopt.Adam`); AMSGrad when ``max_exp_avg_sq`` is
    given, AdamW's decoupled decay when ``decoupled``."""
    chk, device = _space(param)
    p = chk.param_array(param, "param")
    g = chk.like_param(grad, param, "grad", "param")
    m = _state(chk, exp_avg, param, "exp_avg")
    v = _state(chk, exp_avg_sq, param, "exp_avg_sq")
    vmax = None if max_exp_avg_sq is None else _state(chk, max_exp_avg_sq, param,
                                                      "max_exp_avg_sq")
    impl, context = _run(backend, device, stream, param=p, exp_avg=m, exp_avg_sq=v,
                          max_exp_avg_sq=vmax, grad=g)
    with context:
        impl.adam(p, g, m, v, vmax, _checks.step_count(step, "step"),
                  _checks.number(lr, "lr"),
                  _checks.number(beta1, "beta1", 0.0, 1.0, high_open=True),
                  _checks.number(beta2, "beta2", 0.0, 1.0, high_open=True),
                  _checks.number(eps, "eps"), _checks.number(weight_decay, "weight_decay"),
                  _checks.flag(decoupled, "decoupled"), _sign(maximize))


def adamw_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray,
               exp_avg_sq: np.ndarray, max_exp_avg_sq: np.ndarray | None = None, *,
               step: int, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999,
               eps: float = 1e-8, weight_decay: float = 1e-2, maximize: bool = False,
               backend: str = "auto", stream=None) -> None:
    """AdamW step (see :class:`fusedopt.AdamW`): ``adam_step(..., decoupled=True)``."""
    adam_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step=step, lr=lr,
              beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
              decoupled=True, maximize=maximize, backend=backend,
              stream=stream)


def adagrad_step(param: np.ndarray, grad: np.ndarray, state_sum: np.ndarray, *,
                 step: int, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, eps: float = 1e-10, maximize: bool = False,
                 backend: str = "auto", stream=None) -> None:
    """Adagrad step (see :class:`fusedopt.Adagrad`)."""
    chk, device = _space(param)
    p = chk.param_array(param, "param")
    g = chk.like_param(grad, param, "grad", "param")
    s = _state(chk, state_sum, param, "state_sum")
    impl, context = _run(backend, device, stream, param=p, state_sum=s, grad=g)
    with context:
        impl.adagrad(p, g, s, _checks.step_count(step, "step"), _checks.number(lr, "lr"),
                     _checks.number(lr_decay, "lr_decay"), _checks.number(eps, "eps"),
                     _checks.number(weight_decay, "weight_decay"), _sign(maximize))


def rmsprop_step(param: np.ndarray, grad: np.ndarray, square_avg: np.ndarray,
                 grad_avg: np.ndarray | None = None,
                 momentum_buffer: np.ndarray | None = None, *, lr: float = 1e-2,
                 alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0,
                 momentum: float = 0.0, maximize: bool = False,
                 backend: str = "auto", stream=None) -> None:
    """RMSprop step (see :class:`fusedopt.RMSprop`); centered when ``grad_avg`` is
    given; ``momentum_buffer`` is needed when ``momentum > 0``."""
    chk, device = _space(param)
    p = chk.param_array(param, "param")
    g = chk.like_param(grad, param, "grad", "param")
    sq = _state(chk, square_avg, param, "square_avg")
    mu = None if grad_avg is None else _state(chk, grad_avg, param, "grad_avg")
    momentum = _checks.number(momentum, "momentum")
    buf = None
    if momentum > 0:
        if momentum_buffer is None:
            raise ValueError("momentum_buffer: expected an array when momentum > 0")
        buf = _state(chk, momentum_buffer, param, "momentum_buffer")
    impl, context = _run(backend, device, stream, param=p, square_avg=sq, grad_avg=mu,
                          momentum_buffer=buf, grad=g)
    with context:
        impl.rmsprop(p, g, sq, mu, buf, _checks.number(lr, "lr"),
                     _checks.number(alpha, "alpha", 0.0, 1.0), _checks.number(eps, "eps"),
                     _checks.number(weight_decay, "weight_decay"), momentum,
                     _sign(maximize))


def lion_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, *,
              lr: float = 1e-4, beta1: float = 0.9, beta2: float = 0.99,
              weight_decay: float = 0.0, maximize: bool = False, backend: str = "auto",
              stream=None) -> None:
    """Lion step (see :class:`fusedopt.Lion`)."""
    chk, device = _space(param)
    p = chk.param_array(param, "param")
    g = chk.like_param(grad, param, "grad", "param")
    m = _state(chk, exp_avg, param, "exp_avg")
    impl, context = _run(backend, device, stream, param=p, exp_avg=m, grad=g)
    with context:
        impl.lion(p, g, m, _checks.number(lr, "lr"),
                  _checks.number(beta1, "beta1", 0.0, 1.0, high_open=True),
                  _checks.number(beta2, "beta2", 0.0, 1.0, high_open=True),
                  _checks.number(weight_decay, "weight_decay"), _sign(maximize))
