# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""The C half of ``fusedopt._guard`` (which has a pure-Python twin of both functions
for installs without the compiled modules): the byte range of NumPy arrays, and the
first two intersecting ranges of a list. A step calls both on every array it will
touch, so they must cost nanoseconds per array: reading an address from Python
(``a.__array_interface__``, ``a.ctypes.data``) costs 1.5-1.8 us, here ~20 ns."""

cimport numpy as cnp
from cpython.dict cimport PyDict_Next, PyDict_Size
from cpython.object cimport PyObject
from libc.stdlib cimport free, malloc, qsort

cnp.import_array()


ctypedef struct Span:
    size_t start
    size_t stop
    Py_ssize_t index


cdef int _by_start(const void* a, const void* b) noexcept nogil:
    cdef size_t x = (<const Span*>a).start, y = (<const Span*>b).start
    return (x > y) - (x < y)


cdef inline void _span(cnp.ndarray a, Span* span) noexcept:
    # every byte an element of ``a`` may occupy, whatever its strides (empty for size 0)
    cdef size_t lo, hi
    cdef Py_ssize_t d, extent
    lo = hi = <size_t>cnp.PyArray_DATA(a)
    if cnp.PyArray_SIZE(a) > 0:
        hi += <size_t>cnp.PyArray_ITEMSIZE(a)
        for d in range(cnp.PyArray_NDIM(a)):
            extent = (cnp.PyArray_DIM(a, d) - 1) * cnp.PyArray_STRIDE(a, d)
            if extent < 0:
                lo += extent
            else:
                hi += extent
    span.start, span.stop = lo, hi


def bounds(list arrays, list starts, list stops):
    """Append each ndarray's byte range ``[start, stop)`` (every byte an element of it
    may occupy, whatever its strides; empty for a size-0 array) to the two lists."""
    cdef Span span
    for obj in arrays:
        _span(<cnp.ndarray?>obj, &span)
        starts.append(span.start)
        stops.append(span.stop)


cdef Py_ssize_t _sweep(Span* spans, Py_ssize_t n) noexcept nogil:
    # the position in ``spans`` (sorted here by start) of a range that intersects an
    # earlier one, that earlier one's at ``spans[n]``; -1 where none does
    cdef Py_ssize_t k, far = -1
    qsort(spans, n, sizeof(Span), _by_start)
    for k in range(n):
        if spans[k].start >= spans[k].stop:
            continue
        if far >= 0 and spans[k].start < spans[far].stop:
            spans[n] = spans[far]
            return k
        if far < 0 or spans[k].stop > spans[far].stop:
            far = k
    return -1


cdef object _first(Span* spans, Py_ssize_t n):
    # ``first_overlap``'s answer over ``n`` filled spans (``spans`` holds n + 1)
    cdef Py_ssize_t k = _sweep(spans, n)
    return None if k < 0 else (spans[n].index, spans[k].index)


cpdef object overlap(list arrays):
    """``first_overlap`` over the byte ranges of the ndarrays ``arrays`` (``bounds``),
    in one call."""
    cdef Py_ssize_t n = len(arrays), k
    cdef Span local[16]
    cdef Span* spans = local
    if n < 2:  # (each still an ndarray, or TypeError)
        for obj in arrays:
            _span(<cnp.ndarray?>obj, local)
        return None
    if n >= 16:
        spans = <Span*>malloc((n + 1) * sizeof(Span))
        if spans == NULL:
            raise MemoryError()
    try:
        for k in range(n):
            _span(<cnp.ndarray?>arrays[k], &spans[k])
            spans[k].index = k
        return _first(spans, n)
    finally:
        if spans != local:
            free(spans)


def first_overlap(list starts, list stops):
    """``(i, j)``, indices of two non-empty ranges ``[starts[k], stops[k])`` that
    intersect, or None. Sorted by start, then one sweep: O(n log n)."""
    cdef Py_ssize_t n = len(starts), k
    if len(stops) != n:
        raise ValueError(f"first_overlap: {n} starts but {len(stops)} stops")
    if n < 2:
        return None
    cdef Span* spans = <Span*>malloc((n + 1) * sizeof(Span))
    if spans == NULL:
        raise MemoryError()
    try:
        for k in range(n):
            spans[k].start = starts[k]
            spans[k].stop = stops[k]
            spans[k].index = k
        return _first(spans, n)
    finally:
        free(spans)


def same_groups(object groups, object registered, object memo):
    """What ``Optimizer._check_live``'s group check and ``checked_groups`` would
    conclude, in one C call, where the answer is "nothing changed": every group a
    dict holding the very objects, under the same keys, that ``memo`` (the
    ``checked_groups`` memo) snapshot when it last checked it, and its ``params``
    list holding the parameters ``registered`` (per group, a tuple) holds, in order.
    Returns the memo's checks, as ``checked_groups`` would; None whenever anything
    differs or was not memoised (then the caller runs the Python checks, which name
    what changed)."""
    cdef Py_ssize_t n, k, j, count
    cdef Py_ssize_t pos
    cdef PyObject* key
    cdef PyObject* value
    cdef object group, last, params
    cdef tuple reg
    cdef list values, out = []
    if type(groups) is not list or type(registered) is not list or type(memo) is not list:
        return None  # (the Python checks take any sequence, and name what is wrong)
    n = len(<list>groups)
    if len(<list>registered) != n or len(<list>memo) != n:
        return None
    for k in range(n):
        group, last = (<list>groups)[k], (<list>memo)[k]
        if type(group) is not dict or type(last) is not tuple or len(<tuple>last) != 3:
            return None
        if type((<tuple>last)[1]) is not list:
            return None
        values = (<tuple>last)[1]
        if PyDict_Size(group) != len(values):
            return None
        pos, j = 0, 0
        while PyDict_Next(group, &pos, &key, &value):
            if value != <PyObject*>values[j]:
                return None
            j += 1
        if not group == (<tuple>last)[0]:  # the same keys (the values: identical)
            return None
        params, reg = (<dict>group).get("params"), (<list>registered)[k]
        if type(reg) is not tuple:
            return None
        if type(params) is not list:
            return None
        count = len(reg)
        if len(<list>params) != count:
            return None
        for j in range(count):
            if (<list>params)[j] is not reg[j]:
                return None
        out.append((<tuple>last)[2])
    return out


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


cdef object _np = None


def tensor_plan(list groups, object state, dict kinds, tuple types, bint has_step,
                double max_step, object device=None, list memo=None):
    """The common case of ``fusedopt.torch``'s multi-tensor plan (``_Fused._plan_multi``,
    its Python twin, which a test holds to the same answers) in one call, or None
    whenever anything is off it: then the caller runs the Python plan, which raises
    the precise error or allocates first-step state. The common case: every
    parameter with a gradient a ``types`` tensor of a ``kinds`` dtype on the CPU
    (on ``device``, a CUDA device, where given: the ``cuda`` backend's tables),
    C-contiguous or dense in another order of dimensions (then its gradient and state
    of its shape and in the same strides), not a lazily conjugated or negated view
    nor an inference tensor, with a data pointer (torch raises on ``data_ptr()`` of
    a sparse or mkldnn tensor: any exception here means "not the common case"), its
    gradient a plain tensor of the same dtype, size and layout; its ``state`` entry a
    dict holding, for each state tensor its group needs, a plain tensor of the same
    dtype, size and layout, and (``has_step``) a ``step`` that is a one-element
    float32 CPU tensor holding a count in ``[0, max_step]``; each inside its storage
    (none resized under its tensor); no two of them sharing a byte. ``groups`` holds
    per param group ``(params, columns)``, ``columns`` the ``(name, table column)`` of
    each state tensor it needs; ``kinds`` maps each dtype to ``(kernel kind,
    itemsize)``. Returns ``(table, counts, meta, indices, steps, None, keep, {},
    ())``: per stepped parameter, the
    addresses of its parameter, gradient and state (``table``), its elements,
    ``(group, kind, step, fresh=0)`` (``meta``), its index among all parameters, the
    address of its float32 step tensor (0 without); ``keep`` the tensors, held until
    the kernels have run; (the Python plan's step tensors, new state and copies of
    strided parameters: none).

    ``memo`` (a list the caller keeps, empty at first) makes the common case of the
    next steps cheaper without trusting anything from the last: once a plan is
    made, it holds torch's own tensor guards (``TensorGuards``, what
    ``torch.compile`` checks its inputs with, in C++) built from the tensors just
    checked, in plan order. The next step gathers the live tensors the same way
    and lets the guards check each one's Python type, dispatch keys (device,
    layout, conjugate and negative views), dtype, device index, sizes and strides
    (~50 ns per tensor, where reading them from Python costs ~40 ns each) against
    those of the tensor checked in full at that place; what no guard can see (each
    one's address, its storage's size, the step counts and the overlap of the
    byte ranges) is read and checked live every step, as here. Anything off it
    (another dtype, size or layout; a tensor added, dropped or moved; torch without
    ``TensorGuards``) falls back to the full check, which remakes the guards."""
    try:
        if memo:
            plan = _guarded_plan(groups, state, has_step, max_step, memo)
            if plan is not None:
                return plan
        plan = _tensor_plan(groups, state, kinds, types, has_step, max_step, device)
        if plan is not None and memo is not None:
            _remember(memo, groups, plan)
        return plan
    except Exception:  # whatever it was, the Python plan names it
        return None


cdef object _TensorGuards = None  # torch's, once looked up (False: not there)


cdef _remember(list memo, list groups, tuple plan):
    """Fill ``memo`` (``tensor_plan``) from a plan just checked in full."""
    global _TensorGuards
    if _TensorGuards is None:
        try:
            from torch._C._dynamo.guards import TensorGuards
            _TensorGuards = TensorGuards
        except Exception:
            _TensorGuards = False
    del memo[:]
    if _TensorGuards is False:
        return
    keep = plan[6]
    guards = _TensorGuards(*keep, dynamic_dims_sizes=[list(t.shape) for t in keep],
                           dynamic_dims_strides=[list(t.stride()) for t in keep])
    memo += [guards, tuple([columns for _, columns in groups]), plan[2].copy(),
             plan[3].copy(), plan[1].copy(), len(keep), plan[0].copy(), plan[4].copy()]


cdef _guarded_plan(list groups, object state, bint has_step, double max_step,
                   list memo):
    """The common case with ``memo``'s guards (``tensor_plan``), or None."""
    guards, shape_of, meta0, indices0, counts0, nkeep, table0, steps0 = memo
    cdef Py_ssize_t t = 0, index = 0, k = 0, c, stepped
    cdef object params, columns, p, g, live, byid, name
    cdef list keep = []
    cdef long long[::1] ind0 = indices0
    cdef long long[:, ::1] met0 = meta0
    cdef long long numel, itemsize
    cdef size_t addr
    stepped = ind0.shape[0]
    if tuple([columns for _, columns in groups]) != shape_of:
        return None
    byid = {id(key): value for key, value in state.items()}
    for k, (params, columns) in enumerate(groups):
        for p in <list?>params:
            g = p.grad
            if g is not None:
                # the same parameter slots, in the same groups (whose hyperparameters
                # and state columns the memo's meta and guards assume)
                if t >= stepped or ind0[t] != index or met0[t, 0] != k:
                    return None
                live = byid.get(id(p))
                if type(live) is not dict:
                    return None
                keep.append(p)
                keep.append(g)
                for name, c in columns:
                    keep.append((<dict>live).get(name))
                if has_step:
                    keep.append((<dict>live).get("step"))
                t += 1
            index += 1
    if t != stepped or len(keep) != nkeep or not guards.check(*keep):
        return None
    table = _np.zeros((t, 6), _np.int64)
    meta = meta0.copy()
    steps = _np.zeros(t, _np.int64)
    cdef long long[:, ::1] tab = table, met = meta
    cdef long long[::1] cnt = counts0, stp = steps
    cdef Py_ssize_t n = 0
    # per group, the table columns of a row in keep's order: parameter, gradient, state
    cdef list per_group = [(0, 1, *[c for _, c in columns]) for columns in shape_of]
    for k in range(t):  # the live addresses, storages and steps, in keep's order
        numel, itemsize = cnt[k], _itemsize(met[k, 1])
        for c in per_group[met[k, 0]]:
            addr = _at(keep[n], numel, itemsize)
            if addr == 0 and numel:
                return None
            tab[k, c] = addr
            n += 1
        if has_step:
            met[k, 2] = _count(keep[n], max_step, &addr)
            if met[k, 2] < 0:
                return None
            stp[k] = addr
            n += 1
    # the overlap sweep, unless these are the very ranges the last sweep passed
    if not (_equal(table, table0) and _equal(steps, steps0)):
        if not _disjoint(tab, cnt, met, stp, t):
            return None
        memo[6], memo[7] = table.copy(), steps.copy()
    # (the memo keeps its own arrays: what a caller does with these cannot reach it)
    return (table, counts0.copy(), meta, indices0.copy(), steps, None, keep, {}, ())


