"""Numba CPU backend: one fused pass per call, the rules of ``fusedopt.rules`` in a loop.

Every algorithm runs the same loop (``_template``) around its rule. It takes flat,
C-contiguous arrays of one dtype (float32 or float64; bf16 as uint16 bits) and the
step's scalars as a tuple of Python floats, cast to the array dtype inside the kernel
(building NumPy scalars in Python costs ~3 us per call; a cast inside costs nothing).
Changing a hyperparameter's value therefore never recompiles. Its boolean options
(weight decay on or off, decoupled, Nesterov) are compiled in instead: one
specialisation per dtype, combination in use and layout of state slots.

Each kernel holds a serial loop and a ``prange`` loop over the same body; arrays
of ``policy.PARALLEL_MIN_SIZE`` elements or more take the parallel one.
"""

from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange
from numba.extending import register_jitable

from .. import algorithms, newton_schulz, rules
from . import jitcache, policy, template
from ..lowbit import load
from ..rules import cast_all, cast_like

# error_model="numpy": the "python" model checks every division for zero and blocks
# vectorisation (2x slower). No fastmath: nothing assumes finite values, so NaN and
# inf propagate exactly as in torch, and no multiply-add is contracted into an FMA
# but those a rule asks for (rules.muladd), as the Cython kernels compile
# (-ffp-contract=off): both backends give the same bits (tests/test_backends.py).
JIT_OPTIONS = dict(parallel=True, cache=True, nogil=True, error_model="numpy",
                   fastmath=False)
_jit = jitcache.jit(njit(**JIT_OPTIONS))


def _template(rule, flags: tuple[bool, ...], slots: int):
    """The one loop of every algorithm: ``template.element`` (``rule`` with its options
    ``flags`` frozen) over each element of ``p``, with its ``slots`` state arrays
    ``s0, s1, ...`` (None where a slot is absent, e.g. ``max_exp_avg_sq`` without
    amsgrad) and its per-step host scalars ``h`` (a tuple of floats, cast to the
    compute dtype once, before the loop).

    Each ``(rule, flags)`` is its own closure, so Numba compiles (and caches: the
    cache key hashes the closure) a loop with the options' branches removed, and each
    layout of present and absent slots (None has a type of its own) is one
    specialisation without loads or stores for the absent. A load or store under a
    runtime ``if``, or options passed as arguments (selects on both branches'
    results: 1.13-1.23x the time of a bf16-state Adam step in cache), would cost
    vectorisation. The slots are separate arguments: read through a tuple inside the
    loop, the serial loop does not vectorise (measured 7.7x slower at 1M). The serial
    and ``prange`` loops run the same body; ``parallel`` picks one."""
    step = template.element(rule, flags, slots)

    def loop(p, g, h, grad_scale, seed, out, parallel, s0=None, s1=None, s2=None,
             s3=None):
        h, grad_scale, zero = cast_all(h, p), cast_like(grad_scale, p), cast_like(0.0, p)
        if parallel:
            for i in prange(p.size):
                step(p, g, i, h, grad_scale, zero, seed, out, s0, s1, s2, s3)
        else:
            for i in range(p.size):
                step(p, g, i, h, grad_scale, zero, seed, out, s0, s1, s2, s3)
    return loop


_PARALLEL_AT = 6  # the position of ``parallel`` in the template's arguments


