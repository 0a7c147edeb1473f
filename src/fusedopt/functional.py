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

import contextlib
from typing import Any

from . import _checks, _device, _guard, algorithms
from .backends import select


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


def _shaped_state(chk, f: algorithms.Functional, x, param, name: str):
    """State argument ``name`` of the shape ``f.state_shape`` gives for ``param``:
    that array's flat view, or None where the algorithm keeps no such state for a
    parameter of this shape (and the caller passed none)."""
    shape, _ = algorithms._shape_dtype(param, "param")
    want = f.state_shape(name, shape)
    if want is None:
        if x is not None:
            raise ValueError(f"{name}: not kept for a parameter of shape {shape}; "
                             "pass None")
        return None
    if x is None:
        raise ValueError(f"{name}: expected an array of shape {want} for a parameter "
                         f"of shape {shape}, got None")
    return chk.like_param(x, param, name, "param", writeable=True, shape=want)


def _step(f: algorithms.Functional, keywords: type, param, grad, slots: tuple,
          values: dict, backend: str, stream) -> Any:
    """One functional step: every argument checked (into ``keywords``, the
    namedtuple of ``f.params``), then one backend call; returns the algorithm's
    scalar state after it, if it keeps any (``Functional.returns``)."""
    chk, device = _space(param)
    p = chk.param_array(param, "param")
    if f.check_param is not None:
        f.check_param(param, "param")
    shaped = f.kernel.host is not None  # (Muon: its host stage needs the shape)
    g = chk.like_param(grad, param, "grad", "param")
    kw = keywords(*[h.check(values[h.name], h.name) for h in f.params])
    if f.validate is not None:
        f.validate(kw, "")
    arrays = {}
    for (name, need), x in zip(f.slots, slots):
        if f.state_shape is not None:  # (Adafactor: its factors' shapes, or variance)
            arrays[name] = _shaped_state(chk, f, x, param, name)
            continue
        if isinstance(need, tuple):  # (predicate, words): needed, or unused
            if not need[0](kw):
                x = None
            elif x is None:
                raise ValueError(f"{name}: expected an array when {need[1]}")
        arrays[name] = None if x is None and need is not True else _state(
            chk, x, param, name)
    impl, context = _run(backend, device, stream, param=p, **arrays, grad=g)
    after = None if f.returns is None else f.returns(kw)  # (may raise: before writing)
    with context:
        getattr(impl, f.kernel.name)(
            p, g, *arrays.values(), *(f.args(kw, tuple(param.shape)) if shaped
                                      else f.args(kw)),
            -1.0 if getattr(kw, "maximize", False) else 1.0)
    return after


def _function(f: algorithms.Functional):
    """``f`` as a function with real parameters (written out and compiled, as
    ``collections.namedtuple`` does): its state arrays positional (optional ones
    default to None), its hyperparameters keyword-only."""
    def keyword(h: algorithms.Hyper) -> str:
        if h.default is algorithms.REQUIRED:  # the step count, or scalar state
            return f"{h.name}: {'int' if h.name == 'step' else 'float'}"
        return f"{h.name}: {h.annotation or type(h.default).__name__} = {h.default!r}"

    state = ", ".join(name + ("" if need is True else "=None") for name, need in f.slots)
    keywords = ", ".join(map(keyword, f.params))
    values = ", ".join(f"{h.name}={h.name}" for h in f.params)
    slots = ", ".join(name for name, _ in f.slots)
    source = (f"def {f.name}(param, grad, {state}, *, {keywords}, backend: str = 'auto',"
              " stream=None) -> Any:\n"
              f"    return _step(F, K, param, grad, ({slots},), dict({values}), backend, stream)\n")
    fn = algorithms.define(f.name, source, {"_step": _step, "F": f, "Any": Any,
                                            "K": algorithms.checked(f.name, f.params)},
                           f"fusedopt.functional.{f.name}")
    fn.__module__, fn.__doc__ = __name__, f.doc
    return fn


for _f in algorithms.FUNCTIONALS:
    globals()[_f.name] = _function(_f)

__all__ = sorted(f.name for f in algorithms.FUNCTIONALS)
