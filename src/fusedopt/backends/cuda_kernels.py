"""CUDA kernels of the ``cuda`` backend: grid-stride loops over the rules.

Importable without a GPU (``tests/test_cuda.py`` compiles them to PTX to check the
types); ``numba_cuda`` launches them. Every kernel casts its scalars to the array
dtype first, so a float32 kernel stays float32. State goes through ``lowbit.load``
and ``store``, so it may be bf16 bits (uint16) beside float32 parameters.
"""

from __future__ import annotations

import numpy as np
from numba import cuda

from .. import _device, rules
from ..lowbit import store
from ..rules import cast_all, cast_like
from . import template

_jit = cuda.jit(cache=not _device.simulated())


@_jit
def _fill(a, value):
    value = cast_like(value, a)
    for i in range(cuda.grid(1), a.size, cuda.gridsize(1)):
        store(a, i, value)


def _template(rule, flags: tuple[bool, ...], slots: int):
    """The grid-stride twin of ``numba_cpu._template``: ``template.element`` (``rule``
    with its options ``flags`` frozen) over each element of ``p``, with its state
    slots ``s0..s3`` (None where absent or beyond ``slots``) and its per-step host
    scalars ``h``. Parameters are float32 or float64 here (bf16 state only)."""
    step = template.element(rule, flags, slots)

    def kernel(p, g, h, grad_scale, s0, s1, s2, s3):
        h, grad_scale, zero = cast_all(h, p), cast_like(grad_scale, p), cast_like(0.0, p)
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            step(p, g, i, h, grad_scale, zero, 0, None, s0, s1, s2, s3)
    return kernel


#: compiled kernels, by ``(name, flags, slots)``; see ``kernel``
KERNELS: dict[tuple, object] = {}


def kernel(name: str, flags: tuple[bool, ...], slots: int):
    """The CUDA kernel of ``rules.<name>`` with these options (one per combination in
    use; NumPy bools find the same entry)."""
    key = (name, flags, slots)
    k = KERNELS.get(key)
    if k is None:
        k = KERNELS[key] = _jit(_template(getattr(rules, name), tuple(map(bool, flags)),
                                          slots))
    return k


@_jit
def _grad_stats(g, out):
    # out[0] += sum of squares (float64), out[1] += count of non-finite elements;
    # one atomic pair per thread after its grid-stride partial sums
    sumsq, bad = 0.0, 0.0
    for i in range(cuda.grid(1), g.size, cuda.gridsize(1)):
        x = np.float64(g[i])
        sumsq += x * x
        if not (abs(x) <= 1.7976931348623157e308):
            bad += 1.0
    cuda.atomic.add(out, 0, sumsq)
    cuda.atomic.add(out, 1, bad)




def _norms_template(rule, flags: tuple[bool, ...], slots: int):
    """The grid-stride twin of ``numba_cpu._norms_template``: ``out[0]`` and
    ``out[1]`` (float64) gain the sums of squares of the two values ``rule`` gives
    per element, one atomic pair per thread after its partial sums; reads only."""
    pair = template.terms(rule, flags, slots)

    def kernel(p, g, h, grad_scale, out, s0, s1, s2, s3):
        h, grad_scale, zero = cast_all(h, p), cast_like(grad_scale, p), cast_like(0.0, p)
        sa, sb = 0.0, 0.0
        for i in range(cuda.grid(1), p.size, cuda.gridsize(1)):
            a, b = pair(p, g, i, h, grad_scale, zero, s0, s1, s2, s3)
            x, y = np.float64(a), np.float64(b)
            sa += x * x
            sb += y * y
        cuda.atomic.add(out, 0, sa)
        cuda.atomic.add(out, 1, sb)
    return kernel


#: compiled reduction passes, by ``(name, flags, slots)``; see ``norms_kernel``
NORMS: dict[tuple, object] = {}


def norms_kernel(name: str, flags: tuple[bool, ...], slots: int):
    """The CUDA reduction pass of ``rules.<name>_norms`` (``Spec.norms``)."""
    key = (name, tuple(map(bool, flags)), slots)
    k = NORMS.get(key)
    if k is None:
        k = NORMS[key] = _jit(_norms_template(getattr(rules, name + "_norms"), key[1],
                                              slots))
    return k
