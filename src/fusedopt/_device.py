"""CUDA arrays: checks, zero-copy wrapping and host transfers for the ``cuda`` backend.

Any object exporting ``__cuda_array_interface__`` (a Numba device array, a CuPy array,
a PyTorch CUDA tensor) is read through that interface: its pointer, shape, dtype,
strides and read-only flag are checked here, with messages naming the argument, and
the object is then wrapped once, without a copy, as a Numba device array. Under
Numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``) "device" memory is host memory:
the same interface is wrapped as the simulator's array over that memory, so the
checks and kernels run unchanged.

``numba.cuda`` is imported on first use only: host-only programs never load it.
Functions mirror ``_checks.param_array`` / ``_checks.like_param`` so callers pick
one module or the other by the kind of array they were given.
"""

from __future__ import annotations

import ctypes
import os
from typing import Any, NamedTuple

import numpy as np

from ._checks import FLOAT_DTYPES, _name, shape_of


def simulated() -> bool:
    """Numba's CUDA simulator is on (``NUMBA_ENABLE_CUDASIM=1``)."""
    return os.environ.get("NUMBA_ENABLE_CUDASIM", "0") not in ("", "0")


def _cuda():
    from numba import cuda

    return cuda


def _sim_array_type():
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    return FakeCUDAArray


def is_device_array(x) -> bool:
    """``x`` lives in CUDA memory: it exports ``__cuda_array_interface__`` (or is a
    simulator device array)."""
    if isinstance(x, np.ndarray):
        return False
    if hasattr(type(x), "__cuda_array_interface__"):
        # a torch tensor's class has the attribute on any device: its device says
        # (CuPy and Numba arrays live on the GPU whatever their device attribute)
        return getattr(getattr(x, "device", None), "type", "cuda") == "cuda"
    return simulated() and type(x).__name__ == "FakeCUDAArray"


class Info(NamedTuple):
    """What the interface says of one array."""

    ptr: int
    nbytes: int
    shape: tuple[int, ...]
    dtype: np.dtype
    readonly: bool
    contiguous: bool
    device: int | None  # the CUDA device ordinal, where the object says


def info(x, name) -> Info:
    """Read ``x``'s CUDA array interface; TypeError naming ``name`` if it has none."""
    if simulated() and type(x).__name__ == "FakeCUDAArray":
        a = x._ary
        return Info(a.ctypes.data, a.nbytes, a.shape, a.dtype,
                    not a.flags.writeable, a.flags.c_contiguous, 0)
    try:
        cai = x.__cuda_array_interface__
    except AttributeError:
        raise TypeError(f"{_name(name)}: expected a CUDA array (an object with "
                        f"__cuda_array_interface__), got {type(x).__name__}") from None
    except Exception as exc:  # torch: a tensor that requires grad refuses export
        raise TypeError(f"{_name(name)}: its __cuda_array_interface__ failed ({exc}); "
                        "pass tensor.detach(), which shares its memory") from None
    shape = tuple(int(n) for n in cai["shape"])
    dtype = np.dtype(cai["typestr"])
    ptr, readonly = cai["data"]
    size = int(np.prod(shape, dtype=np.int64))
    strides = cai.get("strides")
    contiguous = strides is None or size <= 1 or tuple(strides) == _c_strides(shape,
                                                                            dtype)
    return Info(int(ptr or 0), size * dtype.itemsize, shape, dtype, bool(readonly),
                contiguous, _device_ordinal(x))


def _c_strides(shape, dtype) -> tuple[int, ...]:
    strides, step = [], dtype.itemsize
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _device_ordinal(x) -> int | None:
    device = getattr(x, "device", None)
    if device is not None:
        if getattr(device, "type", None) == "cuda":  # torch
            return device.index
        if isinstance(getattr(device, "id", None), int):  # cupy
            return device.id
    context = getattr(getattr(x, "gpu_data", None), "context", None)  # numba
    return getattr(getattr(context, "device", None), "id", None)


def param_array(x, name: str):
    """A CUDA parameter updated in place: writeable, C-contiguous, float32/float64.
    Returns its flat Numba device array (no copy)."""
    i = info(x, name)
    if i.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype float32 or float64, got {i.dtype}")
    if i.readonly:
        raise ValueError(f"{name}: the array is read-only; an optimizer updates its "
                         "parameters in place")
    if not i.contiguous:
        raise ValueError(f"{name}: expected a C-contiguous array; updating a copy would "
                         "leave yours unchanged, so make it contiguous once and train "
                         "that array")
    return wrap(x, i)