def disjoint(long long[:, ::1] table, long long[::1] counts, long long[:, ::1] meta,
             long long[::1] steps):
    """True if no two byte ranges of a multi-tensor plan (``tensor_plan``'s
    ``table``, ``counts``, ``meta`` and ``steps``) share a byte."""
    cdef Py_ssize_t t = table.shape[0]
    if not (table.shape[1] == 6 and meta.shape[1] >= 2 and counts.shape[0] == t
            and meta.shape[0] == t and steps.shape[0] == t):
        raise ValueError("disjoint: table (t, 6), counts (t,), meta (t, >=2) and "
                         "steps (t,) expected")
    return _disjoint(table, counts, meta, steps, t)


cdef bint _equal(cnp.ndarray a, cnp.ndarray b) except -1:
    # the same int64 contents (C-contiguous arrays of one shape): a plan's addresses
    # against the last checked, without numpy.array_equal's ~3 us a call
    cdef Py_ssize_t k, n = cnp.PyArray_SIZE(a)
    cdef const long long* x = <const long long*>cnp.PyArray_DATA(a)
    cdef const long long* y = <const long long*>cnp.PyArray_DATA(b)
    if (cnp.PyArray_NDIM(a) != cnp.PyArray_NDIM(b) or n != cnp.PyArray_SIZE(b)
            or not cnp.PyArray_IS_C_CONTIGUOUS(a) or not cnp.PyArray_IS_C_CONTIGUOUS(b)
            or cnp.PyArray_TYPE(a) != cnp.NPY_INT64 or cnp.PyArray_TYPE(b) != cnp.NPY_INT64):
        return False
    for k in range(cnp.PyArray_NDIM(a)):
        if cnp.PyArray_DIM(a, k) != cnp.PyArray_DIM(b, k):
            return False
    for k in range(n):
        if x[k] != y[k]:
            return False
    return True


