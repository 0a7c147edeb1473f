# cython: language_level=3, cdivision=True
"""The Cython mirror of src/fusedopt/rules.py: same functions, same argument order,
same operation order. The parity tests hold both to torch.optim and to the NumPy
oracle; change one, change the other.

cdivision: Cython's Python-style division checks for zero and raises, a branch that
stops GCC from vectorising any loop calling these rules (IEEE division is what torch
and the Numba rules do: x/0 is inf or NaN)."""

from cython cimport floating
from libc.math cimport sqrt as sqrt_double
from libc.math cimport fabs as fabs_double
from libc.math cimport fabsf, sqrtf
from libc.stdint cimport uint32_t, uint64_t
from libc.string cimport memcpy


cdef inline floating sqrt(floating x) noexcept nogil:
    # libc's sqrt is double: calling it on a float would promote the whole
    # expression to double and halve the vector width (the Numba rules' trap too).
    if floating is float:
        return sqrtf(x)
    else:
        return sqrt_double(x)


cdef inline floating fabs(floating x) noexcept nogil:
    # as sqrt: libc's fabs is double
    if floating is float:
        return fabsf(x)
    else:
        return fabs_double(x)


cdef inline (floating, floating) sgd(
        floating p, floating g, floating buf, floating lr, floating weight_decay,
        floating momentum, floating buf_grad_scale,
        bint decay, bint has_momentum, bint nesterov, floating grad_scale) noexcept nogil:
    g = grad_scale * g
    if decay:
        g = g + weight_decay * p
    if has_momentum:
        buf = momentum * buf + buf_grad_scale * g
        if nesterov:
            g = g + momentum * buf
        else:
            g = buf
    p = p - lr * g
    return p, buf


cdef inline (floating, floating, floating, floating) _adam_moments(
        floating p, floating g, floating m, floating v, floating beta1c, floating beta2,
        floating beta2c, floating weight_decay, floating param_scale, bint decay,
        bint decoupled, floating grad_scale) noexcept nogil:
    g = grad_scale * g
    if decay:
        if decoupled:
            p = p * param_scale
        else:
            g = g + weight_decay * p
    m = m + beta1c * (g - m)
    v = beta2 * v + beta2c * g * g
    return p, g, m, v


cdef inline (floating, floating, floating, floating) adam(
        floating p, floating g, floating m, floating v, floating vmax, floating beta1c,
        floating beta2, floating beta2c, floating step_size, floating inv_sqrt_bc2,
        floating eps, floating weight_decay, floating param_scale,
        bint decay, bint decoupled, bint amsgrad, floating grad_scale) noexcept nogil:
    cdef floating denom
    p, g, m, v = _adam_moments(p, g, m, v, beta1c, beta2, beta2c, weight_decay,
                               param_scale, decay, decoupled, grad_scale)
    if amsgrad:
        # torch.maximum: a NaN wins (Python's max drops it). Written as one select
        # (rules.py: an if on ``v > vmax or v != v``): the short-circuit branch kept
        # GCC from vectorising the loop (8.5x slower at 1M).
        vmax = v if (v > vmax) | (v != v) else vmax
        denom = sqrt(vmax) * inv_sqrt_bc2 + eps
    else:
        denom = sqrt(v) * inv_sqrt_bc2 + eps
    p = p - step_size * m / denom
    return p, m, v, vmax


cdef inline (floating, floating) adagrad(
        floating p, floating g, floating acc, floating clr, floating eps,
        floating weight_decay, bint decay, floating grad_scale) noexcept nogil:
    g = grad_scale * g
    if decay:
        g = g + weight_decay * p
    acc = acc + g * g
    p = p - clr * g / (sqrt(acc) + eps)
    return p, acc


cdef inline (floating, floating, floating, floating) rmsprop(
        floating p, floating g, floating sq, floating gavg, floating buf, floating lr,
        floating alpha, floating alphac, floating eps, floating weight_decay,
        floating momentum, bint decay, bint centered, bint has_momentum,
        floating grad_scale) noexcept nogil:
    cdef floating avg
    g = grad_scale * g
    if decay:
        g = g + weight_decay * p
    sq = alpha * sq + alphac * g * g
    if centered:
        gavg = gavg + alphac * (g - gavg)
        avg = sqrt(sq - gavg * gavg) + eps
    else:
        avg = sqrt(sq) + eps
    if has_momentum:
        buf = momentum * buf + g / avg
        p = p - lr * buf
    else:
        p = p - lr * g / avg
    return p, sq, gavg, buf