def like_param(x, param, name, param_name, writeable: bool = False,
               shape: tuple | None = None):
    """A CUDA gradient or state array matching ``param`` (a CUDA parameter): same
    shape (``shape`` where given), dtype, layout and device, no overlap. Returns its
    flat device array."""
    p, i = info(param, param_name), info(x, name) if is_device_array(x) else None
    if i is None:
        raise TypeError(f"{_name(name)}: expected a CUDA array like {_name(param_name)}, "
                        f"got {type(x).__name__}; host and device arrays do not mix in "
                        "one step")
    want = p.shape if shape is None else shape
    if i.shape != want:
        raise ValueError(f"{_name(name)}: expected shape {want} "
                         f"({shape_of(_name(param_name), shape, p.shape)}), got "
                         f"{i.shape}")
    if i.dtype != p.dtype:
        raise TypeError(f"{_name(name)}: expected dtype {p.dtype} (that of "
                        f"{_name(param_name)}), got {i.dtype}")
    if not i.contiguous:
        raise ValueError(f"{_name(name)}: expected a C-contiguous array")
    if writeable and i.readonly:
        raise ValueError(f"{_name(name)}: the array is read-only; it is updated in place")
    same_device(i, p, name, param_name)
    return wrap(x, i)


def state_array(x, size: int, dtype: np.dtype, name):
    """A live CUDA state array (see ``_checks.state_array``): ``size`` elements of
    ``dtype``, C-contiguous, writeable. Returns its flat device array (no copy)."""
    i = info(x, name) if is_device_array(x) else None
    if i is None:
        raise TypeError(f"{_name(name)}: expected a CUDA array of state, got "
                        f"{type(x).__name__}")
    if i.dtype != dtype:
        raise TypeError(f"{_name(name)}: expected dtype {dtype} (the state dtype of its "
                        f"parameter), got {i.dtype}")
    if i.nbytes != size * i.dtype.itemsize:
        raise ValueError(f"{_name(name)}: expected {size} elements (those of its "
                         f"parameter), got shape {i.shape}")
    if not i.contiguous:
        raise ValueError(f"{_name(name)}: expected a C-contiguous array")
    if i.readonly:
        raise ValueError(f"{_name(name)}: the array is read-only; state is updated in "
                         "place")
    return wrap(x, i)


def span(x, name) -> tuple[int, int]:
    """The byte range ``[start, stop)`` of a contiguous CUDA array."""
    i = info(x, name)
    return i.ptr, i.ptr + i.nbytes


def same_device(a: Info, b: Info, name, other) -> None:
    if a.device is not None and b.device is not None and a.device != b.device:
        raise ValueError(f"{_name(name)}: on CUDA device {a.device}, but "
                         f"{_name(other)} is on device {b.device}; one step runs on one "
                         "device")


def wrap(x, i: Info):
    """The flat Numba device array over ``x``'s memory; no copy, no synchronisation
    (numba#7706: the interface's stream is the caller's business, see ``stream``)."""
    if simulated():
        if type(x).__name__ == "FakeCUDAArray":
            return x.reshape(-1) if len(i.shape) != 1 else x
        buf = (ctypes.c_char * i.nbytes).from_address(i.ptr) if i.nbytes else b""
        host = np.frombuffer(buf, dtype=i.dtype) if i.nbytes else np.empty(0, i.dtype)
        return _sim_array_type()(host)
    flat = _cuda().as_cuda_array(x, sync=False)
    return flat.reshape(-1) if flat.ndim != 1 else flat


def simulated_view(a: np.ndarray):
    """Under Numba's CUDA simulator, where device memory is host memory: the
    simulator's device array over the host array ``a`` (no copy), so a host buffer
    (a CPU tensor's memory) stands in for a device one in tests."""
    if not simulated():
        raise RuntimeError("simulated_view: only under NUMBA_ENABLE_CUDASIM=1")
    return _sim_array_type()(a)


def on_device(index: int):
    """Numba's current device made CUDA device ``index`` inside (its launches and
    allocations go there; the device a torch tensor lives on need not be current)."""
    return _cuda().gpus[index]


def stream(s):
    """A Numba stream for ``s``: None (the default stream), a Numba stream, a raw
    ``cudaStream_t`` handle (int), or an object carrying one (torch's ``.cuda_stream``,
    CuPy's ``.ptr``)."""
    cuda = _cuda()
    if s is None:
        return cuda.default_stream()
    if type(s).__module__.startswith("numba"):
        return s
    handle = s if isinstance(s, int) else getattr(s, "cuda_stream", getattr(s, "ptr", None))
    if not isinstance(handle, int) or isinstance(handle, bool):
        raise TypeError("stream: expected None, a Numba stream, an int handle or a "
                        f"torch/CuPy stream, got {type(s).__name__}")
    if simulated():
        return cuda.default_stream()  # the simulator runs everything synchronously
    return cuda.external_stream(handle)


def to_host(a) -> np.ndarray:
    return a.copy_to_host()


def to_device(a: np.ndarray):
    return _cuda().to_device(np.ascontiguousarray(a))


def describe() -> dict[str, Any]:
    """The current device's name, for reports."""
    if simulated():
        return {"name": "Numba CUDA simulator (no GPU: timings are meaningless)"}
    device = _cuda().get_current_device()
    name = getattr(device, "name", "CUDA device")
    return {"name": name.decode() if isinstance(name, bytes) else str(name)}
