"""Numba CUDA backend: launches the grid-stride kernels of ``cuda_kernels``.

Same contract as the CPU backends, over flat Numba device arrays (``fusedopt._device``
wraps Numba, CuPy and PyTorch arrays once, without a copy). Hyperparameters are
runtime scalars, so a new lr never recompiles: one specialisation per dtype.

``multi`` steps many tensors in one launch, given by their device addresses (the
multi-tensor path of ``fusedopt.optim`` and ``fusedopt.torch``). Launches go to the
stream set by ``on_stream`` (the optimizer's ``stream=``, torch's current stream),
else the default stream. ``grad_stats`` reads its two numbers back, which waits for that
stream.
"""

from __future__ import annotations

import collections
import contextlib
import math
import threading

import numpy as np
from numba import cuda

from .. import _device, algorithms
from . import template
from .cuda_kernels import (_adafactor_means, _fill, _grad_stats, factored_kernel,
                           kernel, multi_kernel, norms_kernel)

if not cuda.is_available():
    raise ImportError("no CUDA GPU visible to Numba (numba.cuda.is_available() is "
                      "False); NUMBA_ENABLE_CUDASIM=1 runs the kernels on Numba's "
                      "CUDA simulator")

THREADS = 16 if _device.simulated() else 256  # a power of two <= cuda_kernels.MAX_BLOCK
_local = threading.local()


@contextlib.contextmanager
def on_stream(stream):
    """Launch this thread's kernels on ``stream`` (see ``_device.stream``) inside."""
    previous = getattr(_local, "stream", None)
    _local.stream = _device.stream(stream)
    try:
        yield _local.stream
    finally:
        _local.stream = previous


def _stream():
    s = getattr(_local, "stream", None)
    return cuda.default_stream() if s is None else s


def _launch(kernel, n: int):
    """``kernel[blocks, THREADS, stream]``: enough blocks to fill the GPU, and the
    grid-stride loop covers the rest."""
    blocks = max(1, min(math.ceil(n / THREADS), _max_blocks()))
    return kernel[blocks, THREADS, _stream()]


def _max_blocks() -> int:
    if _device.simulated():
        return 2  # two blocks: the grid-stride loop runs, and Python threads stay few
    device = cuda.get_current_device()
    return 32 * device.MULTIPROCESSOR_COUNT


# -- the backend contract: flat device arrays, raw hyperparameters ------------------

def _call(name, flags, states, h, param, grad, grad_scale, seed=0, out=None):
    """One launch over ``param``: ``states`` holds one array or None per slot
    (``seed`` and ``out`` are for bf16 parameters, which this backend refuses)."""
    pad = (None,) * (template.MAX_SLOTS - len(states))
    _launch(kernel(name, flags, len(states)), param.size)(param, grad, h, grad_scale,
                                                         *states, *pad)


#: elements per piece of a multi-tensor launch (a block's work at a time; as torch's
#: multi-tensor apply); small under the simulator, so tests cut tensors into pieces
CHUNK = 64 if _device.simulated() else 65536
#: the device copies of recent multi-tensor tables, by device, stream and contents
#: (addresses and sizes): a step whose tensors have not moved uploads nothing
_TABLES: collections.OrderedDict = collections.OrderedDict()
_TABLES_KEPT = 256  # launches per step this many and more re-upload each step
_tables_lock = threading.Lock()
_PROTOTYPES: dict = {}


