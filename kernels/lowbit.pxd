# cython: language_level=3
"""The Cython mirror of src/fusedopt/lowbit.py for state: bf16 storage as uint16
bits, loaded into float32 exactly and stored rounded to nearest even (NaN stays a
quiet NaN), with the same operations. ``load``/``store`` are plain element access on
float32/float64 state, so one span source serves every state type."""

from cython cimport floating
from libc.stdint cimport uint16_t, uint32_t
from libc.string cimport memcpy

ctypedef fused state_t:
    float
    double
    uint16_t


cdef inline float bf16_to_f32(uint16_t h) noexcept nogil:
    """Exact: a bf16 is the top half of a float32."""
    cdef uint32_t bits = (<uint32_t>h) << 16
    cdef float x
    memcpy(&x, &bits, 4)
    return x


cdef inline uint16_t f32_to_bf16(float x) noexcept nogil:
    """Round to nearest, ties to even; the NaN select on the 32-bit words."""
    cdef uint32_t bits
    memcpy(&bits, &x, 4)
    cdef uint32_t rounded = bits + <uint32_t>0x7FFF + ((bits >> 16) & <uint32_t>1)
    cdef uint32_t quiet = bits | <uint32_t>0x400000
    return <uint16_t>((quiet if x != x else rounded) >> 16)


cdef inline floating load(state_t* a, Py_ssize_t i, floating like) noexcept nogil:
    """Element ``i`` of ``a`` in the compute type (that of ``like``)."""
    if state_t is uint16_t:
        return bf16_to_f32(a[i])
    else:
        return a[i]


cdef inline void store(state_t* a, Py_ssize_t i, floating x) noexcept nogil:
    """``a[i] = x``, rounding to nearest even into bf16 storage."""
    if state_t is uint16_t:
        a[i] = f32_to_bf16(<float>x)
    else:
        a[i] = <state_t>x


# -- bf16 parameters: stochastic rounding, and the blocks the kernels step them in --

cdef inline uint32_t hash32(uint32_t seed, uint32_t i) noexcept nogil:
    """A well-mixed 32-bit hash of (seed, i) (the "lowbias32" finaliser)."""
    cdef uint32_t x = seed ^ (i * <uint32_t>0x9E3779B9)
    x = (x ^ (x >> 16)) * <uint32_t>0x7FEB352D
    x = (x ^ (x >> 15)) * <uint32_t>0x846CA68B
    return x ^ (x >> 16)


cdef inline uint16_t f32_to_bf16_stochastic(float x, uint32_t seed,
                                            uint32_t i) noexcept nogil:
    """Round up with probability equal to the discarded fraction."""
    cdef uint32_t bits
    memcpy(&bits, &x, 4)
    cdef uint32_t rounded = (bits + (hash32(seed, i) & <uint32_t>0xFFFF)) >> 16
    cdef uint32_t quiet = (bits >> 16) | <uint32_t>0x40
    return <uint16_t>(quiet if x != x else rounded)


cdef struct Lowbit:
    # bf16 parameters, stepped in blocks of float32 scratch: ``p16`` (the parameter,
    # stochastic rounding with ``seed``) or ``out`` (its image, rounded to nearest,
    # when the float32 parameter handed to the kernel is a master copy); ``g16`` the
    # bf16 gradient. NULL when unused.
    uint16_t* p16
    uint16_t* g16
    uint16_t* out
    uint32_t seed


cdef enum:
    BLOCK = 2048  # elements per scratch block: 8 KiB per array, in L1


cdef inline void widen(uint16_t* src, float* dst, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        dst[i] = bf16_to_f32(src[i])


cdef inline float* block_begin(Lowbit* lb, float* p, Py_ssize_t a, Py_ssize_t k,
                               float* sp, float* sg) noexcept nogil:
    """Widen the gradient (and a bf16 parameter) of ``[a, a + k)`` into ``sg`` (and
    ``sp``); returns the float32 parameter block the rule updates."""
    widen(lb.g16 + a, sg, k)
    if lb.p16 != NULL:
        widen(lb.p16 + a, sp, k)
        return sp
    return p + a


cdef inline void block_end(Lowbit* lb, float* p, Py_ssize_t a, Py_ssize_t k,
                           float* sp) noexcept nogil:
    """Store the updated block: stochastic rounding into a bf16 parameter, or the
    master copy's nearest bf16 into ``out``."""
    cdef Py_ssize_t i
    if lb.p16 != NULL:
        for i in range(k):
            lb.p16[a + i] = f32_to_bf16_stochastic(sp[i], lb.seed, <uint32_t>(a + i))
    else:
        for i in range(k):
            lb.out[a + i] = f32_to_bf16(p[a + i])
