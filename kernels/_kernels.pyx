# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: initializedcheck=False, embedsignature=True
"""Cython kernels: the loops of fusedopt.backends.numba_cpu around the rules of
kernels/rules.pxd (the mirror of fusedopt/rules.py), over float32 or float64 arrays.

This file is compiled once per instruction-set level (baseline x86-64, x86-64-v3,
x86-64-v4) as separate extension modules; ``cpu_level()`` here, compiled for the
baseline, says which of them the running CPU can execute. The caller (the Python
backend) has checked every array: same dtype and size, C-contiguous, writeable where
written, no overlap. Optional state is None when its option is off.
"""

cimport numpy as cnp
from cython cimport floating
from cython.parallel cimport prange

cimport rules

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


cdef inline void* data(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef inline bint is_float32(object a):
    return cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_FLOAT32


# -- loops (the serial branch avoids a parallel region's cost on small arrays) --------

cdef void _sgd(floating* p, floating* g, floating* buf, Py_ssize_t n, double lr_,
               double weight_decay_, double momentum_, double buf_grad_scale_,
               bint decay, bint has_momentum, bint nesterov, bint maximize,
               bint parallel) noexcept nogil:
    cdef floating lr = <floating>lr_, weight_decay = <floating>weight_decay_
    cdef floating momentum = <floating>momentum_, buf_grad_scale = <floating>buf_grad_scale_
    cdef floating zero = 0, b
    cdef Py_ssize_t i
    if parallel:
        for i in prange(n, schedule="static"):
            p[i], b = rules.sgd(p[i], g[i], buf[i] if has_momentum else zero, lr,
                                weight_decay, momentum, buf_grad_scale, decay,
                                has_momentum, nesterov, maximize)
            if has_momentum:
                buf[i] = b
    else:
        for i in range(n):
            p[i], b = rules.sgd(p[i], g[i], buf[i] if has_momentum else zero, lr,
                                weight_decay, momentum, buf_grad_scale, decay,
                                has_momentum, nesterov, maximize)
            if has_momentum:
                buf[i] = b


cdef void _adam(floating* p, floating* g, floating* m, floating* v, floating* vmax,
                Py_ssize_t n, double beta1c_, double beta2_, double beta2c_,
                double step_size_, double inv_sqrt_bc2_, double eps_,
                double weight_decay_, double param_scale_, bint decay, bint decoupled,
                bint amsgrad, bint maximize, bint parallel) noexcept nogil:
    cdef floating beta1c = <floating>beta1c_, beta2 = <floating>beta2_
    cdef floating beta2c = <floating>beta2c_, step_size = <floating>step_size_
    cdef floating inv_sqrt_bc2 = <floating>inv_sqrt_bc2_, eps = <floating>eps_
    cdef floating weight_decay = <floating>weight_decay_
    cdef floating param_scale = <floating>param_scale_
    cdef floating zero = 0, w
    cdef Py_ssize_t i
    if parallel:
        for i in prange(n, schedule="static"):
            p[i], m[i], v[i], w = rules.adam(
                p[i], g[i], m[i], v[i], vmax[i] if amsgrad else zero, beta1c, beta2,
                beta2c, step_size, inv_sqrt_bc2, eps, weight_decay, param_scale, decay,
                decoupled, amsgrad, maximize)
            if amsgrad:
                vmax[i] = w
    else:
        for i in range(n):
            p[i], m[i], v[i], w = rules.adam(
                p[i], g[i], m[i], v[i], vmax[i] if amsgrad else zero, beta1c, beta2,
                beta2c, step_size, inv_sqrt_bc2, eps, weight_decay, param_scale, decay,
                decoupled, amsgrad, maximize)
            if amsgrad:
                vmax[i] = w


cdef void _adagrad(floating* p, floating* g, floating* acc, Py_ssize_t n, double clr_,
                   double eps_, double weight_decay_, bint decay, bint maximize,
                   bint parallel) noexcept nogil:
    cdef floating clr = <floating>clr_, eps = <floating>eps_
    cdef floating weight_decay = <floating>weight_decay_
    cdef Py_ssize_t i
    if parallel:
        for i in prange(n, schedule="static"):
            p[i], acc[i] = rules.adagrad(p[i], g[i], acc[i], clr, eps, weight_decay,
                                         decay, maximize)
    else:
        for i in range(n):
            p[i], acc[i] = rules.adagrad(p[i], g[i], acc[i], clr, eps, weight_decay,
                                         decay, maximize)


cdef void _rmsprop(floating* p, floating* g, floating* sq, floating* gavg,
                   floating* buf, Py_ssize_t n, double lr_, double alpha_,
                   double alphac_, double eps_, double weight_decay_, double momentum_,
                   bint decay, bint centered, bint has_momentum, bint maximize,
                   bint parallel) noexcept nogil:
    cdef floating lr = <floating>lr_, alpha = <floating>alpha_, alphac = <floating>alphac_
    cdef floating eps = <floating>eps_, weight_decay = <floating>weight_decay_
    cdef floating momentum = <floating>momentum_, zero = 0, a, b
    cdef Py_ssize_t i
    if parallel:
        for i in prange(n, schedule="static"):
            p[i], sq[i], a, b = rules.rmsprop(
                p[i], g[i], sq[i], gavg[i] if centered else zero,
                buf[i] if has_momentum else zero, lr, alpha, alphac, eps, weight_decay,
                momentum, decay, centered, has_momentum, maximize)
            if centered:
                gavg[i] = a
            if has_momentum:
                buf[i] = b
    else:
        for i in range(n):
            p[i], sq[i], a, b = rules.rmsprop(
                p[i], g[i], sq[i], gavg[i] if centered else zero,
                buf[i] if has_momentum else zero, lr, alpha, alphac, eps, weight_decay,
                momentum, decay, centered, has_momentum, maximize)
            if centered:
                gavg[i] = a
            if has_momentum:
                buf[i] = b


# -- entry points: dtype dispatch, GIL released for the whole loop ---------------------

def sgd(p, g, buf, double lr, double weight_decay, double momentum,
        double buf_grad_scale, bint decay, bint nesterov, bint maximize, bint parallel):
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>p)
    cdef void *pp = data(p), *gp = data(g), *bp = data(buf)
    cdef bint has_momentum = buf is not None
    if is_float32(p):
        with nogil:
            _sgd(<float*>pp, <float*>gp, <float*>bp, n, lr, weight_decay, momentum,
                 buf_grad_scale, decay, has_momentum, nesterov, maximize, parallel)
    else:
        with nogil:
            _sgd(<double*>pp, <double*>gp, <double*>bp, n, lr, weight_decay, momentum,
                 buf_grad_scale, decay, has_momentum, nesterov, maximize, parallel)