cdef inline (floating, floating) lion(
        floating p, floating g, floating m, floating lr, floating beta1, floating beta1c,
        floating beta2, floating beta2c, floating param_scale,
        bint decay, floating grad_scale) noexcept nogil:
    cdef floating c, u
    g = grad_scale * g
    if decay:
        p = p * param_scale
    c = beta1 * m + beta1c * g
    u = lr if c > 0 else (-lr if c < 0 else c * lr)
    p = p - u
    m = beta2 * m + beta2c * g
    return p, m


cdef inline (floating, floating, floating) adamax(
        floating p, floating g, floating m, floating u, floating beta1c, floating beta2,
        floating eps, floating clr, floating weight_decay, bint decay,
        floating grad_scale) noexcept nogil:
    cdef floating a, b
    g = grad_scale * g
    if decay:
        g = g + weight_decay * p
    m = m + beta1c * (g - m)
    a = beta2 * u
    b = fabs(g) + eps
    u = a if a > b else b
    u = a if a != a else u  # torch.maximum: a NaN wins (b's by the line above)
    p = p - clr * m / u
    return p, m, u


cdef inline (floating, floating, floating) adadelta(
        floating p, floating g, floating sq, floating acc, floating lr, floating rho,
        floating rhoc, floating eps, floating weight_decay, bint decay,
        floating grad_scale) noexcept nogil:
    cdef floating delta
    g = grad_scale * g
    if decay:
        g = g + weight_decay * p
    sq = rho * sq + rhoc * g * g
    delta = sqrt(acc + eps) / sqrt(sq + eps) * g
    acc = rho * acc + rhoc * delta * delta
    p = p - lr * delta
    return p, sq, acc


cdef inline (floating, floating, floating) radam(
        floating p, floating g, floating m, floating v, floating beta1c, floating beta2,
        floating beta2c, floating step_size, floating rect, floating eps,
        floating weight_decay, floating param_scale, bint decay, bint decoupled,
        floating grad_scale) noexcept nogil:
    cdef floating k
    p, g, m, v = _adam_moments(p, g, m, v, beta1c, beta2, beta2c, weight_decay,
                               param_scale, decay, decoupled, grad_scale)
    k = rect / (sqrt(v) + eps) if rect > 0 else step_size
    p = p - k * m
    return p, m, v


cdef inline (floating, floating, floating) rprop(
        floating p, floating g, floating prev, floating size, floating etaminus,
        floating etaplus, floating size_min, floating size_max,
        floating grad_scale) noexcept nogil:
    cdef floating s, zero = 0
    g = grad_scale * g
    s = g * prev
    if s > zero:
        size = size * etaplus
    elif s < zero:
        size = size * etaminus
        g = zero
    size = size_min if size < size_min else size
    size = size_max if size > size_max else size
    p = p - (size if g > zero else (-size if g < zero else zero * size))
    return p, g, size


cdef inline (floating, floating, floating) nadam(
        floating p, floating g, floating m, floating v, floating beta1c, floating beta2,
        floating beta2c, floating inv_bc2, floating grad_step, floating avg_step,
        floating eps, floating weight_decay, floating param_scale, bint decay,
        bint decoupled, floating grad_scale) noexcept nogil:
    p, g, m, v = _adam_moments(p, g, m, v, beta1c, beta2, beta2c, weight_decay,
                               param_scale, decay, decoupled, grad_scale)
    p = p - (grad_step * g + avg_step * m) / (sqrt(v * inv_bc2) + eps)
    return p, m, v


cdef inline floating pick(floating first, floating a, floating b) noexcept nogil:
    # rules.pick: a where first is 1, b where 0, selected on the bits of both so that
    # GCC computes (and reads) both sides whatever first is
    cdef uint32_t a32, b32, m32
    cdef uint64_t a64, b64, m64
    if floating is float:
        m32 = <uint32_t>0 - <uint32_t>first
        memcpy(&a32, &a, 4)
        memcpy(&b32, &b, 4)
        a32 = (a32 & m32) | (b32 & ~m32)
        memcpy(&a, &a32, 4)
    else:
        m64 = <uint64_t>0 - <uint64_t>first
        memcpy(&a64, &a, 8)
        memcpy(&b64, &b, 8)
        a64 = (a64 & m64) | (b64 & ~m64)
        memcpy(&a, &a64, 8)
    return a


cdef inline (floating, floating) asgd(
        floating p, floating g, floating ax, floating eta, floating param_scale,
        floating weight_decay, floating mu, floating average, bint decay,
        floating grad_scale) noexcept nogil:
    g = grad_scale * g
    if decay:
        g = g + weight_decay * p
    p = p * param_scale
    p = p - eta * g
    ax = pick(average, ax + (p - ax) * mu, p)
    return p, ax


