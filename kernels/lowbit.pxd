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