def _multi_template(rule, flags: tuple[bool, ...], slots: int):
    """``_template`` over many tensors in one call (as torch's and apex's multi-tensor
    apply): row ``t`` of ``table`` holds the addresses of tensor ``t``'s parameter,
    gradient and slots (``template.TABLE_COLUMNS``), ``counts[t]`` its elements and
    ``seeds[t]`` its stochastic-rounding seed; ``parallel``: 0 for the serial loop,
    else the number of threads (Numba's, read by the caller: compiled code that
    reads it cannot be cached). ``pp``, ``gp`` and ``s0..s3`` are
    zero-size arrays of the parameter's, gradient's and slots' dtypes (None where a
    slot is absent): the types, and so the specialisation. The parallel loop splits
    the elements of all the tensors into one equal range per thread (a large tensor
    beside many small ones is shared out too); each range walks the tensors it
    covers, element by element through the same body as ``_template``."""
    step = template.element(rule, flags, slots)

    @register_jitable
    def span(table, counts, seeds, row, h, grad_scale, zero, pp, gp, s0, s1, s2, s3):
        """Elements ``[lo, hi)`` of tensor ``t``, for ``(t, lo, hi) = row``. The index
        runs unsigned: a signed one LLVM cannot prove non-negative keeps NumPy's
        negative-index wraparound in the loop, which then does not vectorise
        (measured 10x slower)."""
        t, lo, hi = row[0], row[1], row[2]
        m = counts[t]
        p, g = template.array_at(table[t, 0], m, pp), template.array_at(table[t, 1], m, gp)
        a0, a1 = template.array_at(table[t, 2], m, s0), template.array_at(table[t, 3], m, s1)
        a2, a3 = template.array_at(table[t, 4], m, s2), template.array_at(table[t, 5], m, s3)
        seed = seeds[t]
        for i in range(np.uint64(lo), np.uint64(hi)):
            step(p, g, i, h, grad_scale, zero, seed, None, a0, a1, a2, a3)

    def loop(table, counts, seeds, h, grad_scale, parallel, pp, gp, s0=None, s1=None,
             s2=None, s3=None):
        h, grad_scale, zero = cast_all(h, pp), cast_like(grad_scale, pp), cast_like(0.0, pp)
        work, first = _spans(counts, parallel)
        if parallel:
            for c in prange(parallel):
                for r in range(first[c], first[c + 1]):
                    span(table, counts, seeds, work[r], h, grad_scale, zero, pp, gp,
                         s0, s1, s2, s3)
        else:
            for r in range(work.shape[0]):
                span(table, counts, seeds, work[r], h, grad_scale, zero, pp, gp,
                     s0, s1, s2, s3)
    return loop


@register_jitable
def _spans(counts, ranges):
    """The work of a multi-tensor call as rows ``(tensor, lo, hi)``, and where each
    thread's rows start: one row per tensor (``ranges`` 0: serial), or the elements
    of all the tensors cut into ``ranges`` near-equal shares, one per thread (rows
    ``first[c]:first[c + 1]``), each split where a tensor ends. A cut inside a tensor
    falls on a multiple of ``ALIGN`` elements from its start, so every element is
    computed by the same part of the vectorised loop (body or remainder) as in a
    call over that tensor alone: the results do not depend on the thread count."""
    n = counts.size
    first = np.zeros(max(ranges, 1) + 1, np.int64)
    if ranges == 0:
        work = np.empty((n, 3), np.int64)
        for t in range(n):
            work[t, 0], work[t, 1], work[t, 2] = t, 0, counts[t]
        first[1] = n
        return work, first
    ends = np.cumsum(counts)
    total = ends[n - 1] if n else 0
    size = (total + ranges - 1) // ranges
    work = np.empty((n + ranges, 3), np.int64)
    rows = 0
    lo = 0
    for c in range(ranges):
        hi = total if c == ranges - 1 else _aligned_cut(ends, counts, (c + 1) * size)
        t = _first_after(ends, lo)
        while lo < hi:
            stop = min(hi, ends[t])
            start = ends[t] - counts[t]
            work[rows, 0], work[rows, 1], work[rows, 2] = t, lo - start, stop - start
            rows += 1
            lo = stop
            t += 1
        first[c + 1] = rows
    return work, first


#: elements: a multiple of every vector width times unroll factor of the loops
ALIGN = 64


@register_jitable
def _aligned_cut(ends, counts, x):
    """``x`` moved down to a multiple of ``ALIGN`` from the start of its tensor."""
    t = _first_after(ends, x)
    if t == ends.size:
        return ends[t - 1] if t else 0
    start = ends[t] - counts[t]
    return start + (x - start) // ALIGN * ALIGN


@register_jitable
def _first_after(ends, x):
    """The first index ``t`` with ``ends[t] > x`` (``ends`` ascending)."""
    lo, hi = 0, ends.size
    while lo < hi:
        mid = (lo + hi) // 2
        if ends[mid] > x:
            hi = mid
        else:
            lo = mid + 1
    return lo


_MULTI_PARALLEL_AT = 5

#: compiled kernels (Numba dispatchers), by ``(name, flags, slots)``; see ``kernel``
KERNELS: dict[tuple, object] = {}
_SERIALISED: dict[tuple, object] = {}


