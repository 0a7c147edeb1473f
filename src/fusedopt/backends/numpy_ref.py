"""The naive NumPy backend: textbook updates with a temporary per operator.

It is both the test oracle (run it in float64) and the benchmark baseline ("what a
NumPy user writes"). It is written from the published formulas, not from
``fusedopt.rules``: an oracle that shares code with the kernels proves nothing. It
writes its results into the given arrays, so it honours the same in-place contract as
the fused backends, but it makes no effort to be fast.
"""

from __future__ import annotations

import numpy as np


def sgd(param, grad, momentum_buffer, fresh_buffer, lr, momentum, dampening, weight_decay,
        nesterov, grad_scale, seed=0, out=None):
    # Sutskever et al. 2013 as written in torch.optim.SGD: d = g + wd * theta;
    # b_1 = d, b_t = mu * b_{t-1} + (1 - tau) * d; nesterov: d = d + mu * b_t.
    d = grad_scale * grad
    if weight_decay != 0:
        d = d + weight_decay * param
    if momentum_buffer is not None:
        if fresh_buffer:
            b = d.copy()
        else:
            b = momentum * momentum_buffer + (1 - dampening) * d
        momentum_buffer[...] = b
        d = d + momentum * b if nesterov else b
    param[...] = param - lr * d


def adam(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, step, lr, beta1, beta2, eps,
         weight_decay, decoupled, grad_scale, seed=0, out=None):
    # Kingma & Ba 2015, Algorithm 1; AdamW: Loshchilov & Hutter 2019 (decay scaled by lr
    # as torch does); AMSGrad: Reddi et al. 2018 with torch's bias-corrected max.
    g = grad_scale * grad
    if weight_decay != 0:
        if decoupled:
            param[...] = param - lr * weight_decay * param
        else:
            g = g + weight_decay * param
    m = beta1 * exp_avg + (1 - beta1) * g
    v = beta2 * exp_avg_sq + (1 - beta2) * g ** 2
    exp_avg[...] = m
    exp_avg_sq[...] = v
    if max_exp_avg_sq is not None:
        v = np.maximum(max_exp_avg_sq, v)
        max_exp_avg_sq[...] = v
    m_hat = m / (1 - beta1 ** step)
    v_hat = v / (1 - beta2 ** step)
    param[...] = param - lr * m_hat / (np.sqrt(v_hat) + eps)


def adagrad(param, grad, state_sum, step, lr, lr_decay, eps, weight_decay, grad_scale,
            seed=0, out=None):
    # Duchi et al. 2011, with torch's learning-rate decay lr / (1 + (t - 1) * decay).
    g = grad_scale * grad
    if weight_decay != 0:
        g = g + weight_decay * param
    s = state_sum + g ** 2
    state_sum[...] = s
    eta = lr / (1 + (step - 1) * lr_decay)
    param[...] = param - eta * g / (np.sqrt(s) + eps)


def rmsprop(param, grad, square_avg, grad_avg, momentum_buffer, lr, alpha, eps,
            weight_decay, momentum, grad_scale, seed=0, out=None):
    # Hinton's lecture 6e; centered form of Graves 2013 (variance instead of second moment).
    g = grad_scale * grad
    if weight_decay != 0:
        g = g + weight_decay * param
    v = alpha * square_avg + (1 - alpha) * g ** 2
    square_avg[...] = v
    if grad_avg is not None:
        mean = alpha * grad_avg + (1 - alpha) * g
        grad_avg[...] = mean
        v = v - mean ** 2
    update = g / (np.sqrt(v) + eps)
    if momentum_buffer is not None:
        b = momentum * momentum_buffer + update
        momentum_buffer[...] = b
        update = b
    param[...] = param - lr * update


def grad_stats(grad, parallel):
    # the plain definitions: sum of squares and the count of non-finite entries
    return float(np.sum(grad.astype(np.float64) ** 2)), int(np.sum(~np.isfinite(grad)))


def lion(param, grad, exp_avg, lr, beta1, beta2, weight_decay, grad_scale, seed=0,
         out=None):
    # Chen et al. 2023, Algorithm 2 (optax.lion): c = b1 * m + (1 - b1) * g;
    # theta -= lr * (sign(c) + wd * theta); m = b2 * m + (1 - b2) * g.
    g = grad_scale * grad
    c = beta1 * exp_avg + (1 - beta1) * g
    param[...] = param - lr * (np.sign(c) + weight_decay * param)
    exp_avg[...] = beta2 * exp_avg + (1 - beta2) * g


