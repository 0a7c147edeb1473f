# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The C half of ``fusedopt._guard`` (which has a pure-Python twin of both functions
for installs without the compiled modules): the byte range of NumPy arrays, and the
first two intersecting ranges of a list. A step calls both on every array it will
touch, so they must cost nanoseconds per array: reading an address from Python
(``a.__array_interface__``, ``a.ctypes.data``) costs 1.5-1.8 us, here ~20 ns."""

cimport numpy as cnp
from libc.stdlib cimport free, malloc, qsort

cnp.import_array()


ctypedef struct Span:
    size_t start
    size_t stop
    Py_ssize_t index


cdef int _by_start(const void* a, const void* b) noexcept nogil:
    cdef size_t x = (<const Span*>a).start, y = (<const Span*>b).start
    return (x > y) - (x < y)


def bounds(list arrays, list starts, list stops):
    """Append each ndarray's byte range ``[start, stop)`` (every byte an element of it
    may occupy, whatever its strides; empty for a size-0 array) to the two lists."""
    cdef cnp.ndarray a
    cdef size_t lo, hi
    cdef Py_ssize_t d, extent
    for obj in arrays:
        a = <cnp.ndarray?>obj
        lo = hi = <size_t>cnp.PyArray_DATA(a)
        if cnp.PyArray_SIZE(a) > 0:
            hi += <size_t>cnp.PyArray_ITEMSIZE(a)
            for d in range(cnp.PyArray_NDIM(a)):
                extent = (cnp.PyArray_DIM(a, d) - 1) * cnp.PyArray_STRIDE(a, d)
                if extent < 0:
                    lo += extent
                else:
                    hi += extent
        starts.append(lo)
        stops.append(hi)


def overlap(list arrays):
    """``first_overlap`` over the byte ranges of the ndarrays ``arrays`` (``bounds``),
    in one call."""
    cdef list starts = [], stops = []
    bounds(arrays, starts, stops)
    return first_overlap(starts, stops)


def first_overlap(list starts, list stops):
    """``(i, j)``, indices of two non-empty ranges ``[starts[k], stops[k])`` that
    intersect, or None. Sorted by start, then one sweep: O(n log n)."""
    cdef Py_ssize_t n = len(starts), k, far = -1
    if n < 2:
        return None
    cdef Span* spans = <Span*>malloc(n * sizeof(Span))
    if spans == NULL:
        raise MemoryError()
    try:
        for k in range(n):
            spans[k].start = starts[k]
            spans[k].stop = stops[k]
            spans[k].index = k
        qsort(spans, n, sizeof(Span), _by_start)
        for k in range(n):
            if spans[k].start >= spans[k].stop:
                continue
            if far >= 0 and spans[k].start < spans[far].stop:
                return spans[far].index, spans[k].index
            if far < 0 or spans[k].stop > spans[far].stop:
                far = k
        return None
    finally:
        free(spans)