def kernel(name: str, flags: tuple[bool, ...], slots: int, parallel: bool = False):
    """The compiled ``_template`` of ``rules.<name>`` for these options
    (``parallel=True``: for a parallel call, see ``_serialised``). NumPy bools find
    the same entry; the closure gets Python's."""
    key = (name, flags, slots)
    k = KERNELS.get(key)
    if k is None:
        k = _jit(_template(getattr(rules, name), tuple(map(bool, flags)), slots))
        _SERIALISED[key] = _serialised(k, _PARALLEL_AT)  # first: another thread may find k
        KERNELS[key] = k
    return _SERIALISED[key] if parallel and not _threadsafe else k


#: compiled multi-tensor kernels, by ``(name, flags, slots)``; see ``multi_kernel``
MULTI_KERNELS: dict[tuple, object] = {}
_MULTI_SERIALISED: dict[tuple, object] = {}


def multi_kernel(name: str, flags: tuple[bool, ...], slots: int, parallel: bool = False):
    """The compiled ``_multi_template`` of ``rules.<name>`` (see ``kernel``)."""
    key = (name, flags, slots)
    k = MULTI_KERNELS.get(key)
    if k is None:
        k = _jit(_multi_template(getattr(rules, name), tuple(map(bool, flags)), slots))
        _MULTI_SERIALISED[key] = _serialised(k, _MULTI_PARALLEL_AT)
        MULTI_KERNELS[key] = k
    return _MULTI_SERIALISED[key] if parallel and not _threadsafe else k


def multi(name, flags, present, h, dtypes, table, counts, seeds, grad_scale, parallel):
    """One kernel call over every tensor of ``table`` (see ``_multi_template``):
    ``present`` says which slots the tensors have, ``dtypes`` the NumPy dtypes of
    (parameter, gradient, state). Not for an algorithm with a reduction pass
    (``Spec.norms``): its scalars differ per tensor."""
    if name in algorithms.PER_TENSOR:
        raise ValueError(f"multi: {name} steps tensor by tensor and has no multi-tensor "
                         "call")
    k = (_MULTI_SERIALISED if parallel and not _threadsafe else MULTI_KERNELS).get(
        (name, flags, len(present)))
    if k is None:
        k = multi_kernel(name, flags, len(present), parallel=parallel)
    pp, gp, sp = map(_prototype, dtypes)
    k(table, counts, seeds, h, grad_scale, numba.get_num_threads() if parallel else 0,
      pp, gp,
      *[sp if x else None for x in present])


_PROTOTYPES: dict[np.dtype, np.ndarray] = {}


def _prototype(dtype) -> np.ndarray:
    """A zero-size array of ``dtype``: what a multi-tensor kernel is typed by."""
    a = _PROTOTYPES.get(dtype)
    if a is None:
        a = _PROTOTYPES[np.dtype(dtype)] = np.empty(0, dtype)
    return a


def _call(name, flags, states, h, param, grad, grad_scale, seed=0, out=None,
          parallel=None):
    """One kernel call over ``param``: ``states`` holds one array or None per slot;
    in parallel when ``param`` is large enough (``parallel`` None) or if told."""
    par = param.size >= policy.PARALLEL_MIN_SIZE if parallel is None else parallel
    k = (_SERIALISED if par and not _threadsafe else KERNELS).get(
        (name, flags, len(states)))
    if k is None:
        k = kernel(name, flags, len(states), parallel=par)
    k(param, grad, h, grad_scale, seed, out, par, *states)


def _stats(sources: int):
    # Sums in float64 (a norm of 100M float32 squares accumulated in float32 loses
    # digits). "reassoc" for this kernel only: a strict left-to-right float sum does
    # not vectorise (measured 2.0x a plain Adam step at 16M instead of ~1.15x), and a
    # norm summed in another order is still the norm. Non-finite is a comparison,
    # which no reassociation can fold: NaN and inf fail it. ``sources``: the cache
    # key of the code it calls (template.SOURCES).
    def grad_stats(g, parallel):
        sources  # noqa: B018 - in the closure: the cache key
        sumsq, bad = 0.0, 0
        if parallel:
            for i in prange(g.size):
                x = np.float64(load(g, i))
                sumsq += x * x
                bad += not (abs(x) <= 1.7976931348623157e308)
        else:
            for i in range(g.size):
                x = np.float64(load(g, i))
                sumsq += x * x
                bad += not (abs(x) <= 1.7976931348623157e308)
        return sumsq, bad
    return grad_stats


