"""The roofline kernel: an Adam step's memory traffic with trivial math.

It reads four arrays and writes three, as Adam does (28 bytes per float32 element),
with one add per element, under the same serial/parallel policy and threads as the
Numba backend. Its time is what the memory system allows; an Adam kernel as fast as it
is limited by bandwidth alone.
"""

from __future__ import annotations

from numba import njit, prange

from ..backends.numba_cpu import JIT_OPTIONS, PARALLEL_MIN_SIZE


@njit(**JIT_OPTIONS)
def _same_traffic(p, g, m, v, parallel):
    if parallel:
        for i in prange(p.size):
            x = g[i]
            p[i], m[i], v[i] = p[i] + x, m[i] + x, v[i] + x
    else:
        for i in range(p.size):
            x = g[i]
            p[i], m[i], v[i] = p[i] + x, m[i] + x, v[i] + x


def adam_traffic(p, g, m, v) -> None:
    """Move exactly the bytes of one Adam step over ``p`` (and ``g``, ``m``, ``v``)."""
    _same_traffic(p, g, m, v, p.size >= PARALLEL_MIN_SIZE)
