"""Roofline kernels: an optimizer step's memory traffic with trivial math.

An update with ``k`` state arrays reads ``k + 2`` arrays (param, grad, state) and
writes ``k + 1`` (param, state): ``(2k + 3) * itemsize`` bytes per element, 28 for
float32 Adam (k = 2); an algorithm with a read-only reduction pass first (LAMB's
norms: parameter, gradient and two state arrays) reads those once more, 44 for
float32 LAMB; Adafactor's factored step reads the gradient for its means, then the
parameter and gradient for its norms, before its update: 24. These kernels move exactly those bytes with one add per element,
under the Numba backend's serial/parallel policy and threads. Their time is what the
memory system allows; a kernel as fast is limited by bandwidth alone.
"""

from __future__ import annotations

from numba import njit, prange

from ..backends import jitcache, policy
from ..backends.numba_cpu import JIT_OPTIONS


@jitcache.jit(njit(**JIT_OPTIONS))
def _traffic0(p, g, parallel):
    if parallel:
        for i in prange(p.size):
            p[i] = p[i] + g[i]
    else:
        for i in range(p.size):
            p[i] = p[i] + g[i]


@jitcache.jit(njit(**JIT_OPTIONS))
def _traffic1(p, g, a, parallel):
    if parallel:
        for i in prange(p.size):
            x = g[i]
            p[i], a[i] = p[i] + x, a[i] + x
    else:
        for i in range(p.size):
            x = g[i]
            p[i], a[i] = p[i] + x, a[i] + x


@jitcache.jit(njit(**JIT_OPTIONS))
def _traffic2(p, g, a, b, parallel):
    if parallel:
        for i in prange(p.size):
            x = g[i]
            p[i], a[i], b[i] = p[i] + x, a[i] + x, b[i] + x
    else:
        for i in range(p.size):
            x = g[i]
            p[i], a[i], b[i] = p[i] + x, a[i] + x, b[i] + x


@jitcache.jit(njit(**JIT_OPTIONS))
def _traffic3(p, g, a, b, c, parallel):
    if parallel:
        for i in prange(p.size):
            x = g[i]
            p[i], a[i], b[i], c[i] = p[i] + x, a[i] + x, b[i] + x, c[i] + x
    else:
        for i in range(p.size):
            x = g[i]
            p[i], a[i], b[i], c[i] = p[i] + x, a[i] + x, b[i] + x, c[i] + x


_KERNELS = (_traffic0, _traffic1, _traffic2, _traffic3)


@jitcache.jit(njit(**{**JIT_OPTIONS, "fastmath": {"reassoc", "contract"}}))
def _read_only(p, g, a, b, parallel):
    # a reduction pass's traffic (LAMB's norms): four arrays read, nothing written;
    # summed in any order so that it vectorises, as the reductions it stands for
    s = 0.0
    if parallel:
        for i in prange(p.size):
            s += p[i] + g[i] + a[i] + b[i]
    else:
        for i in range(p.size):
            s += p[i] + g[i] + a[i] + b[i]
    return s


@jitcache.jit(njit(**{**JIT_OPTIONS, "fastmath": {"reassoc", "contract"}}))
def _read_one(a, parallel):
    s = 0.0
    if parallel:
        for i in prange(a.size):
            s += a[i]
    else:
        for i in range(a.size):
            s += a[i]
    return s


def bytes_per_element(n_state: int, itemsize: int, state_itemsize: int | None = None
                      ) -> int:
    """Minimal traffic of an update with ``n_state`` state arrays (of
    ``state_itemsize`` bytes per element, default ``itemsize``)."""
    state_itemsize = itemsize if state_itemsize is None else state_itemsize
    return 3 * itemsize + 2 * n_state * state_itemsize


def same_traffic(p, g, *state) -> None:
    """Move exactly the bytes of one update of ``p`` with these state arrays."""
    _KERNELS[len(state)](p, g, *state, p.size >= policy.PARALLEL_MIN_SIZE)


def read_each(*arrays) -> float:
    """Read each array once, one pass each, writing nothing (Adafactor's means and
    norms passes)."""
    return sum(_read_one(a, a.size >= policy.PARALLEL_MIN_SIZE) for a in arrays)


def read_traffic(p, g, a, b) -> float:
    """Read the four arrays once, writing nothing: a reduction pass's bytes."""
    return _read_only(p, g, a, b, p.size >= policy.PARALLEL_MIN_SIZE)