_reducing_jit = jitcache.jit(njit(**{**JIT_OPTIONS, "fastmath": {"reassoc"}}))
_grad_stats = _reducing_jit(_stats(template.SOURCES))


def _norms_template(rule, flags: tuple[bool, ...], slots: int):
    """The reduction pass of an algorithm with per-tensor norms (``Spec.norms``):
    the sums of squares, in float64, of the two values ``rule`` (``rules.<name>
    _norms``) gives per element, over ``p`` and its slots; reads only. Each block of
    ``policy.REDUCE_BLOCK`` elements is summed by one thread (in any order within
    it, "reassoc" as ``grad_stats``: vectorised), then the blocks in order: the
    result is the same whatever the threads, serial or parallel."""
    pair = template.terms(rule, flags, slots)
    size = policy.REDUCE_BLOCK

    @register_jitable
    def block(parts, k, p, g, h, grad_scale, zero, s0, s1, s2, s3):
        sa, sb = 0.0, 0.0
        # unsigned, as _multi_template's span: a signed index keeps NumPy's
        # negative-index wraparound in the loop, which then does not vectorise
        for i in range(np.uint64(k * size), np.uint64(min(k * size + size, p.size))):
            a, b = pair(p, g, i, h, grad_scale, zero, s0, s1, s2, s3)
            x, y = np.float64(a), np.float64(b)
            sa += x * x
            sb += y * y
        parts[k, 0], parts[k, 1] = sa, sb

    def loop(p, g, h, grad_scale, parallel, s0=None, s1=None, s2=None, s3=None):
        h, grad_scale, zero = cast_all(h, p), cast_like(grad_scale, p), cast_like(0.0, p)
        blocks = (p.size + size - 1) // size
        parts = np.empty((blocks, 2), np.float64)
        if parallel:
            for k in prange(blocks):
                block(parts, k, p, g, h, grad_scale, zero, s0, s1, s2, s3)
        else:
            for k in range(blocks):
                block(parts, k, p, g, h, grad_scale, zero, s0, s1, s2, s3)
        return _in_order(parts)
    return loop


@register_jitable
def _in_order(parts):
    """The blocks' two sums (``parts[k]``), added in one fixed order (whatever the
    threads that made them)."""
    sa, sb = 0.0, 0.0
    for k in range(parts.shape[0]):
        sa += parts[k, 0]
        sb += parts[k, 1]
    return sa, sb


# -- Adafactor's factored passes: its estimate made per element from the factors ------

MEANS_ROWS = policy.MEANS_ROWS


def _means(sources: int):
    # Adafactor's row and column sums of g**2 over a batch of n x m matrices, in one
    # read of g: float64, "reassoc" (vectorised), blocks of MEANS_ROWS rows (see
    # algorithms.HostFactors.from_sums)
    def means(g, n, m, rows, parts, parallel):
        sources  # noqa: B018 - in the closure: the cache key
        per = (n + MEANS_ROWS - 1) // MEANS_ROWS  # blocks per matrix
        if parallel:
            for q in prange(parts.shape[0]):
                _means_block(g, n, m, q, per, rows, parts)
        else:
            for q in range(parts.shape[0]):
                _means_block(g, n, m, q, per, rows, parts)
    return means


@register_jitable
def _means_block(g, n, m, q, per, rows, parts):
    # four rows at a time, their squares added to the block's column sums as
    # (y0 + y1) + (y2 + y3): a quarter of the loads and stores of the column sums,
    # which had made this read of g twice as slow as a plain read of it
    b, first = q // per, (q % per) * MEANS_ROWS
    cols = parts[q]
    cols[:] = 0.0
    i, end = b * n + first, b * n + min(n, first + MEANS_ROWS)
    while i + 4 <= end:
        r0, r1 = g[i * m:(i + 1) * m], g[(i + 1) * m:(i + 2) * m]
        r2, r3 = g[(i + 2) * m:(i + 3) * m], g[(i + 3) * m:(i + 4) * m]
        s0, s1, s2, s3 = 0.0, 0.0, 0.0, 0.0
        for j in range(np.uint64(0), np.uint64(m)):
            x0, x1 = np.float64(r0[j]), np.float64(r1[j])
            x2, x3 = np.float64(r2[j]), np.float64(r3[j])
            y0, y1, y2, y3 = x0 * x0, x1 * x1, x2 * x2, x3 * x3
            s0 += y0
            s1 += y1
            s2 += y2
            s3 += y3
            cols[j] += (y0 + y1) + (y2 + y3)
        rows[i], rows[i + 1], rows[i + 2], rows[i + 3] = s0, s1, s2, s3
        i += 4
    while i < end:
        row, s = g[i * m:(i + 1) * m], 0.0
        for j in range(np.uint64(0), np.uint64(m)):
            x = np.float64(row[j])
            s += x * x
            cols[j] += x * x
        rows[i] = s
        i += 1


