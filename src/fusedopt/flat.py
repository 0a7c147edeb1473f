"""FlatParams: a whole model's parameters as views into one buffer per dtype.

A step over a FlatParams is one kernel call per contiguous segment (one per param group
and dtype when groups are contiguous), whatever the number of tensors: a Python loop
over hundreds of small tensors costs more than their math.
"""

from __future__ import annotations

import weakref
from typing import Iterable, Sequence

import numpy as np

from . import _checks

# buffer id -> the FlatParams owning it, so an optimizer handed plain views (in param
# groups) can tell that they are segments of one FlatParams.
_OWNERS: "weakref.WeakValueDictionary[int, FlatParams]" = weakref.WeakValueDictionary()


class FlatParams:
    """Parameters laid out back to back in one contiguous buffer per dtype, with a
    gradient buffer of the same layout.

    ``views[i]`` is parameter ``i`` (its shape, a view into the buffer): train with
    these arrays. ``grad_views[i]`` is where its gradient goes: write into it (``g[...]
    = ...`` or ``np.dot(..., out=g)``), then call ``opt.step()``. Tensors keep their
    order within each dtype's buffer.
    """

    def __init__(self, shapes: Sequence[Sequence[int]], dtypes=np.float32) -> None:
        shapes = [tuple(int(d) for d in s) for s in shapes]
        if not shapes:
            raise ValueError("shapes: expected at least one parameter shape")
        if isinstance(dtypes, (list, tuple)):
            if len(dtypes) != len(shapes):
                raise ValueError(f"dtypes: expected {len(shapes)} dtypes (one per shape), "
                                 f"got {len(dtypes)}")
            dtypes = [_dtype(d) for d in dtypes]
        else:
            dtypes = [_dtype(dtypes)] * len(shapes)
        for i, dt in enumerate(dtypes):
            if not _checks.param_dtype(dt):
                raise TypeError(f"dtypes[{i}]: expected float32, float64 or bfloat16, "
                                f"got {dt}")
        sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        totals: dict[np.dtype, int] = {}
        #: per tensor: (dtype, start, stop) in that dtype's buffer
        self.offsets: list[tuple[np.dtype, int, int]] = []
        for dt, n in zip(dtypes, sizes):
            start = totals.get(dt, 0)
            self.offsets.append((dt, start, start + n))
            totals[dt] = start + n
        self.buffers = {dt: np.zeros(n, dt) for dt, n in totals.items()}
        self.grad_buffers = {dt: np.zeros(n, dt) for dt, n in totals.items()}
        self.views = [self.buffers[dt][a:b].reshape(s)
                      for (dt, a, b), s in zip(self.offsets, shapes)]
        self.grad_views = [self.grad_buffers[dt][a:b].reshape(s)
                           for (dt, a, b), s in zip(self.offsets, shapes)]
        for buf in self.buffers.values():
            _OWNERS[id(buf)] = self

    @classmethod
    def from_arrays(cls, arrays: Iterable[np.ndarray]) -> "FlatParams":
        """Copy ``arrays`` in once; train ``views`` from then on (the originals are not
        updated)."""
        arrays = list(arrays)
        for i, a in enumerate(arrays):
            if not isinstance(a, np.ndarray):
                raise TypeError(f"arrays[{i}]: expected a numpy.ndarray, got "
                                f"{type(a).__name__}")
        flat = cls([a.shape for a in arrays], [a.dtype for a in arrays])
        for view, a in zip(flat.views, arrays):
            view[...] = a
        return flat

    def __len__(self) -> int:
        return len(self.views)

    def zero_grad(self) -> None:
        for g in self.grad_buffers.values():
            g.fill(0)

    def __repr__(self) -> str:
        sizes = ", ".join(f"{dt}: {buf.size}" for dt, buf in self.buffers.items())
        return f"FlatParams({len(self.views)} tensors; {sizes} elements)"


def _dtype(d) -> np.dtype:
    """``np.dtype(d)``, the name "bfloat16" included (NumPy knows it only once
    ml_dtypes is imported, which ``import fusedopt`` leaves until needed)."""
    return _checks.bf16() if isinstance(d, str) and d == "bfloat16" else np.dtype(d)


def owner(array: np.ndarray) -> FlatParams | None:
    """The FlatParams whose buffer ``array`` is a view of, if any."""
    base = array.base if isinstance(array, np.ndarray) else None
    return _OWNERS.get(id(base)) if base is not None else None


def segments(flat: FlatParams, indices: Sequence[int]
             ) -> list[tuple[np.dtype, int, int, list[int]]]:
    """Tensors ``indices`` of ``flat`` merged into maximal contiguous runs per dtype:
    ``[(dtype, start, stop, members), ...]``, one kernel call each; ``members`` are
    the indices (from ``indices``) lying in that run."""
    runs: list[list] = []
    for i in sorted(indices, key=lambda i: (flat.offsets[i][0].str, flat.offsets[i][1])):
        dt, a, b = flat.offsets[i]
        if runs and runs[-1][0] == dt and runs[-1][2] == a:
            runs[-1][2] = b
            runs[-1][3].append(i)
        else:
            runs.append([dt, a, b, [i]])
    return [tuple(r) for r in runs]