cdef _tensor_plan(list groups, object state, dict kinds, tuple types, bint has_step,
                double max_step, object device):
    global _np
    if _np is None:
        import numpy
        _np = numpy
    cdef Py_ssize_t total = 0, t = 0, index = 0, k, c
    cdef object params, columns, p, g, live, obj, dtype, kind, name, f32, byid, strides
    cdef object shape
    cdef list keep = []
    cdef long long numel, step
    cdef size_t addr
    for params, columns in groups:
        total += len(<list?>params)
    table = _np.zeros((total, 6), _np.int64)
    counts = _np.empty(total, _np.int64)
    meta = _np.zeros((total, 4), _np.int64)
    indices = _np.empty(total, _np.int64)
    steps = _np.zeros(total, _np.int64)
    cdef long long[:, ::1] tab = table, met = meta
    cdef long long[::1] cnt = counts, ind = indices, stp = steps
    tensor, parameter = types
    f32 = None
    for dtype, kind in kinds.items():
        if kind[0] == 0:
            f32 = dtype
    byid = {id(key): value for key, value in state.items()}
    for k, (params, columns) in enumerate(groups):
        for p in params:
            g = p.grad
            if g is None:
                index += 1
                continue
            if type(p) is not tensor and type(p) is not parameter:
                return None
            if type(g) is not tensor:
                return None
            dtype = p.dtype
            kind = kinds.get(dtype)
            if kind is None or g.dtype is not dtype:
                return None
            if device is None:
                if not (p.is_cpu and g.is_cpu):
                    return None
            elif p.device != device or g.device != device:
                return None
            numel = p.numel()
            shape = p.shape
            if g.numel() != numel or g.shape != shape:
                return None
            # contiguous, or dense in another order of dimensions (channels_last,
            # transposed) with its gradient and state in the very same strides
            strides = None if p.is_contiguous() else _dense_strides(p.shape, p.stride())
            if strides is None:
                if not (p.is_contiguous() and g.is_contiguous()):
                    return None
            elif g.stride() != strides:
                return None
            live = byid.get(id(p))
            if type(live) is not dict:
                return None
            if not (_plain(p) and _plain(g)):
                return None
            tab[t, 0] = _at(p, numel, kind[1])
            tab[t, 1] = _at(g, numel, kind[1])
            if numel and not (tab[t, 0] and tab[t, 1]):
                return None
            keep.append(p)
            keep.append(g)
            for name, c in columns:
                obj = (<dict>live).get(name)
                if (type(obj) is not tensor or obj.dtype is not dtype
                        or not (obj.is_cpu if device is None else obj.device == device)
                        or obj.numel() != numel or obj.shape != shape or not (
                            obj.is_contiguous() if strides is None
                            else obj.stride() == strides)) or not _plain(obj):
                    return None
                tab[t, c] = _at(obj, numel, kind[1])
                if numel and not tab[t, c]:
                    return None
                keep.append(obj)
            step = 0
            if has_step:
                obj = (<dict>live).get("step")
                if (type(obj) is not tensor or obj.dtype is not f32 or not obj.is_cpu
                        or obj.numel() != 1 or not _plain(obj)):
                    return None
                step = _count(obj, max_step, &addr)
                if step < 0:
                    return None
                stp[t] = addr
                keep.append(obj)
            cnt[t] = numel
            met[t, 0], met[t, 1], met[t, 2] = k, kind[0], <long long>step
            ind[t] = index
            t += 1
            index += 1
    if index != total or not _disjoint(tab, cnt, met, stp, t):
        return None
    return table[:t], counts[:t], meta[:t], indices[:t], steps[:t], None, keep, {}, ()


