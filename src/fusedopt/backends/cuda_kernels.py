"""CUDA kernels of the ``cuda`` backend: grid-stride loops over the rules.

Importable without a GPU (``tests/test_cuda.py`` compiles them to PTX to check the
types); ``numba_cuda`` launches them. Every kernel casts its scalars to the array
dtype first, so a float32 kernel stays float32. State goes through ``lowbit.load``
and ``store``, so it may be bf16 bits (uint16) beside float32 parameters.
"""

from __future__ import annotations

import ctypes
import math

import numpy as np
from numba import cuda
from numba.core import types
from numba.extending import overload

from .. import _device, rules
from .policy import MEANS_ROWS
from ..lowbit import store
from ..rules import cast_all, cast_like
from . import jitcache, template

_jit = jitcache.jit(cuda.jit(cache=not _device.simulated()))


@_jit
def _fill(a, value):
    value = cast_like(value, a)
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        store(a, i, value)


def _template(rule, flags: tuple[bool, ...], slots: int):
    """The grid-stride twin of ``numba_cpu._template``: ``template.element`` (``rule``
    with its options ``flags`` frozen) over each element of ``p``, with its state
    slots ``s0..s3`` (None where absent or beyond ``slots``) and its per-step host
    scalars ``h``. Parameters are float32 or float64 here (bf16 state only)."""
    step = template.element(rule, flags, slots)

    def kernel(p, g, h, grad_scale, s0, s1, s2, s3):
        h, grad_scale, zero = cast_all(h, p), cast_like(grad_scale, p), cast_like(0.0, p)
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            step(p, g, i, h, grad_scale, zero, 0, None, s0, s1, s2, s3)
    return kernel


def _compiled(cache: dict, key: tuple, make):
    """``cache[key]``: the kernel ``make()`` returns, compiled on first use."""
    k = cache.get(key)
    if k is None:
        k = cache[key] = _jit(make())
    return k


#: compiled kernels, by ``(name, flags, slots)``; see ``kernel``
KERNELS: dict[tuple, object] = {}


def kernel(name: str, flags: tuple[bool, ...], slots: int):
    """The CUDA kernel of ``rules.<name>`` with these options (one per combination in
    use; NumPy bools find the same entry)."""
    return _compiled(KERNELS, (name, flags, slots), lambda: _template(
        getattr(rules, name), tuple(map(bool, flags)), slots))


def pointer_at(address, n, like):
    """The ``n`` elements of ``like``'s dtype at ``address``, for a kernel to index
    (``p[i]``): None where ``like`` is None (an absent slot, chosen by type at compile
    time). Compiled, a raw pointer (``template._pointer``; ``n`` unused); this body
    runs under Numba's CUDA simulator, where device memory is host memory: a NumPy
    view of it. The addresses are of tensors the caller has checked (dtype, size,
    dense, device, no overlap) and keeps alive until the launch is done."""
    if like is None:
        return None
    dtype = np.dtype(like.dtype)
    if n == 0:
        return np.empty(0, dtype)
    return np.frombuffer((ctypes.c_char * (int(n) * dtype.itemsize)).from_address(
        int(address)), dtype)


@overload(pointer_at, target="generic")
def _pointer_at_impl(address, n, like):
    if isinstance(like, (types.NoneType, types.Omitted)):
        return lambda address, n, like: None
    return lambda address, n, like: template._pointer(address, like)


