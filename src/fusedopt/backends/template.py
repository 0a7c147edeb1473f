"""The body every compiled loop shares: one element's update by an algorithm's rule.

``element(rule, flags, slots)`` returns a jitable ``step(p, g, i, h, grad_scale,
zero, seed, out, s0, s1, s2, s3)`` that reads element ``i`` of the parameter, its
gradient and its state slots, calls ``rule`` and writes the results back. The Numba
CPU loop (``numba_cpu._template``: serial and ``prange``) and the CUDA grid-stride
loop (``cuda_kernels._template``) are the only callers; the Cython backend mirrors
this body in its own template.

Conventions, for every rule: ``rule(p, g, *state, *h, *flags, grad_scale)`` returns
``(p, *state)``, one value per state slot, in compute precision; ``h`` are the
per-step host scalars (``fusedopt.scalars``) already cast to the compute dtype;
``flags`` are the boolean options. ``rule``, ``flags`` and ``slots`` are closure
constants, frozen by Numba (the branches on them are removed when compiled). An
absent slot (an option that is off, e.g. ``max_exp_avg_sq`` without amsgrad) is
None: ``load_or`` gives ``zero`` and ``store_if`` nothing, chosen by type at compile
time, so no loop holds a branch for it.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numba
from numba.core import types
from numba.extending import intrinsic, overload, register_jitable

from .. import lowbit, rules
from . import policy
from ..lowbit import load, load_or, store_if, store_param


def _digest() -> int:
    """A hash of every source compiled into the kernels besides the backend modules
    themselves: the rules, the bf16 loads and stores, this body."""
    h = hashlib.sha256()
    for path in (rules.__file__, lowbit.__file__, __file__):
        h.update(Path(path).read_bytes())
    return int(h.hexdigest()[:15], 16)


#: Numba's on-disk cache is keyed on a kernel's own source file and the values of its
#: closure, not on the functions it calls: every kernel's closure holds this hash
#: (``element``; ``numba_cpu._grad_stats``), so editing a rule never loads stale
#: machine code.
SOURCES = _digest()

MAX_SLOTS = policy.MAX_SLOTS  # s0..s3


def element(rule, flags: tuple[bool, ...], slots: int):
    """The jitable one-element update of ``rule`` with these options and slots."""
    if not 1 <= slots <= MAX_SLOTS:
        raise ValueError(f"slots: expected 1 to {MAX_SLOTS}, got {slots}")
    n, sources = slots, SOURCES

    @register_jitable
    def step(p, g, i, h, grad_scale, zero, seed, out, s0, s1, s2, s3):
        sources  # noqa: B018 - in the closure: the cache key (see SOURCES)
        a0 = load_or(s0, i, zero)
        if n == 1:
            new = rule(load(p, i), load(g, i), a0, *h, *flags, grad_scale)
        elif n == 2:
            new = rule(load(p, i), load(g, i), a0, load_or(s1, i, zero), *h, *flags,
                       grad_scale)
        elif n == 3:
            new = rule(load(p, i), load(g, i), a0, load_or(s1, i, zero),
                       load_or(s2, i, zero), *h, *flags, grad_scale)
        else:
            new = rule(load(p, i), load(g, i), a0, load_or(s1, i, zero),
                       load_or(s2, i, zero), load_or(s3, i, zero), *h, *flags,
                       grad_scale)
        store_param(p, i, new[0], seed, out)
        store_if(s0, i, new[1])
        if n > 1:
            store_if(s1, i, new[2])
        if n > 2:
            store_if(s2, i, new[3])
        if n > 3:
            store_if(s3, i, new[4])

    return step


def terms(rule, flags: tuple[bool, ...], slots: int):
    """The jitable ``terms(p, g, i, h, grad_scale, zero, s0, s1, s2, s3)``: the two
    values a reduction rule (``rules.<name>_norms``) gives for element ``i``, whose
    squares the reduction loops sum. Reads only: it stores nothing."""
    if not 1 <= slots <= MAX_SLOTS:
        raise ValueError(f"slots: expected 1 to {MAX_SLOTS}, got {slots}")
    n, sources = slots, SOURCES

    @register_jitable
    def pair(p, g, i, h, grad_scale, zero, s0, s1, s2, s3):
        sources  # noqa: B018 - in the closure: the cache key (see SOURCES)
        a0 = load_or(s0, i, zero)
        if n == 1:
            return rule(load(p, i), load(g, i), a0, *h, *flags, grad_scale)
        elif n == 2:
            return rule(load(p, i), load(g, i), a0, load_or(s1, i, zero), *h, *flags,
                        grad_scale)
        elif n == 3:
            return rule(load(p, i), load(g, i), a0, load_or(s1, i, zero),
                        load_or(s2, i, zero), *h, *flags, grad_scale)
        return rule(load(p, i), load(g, i), a0, load_or(s1, i, zero),
                    load_or(s2, i, zero), load_or(s3, i, zero), *h, *flags, grad_scale)

    return pair


# -- multi-tensor calls: tensors given by address -------------------------------------

@intrinsic
def _pointer(typingctx, address, like):
    """The int64 ``address`` as a pointer to elements of ``like``'s dtype."""
    if not isinstance(like, types.Array):
        return None
    sig = types.CPointer(like.dtype)(address, like)

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], context.get_value_type(signature.return_type))
    return sig, codegen


def array_at(address, n, like):
    """The ``n`` elements of ``like``'s dtype at ``address`` as a 1-D array; None
    where ``like`` is None (an absent slot, chosen by type at compile time). Only
    compiled code uses it (the overload below): the addresses are of tensors the
    caller has checked (dtype, size, dense, no overlap) and keeps alive."""
    raise NotImplementedError("template.array_at runs in compiled code only")


@overload(array_at, target="generic")
def _array_at_impl(address, n, like):
    if isinstance(like, (types.NoneType, types.Omitted)):
        return lambda address, n, like: None
    return lambda address, n, like: numba.carray(_pointer(address, like), n)

TABLE_COLUMNS = policy.TABLE_COLUMNS  # parameter, gradient, s0..s3 (0: absent)