cdef bint _disjoint(long long[:, ::1] tab, long long[::1] cnt, long long[:, ::1] met,
                    long long[::1] stp, Py_ssize_t t) except -1:
    """No two of a plan's byte ranges (its first ``t`` rows: the table's addresses,
    ``cnt`` elements of kind ``met[:, 1]`` each, and the 4-byte step counts at
    ``stp``) share a byte: the sweep of ``first_overlap``."""
    cdef Py_ssize_t c = 0, k, col
    cdef long long size
    cdef Span* spans = <Span*>malloc((t * 7 + 1) * sizeof(Span))
    if spans == NULL:
        raise MemoryError()
    try:
        for k in range(t):
            size = cnt[k] * _itemsize(met[k, 1])
            for col in range(6):
                if tab[k, col] != 0 or col < 2:
                    spans[c].start = tab[k, col]
                    spans[c].stop = spans[c].start + size
                    c += 1
            if stp[k]:
                spans[c].start = stp[k]
                spans[c].stop = spans[c].start + 4
                c += 1
        return _sweep(spans, c) < 0
    finally:
        free(spans)


cdef inline size_t _at(object t, long long numel, Py_ssize_t itemsize) except? 0:
    # the address of a dense tensor's elements, or 0 where it has none a kernel
    # may step: none of its own (a wrapper subclass: data_ptr() is 0), or a storage
    # that no longer holds them (resized under it); the twin of
    # fusedopt.torch._check_storage. (0 is also a size-0 tensor's address.)
    if (t.storage_offset() + numel) * itemsize > t.untyped_storage().nbytes():
        return 0
    return t.data_ptr()