def _multi_template(rule, flags: tuple[bool, ...], slots: int):
    """``_template`` over many tensors in one launch (torch's and apex's multi-tensor
    apply): row ``t`` of ``table`` holds the device addresses of tensor ``t``'s
    parameter, gradient and slots (``template.TABLE_COLUMNS``; 0: absent), ``counts[t]``
    its elements; ``chunks`` rows ``(t, lo)`` cut every tensor into pieces of at most
    ``chunk`` elements, and each block takes pieces in turn (a grid-stride loop over
    them), its threads striding through one. ``pp`` and ``s0..s3`` are zero-size
    device arrays of the parameter's (and gradient's) and the slots' dtypes (None
    where a slot is absent): the types, and so the specialisation. Same body per
    element as ``_template``."""
    step = template.element(rule, flags, slots)

    def kernel(table, counts, chunks, chunk, h, grad_scale, pp, s0, s1, s2, s3):
        h, grad_scale, zero = cast_all(h, pp), cast_like(grad_scale, pp), cast_like(0.0, pp)
        for k in range(cuda.blockIdx.x, chunks.shape[0], cuda.gridDim.x):
            t, lo = chunks[k, 0], chunks[k, 1]
            m = counts[t]
            p, g = pointer_at(table[t, 0], m, pp), pointer_at(table[t, 1], m, pp)
            a0, a1 = pointer_at(table[t, 2], m, s0), pointer_at(table[t, 3], m, s1)
            a2, a3 = pointer_at(table[t, 4], m, s2), pointer_at(table[t, 5], m, s3)
            for i in range(lo + cuda.threadIdx.x, min(lo + chunk, m), cuda.blockDim.x):
                step(p, g, i, h, grad_scale, zero, 0, None, a0, a1, a2, a3)
    return kernel


#: compiled multi-tensor kernels, by ``(name, flags, slots)``; see ``multi_kernel``
MULTI_KERNELS: dict[tuple, object] = {}


def multi_kernel(name: str, flags: tuple[bool, ...], slots: int):
    """The CUDA multi-tensor kernel of ``rules.<name>`` with these options."""
    key = (name, tuple(map(bool, flags)), slots)
    return _compiled(MULTI_KERNELS, key, lambda: _multi_template(
        getattr(rules, name), key[1], slots))


@_jit
def _grad_stats(g, out):
    # out[0] += sum of squares (float64), out[1] += count of non-finite elements;
    # one atomic pair per thread after its grid-stride partial sums
    sumsq, bad = 0.0, 0.0
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        x = np.float64(g[i])
        sumsq += x * x
        if not (abs(x) <= 1.7976931348623157e308):
            bad += 1.0
    cuda.atomic.add(out, 0, sumsq)
    cuda.atomic.add(out, 1, bad)




#: the most threads per block a reduction kernel is launched with (a power of two)
MAX_BLOCK = 256


@jitcache.jit(cuda.jit(device=True, cache=not _device.simulated()))
def _add_block_sums(sa, sb, out):
    # out[0] and out[1] (float64) gain the block's threads' sa and sb: a tree in
    # shared memory (blocks of a power of two threads, at most MAX_BLOCK), then one
    # atomic pair per block; every thread of the block calls it
    ta = cuda.shared.array(MAX_BLOCK, np.float64)
    tb = cuda.shared.array(MAX_BLOCK, np.float64)
    t = cuda.threadIdx.x
    ta[t], tb[t] = sa, sb
    cuda.syncthreads()
    half = cuda.blockDim.x // 2
    while half > 0:
        if t < half:
            ta[t] += ta[t + half]
            tb[t] += tb[t + half]
        cuda.syncthreads()
        half //= 2
    if t == 0:
        cuda.atomic.add(out, 0, ta[0])
        cuda.atomic.add(out, 1, tb[0])


@_jit
def _adafactor_means(g, n, m, per, rows, parts):
    # Adafactor's factored stage (numba_cuda.DeviceFactors), the sums its host twin
    # (algorithms.HostFactors.sums_arrays) takes: g flat, batch x n x m; rows[k] =
    # sum_j g[k, j]**2 (a row per block: its threads read the row together and sum
    # as a tree in shared memory); parts[q, j] = the sum of g[i, j]**2 over block q
    # of MEANS_ROWS rows of one matrix (per blocks per matrix; a (block, column) per
    # thread: neighbouring threads read neighbouring elements); float64
    t, width = cuda.threadIdx.x, cuda.blockDim.x
    part = cuda.shared.array(MAX_BLOCK, np.float64)
    for k in range(cuda.blockIdx.x, rows.size, cuda.gridDim.x):
        s = 0.0
        for j in range(t, m, width):
            x = np.float64(g[k * m + j])
            s += x * x
        part[t] = s
        cuda.syncthreads()
        half = width // 2
        while half > 0:
            if t < half:
                part[t] += part[t + half]
            cuda.syncthreads()
            half //= 2
        if t == 0:
            rows[k] = part[0]
        cuda.syncthreads()
    for k in range(cuda.grid(1), parts.size, cuda.gridsize(1)):
        q, j = k // m, k % m
        b, first = q // per, (q % per) * MEANS_ROWS
        s = 0.0
        for i in range(b * n + first, b * n + min(n, first + MEANS_ROWS)):
            x = np.float64(g[i * m + j])
            s += x * x
        parts[k] = s