def multi(name, flags, present, h, dtypes, table, counts, seeds, grad_scale, parallel):
    """One launch over every tensor of ``table`` (``cuda_kernels._multi_template``;
    the contract of ``numba_cpu.multi``): rows of device addresses of each tensor's
    parameter, gradient and slots, checked by the caller, which keeps the tensors
    alive. ``dtypes``: the NumPy dtypes of (parameter, gradient, state); ``seeds``
    and ``parallel`` are the host backends' (bf16 parameters are refused here)."""
    if name in algorithms.PER_TENSOR:
        raise ValueError(f"multi: {name} steps tensor by tensor and has no multi-tensor "
                         "call")
    if np.dtype(dtypes[1]) != np.dtype(dtypes[0]) or np.dtype(dtypes[0]) == np.uint16:
        raise TypeError(f"multi: expected float32/float64 parameters and gradients of "
                        f"their dtype, got {dtypes[:2]}")
    table = np.ascontiguousarray(table, dtype=np.int64)
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    if table.shape != (counts.size, template.TABLE_COLUMNS):
        raise ValueError(f"multi: expected a table of {counts.size} rows of "
                         f"{template.TABLE_COLUMNS} addresses, got {table.shape}")
    device_table, device_counts, chunks = _tables(table, counts)
    if chunks.shape[0] == 0:
        return  # no elements
    pp, sp = _prototype(dtypes[0]), _prototype(dtypes[2])
    states = [sp if x else None for x in present]
    states += [None] * (template.MAX_SLOTS - len(states))
    blocks = max(1, min(chunks.shape[0], _max_blocks()))
    multi_kernel(name, flags, len(present))[blocks, THREADS, _stream()](
        device_table, device_counts, chunks, CHUNK, h, grad_scale, pp, *states)


def _tables(table: np.ndarray, counts: np.ndarray) -> tuple:
    """The device copies of ``table`` and ``counts`` and the pieces ``(t, lo)`` of
    ``CHUNK`` elements they cut into: uploaded on the launch's stream (which then
    waits for the copy), or reused where these very contents were uploaded before."""
    key = (_where(), table.tobytes(), counts.tobytes())
    with _tables_lock:
        found = _TABLES.get(key)
        if found is not None:
            _TABLES.move_to_end(key)
            return found
    pieces = (counts + CHUNK - 1) // CHUNK
    first = np.cumsum(pieces) - pieces
    owner = np.repeat(np.arange(counts.size, dtype=np.int64), pieces)
    lo = (np.arange(owner.size, dtype=np.int64) - first[owner]) * CHUNK
    s = _stream()
    found = tuple(cuda.to_device(np.ascontiguousarray(a), stream=s)
                  for a in (table, counts, np.stack([owner, lo], axis=1)))
    # complete before the host arrays go and before anything may free it (an
    # evicted table): once per set of addresses, not per step
    s.synchronize()
    with _tables_lock:
        _TABLES[key] = found
        while len(_TABLES) > _TABLES_KEPT:
            _TABLES.popitem(last=False)
    return found


def _where() -> tuple[int, int]:
    """The current device and the launch stream's handle (0, 0 under the
    simulator)."""
    if _device.simulated():
        return 0, 0
    handle = _stream().handle
    return cuda.get_current_device().id, int(getattr(handle, "value", handle) or 0)


def _prototype(dtype):
    """A zero-size array of ``dtype`` on the current device: what a multi-tensor
    kernel is typed by."""
    key = (_where()[0], np.dtype(dtype))
    a = _PROTOTYPES.get(key)
    if a is None:
        a = _PROTOTYPES[key] = cuda.device_array(0, dtype=key[1])
    return a


def _two_sums(launch) -> tuple[float, float]:
    """The two float64 sums a reduction kernel adds into its ``out``: ``launch(out)``
    launches it on a zeroed pair, which is then read back (waiting for the stream)."""
    s = _stream()
    out = cuda.to_device(np.zeros(2, dtype=np.float64), stream=s)
    launch(out)
    a, b = out.copy_to_host(stream=s)
    s.synchronize()
    return float(a), float(b)


def _norms(name, flags, states, h, param, grad, grad_scale):
    """The reduction pass of ``rules.<name>_norms`` over ``param`` (``Spec.norms``):
    its two sums of squares, read back to the host (which waits for the stream)."""
    pad = (None,) * (template.MAX_SLOTS - len(states))
    return _two_sums(lambda out: _launch(norms_kernel(name, flags, len(states)),
                                         param.size)(param, grad, h, grad_scale, out,
                                                     *states, *pad))