def adamax(param, grad, exp_avg, exp_inf, step, lr, beta1, beta2, eps, weight_decay,
           grad_scale, seed=0, out=None):
    # Kingma & Ba 2015, section 7.1 (Algorithm 2), with torch's eps inside the max:
    # u_t = max(beta2 * u_{t-1}, |g_t| + eps); theta -= lr / (1 - beta1^t) * m_t / u_t.
    g = grad_scale * grad
    if weight_decay != 0:
        g = g + weight_decay * param
    m = beta1 * exp_avg + (1 - beta1) * g
    u = np.maximum(beta2 * exp_inf, np.abs(g) + eps)
    exp_avg[...] = m
    exp_inf[...] = u
    param[...] = param - (lr / (1 - beta1 ** step)) * m / u


def adadelta(param, grad, square_avg, acc_delta, lr, rho, eps, weight_decay,
             grad_scale, seed=0, out=None):
    # Zeiler 2012, Algorithm 1: E[g^2] and E[dx^2] as running averages; the update is
    # RMS[dx]_{t-1} / RMS[g]_t * g, scaled by lr as torch does.
    g = grad_scale * grad
    if weight_decay != 0:
        g = g + weight_decay * param
    eg2 = rho * square_avg + (1 - rho) * g ** 2
    dx = np.sqrt(acc_delta + eps) / np.sqrt(eg2 + eps) * g
    square_avg[...] = eg2
    acc_delta[...] = rho * acc_delta + (1 - rho) * dx ** 2
    param[...] = param - lr * dx


def radam(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
          decoupled, grad_scale, seed=0, out=None):
    # Liu et al. 2020, Algorithm 2: the SMA length rho_t decides whether the adaptive
    # learning rate's variance is tractable (rho_t > 5, torch's threshold); if so the
    # step is rectified by r_t, else it is the bias-corrected momentum alone.
    g = grad_scale * grad
    if weight_decay != 0:
        if decoupled:
            param[...] = param * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * param
    m = beta1 * exp_avg + (1 - beta1) * g
    v = beta2 * exp_avg_sq + (1 - beta2) * g * g
    exp_avg[...] = m
    exp_avg_sq[...] = v
    m_hat = m / (1 - beta1 ** step)
    rho_inf = 2 / (1 - beta2) - 1
    rho = rho_inf - 2 * step * beta2 ** step / (1 - beta2 ** step)
    if rho > 5:
        l_t = np.sqrt(1 - beta2 ** step) / (np.sqrt(v) + eps)
        r_t = np.sqrt((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho))
        param[...] = param - lr * m_hat * r_t * l_t
    else:
        param[...] = param - lr * m_hat


def rprop(param, grad, prev, step_size, etaminus, etaplus, step_size_min, step_size_max,
          grad_scale, seed=0, out=None):
    # Riedmiller & Braun 1993 (Rprop without weight backtracking, "Rprop-" as torch):
    # grow the step where the gradient kept its sign, shrink it where it flipped and
    # forget that gradient, then move against the sign. torch's sign is 0 for NaN
    # (np.sign's is NaN), so signs are taken by comparison here.
    g = grad_scale * grad
    product = g * prev
    factor = np.where(product > 0, etaplus, np.where(product < 0, etaminus, 1.0)
                      ).astype(step_size.dtype)
    size = np.minimum(np.maximum(step_size * factor, step_size_min), step_size_max)
    g = np.where(product < 0, 0.0, g).astype(param.dtype)
    step_size[...] = size
    param[...] = param - np.where(g > 0, size, np.where(g < 0, -size, 0 * size))
    prev[...] = g


def nadam(param, grad, exp_avg, exp_avg_sq, step, mu_product, scalar_kinds, lr, beta1,
          beta2, eps, weight_decay, momentum_decay, decoupled, grad_scale, seed=0,
          out=None):
    # Dozat 2016 (Incorporating Nesterov Momentum into Adam), with torch's momentum
    # schedule mu_t = beta1 (1 - 0.96^(t psi) / 2) and its product kept in the dtype
    # of its state tensor (scalar_kinds[0]: float32 unless loaded otherwise):
    # theta -= lr [(1 - mu_t) g / (1 - prod_t) + mu_{t+1} m / (1 - prod_{t+1})] / d.
    kind = scalar_kinds[0]
    g = grad_scale * grad
    if weight_decay != 0:
        if decoupled:
            param[...] = param * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * param
    mu_t = beta1 * (1 - 0.5 * 0.96 ** (step * momentum_decay))
    mu_next = beta1 * (1 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))
    prod_t = float(kind(kind(mu_product) * kind(mu_t)))
    m = beta1 * exp_avg + (1 - beta1) * g
    v = beta2 * exp_avg_sq + (1 - beta2) * g * g
    exp_avg[...] = m
    exp_avg_sq[...] = v
    d = np.sqrt(v / (1 - beta2 ** step)) + eps
    param[...] = (param - lr * (1 - mu_t) / (1 - prod_t) * g / d
                  - lr * mu_next / (1 - prod_t * mu_next) * m / d)