cdef inline bint _plain(object t) except -1:
    # memory that holds the values the tensor shows (not a lazily conjugated or
    # negated view) and that torch lets a step update in place (not an inference
    # tensor): the others go through the Python plan's copies or refusals
    return not (t.is_neg() or t.is_conj() or t.is_inference())


cdef long long _count(object t, double max_step, size_t* addr) except? -2:
    # the step count a one-element float32 tensor holds, a whole number in [0,
    # max_step] (its address in addr), or -1 where it has none (no memory of its
    # own, a storage resized under it, another value)
    addr[0] = _at(t, 1, 4)
    if addr[0] == 0:
        return -1
    cdef double step = (<float*>addr[0])[0]
    if not (0 <= step <= max_step) or step != <long long>step:
        return -1
    return <long long>step


cdef object _dense_strides(object shape, object strides):
    """``strides`` if they lay the elements of ``shape`` out without gaps or overlap
    in some order of dimensions (size-1 dimensions aside), else None: the twin of
    ``fusedopt.torch._dense_strides``."""
    cdef Py_ssize_t n = len(shape), k, j, s, m, expected = 1
    cdef Py_ssize_t order[16]
    if n > 16:
        return None
    m = 0
    for k in range(n):  # the dimensions that place elements, by stride (insertion)
        if shape[k] == 1:
            continue
        s = strides[k]
        j = m
        while j > 0 and <Py_ssize_t>strides[order[j - 1]] > s:
            order[j] = order[j - 1]
            j -= 1
        order[j] = k
        m += 1
    for j in range(m):
        k = order[j]
        if strides[k] != expected:
            return None
        expected *= <Py_ssize_t>shape[k]
    return strides


