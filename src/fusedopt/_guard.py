"""The last check before a step writes: no two arrays it touches share a byte.

Every step (``fusedopt.optim``, ``fusedopt.torch``, ``fusedopt.functional``) lists
each array its kernels will read or write (parameters, gradients, state, master
copies) and checks their byte ranges for overlap, whatever object owns the memory: a
gradient made with ``as_strided``, ``np.frombuffer`` or a NumPy view of a torch
tensor is caught as surely as a plain view. The ranges are read from the live
arrays every step; nothing is cached.

The addresses and the sweep run in C (``fusedopt._overlap``, ~20 ns per array);
without the compiled module their pure-Python twins below do the same, slower
(reading an address from Python costs ~1.5 us); a test holds the two to the same
answers.
"""

from __future__ import annotations

from ._checks import _name

def py_bounds(arrays: list, starts: list, stops: list) -> None:
    """Append each ndarray's byte range ``[start, stop)`` to the two lists (every
    byte an element may occupy, whatever its strides; empty for size 0)."""
    for a in arrays:
        lo = hi = a.__array_interface__["data"][0]
        if a.size:
            hi += a.itemsize
            for n, s in zip(a.shape, a.strides):
                extent = (n - 1) * s
                if extent < 0:
                    lo += extent
                else:
                    hi += extent
        starts.append(lo)
        stops.append(hi)


def py_first_overlap(starts: list, stops: list) -> tuple[int, int] | None:
    """Indices of two non-empty ranges that intersect, or None."""
    far = None
    for k in sorted(range(len(starts)), key=starts.__getitem__):
        if starts[k] >= stops[k]:
            continue
        if far is not None and starts[k] < stops[far]:
            return far, k
        if far is None or stops[k] > stops[far]:
            far = k
    return None


def py_overlap(arrays: list) -> tuple[int, int] | None:
    """``py_first_overlap`` over the byte ranges of ``arrays``."""
    starts: list[int] = []
    stops: list[int] = []
    py_bounds(arrays, starts, stops)
    return py_first_overlap(starts, stops)


try:
    from ._overlap import (common_plan, count_steps, disjoint, first_overlap, overlap,
                           plan_table, same_groups, tensor_plan)
    COMPILED = True
except ImportError:  # running from a source tree without the compiled modules
    first_overlap, overlap, COMPILED = py_first_overlap, py_overlap, False
    # the full plans, in Python, do the work of the C fast paths
    common_plan = tensor_plan = count_steps = same_groups = plan_table = None
    disjoint = None  # (fusedopt._torch_ext pairs with it: off without it)


def check_arrays(arrays: list, names) -> None:
    """ValueError if two of the host ``arrays`` share a byte; ``names()`` lists
    their names (called on error only: formatting them costs more than the check)."""
    pair = overlap(arrays)
    if pair is not None:
        _raise(pair, names)


def check_spans(spans: list[tuple[int, int]], names) -> None:
    """The same over raw byte ranges ``(start, stop)`` (CUDA arrays, tensors)."""
    pair = first_overlap([a for a, _ in spans], [b for _, b in spans])
    if pair is not None:
        _raise(pair, names)


def _raise(pair: tuple[int, int], names) -> None:
    a, b = sorted(pair)
    listed = names()
    raise ValueError(
        f"{_name(listed[b])}: shares memory with {_name(listed[a])}; a step writes "
        "parameters and state while it reads gradients, so each array must own its "
        "elements (pass separate arrays)")