def _factored_template(rule, flags: tuple[bool, ...], reduce: bool):
    """The grid-stride twin of ``numba_cpu._factored_template``: Adafactor's passes
    over a batch of ``n x m`` matrices with the estimate's reciprocal root made per
    element from the prepared factors (``rules.adafactor_root``); ``reduce``:
    ``out[0]`` and ``out[1]`` gain the float64 sums of squares of
    ``rules.adafactor_update_norms``'s two values (as ``_norms_template``: threads,
    then a tree per block, then one atomic pair per block), else
    ``rules.adafactor_update`` updates ``p``."""
    sources = template.SOURCES

    def kernel(p, g, a, s, c, t, n, m, h, grad_scale, out):
        sources  # noqa: B018 - in the closure: the cache key (see template.SOURCES)
        h, grad_scale = cast_all(h, p), cast_like(grad_scale, p)
        floor = h[1] / math.sqrt(h[2])  # 1 / sqrt(eps1**2), in p's dtype
        sa, sb = 0.0, 0.0
        for k in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            i = k // m
            j = (i // n) * m + k - i * m
            v = rules.adafactor_root(a[i], c[j], s[i], t[j], h[2], floor)
            new = rule(p[k], g[k], v, *h, *flags, grad_scale)
            if reduce:
                x, y = np.float64(new[0]), np.float64(new[1])
                sa += x * x
                sb += y * y
            else:
                p[k] = new[0]
        if reduce:
            _add_block_sums(sa, sb, out)
    return kernel


#: Adafactor's factored passes, by ``(reduce, flags)``; see ``factored_kernel``
FACTORED: dict[tuple, object] = {}


def factored_kernel(reduce: bool, flags: tuple[bool, ...]):
    """The CUDA kernel of Adafactor's factored norms (``reduce``) or update pass."""
    key = (bool(reduce), tuple(map(bool, flags)))
    return _compiled(FACTORED, key, lambda: _factored_template(
        rules.adafactor_update_norms if key[0] else rules.adafactor_update, key[1],
        key[0]))


def _norms_template(rule, flags: tuple[bool, ...], slots: int):
    """The grid-stride twin of ``numba_cpu._norms_template``: ``out[0]`` and
    ``out[1]`` (float64) gain the sums of squares of the two values ``rule`` gives
    per element; reads only. Each thread sums its elements, each block its threads'
    sums (a tree in shared memory; blocks of a power of two threads, at most
    ``MAX_BLOCK``), then one atomic pair per block: the sums' order across blocks,
    and so their last bits, depend on the launch."""
    pair = template.terms(rule, flags, slots)

    def kernel(p, g, h, grad_scale, out, s0, s1, s2, s3):
        h, grad_scale, zero = cast_all(h, p), cast_like(grad_scale, p), cast_like(0.0, p)
        sa, sb = 0.0, 0.0
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            a, b = pair(p, g, i, h, grad_scale, zero, s0, s1, s2, s3)
            x, y = np.float64(a), np.float64(b)
            sa += x * x
            sb += y * y
        _add_block_sums(sa, sb, out)
    return kernel


#: compiled reduction passes, by ``(name, flags, slots)``; see ``norms_kernel``
NORMS: dict[tuple, object] = {}


def norms_kernel(name: str, flags: tuple[bool, ...], slots: int):
    """The CUDA reduction pass of ``rules.<name>_norms`` (``Spec.norms``)."""
    key = (name, tuple(map(bool, flags)), slots)
    return _compiled(NORMS, key, lambda: _norms_template(
        getattr(rules, name + "_norms"), key[1], slots))
