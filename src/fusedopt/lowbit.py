"""bfloat16 storage for the Numba CPU kernels: loads, rounding stores, and the
counter-based random bits of stochastic rounding.

bf16 arrays reach the kernels as ``uint16`` views of their bits (Numba has no bf16
type); every kernel reads elements through ``load`` and writes them through ``store``
(state: round to nearest even) or ``store_param`` (parameters: stochastic rounding,
or a float32 master copy and its bf16 image rounded to nearest even).
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


def _i32(builder, value, ty):
    """``value`` of integer type ``ty`` as an LLVM i32 (truncated or zero-extended)."""
    if ty.bitwidth > 32:
        return builder.trunc(value, ir.IntType(32))
    if ty.bitwidth < 32:
        return builder.zext(value, ir.IntType(32))
    return value


# Numba widens integer arithmetic to 64 bits, and LLVM does not narrow a multiply
# back: a 64-bit vector multiply has no AVX2 instruction (measured: the hash alone
# 2.5x an Adam step). The hash's steps are therefore written as 32-bit intrinsics.

@intrinsic
def _mul32(typingctx, a, b):
    """``(a * b) mod 2**32`` as uint32, one 32-bit multiply."""
    if not (isinstance(a, types.Integer) and isinstance(b, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return builder.mul(_i32(builder, args[0], a), _i32(builder, args[1], b))

    return types.uint32(a, b), codegen


@intrinsic
def _xorshift32(typingctx, x, k):
    """``x ^ (x >> k)`` on the low 32 bits of ``x``, as uint32 (``k`` a constant)."""
    if not (isinstance(x, types.Integer) and isinstance(k, types.IntegerLiteral)):
        return None
    shift = k.literal_value

    def codegen(context, builder, signature, args):
        v = _i32(builder, args[0], x)
        return builder.xor(v, builder.lshr(v, ir.Constant(ir.IntType(32), shift)))

    return types.uint32(x, k), codegen


@intrinsic
def _xor32(typingctx, a, b):
    if not (isinstance(a, types.Integer) and isinstance(b, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        return builder.xor(_i32(builder, args[0], a), _i32(builder, args[1], b))

    return types.uint32(a, b), codegen


@register_jitable
def bf16_to_f32(h):
    """Exact: a bf16 is the top half of a float32."""
    return _bits_f32(np.uint32(np.uint32(h) << 16))


@register_jitable
def f32_to_bf16(x):
    """Round to nearest, ties to even; NaN stays a (quiet) NaN. Branch-free, and the
    NaN select is made on the 32-bit words, so one shift and one narrowing follow
    (selecting after narrowing both measured 1.2x slower in an Adam step)."""
    bits = _f32_bits(x)
    rounded = np.uint32(bits + np.uint32(0x7FFF) + ((bits >> 16) & np.uint32(1)))
    quiet = np.uint32(bits | np.uint32(0x400000))
    return np.uint16((quiet if x != x else rounded) >> 16)


@register_jitable
def hash32(seed, i):
    """A well-mixed 32-bit hash of (seed, i) (the "lowbias32" finaliser)."""
    x = _xor32(seed, _mul32(i, 0x9E3779B9))
    x = _mul32(_xorshift32(x, 16), 0x7FEB352D)
    x = _mul32(_xorshift32(x, 15), 0x846CA68B)
    return _xorshift32(x, 16)


@register_jitable
def f32_to_bf16_stochastic(x, seed, i):
    """Round up with probability equal to the discarded fraction. Branch-free."""
    bits = _f32_bits(x)
    noise = np.uint32(hash32(seed, i) & 0xFFFF)
    rounded = np.uint16(np.uint32(bits + noise) >> 16)  # no carry out: bits < 0xFF81
    quiet = np.uint16((bits >> 16) | 0x40)
    return quiet if x != x else rounded


# load and store also run as plain Python under Numba's CUDA simulator: their bodies
# convert with ml_dtypes (round to nearest even too), compiled code uses the overloads.

def load(a, i):
    """Element ``i`` of ``a`` in compute precision (bf16 bits -> float32)."""
    if a.dtype == np.uint16:
        return np.array(a[i], np.uint16).view(_bf16()).astype(np.float32)[()]
    return a[i]


@overload(load, target="generic")
def _load_impl(a, i):
    if a.dtype == types.uint16:
        return lambda a, i: bf16_to_f32(a[i])
    return lambda a, i: a[i]


def load_or(a, i, default):
    """``load(a, i)``, or ``default`` where ``a`` is None (an absent state slot: the
    choice is made by type, at compile time, so the loop holds no branch for it)."""
    return default if a is None else load(a, i)


@overload(load_or, target="generic")
def _load_or_impl(a, i, default):
    if isinstance(a, (types.NoneType, types.Omitted)):
        return lambda a, i, default: default
    return lambda a, i, default: load(a, i)


def store_if(a, i, x):
    """``store(a, i, x)``, or nothing where ``a`` is None (an absent state slot)."""
    if a is not None:
        store(a, i, x)


@overload(store_if, target="generic")
def _store_if_impl(a, i, x):
    if isinstance(a, (types.NoneType, types.Omitted)):
        return lambda a, i, x: None
    return lambda a, i, x: store(a, i, x)


def store(a, i, x):
    """``a[i] = x``, rounding to nearest even into bf16 storage."""
    if a.dtype == np.uint16:
        x = np.array(x, np.float32).astype(_bf16()).view(np.uint16)[()]
    a[i] = x


def _bf16():
    from ml_dtypes import bfloat16
    return bfloat16


@overload(store, target="generic")
def _store_impl(a, i, x):
    if a.dtype == types.uint16:
        def impl(a, i, x):
            a[i] = f32_to_bf16(x)
        return impl

    def impl(a, i, x):
        a[i] = x
    return impl


def store_param(a, i, x, seed, out):
    """``a[i] = x``, rounding stochastically into bf16 storage; with master weights
    (``a`` the float32 master, ``out`` the user's bf16 parameter, else None) also
    ``out[i] = x`` rounded to nearest even."""
    a[i] = x
    if out is not None:
        out[i] = x


@overload(store_param, target="generic")
def _store_param_impl(a, i, x, seed, out):
    if a.dtype == types.uint16:
        def write(a, i, x, seed):
            a[i] = f32_to_bf16_stochastic(x, seed, i)
    else:
        def write(a, i, x, seed):
            a[i] = x
    write = register_jitable(write)
    if isinstance(out, types.NoneType):
        return lambda a, i, x, seed, out: write(a, i, x, seed)

    def impl(a, i, x, seed, out):
        write(a, i, x, seed)
        out[i] = f32_to_bf16(x)
    return impl