cdef inline (floating, floating, floating) _lamb_direction(
        floating p, floating g, floating m, floating v, floating beta1c, floating beta2,
        floating beta2c, floating inv_bc1, floating inv_sqrt_bc2, floating eps,
        floating weight_decay, bint decay, floating grad_scale) noexcept nogil:
    cdef floating u
    g = grad_scale * g
    m = m + beta1c * (g - m)
    v = beta2 * v + beta2c * g * g
    u = m * inv_bc1 / (sqrt(v) * inv_sqrt_bc2 + eps)
    if decay:
        u = u + weight_decay * p
    return u, m, v


cdef inline (floating, floating, floating) lamb(
        floating p, floating g, floating m, floating v, floating beta1c, floating beta2,
        floating beta2c, floating inv_bc1, floating inv_sqrt_bc2, floating eps,
        floating weight_decay, floating step_size, bint decay,
        floating grad_scale) noexcept nogil:
    cdef floating u
    u, m, v = _lamb_direction(p, g, m, v, beta1c, beta2, beta2c, inv_bc1, inv_sqrt_bc2,
                              eps, weight_decay, decay, grad_scale)
    p = p - step_size * u
    return p, m, v


cdef inline (floating, floating) lamb_norms(
        floating p, floating g, floating m, floating v, floating beta1c, floating beta2,
        floating beta2c, floating inv_bc1, floating inv_sqrt_bc2, floating eps,
        floating weight_decay, floating step_size, bint decay,
        floating grad_scale) noexcept nogil:
    cdef floating u
    u, m, v = _lamb_direction(p, g, m, v, beta1c, beta2, beta2c, inv_bc1, inv_sqrt_bc2,
                              eps, weight_decay, decay, grad_scale)
    return p, u


cdef extern from *:
    """
    /* a * b + c as one FMA where the ISA has it (as the Numba rule asks LLVM for
       and torch's vectorised kernels compute it); explicit, since the kernels are
       compiled with -ffp-contract=off (CMakeLists.txt) */
    #if defined(__FMA__) || defined(__FP_FAST_FMA)  /* x86 with FMA; aarch64 */
    #define fusedopt_muladd_f(a, b, c) __builtin_fmaf((a), (b), (c))
    #define fusedopt_muladd_d(a, b, c) __builtin_fma((a), (b), (c))
    #else
    #define fusedopt_muladd_f(a, b, c) ((a) * (b) + (c))
    #define fusedopt_muladd_d(a, b, c) ((a) * (b) + (c))
    #endif
    """
    float fusedopt_muladd_f(float a, float b, float c) noexcept nogil
    double fusedopt_muladd_d(double a, double b, double c) noexcept nogil


cdef inline floating _lerp(floating start, floating end, floating w,
                           bint small) noexcept nogil:
    cdef floating coeff = w if small else w - w / w
    cdef floating base = start if small else end
    if floating is float:
        return fusedopt_muladd_f(coeff, end - start, base)
    else:
        return fusedopt_muladd_d(coeff, end - start, base)


cdef inline (floating, floating) muon_momentum(
        floating u, floating g, floating buf, floating w, floating mu, bint nesterov,
        bint small_w, bint small_mu, floating grad_scale) noexcept nogil:
    g = grad_scale * g
    buf = _lerp(buf, g, w, small_w)
    if nesterov:
        u = _lerp(g, buf, mu, small_mu)
    else:
        u = buf
    return u, buf


cdef inline floating adafactor_root(floating a, floating c, floating s, floating t,
                                    floating eps1sq, floating floor) noexcept nogil:
    return floor if a * c < eps1sq else s * t


cdef inline (floating, floating) _adafactor_direction(
        floating g, floating v, floating w, floating one, floating eps1sq,
        bint factored, bint small, floating grad_scale) noexcept nogil:
    g = grad_scale * g
    if factored:
        return v * g, v
    v = _lerp(v, g * g, w, small)
    cdef floating m = eps1sq if v < eps1sq else v
    return one / sqrt(m) * g, v


cdef inline (floating, floating) adafactor_update(
        floating p, floating g, floating v, floating w, floating one, floating eps1sq,
        floating param_scale, floating eps2, floating rho, floating d, floating numel,
        floating step_size, bint factored, bint small, bint decay,
        floating grad_scale) noexcept nogil:
    cdef floating u
    u, v = _adafactor_direction(g, v, w, one, eps1sq, factored, small, grad_scale)
    if decay:
        p = p * param_scale
    p = p - step_size * u
    return p, v


cdef inline (floating, floating) adafactor_update_norms(
        floating p, floating g, floating v, floating w, floating one, floating eps1sq,
        floating param_scale, floating eps2, floating rho, floating d, floating numel,
        floating step_size, bint factored, bint small, bint decay,
        floating grad_scale) noexcept nogil:
    cdef floating u
    u, v = _adafactor_direction(g, v, w, one, eps1sq, factored, small, grad_scale)
    return p, u
