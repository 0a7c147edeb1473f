"""bfloat16 storage for the Numba CPU kernels: loads, rounding stores, and the
counter-based random bits of stochastic rounding.

bf16 arrays reach the kernels as ``uint16`` views of their bits (Numba has no bf16
type); every kernel reads elements through ``load`` and writes them through ``store``
(state: round to nearest even) or ``store_param`` (parameters: stochastic rounding).
On float32/float64 arrays all three are plain element access, so one kernel source
serves every storage type, and the math always runs in float32 or wider.

Stochastic rounding adds 16 random bits below the bf16 mantissa, then truncates: a
value a fraction f of the way from one bf16 neighbour to the next rounds up with
probability f, so the rounded update is unbiased. The bits are a hash of the step's
seed and the element's index (``hash32``): reproducible for a seed and independent
of thread count or chunking (``scalars.rounding_seed`` derives the step's seed).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic, overload, register_jitable

BF16_NAN = np.uint16(0x7FC0)


@intrinsic
def _f32_bits(typingctx, x):
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(32))

    return types.uint32(types.float32), codegen


@intrinsic
def _bits_f32(typingctx, x):
    """The float32 whose bits are the low 32 bits of the integer ``x``."""
    if not isinstance(x, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        low = args[0]
        if x.bitwidth > 32:
            low = builder.trunc(low, ir.IntType(32))
        elif x.bitwidth < 32:
            low = builder.zext(low, ir.IntType(32))
        return builder.bitcast(low, ir.FloatType())

    return types.float32(x), codegen


@register_jitable
def bf16_to_f32(h):
    """Exact: a bf16 is the top half of a float32."""
    return _bits_f32(np.uint32(h) << np.uint32(16))


@register_jitable
def f32_to_bf16(x):
    """Round to nearest, ties to even; NaN stays a (quiet) NaN."""
    bits = _f32_bits(x)
    if x != x:
        return np.uint16((bits >> np.uint32(16)) | np.uint32(0x0040))
    bias = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return np.uint16((bits + bias) >> np.uint32(16))


@register_jitable
def hash32(seed, i):
    """A well-mixed 32-bit hash of (seed, i) (the "lowbias32" finaliser)."""
    x = np.uint32(seed) ^ (np.uint32(i & 0xFFFFFFFF) * np.uint32(0x9E3779B9))
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


@register_jitable
def f32_to_bf16_stochastic(x, seed, i):
    """Round up with probability equal to the discarded fraction."""
    bits = _f32_bits(x)
    if x != x:
        return np.uint16((bits >> np.uint32(16)) | np.uint32(0x0040))
    noise = hash32(seed, i) & np.uint32(0xFFFF)
    return np.uint16((bits + noise) >> np.uint32(16))


def load(a, i):
    """Element ``i`` of ``a`` in compute precision (bf16 bits -> float32)."""
    return a[i]


@overload(load)
def _load_impl(a, i):
    if a.dtype == types.uint16:
        return lambda a, i: bf16_to_f32(a[i])
    return lambda a, i: a[i]


def store(a, i, x):
    """``a[i] = x``, rounding to nearest even into bf16 storage."""
    a[i] = x


@overload(store)
def _store_impl(a, i, x):
    if a.dtype == types.uint16:
        def impl(a, i, x):
            a[i] = f32_to_bf16(x)
        return impl

    def impl(a, i, x):
        a[i] = x
    return impl


def store_param(a, i, x, seed):
    """``a[i] = x``, rounding stochastically into bf16 storage."""
    a[i] = x


@overload(store_param)
def _store_param_impl(a, i, x, seed):
    if a.dtype == types.uint16:
        def impl(a, i, x, seed):
            a[i] = f32_to_bf16_stochastic(x, seed, i)
        return impl

    def impl(a, i, x, seed):
        a[i] = x
    return impl