def _factored_template(rule, flags: tuple[bool, ...], reduce: bool):
    """Adafactor's two passes over a batch of ``n x m`` matrices (flat ``p``, ``g``)
    with its second-moment estimate's reciprocal root made per element from the
    prepared factors (``rules.adafactor_root`` of row ``a_i``, ``s_i`` and column
    ``c_j``, ``t_j``; no scratch array): ``rule`` is
    ``rules.adafactor_update_norms`` (``reduce``: the two sums of squares in fixed
    blocks of ``policy.REDUCE_BLOCK`` elements, each summed in the parameter's dtype
    in any order (vectorised: in float64 the sums' dependency chain made the pass 2x
    slower at 16M float32), the blocks' in float64 in one fixed order: as precise
    as torch's float32 norm, and the same whatever the threads) or
    ``rules.adafactor_update`` (the update). Each block walks the rows it covers,
    one vectorised loop per row piece."""
    size, sources = policy.REDUCE_BLOCK, template.SOURCES

    @register_jitable
    def block(parts, k, p, g, a, s, c, t, n, m, h, grad_scale, zero, floor):
        sources  # noqa: B018 - in the closure: the cache key (see template.SOURCES)
        lo, hi = k * size, min(k * size + size, p.size)
        sa, sb = zero, zero
        eps1sq = h[2]
        i = lo // m  # the row (of all the matrices) lo lies in
        while lo < hi:
            stop = min(hi, (i + 1) * m)
            first = (i // n) * m + lo - i * m  # the column of lo in the factors
            ai, si = a[i], s[i]
            pp, gg = p[lo:stop], g[lo:stop]
            cc, tt = c[first:first + stop - lo], t[first:first + stop - lo]
            for j in range(np.uint64(0), np.uint64(stop - lo)):
                v = rules.adafactor_root(ai, cc[j], si, tt[j], eps1sq, floor)
                new = rule(pp[j], gg[j], v, *h, *flags, grad_scale)
                if reduce:
                    sa += new[0] * new[0]
                    sb += new[1] * new[1]
                else:
                    pp[j] = new[0]
            lo, i = stop, i + 1
        parts[k, 0], parts[k, 1] = np.float64(sa), np.float64(sb)

    def loop(p, g, a, s, c, t, parts, n, m, h, grad_scale, parallel):
        # parts: the blocks' sums, made by the host before any write (HostFactors)
        h, grad_scale, zero = cast_all(h, p), cast_like(grad_scale, p), cast_like(0.0, p)
        floor = h[1] / np.sqrt(h[2])  # 1 / sqrt(eps1**2), in p's dtype
        blocks = (p.size + size - 1) // size
        if parallel:
            for k in prange(blocks):
                block(parts, k, p, g, a, s, c, t, n, m, h, grad_scale, zero, floor)
        else:
            for k in range(blocks):
                block(parts, k, p, g, a, s, c, t, n, m, h, grad_scale, zero, floor)
        return _in_order(parts)
    return loop


class NumbaFactors(algorithms.HostFactors):
    """Adafactor's factored stage on this backend (``algorithms.HostFactors``): the
    row and column means in one parallel read of the gradient, and the norms and
    update passes with the estimate made per element from the factors
    (``_factored_template``): 24 bytes per float32 element in all, no scratch."""

    _kernels: dict[tuple, object] = {}

    @classmethod
    def _kernel(cls, key):
        k = cls._kernels.get(key)
        if k is None:
            if key == "means":
                k = _reducing_jit(_means(template.SOURCES))
                s = _serialised(k, 5)
            else:
                rule = rules.adafactor_update_norms if key[0] else rules.adafactor_update
                k = (_reducing_jit if key[0] else _jit)(
                    _factored_template(rule, tuple(map(bool, key[1])), key[0]))
                s = _serialised(k, 11)
            cls._kernels[key] = (k, s)
            k = (k, s)
        return k

    @classmethod
    def _run(cls, key, *args):
        k, s = cls._kernel(key)
        return (s if args[-1] and not _threadsafe else k)(*args)

    @classmethod
    def means(cls, grad, n: int, m: int, scale2: float):
        rows, parts = cls.sums_arrays(grad, n, m)
        cls._run("means", grad, n, m, rows, parts,
                 grad.size >= policy.PARALLEL_MIN_SIZE)
        return cls.from_sums(rows, parts, grad, n, m, scale2)

    @classmethod
    def norms(cls, flags, h, param, grad, factors, grad_scale):
        return cls._run((True, flags), param, grad, *factors, h, grad_scale,
                        param.size >= policy.PARALLEL_MIN_SIZE)

    @classmethod
    def update(cls, flags, h, param, grad, factors, grad_scale, seed=0, out=None):
        cls._run((False, flags), param, grad, *factors, h, grad_scale,
                 param.size >= policy.PARALLEL_MIN_SIZE)


#: compiled reduction passes, by ``(name, flags, slots)``; see ``_norms``
NORMS: dict[tuple, object] = {}
_NORMS_SERIALISED: dict[tuple, object] = {}


def _norms(name, flags, states, h, param, grad, grad_scale):
    """The reduction pass of ``rules.<name>_norms`` over ``param`` (``Spec.norms``):
    its two sums of squares."""
    par = param.size >= policy.PARALLEL_MIN_SIZE
    key = (name, tuple(map(bool, flags)), len(states))
    k = NORMS.get(key)
    if k is None:
        k = _reducing_jit(_norms_template(getattr(rules, name + "_norms"), key[1],
                                          key[2]))
        _NORMS_SERIALISED[key] = _serialised(k, 4)
        NORMS[key] = k
    if par and not _threadsafe:
        k = _NORMS_SERIALISED[key]
    return k(param, grad, h, grad_scale, par, *states)


# -- the backend contract: flat arrays, raw hyperparameters -------------------------

# Numba's workqueue threading layer (what Numba uses where neither OpenMP nor TBB is
# available) is not thread-safe: two threads entering parallel regions at once abort
# the whole process. Until the first parallel call shows that the layer in use is
# another one, kernels come wrapped (``_serialised``) so that parallel calls take a
# process-wide lock; from then on they are called directly, at no cost.
_PARALLEL_LOCK = threading.Lock()
_threadsafe = False


def _serialised(kernel, parallel_at: int = -1):
    """``kernel``, whose argument at ``parallel_at`` says whether it runs in parallel,
    with its parallel calls made one at a time (while the threading layer may be
    workqueue)."""
    def call(*args):
        global _threadsafe
        if not args[parallel_at]:
            return kernel(*args)
        with _PARALLEL_LOCK:
            result = kernel(*args)
            _threadsafe = numba.threading_layer() != "workqueue"
        return result
    return call


_grad_stats_serialised = _serialised(_grad_stats)


# the backend contract: one function per algorithm, each built from its spec
globals().update({spec.name: algorithms.contract(spec, _call, _norms)
                  for spec in algorithms.SPECS})
#: Muon's momentum pass and SGD's step, on one thread (``algorithms.muon_passes``)
MUON_PASSES = algorithms.muon_passes(_call)
#: Muon: its momentum pass and SGD's step around the Newton-Schulz iteration (BLAS)
muon = algorithms.muon_contract(*MUON_PASSES, newton_schulz.Workspace)
#: Adafactor: its factored moments on the host around adafactor_update's two passes
adafactor = algorithms.adafactor_contract(globals()["adafactor_update"], NumbaFactors)


#: bf16 storage (uint16 bits) for state and parameters; see ``fusedopt.lowbit``
BF16 = ("state", "params")

def grad_stats(grad, parallel):
    return (_grad_stats_serialised if parallel and not _threadsafe
            else _grad_stats)(grad, parallel)