cdef inline Py_ssize_t _itemsize(long long kind) noexcept:
    # the kernels' storage kinds: float32, float64, bf16 bits
    return 4 if kind == 0 else (8 if kind == 1 else 2)


def count_steps(const long long[::1] addresses):
    """Add 1 to each float32 at ``addresses`` (0: none): the ``step`` tensors of a
    multi-tensor step, checked by ``tensor_plan`` (one-element float32 CPU tensors)
    and held alive by the caller."""
    cdef Py_ssize_t k
    cdef size_t addr
    for k in range(addresses.shape[0]):
        addr = addresses[k]
        if addr:
            (<float*>addr)[0] += 1


def plan_table(list plans, list grads, list members, tuple names, tuple columns,
               Py_ssize_t width):
    """The table of a multi-tensor call over the ``members`` of an optimizer's
    checked plan (``Optimizer._run_multi``), in one call: per member ``i``, the data
    addresses of its flat parameter ``plans[i][1]`` and gradient ``grads[i]``
    (columns 0 and 1) and of each state array ``plans[i][3][names[c]]`` (column
    ``columns[c]``; 0 in the others), ``width`` columns in all; and its elements.
    Returns ``(table, counts)`` (int64)."""
    cdef Py_ssize_t n = len(members), r, c, i, k = len(names)
    cdef tuple plan
    cdef dict work
    global _np
    if _np is None:
        import numpy
        _np = numpy
    if len(columns) != k:
        raise ValueError(f"plan_table: {k} names but {len(columns)} columns")
    if width < 2:
        raise ValueError(f"plan_table: width {width} < 2")
    for c in range(k):
        if not 2 <= <Py_ssize_t?>columns[c] < width:
            raise ValueError(f"plan_table: column {columns[c]} outside [2, {width})")
    table = _np.zeros((n, width), _np.int64)
    counts = _np.empty(n, _np.int64)
    cdef long long[:, ::1] tab = table
    cdef long long[::1] cnt = counts
    for r in range(n):
        i = members[r]
        if not (0 <= i < len(plans) and i < len(grads)):
            raise IndexError(f"plan_table: member {i} of {len(plans)} plans, "
                             f"{len(grads)} gradients")
        plan = <tuple?>plans[i]
        if len(plan) < 4:
            raise ValueError(f"plan_table: plan {i} has {len(plan)} items")
        work = <dict?>plan[3]
        tab[r, 0] = <long long><size_t>cnp.PyArray_DATA(<cnp.ndarray?>plan[1])
        tab[r, 1] = <long long><size_t>cnp.PyArray_DATA(<cnp.ndarray?>grads[i])
        cnt[r] = cnp.PyArray_SIZE(<cnp.ndarray>plan[1])
        for c in range(k):
            tab[r, <Py_ssize_t>columns[c]] = <long long><size_t>cnp.PyArray_DATA(
                <cnp.ndarray?>work[names[c]])
    return table, counts