# the backend contract: one function per algorithm, each built from its spec
globals().update({spec.name: algorithms.contract(spec, _call, _norms)
                  for spec in algorithms.SPECS})


class DeviceFactors:
    """Adafactor's factored stage on device arrays (``algorithms.HostFactors``'s
    twin): the row and column means reduced on the device, read back with the
    factors (``n + m`` numbers per matrix: the step waits for the stream, as the
    norms pass does), lerped on the host as on every backend, then the norms and
    update passes with the estimate made per element from the factors."""

    @staticmethod
    def means(grad, n: int, m: int, scale2: float):
        s = _stream()
        rows, parts = (cuda.device_array(a.shape, dtype=np.float64, stream=s)
                       for a in algorithms.HostFactors.sums_arrays(grad, n, m))
        _launch(_adafactor_means, max(rows.size * THREADS, parts.size))(
            grad, n, m, parts.shape[0] // (grad.size // (n * m)), rows, parts.reshape(-1))
        host = rows.copy_to_host(stream=s), parts.copy_to_host(stream=s)
        s.synchronize()
        return algorithms.HostFactors.from_sums(*host, grad, n, m, scale2)

    @staticmethod
    def read(state):
        s = _stream()
        out = state.copy_to_host(stream=s)
        s.synchronize()
        return out

    @staticmethod
    def prepare(r, c, denom) -> tuple:
        s = _stream()
        return (*(cuda.to_device(np.ascontiguousarray(x), stream=s)
                  for x in algorithms.HostFactors.roots(r, c, denom)),
                r.shape[1], c.shape[1])

    @staticmethod
    def norms(flags, h, param, grad, factors, grad_scale):
        return _two_sums(lambda out: _launch(factored_kernel(True, flags), param.size)(
            param, grad, *factors, h, grad_scale, out))

    @staticmethod
    def update(flags, h, param, grad, factors, grad_scale, seed=0, out=None):
        _launch(factored_kernel(False, flags), param.size)(
            param, grad, *factors, h, grad_scale, None)

    @staticmethod
    def write(state, value) -> None:
        state.copy_to_device(np.ascontiguousarray(value).reshape(-1), stream=_stream())


adafactor = algorithms.adafactor_contract(globals()["adafactor_update"], DeviceFactors)


def muon(param, *args, **kwargs):
    """Muon's Newton-Schulz stage needs a matrix product on the device, which this
    backend takes from torch: through ``fusedopt.torch.Muon`` only."""
    raise TypeError("muon: CUDA arrays; Muon's Newton-Schulz stage needs the device's "
                    "matrix products, which fusedopt takes from torch: step CUDA "
                    "tensors with fusedopt.torch.Muon")


#: Muon's momentum pass and SGD's step around a device Newton-Schulz stage
#: (``algorithms.muon_contract``; ``fusedopt.torch`` supplies the stage)
MUON_PASSES = (globals()["muon_momentum"], globals()["sgd"])


def copy(dst, src) -> None:
    """``dst[...] = src`` between device arrays of one size, on the launch stream."""
    dst.copy_to_device(src, stream=_stream())


def grad_stats(grad, parallel=True):
    sumsq, bad = _two_sums(lambda out: _launch(_grad_stats, grad.size)(grad, out))
    return sumsq, int(bad)


#: bf16 storage (uint16 bits) for state beside float32 parameters (``lowbit``)
BF16 = ("state",)


def full_like(a, value: float, dtype=None, shape=None):
    """A new device array of ``a``'s shape (or ``shape``) and ``dtype`` (default:
    ``a``'s; uint16 holds bf16 bits), filled with ``value`` on the device: new state.
    The host twin is ``_checks.full_like``."""
    out = cuda.device_array(a.shape if shape is None else shape,
                            dtype=a.dtype if dtype is None else dtype)
    _launch(_fill, out.size)(out, float(value))
    return out

