"""The last check before a step writes: no two arrays it touches share a byte.

Every step (``fusedopt.optim``, ``fusedopt.torch``, ``fusedopt.functional``) lists
each array its kernels will read or write (parameters, gradients, state, master
copies) and checks their byte ranges for overlap, whatever object owns the memory: a
gradient made with ``as_strided``, ``np.frombuffer`` or a NumPy view of a torch
tensor is caught as surely as a plain view. The ranges are read from the live
arrays every step; nothing is cached.

The addresses and the sweep run in C (``fusedopt._overlap``, ~20 ns per array);
without the compiled module the pure-Python twins below do the same, slower (reading
an address from Python costs ~1.5 us).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._checks import _name

try:
    from ._overlap import bounds, first_overlap
    COMPILED = True
except ImportError:  # running from a source tree without the compiled modules
    COMPILED = False

    def bounds(arrays: list, starts: list, stops: list) -> None:
        """Append each ndarray's byte range ``[start, stop)`` to the two lists."""
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

    def first_overlap(starts: list, stops: list) -> tuple[int, int] | None:
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


def check_arrays(arrays: list, names) -> None:
    """ValueError if two of the host ``arrays`` share a byte; ``names()`` lists
    their names (called on error only: formatting them costs more than the check)."""
    starts: list[int] = []
    stops: list[int] = []
    bounds(arrays, starts, stops)
    _raise_on_overlap(starts, stops, names)


def check_spans(spans: list[tuple[int, int]], names) -> None:
    """The same over raw byte ranges ``(start, stop)`` (CUDA arrays, tensors)."""
    _raise_on_overlap([a for a, _ in spans], [b for _, b in spans], names)


def _raise_on_overlap(starts: list, stops: list, names) -> None:
    pair = first_overlap(starts, stops)
    if pair is not None:
        a, b = sorted(pair)
        listed = names()
        raise ValueError(
            f"{_name(listed[b])}: shares memory with {_name(listed[a])}; a step writes "
            "parameters and state while it reads gradients, so each array must own "
            "its elements (pass separate arrays)")


class Touched:
    """What one step will touch: host arrays (``add``), or raw byte ranges
    (``add_span``: torch tensors, CUDA arrays). Names are formatted only on error
    (see ``_checks._name``)."""

    __slots__ = ("arrays", "names", "starts", "stops", "span_names")

    def __init__(self) -> None:
        self.arrays: list[np.ndarray] = []
        self.names: list[Any] = []
        self.starts: list[int] = []
        self.stops: list[int] = []
        self.span_names: list[Any] = []

    def add(self, array: np.ndarray, name: Any) -> None:
        self.arrays.append(array)
        self.names.append(name)

    def add_span(self, start: int, stop: int, name: Any) -> None:
        self.starts.append(start)
        self.stops.append(stop)
        self.span_names.append(name)

    def check(self) -> None:
        """ValueError naming two arrays that share memory, if any do: the one added
        later first."""
        starts, stops = list(self.starts), list(self.stops)
        bounds(self.arrays, starts, stops)
        _raise_on_overlap(starts, stops, lambda: self.span_names + self.names)