def asgd(param, grad, ax, eta, mu, lambd, weight_decay, grad_scale, seed=0, out=None):
    # Polyak & Juditsky 1992 as torch.optim.ASGD: an SGD step of size eta with decay
    # lambd * eta, then the running average of the iterates (the iterate itself while
    # mu == 1).
    g = grad_scale * grad
    if weight_decay != 0:
        g = g + weight_decay * param
    param[...] = param * (1 - lambd * eta) - eta * g
    ax[...] = param if mu == 1 else ax + mu * (param - ax)


def lamb(param, grad, exp_avg, exp_avg_sq, step, lr, beta1, beta2, eps, weight_decay,
         grad_scale, seed=0, out=None, stage=None):
    # You et al. 2020, "Large Batch Optimization for Deep Learning", Algorithm 2
    # (LAMB), with phi the identity and optax.lamb's guard against a zero norm (the
    # trust ratio is 1 there), and against a norm that is not finite. Everything is
    # computed before the writes, which stage (a list) defers.
    g = grad_scale * grad
    m = beta1 * exp_avg + (1 - beta1) * g
    v = beta2 * exp_avg_sq + (1 - beta2) * g ** 2
    m_hat = m / (1 - beta1 ** step)
    v_hat = v / (1 - beta2 ** step)
    r = m_hat / (np.sqrt(v_hat) + eps) + weight_decay * param
    param_norm = np.linalg.norm(param.astype(np.float64))
    update_norm = np.linalg.norm(r.astype(np.float64))
    trust = (param_norm / update_norm if np.isfinite(param_norm) and param_norm > 0
             and np.isfinite(update_norm) and update_norm > 0 else 1.0)
    _write([(exp_avg, m), (exp_avg_sq, v), (param, param - lr * trust * r)], stage)


def muon(param, grad, momentum_buffer, shape, lr, weight_decay, momentum, nesterov, a, b,
         c, eps, ns_steps, adjust_lr_fn, grad_scale, seed=0, out=None, work=None):
    # Jordan et al. 2024 ("Muon: An optimizer for hidden layers in neural networks")
    # as torch.optim.Muon writes it: momentum as a lerp, the quintic Newton-Schulz
    # iteration on the wide orientation of the update, then decoupled weight decay and
    # the shape-adjusted learning rate.
    rows, cols = shape
    g = grad_scale * grad
    buf = momentum_buffer + (1 - momentum) * (g - momentum_buffer)
    momentum_buffer[...] = buf
    u = g + momentum * (buf - g) if nesterov else buf
    x = u.reshape(rows, cols)
    if rows > cols:
        x = x.T
    x = x / max(np.linalg.norm(x), eps)
    for _ in range(ns_steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    if rows > cols:
        x = x.T
    if adjust_lr_fn == "match_rms_adamw":
        lr_t = lr * 0.2 * np.sqrt(max(rows, cols))
    else:
        lr_t = lr * np.sqrt(max(1.0, rows / cols))
    param[...] = param * (1 - lr * weight_decay) - lr_t * x.reshape(-1)


def adafactor(param, grad, row_var, col_var, variance, shape, step, lr, beta2_decay,
              eps1, eps2, d, weight_decay, grad_scale, seed=0, out=None, stage=None):
    # Shazeer & Stern 2018 (Algorithm 4 with update clipping) as torch.optim.Adafactor
    # writes it: lr caps the relative step size rho and scales the decoupled weight
    # decay; eps1 clamps the variance estimate (not the factors); means, not sums.
    # Everything is computed before the writes, which stage (a list) defers.
    if eps1 is None:
        eps1 = np.finfo(param.dtype).eps
    g = grad_scale * grad
    beta2c = step ** beta2_decay  # the weight of the new squared gradient
    rho = min(lr, 1 / np.sqrt(step))
    alpha = max(eps2, np.sqrt(np.mean(param ** 2))) * rho
    theta = param * (1 - lr * weight_decay)
    if variance is None:
        n, m = shape[-2], shape[-1]
        g2 = (g ** 2).reshape(-1, n, m)
        r = row_var.reshape(-1, n)
        c = col_var.reshape(-1, m)
        r = r + beta2c * (g2.mean(axis=2) - r)
        c = c + beta2c * (g2.mean(axis=1) - c)
        v = (r[:, :, None] * c[:, None, :]
             / np.maximum(r.mean(axis=1), eps1)[:, None, None]).reshape(-1)
        writes = [(row_var, r.reshape(-1)), (col_var, c.reshape(-1))]
    else:
        v = variance + beta2c * (g ** 2 - variance)
        writes = [(variance, v)]
    u = g / np.sqrt(np.maximum(v, eps1 * eps1))
    denom = max(1.0, np.sqrt(np.mean(u ** 2)) / d)
    writes.append((param, theta - alpha / denom * u))
    _write(writes, stage)


def _write(writes, stage):
    # each (array, value) of writes, now, or (stage: a list) as one callable appended
    def commit():
        for array, value in writes:
            array[...] = value
    if stage is None:
        commit()
    else:
        stage.append(commit)
