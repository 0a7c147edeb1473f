# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Cython kernels: the loops of fusedopt.backends.numba_cpu around the rules of
kernels/rules.pxd (the mirror of fusedopt/rules.py), over float32 or float64 arrays;
state may also be bf16 bits (uint16) beside float32 parameters, read and written
through kernels/lowbit.pxd (the mirror of fusedopt/lowbit.py).

This file is compiled once per instruction-set level (baseline x86-64, x86-64-v3,
x86-64-v4) as separate extension modules; ``cpu_level()`` here, compiled for the
baseline, says which of them the running CPU can execute. The caller (the Python
backend) has checked every array: same dtype and size, C-contiguous, writeable where
written, no overlap. Optional state is None when its option is off.

As in numba_cpu.py, each state layout has its own loop (9 in all): a load or store
under a runtime ``if`` (``vmax[i] if amsgrad``) cannot be if-converted, and GCC then
vectorises nothing ("control flow in loop"; measured 5.5 ns/element scalar at 1M vs
~0.3 vectorised). The options left inside the rules only select values.

Each loop is a serial "span" function over ``[lo, hi)``, the one place its rule is
called: the entry point runs it once over everything (small arrays), or a parallel
driver runs it once per OpenMP thread over cache-line-aligned slices.
"""

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange

cimport rules
from lowbit cimport BLOCK, Lowbit, block_begin, block_end, load, state_t, store
from libc.stdint cimport uint16_t
from libc.float cimport DBL_MAX
from libc.math cimport fabs

cnp.import_array()

cdef extern from *:
    """
    #ifdef _OPENMP
    #include <omp.h>
    static int fusedopt_omp_threads(void) { return omp_get_max_threads(); }
    #else
    static int fusedopt_omp_threads(void) { return 0; }
    #endif
    static int fusedopt_cpu_level(void) {
    #if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
        __builtin_cpu_init();
        int v3 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")
              && __builtin_cpu_supports("bmi") && __builtin_cpu_supports("bmi2")
              && __builtin_cpu_supports("popcnt");
        int v4 = v3 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw")
              && __builtin_cpu_supports("avx512cd") && __builtin_cpu_supports("avx512dq")
              && __builtin_cpu_supports("avx512vl");
        return v4 ? 4 : (v3 ? 3 : 1);
    #else
        return 0;
    #endif
    }
    """
    int fusedopt_omp_threads() noexcept nogil
    int fusedopt_cpu_level() noexcept nogil


def openmp_threads():
    """OpenMP threads the parallel loops use; 0 when built without OpenMP (serial)."""
    return fusedopt_omp_threads()


def cpu_level():
    """x86-64 level of this CPU: 4 (AVX-512), 3 (AVX2+FMA), 1 (baseline); 0 elsewhere."""
    return fusedopt_cpu_level()


cdef inline bint is_float32(object a):
    return cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_FLOAT32


cdef inline bint is_bf16(object a):
    """bf16 state: uint16 bits (beside float32 parameters)."""
    return a is not None and cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_UINT16


# -- spans: one serial loop per state layout --------------------------------------

cdef void _sgd(floating* p, floating* g, Py_ssize_t lo, Py_ssize_t hi, floating lr,
               floating weight_decay, bint decay, floating grad_scale) noexcept nogil:
    cdef floating zero = 0, b
    cdef Py_ssize_t i
    for i in range(lo, hi):
        p[i], b = rules.sgd(p[i], g[i], zero, lr, weight_decay, zero, zero, decay, False,
                            False, grad_scale)


cdef void _sgd_momentum(floating* p, floating* g, state_t* buf, Py_ssize_t lo,
                        Py_ssize_t hi, floating lr, floating weight_decay,
                        floating momentum, floating buf_grad_scale, bint decay,
                        bint nesterov, floating grad_scale) noexcept nogil:
    cdef floating b
    cdef Py_ssize_t i
    for i in range(lo, hi):
        p[i], b = rules.sgd(p[i], g[i], load(buf, i, lr), lr, weight_decay, momentum,
                            buf_grad_scale, decay, True, nesterov, grad_scale)
        store(buf, i, b)


cdef void _adam(floating* p, floating* g, state_t* m, state_t* v, Py_ssize_t lo,
                Py_ssize_t hi, floating beta1c, floating beta2, floating beta2c,
                floating step_size, floating inv_sqrt_bc2, floating eps,
                floating weight_decay, floating param_scale, bint decay, bint decoupled,
                floating grad_scale) noexcept nogil:
    cdef floating zero = 0, m_, v_, w
    cdef Py_ssize_t i
    for i in range(lo, hi):
        p[i], m_, v_, w = rules.adam(
            p[i], g[i], load(m, i, zero), load(v, i, zero), zero, beta1c, beta2, beta2c,
            step_size, inv_sqrt_bc2, eps, weight_decay, param_scale, decay, decoupled,
            False, grad_scale)
        store(m, i, m_)
        store(v, i, v_)


cdef void _adam_amsgrad(floating* p, floating* g, state_t* m, state_t* v,
                        state_t* vmax, Py_ssize_t lo, Py_ssize_t hi, floating beta1c,
                        floating beta2, floating beta2c, floating step_size,
                        floating inv_sqrt_bc2, floating eps, floating weight_decay,
                        floating param_scale, bint decay, bint decoupled,
                        floating grad_scale) noexcept nogil:
    cdef floating m_, v_, w
    cdef Py_ssize_t i
    for i in range(lo, hi):
        p[i], m_, v_, w = rules.adam(
            p[i], g[i], load(m, i, eps), load(v, i, eps), load(vmax, i, eps), beta1c,
            beta2, beta2c, step_size, inv_sqrt_bc2, eps, weight_decay, param_scale,
            decay, decoupled, True, grad_scale)
        store(m, i, m_)
        store(v, i, v_)
        store(vmax, i, w)


cdef void _adagrad(floating* p, floating* g, state_t* acc, Py_ssize_t lo,
                   Py_ssize_t hi, floating clr, floating eps, floating weight_decay,
                   bint decay, floating grad_scale) noexcept nogil:
    cdef floating a
    cdef Py_ssize_t i
    for i in range(lo, hi):
        p[i], a = rules.adagrad(p[i], g[i], load(acc, i, eps), clr, eps, weight_decay,
                                decay, grad_scale)
        store(acc, i, a)


cdef void _rmsprop(floating* p, floating* g, state_t* sq, state_t* gavg,
                   state_t* buf, Py_ssize_t lo, Py_ssize_t hi, floating lr,
                   floating alpha, floating alphac, floating eps, floating weight_decay,
                   floating momentum, bint decay, floating grad_scale) noexcept nogil:
    cdef floating zero = 0, s, a, b
    cdef Py_ssize_t i
    for i in range(lo, hi):
        p[i], s, a, b = rules.rmsprop(
            p[i], g[i], load(sq, i, zero), zero, zero, lr, alpha, alphac, eps,
            weight_decay, momentum, decay, False, False, grad_scale)
        store(sq, i, s)


cdef void _rmsprop_centered(floating* p, floating* g, state_t* sq, state_t* gavg,
                            state_t* buf, Py_ssize_t lo, Py_ssize_t hi, floating lr,
                            floating alpha, floating alphac, floating eps,
                            floating weight_decay, floating momentum, bint decay,
                            floating grad_scale) noexcept nogil:
    cdef floating zero = 0, s, a, b
    cdef Py_ssize_t i
    for i in range(lo, hi):
        p[i], s, a, b = rules.rmsprop(
            p[i], g[i], load(sq, i, zero), load(gavg, i, zero), zero, lr, alpha, alphac,
            eps, weight_decay, momentum, decay, True, False, grad_scale)
        store(sq, i, s)
        store(gavg, i, a)


cdef void _rmsprop_momentum(floating* p, floating* g, state_t* sq, state_t* gavg,
                            state_t* buf, Py_ssize_t lo, Py_ssize_t hi, floating lr,
                            floating alpha, floating alphac, floating eps,
                            floating weight_decay, floating momentum, bint decay,
                            floating grad_scale) noexcept nogil:
    cdef floating zero = 0, s, a, b
    cdef Py_ssize_t i
    for i in range(lo, hi):
        p[i], s, a, b = rules.rmsprop(
            p[i], g[i], load(sq, i, zero), zero, load(buf, i, zero), lr, alpha, alphac,
            eps, weight_decay, momentum, decay, False, True, grad_scale)
        store(sq, i, s)
        store(buf, i, b)


cdef void _rmsprop_centered_momentum(floating* p, floating* g, state_t* sq,
                                     state_t* gavg, state_t* buf, Py_ssize_t lo,
                                     Py_ssize_t hi, floating lr, floating alpha,
                                     floating alphac, floating eps,
                                     floating weight_decay, floating momentum,
                                     bint decay, floating grad_scale) noexcept nogil:
    cdef floating s, a, b
    cdef Py_ssize_t i
    for i in range(lo, hi):
        p[i], s, a, b = rules.rmsprop(
            p[i], g[i], load(sq, i, eps), load(gavg, i, eps), load(buf, i, eps), lr,
            alpha, alphac, eps, weight_decay, momentum, decay, True, True, grad_scale)
        store(sq, i, s)
        store(gavg, i, a)
        store(buf, i, b)


# -- drivers: the spans, one per OpenMP thread (one in all for small arrays) -------
# Small arrays run the same driver with num_threads=1 (libgomp then runs the region in
# the calling thread). Calling a span straight from an entry point is not faster and
# does not vectorise: inlined there, GCC neither unswitches the options nor
# vectorises their selects (measured 3.5 ns/element scalar), and a serial loop next to
# a prange in one function reads address-taken (OpenMP-shared) bounds and scalars.

cdef inline Py_ssize_t _chunk(Py_ssize_t n, Py_ssize_t threads) noexcept nogil:
    """An equal share per thread rounded up to 16 elements (one 64-byte line of
    float32), so no two threads write the same cache line; at least 16, so an empty
    array gives zero chunks instead of a division by zero."""
    return max(16, ((n + threads - 1) // threads + 15) // 16 * 16)


# Each chunk function steps ``[lo, hi)`` through its layout's span: directly, or, for
# bf16 parameters (``lb`` not NULL), in BLOCK-sized pieces widened into float32
# scratch on this thread's stack and stored back rounded (kernels/lowbit.pxd), so the
# spans, and the rules inside them, exist once whatever the parameter storage.

cdef inline state_t* _at(state_t* a, Py_ssize_t i) noexcept nogil:
    return NULL if a == NULL else a + i


cdef void _sgd_chunk(Lowbit* lb, floating* p, floating* g, state_t* buf,
                     Py_ssize_t lo, Py_ssize_t hi, floating lr, floating weight_decay,
                     floating momentum, floating scale, bint decay, bint nesterov,
                     floating grad_scale) noexcept nogil:
    cdef float sp[BLOCK]
    cdef float sg[BLOCK]
    cdef float* q
    cdef Py_ssize_t a, k
    if lb == NULL:
        if buf == NULL:
            _sgd(p, g, lo, hi, lr, weight_decay, decay, grad_scale)
        else:
            _sgd_momentum(p, g, buf, lo, hi, lr, weight_decay, momentum, scale, decay,
                          nesterov, grad_scale)
    elif floating is float:
        a = lo
        while a < hi:
            k = min(<Py_ssize_t>BLOCK, hi - a)
            q = block_begin(lb, p, a, k, sp, sg)
            _sgd_chunk(NULL, q, sg, _at(buf, a), 0, k, lr, weight_decay, momentum, scale,
                       decay, nesterov, grad_scale)
            block_end(lb, p, a, k, sp)
            a += BLOCK


cdef void _sgd_drive(Lowbit* lb, floating* p, floating* g, state_t* buf, Py_ssize_t n,
                     Py_ssize_t threads, floating lr, floating weight_decay,
                     floating momentum, floating scale, bint decay, bint nesterov,
                     floating grad_scale) noexcept nogil:
    cdef Py_ssize_t c, size = _chunk(n, threads)
    for c in prange((n + size - 1) // size, schedule="static", num_threads=threads):
        _sgd_chunk(lb, p, g, buf, c * size, min(n, (c + 1) * size), lr, weight_decay,
                   momentum, scale, decay, nesterov, grad_scale)


cdef void _adam_chunk(Lowbit* lb, floating* p, floating* g, state_t* m, state_t* v,
                      state_t* vmax, Py_ssize_t lo, Py_ssize_t hi, floating beta1c,
                      floating beta2, floating beta2c, floating step_size,
                      floating inv_sqrt_bc2, floating eps, floating weight_decay,
                      floating param_scale, bint decay, bint decoupled,
                      floating grad_scale) noexcept nogil:
    cdef float sp[BLOCK]
    cdef float sg[BLOCK]
    cdef float* q
    cdef Py_ssize_t a, k
    if lb == NULL:
        if vmax == NULL:
            _adam(p, g, m, v, lo, hi, beta1c, beta2, beta2c, step_size, inv_sqrt_bc2,
                  eps, weight_decay, param_scale, decay, decoupled, grad_scale)
        else:
            _adam_amsgrad(p, g, m, v, vmax, lo, hi, beta1c, beta2, beta2c, step_size,
                          inv_sqrt_bc2, eps, weight_decay, param_scale, decay, decoupled,
                          grad_scale)
    elif floating is float:
        a = lo
        while a < hi:
            k = min(<Py_ssize_t>BLOCK, hi - a)
            q = block_begin(lb, p, a, k, sp, sg)
            _adam_chunk(NULL, q, sg, m + a, v + a, _at(vmax, a), 0, k, beta1c, beta2,
                        beta2c, step_size, inv_sqrt_bc2, eps, weight_decay, param_scale,
                        decay, decoupled, grad_scale)
            block_end(lb, p, a, k, sp)
            a += BLOCK


cdef void _adam_drive(Lowbit* lb, floating* p, floating* g, state_t* m, state_t* v,
                      state_t* vmax, Py_ssize_t n, Py_ssize_t threads, floating beta1c,
                      floating beta2, floating beta2c, floating step_size,
                      floating inv_sqrt_bc2, floating eps, floating weight_decay,
                      floating param_scale, bint decay, bint decoupled,
                      floating grad_scale) noexcept nogil:
    cdef Py_ssize_t c, size = _chunk(n, threads)
    for c in prange((n + size - 1) // size, schedule="static", num_threads=threads):
        _adam_chunk(lb, p, g, m, v, vmax, c * size, min(n, (c + 1) * size), beta1c,
                    beta2, beta2c, step_size, inv_sqrt_bc2, eps, weight_decay,
                    param_scale, decay, decoupled, grad_scale)


cdef void _adagrad_chunk(Lowbit* lb, floating* p, floating* g, state_t* acc,
                         Py_ssize_t lo, Py_ssize_t hi, floating clr, floating eps,
                         floating weight_decay, bint decay,
                         floating grad_scale) noexcept nogil:
    cdef float sp[BLOCK]
    cdef float sg[BLOCK]
    cdef float* q
    cdef Py_ssize_t a, k
    if lb == NULL:
        _adagrad(p, g, acc, lo, hi, clr, eps, weight_decay, decay, grad_scale)
    elif floating is float:
        a = lo
        while a < hi:
            k = min(<Py_ssize_t>BLOCK, hi - a)
            q = block_begin(lb, p, a, k, sp, sg)
            _adagrad(q, sg, acc + a, 0, k, clr, eps, weight_decay, decay, grad_scale)
            block_end(lb, p, a, k, sp)
            a += BLOCK


cdef void _adagrad_drive(Lowbit* lb, floating* p, floating* g, state_t* acc,
                         Py_ssize_t n, Py_ssize_t threads, floating clr, floating eps,
                         floating weight_decay, bint decay,
                         floating grad_scale) noexcept nogil:
    cdef Py_ssize_t c, size = _chunk(n, threads)
    for c in prange((n + size - 1) // size, schedule="static", num_threads=threads):
        _adagrad_chunk(lb, p, g, acc, c * size, min(n, (c + 1) * size), clr, eps,
                       weight_decay, decay, grad_scale)


cdef void _rmsprop_chunk(Lowbit* lb, floating* p, floating* g, state_t* sq,
                         state_t* gavg, state_t* buf, Py_ssize_t lo, Py_ssize_t hi,
                         floating lr, floating alpha, floating alphac, floating eps,
                         floating weight_decay, floating momentum, bint decay,
                         floating grad_scale) noexcept nogil:
    cdef float sp[BLOCK]
    cdef float sg[BLOCK]
    cdef float* q
    cdef Py_ssize_t a, k
    if lb == NULL:  # the layout: once per chunk, outside the element loop
        if gavg == NULL and buf == NULL:
            _rmsprop(p, g, sq, gavg, buf, lo, hi, lr, alpha, alphac, eps, weight_decay,
                     momentum, decay, grad_scale)
        elif buf == NULL:
            _rmsprop_centered(p, g, sq, gavg, buf, lo, hi, lr, alpha, alphac, eps,
                              weight_decay, momentum, decay, grad_scale)
        elif gavg == NULL:
            _rmsprop_momentum(p, g, sq, gavg, buf, lo, hi, lr, alpha, alphac, eps,
                              weight_decay, momentum, decay, grad_scale)
        else:
            _rmsprop_centered_momentum(p, g, sq, gavg, buf, lo, hi, lr, alpha, alphac,
                                       eps, weight_decay, momentum, decay, grad_scale)
    elif floating is float:
        a = lo
        while a < hi:
            k = min(<Py_ssize_t>BLOCK, hi - a)
            q = block_begin(lb, p, a, k, sp, sg)
            _rmsprop_chunk(NULL, q, sg, sq + a, _at(gavg, a), _at(buf, a), 0, k, lr,
                           alpha, alphac, eps, weight_decay, momentum, decay, grad_scale)
            block_end(lb, p, a, k, sp)
            a += BLOCK


cdef void _rmsprop_drive(Lowbit* lb, floating* p, floating* g, state_t* sq,
                         state_t* gavg, state_t* buf, Py_ssize_t n, Py_ssize_t threads,
                         floating lr, floating alpha, floating alphac, floating eps,
                         floating weight_decay, floating momentum, bint decay,
                         floating grad_scale) noexcept nogil:
    cdef Py_ssize_t c, size = _chunk(n, threads)
    for c in prange((n + size - 1) // size, schedule="static", num_threads=threads):
        _rmsprop_chunk(lb, p, g, sq, gavg, buf, c * size, min(n, (c + 1) * size), lr,
                       alpha, alphac, eps, weight_decay, momentum, decay, grad_scale)


# -- entry points: dtype and path dispatch, GIL released for the whole update -------

cdef inline void* data(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline Lowbit* lowbit(Lowbit* lb, object p, object g, object out,
                          unsigned int seed):
    """``lb`` filled for bf16 parameters (uint16 ``p``, or a float32 master copy ``p``
    with its bf16 image ``out``), whose gradients are bf16; else NULL."""
    if not is_bf16(g):
        return NULL
    lb.p16 = <uint16_t*>data(p) if is_bf16(p) else NULL
    lb.g16 = <uint16_t*>data(g)
    lb.out = <uint16_t*>data(out)
    lb.seed = seed
    return lb


cdef inline Py_ssize_t threads_for(bint parallel) noexcept nogil:
    # 0 threads means built without OpenMP: prange then runs serially anyway
    cdef Py_ssize_t t = fusedopt_omp_threads()
    return t if parallel and t > 1 else 1


def sgd(p, g, buf, double lr, double weight_decay, double momentum,
        double buf_grad_scale, bint decay, bint nesterov, double grad_scale, bint parallel,
        unsigned int seed=0, out=None):
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>p), t = threads_for(parallel)
    cdef Lowbit lb_
    cdef Lowbit* lb = lowbit(&lb_, p, g, out, seed)
    cdef void* pp = NULL if is_bf16(p) else data(p)
    cdef void* gp = data(g)
    cdef void* bp = data(buf)
    cdef bint f32 = lb != NULL or is_float32(p), bf16 = is_bf16(buf)
    with nogil:
        if bf16:
            _sgd_drive(lb, <float*>pp, <float*>gp, <uint16_t*>bp, n, t, <float>lr,
                          <float>weight_decay, <float>momentum, <float>buf_grad_scale,
                          decay, nesterov, <float>grad_scale)
        elif f32:
            _sgd_drive(lb, <float*>pp, <float*>gp, <float*>bp, n, t, <float>lr,
                          <float>weight_decay, <float>momentum, <float>buf_grad_scale,
                          decay, nesterov, <float>grad_scale)
        else:
            _sgd_drive(lb, <double*>pp, <double*>gp, <double*>bp, n, t, lr, weight_decay,
                          momentum, buf_grad_scale, decay, nesterov, grad_scale)


def adam(p, g, m, v, vmax, double beta1c, double beta2, double beta2c,
         double step_size, double inv_sqrt_bc2, double eps, double weight_decay,
         double param_scale, bint decay, bint decoupled, double grad_scale, bint parallel,
         unsigned int seed=0, out=None):
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>p), t = threads_for(parallel)
    cdef Lowbit lb_
    cdef Lowbit* lb = lowbit(&lb_, p, g, out, seed)
    cdef void* pp = NULL if is_bf16(p) else data(p)
    cdef void* gp = data(g)
    cdef void* mp = data(m)
    cdef void* vp = data(v)
    cdef void* wp = data(vmax)
    cdef bint f32 = lb != NULL or is_float32(p), bf16 = is_bf16(m)
    with nogil:
        if bf16:
            _adam_drive(lb, <float*>pp, <float*>gp, <uint16_t*>mp, <uint16_t*>vp,
                           <uint16_t*>wp, n, t, <float>beta1c, <float>beta2,
                           <float>beta2c, <float>step_size, <float>inv_sqrt_bc2,
                           <float>eps, <float>weight_decay, <float>param_scale, decay,
                           decoupled, <float>grad_scale)
        elif f32:
            _adam_drive(lb, <float*>pp, <float*>gp, <float*>mp, <float*>vp, <float*>wp, n,
                           t, <float>beta1c, <float>beta2, <float>beta2c,
                           <float>step_size, <float>inv_sqrt_bc2, <float>eps,
                           <float>weight_decay, <float>param_scale, decay, decoupled,
                           <float>grad_scale)
        else:
            _adam_drive(lb, <double*>pp, <double*>gp, <double*>mp, <double*>vp,
                           <double*>wp, n, t, beta1c, beta2, beta2c, step_size,
                           inv_sqrt_bc2, eps, weight_decay, param_scale, decay,
                           decoupled, grad_scale)


def adagrad(p, g, acc, double clr, double eps, double weight_decay, bint decay,
            double grad_scale, bint parallel, unsigned int seed=0, out=None):
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>p), t = threads_for(parallel)
    cdef Lowbit lb_
    cdef Lowbit* lb = lowbit(&lb_, p, g, out, seed)
    cdef void* pp = NULL if is_bf16(p) else data(p)
    cdef void* gp = data(g)
    cdef void* ap = data(acc)
    cdef bint f32 = lb != NULL or is_float32(p), bf16 = is_bf16(acc)
    with nogil:
        if bf16:
            _adagrad_drive(lb, <float*>pp, <float*>gp, <uint16_t*>ap, n, t, <float>clr,
                              <float>eps, <float>weight_decay, decay, <float>grad_scale)
        elif f32:
            _adagrad_drive(lb, <float*>pp, <float*>gp, <float*>ap, n, t, <float>clr,
                              <float>eps, <float>weight_decay, decay, <float>grad_scale)
        else:
            _adagrad_drive(lb, <double*>pp, <double*>gp, <double*>ap, n, t, clr, eps,
                              weight_decay, decay, grad_scale)


def rmsprop(p, g, sq, gavg, buf, double lr, double alpha, double alphac, double eps,
            double weight_decay, double momentum, bint decay, double grad_scale,
            bint parallel, unsigned int seed=0, out=None):
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>p), t = threads_for(parallel)
    cdef Lowbit lb_
    cdef Lowbit* lb = lowbit(&lb_, p, g, out, seed)
    cdef void* pp = NULL if is_bf16(p) else data(p)
    cdef void* gp = data(g)
    cdef void* sp = data(sq)
    cdef void* ap = data(gavg)
    cdef void* bp = data(buf)
    cdef bint f32 = lb != NULL or is_float32(p), bf16 = is_bf16(sq)
    with nogil:
        if bf16:
            _rmsprop_drive(lb, <float*>pp, <float*>gp, <uint16_t*>sp, <uint16_t*>ap,
                              <uint16_t*>bp, n, t, <float>lr, <float>alpha,
                              <float>alphac, <float>eps, <float>weight_decay,
                              <float>momentum, decay, <float>grad_scale)
        elif f32:
            _rmsprop_drive(lb, <float*>pp, <float*>gp, <float*>sp, <float*>ap,
                              <float*>bp, n, t, <float>lr, <float>alpha, <float>alphac,
                              <float>eps, <float>weight_decay, <float>momentum, decay,
                              <float>grad_scale)
        else:
            _rmsprop_drive(lb, <double*>pp, <double*>gp, <double*>sp, <double*>ap,
                              <double*>bp, n, t, lr, alpha, alphac, eps, weight_decay,
                              momentum, decay, grad_scale)


cdef void _grad_stats_span(state_t* g, Py_ssize_t lo, Py_ssize_t hi, double* sumsq,
                           Py_ssize_t* bad) noexcept nogil:
    # Eight independent partial sums: GCC keeps a float sum in order unless allowed
    # to reassociate (-ffast-math would also change the update kernels), so the lanes
    # are written out; measured 11 ms -> ~3 ms at 16M float32. Non-finite is a
    # comparison that NaN and inf fail.
    cdef double acc[8]
    cdef double x
    cdef Py_ssize_t i, k, b = 0, end = lo + (hi - lo) // 8 * 8
    for k in range(8):
        acc[k] = 0
    for i in range(lo, end, 8):
        for k in range(8):
            x = load(g, i + k, x)
            acc[k] += x * x
            b += not (fabs(x) <= DBL_MAX)
    for i in range(end, hi):
        x = load(g, i, x)
        acc[0] += x * x
        b += not (fabs(x) <= DBL_MAX)
    sumsq[0] = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) +
                                                          (acc[6] + acc[7]))
    bad[0] = b


cdef void _grad_stats(state_t* g, Py_ssize_t n, Py_ssize_t threads, double* sumsq,
                      Py_ssize_t* bad) noexcept nogil:
    cdef Py_ssize_t c, size = _chunk(n, threads), spans = (n + size - 1) // size
    cdef double s = 0, part_s
    cdef Py_ssize_t b = 0, part_b
    for c in prange(spans, schedule="static", num_threads=threads):
        _grad_stats_span(g, c * size, min(n, (c + 1) * size), &part_s, &part_b)
        s += part_s
        b += part_b
    sumsq[0] = s
    bad[0] = b


def grad_stats(g, bint parallel):
    """(sum of squares in float64, number of non-finite elements) of ``g`` (float32,
    float64 or bf16 bits): the one extra read of a step with a non-finite policy or
    gradient clipping."""
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>g), t = threads_for(parallel)
    cdef void* gp = data(g)
    cdef bint f32 = is_float32(g)
    cdef double sumsq = 0
    cdef Py_ssize_t bad = 0
    cdef bint bf16 = is_bf16(g)
    with nogil:
        if bf16:
            _grad_stats(<uint16_t*>gp, n, t, &sumsq, &bad)
        elif f32:
            _grad_stats(<float*>gp, n, t, &sumsq, &bad)
        else:
            _grad_stats(<double*>gp, n, t, &sumsq, &bad)
    return sumsq, bad
