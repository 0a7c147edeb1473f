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


def common_plan(list flats, list params, list grads, dict state, list kinds,
                list groups, long long max_step):
    """The common case of a host step's plan (``Optimizer._plan``) in one call, or None
    whenever anything is off it, and then the caller runs its full Python plan, which
    raises the precise error or allocates first-step state. The common case: every
    gradient an ndarray of its parameter's dtype and shape, C-contiguous; every
    parameter writeable, without master copy or bf16 kernel view; every
    ``state[i]`` a dict holding an int ``step`` in ``[0, max_step]`` and each array
    its group needs: an ndarray of the state dtype, 1-D, of the parameter's size,
    C-contiguous, aligned and writeable; and no two arrays sharing a byte.
    ``groups`` holds per param group ``(count, hyper, names)``; returns
    ``(flat_grads, plans)`` with ``plans[i] = (hyper, flat, None, work, {}, False)``
    and ``work = {"step": step, name: array}``, read from the live objects."""
    cdef Py_ssize_t n = len(flats), i = 0, count, k, d, ndim
    cdef cnp.ndarray p, user, g, a
    cdef object live, step, hyper, names, name, kind, fg
    cdef dict work
    cdef list flat_grads = [], plans = [], arrays = list(flats)
    if len(params) != n or len(grads) != n or len(kinds) != n:
        return None
    for count, hyper, names in groups:
        for _ in range(count):
            if i >= n:
                return None
            kind = kinds[i]
            if kind[1]:  # a master copy
                return None
            p, user = <cnp.ndarray?>flats[i], <cnp.ndarray?>params[i]
            if (cnp.PyArray_DESCR(p) is not cnp.PyArray_DESCR(user)  # bf16: uint16
                    or not cnp.PyArray_ISWRITEABLE(user)):
                return None
            obj = grads[i]
            if type(obj) is not cnp.ndarray:
                return None
            g = <cnp.ndarray>obj
            ndim = cnp.PyArray_NDIM(g)
            if (cnp.PyArray_DESCR(g) is not cnp.PyArray_DESCR(user)
                    or ndim != cnp.PyArray_NDIM(user)
                    or not cnp.PyArray_IS_C_CONTIGUOUS(g)):
                return None
            for d in range(ndim):
                if cnp.PyArray_DIM(g, d) != cnp.PyArray_DIM(user, d):
                    return None
            fg = g if ndim == 1 else g.reshape(-1)
            live = state.get(i)
            if type(live) is not dict:
                return None
            step = (<dict>live).get("step")
            if type(step) is not int or not 0 <= step <= max_step:
                return None
            work = {"step": step}
            for name in names:
                obj = (<dict>live).get(name)
                if type(obj) is not cnp.ndarray:
                    return None
                a = <cnp.ndarray>obj
                if (<object>cnp.PyArray_DESCR(a) is not kind[0]
                        or cnp.PyArray_NDIM(a) != 1
                        or cnp.PyArray_DIM(a, 0) != cnp.PyArray_SIZE(p)
                        or not cnp.PyArray_ISCARRAY(a)):
                    return None
                work[name] = a
                arrays.append(a)
            plans.append((hyper, p, None, work, {}, False))
            flat_grads.append(fg)
            i += 1
    if i != n or overlap(arrays + flat_grads) is not None:
        return None
    return flat_grads, plans