def adam(p, g, m, v, vmax, double beta1c, double beta2, double beta2c,
         double step_size, double inv_sqrt_bc2, double eps, double weight_decay,
         double param_scale, bint decay, bint decoupled, bint maximize, bint parallel):
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>p)
    cdef void *pp = data(p), *gp = data(g), *mp = data(m), *vp = data(v)
    cdef void *wp = data(vmax)
    cdef bint amsgrad = vmax is not None
    if is_float32(p):
        with nogil:
            _adam(<float*>pp, <float*>gp, <float*>mp, <float*>vp, <float*>wp, n, beta1c,
                  beta2, beta2c, step_size, inv_sqrt_bc2, eps, weight_decay, param_scale,
                  decay, decoupled, amsgrad, maximize, parallel)
    else:
        with nogil:
            _adam(<double*>pp, <double*>gp, <double*>mp, <double*>vp, <double*>wp, n,
                  beta1c, beta2, beta2c, step_size, inv_sqrt_bc2, eps, weight_decay,
                  param_scale, decay, decoupled, amsgrad, maximize, parallel)


def adagrad(p, g, acc, double clr, double eps, double weight_decay, bint decay,
            bint maximize, bint parallel):
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>p)
    cdef void *pp = data(p), *gp = data(g), *ap = data(acc)
    if is_float32(p):
        with nogil:
            _adagrad(<float*>pp, <float*>gp, <float*>ap, n, clr, eps, weight_decay,
                     decay, maximize, parallel)
    else:
        with nogil:
            _adagrad(<double*>pp, <double*>gp, <double*>ap, n, clr, eps, weight_decay,
                     decay, maximize, parallel)


def rmsprop(p, g, sq, gavg, buf, double lr, double alpha, double alphac, double eps,
            double weight_decay, double momentum, bint decay, bint maximize,
            bint parallel):
    cdef Py_ssize_t n = cnp.PyArray_SIZE(<cnp.ndarray>p)
    cdef void *pp = data(p), *gp = data(g), *sp = data(sq), *ap = data(gavg)
    cdef void *bp = data(buf)
    cdef bint centered = gavg is not None, has_momentum = buf is not None
    if is_float32(p):
        with nogil:
            _rmsprop(<float*>pp, <float*>gp, <float*>sp, <float*>ap, <float*>bp, n, lr,
                     alpha, alphac, eps, weight_decay, momentum, decay, centered,
                     has_momentum, maximize, parallel)
    else:
        with nogil:
            _rmsprop(<double*>pp, <double*>gp, <double*>sp, <double*>ap, <double*>bp, n,
                     lr, alpha, alphac, eps, weight_decay, momentum, decay, centered,
                     has_momentum, maximize, parallel)
