"""Muon's host stage: the Newton-Schulz orthogonalisation of one matrix, on BLAS.

Between Muon's two element-wise passes (``fusedopt.algorithms.muon_contract``) the
momentum update ``U`` of a ``rows x cols`` parameter is replaced by an approximately
orthogonal matrix of the same shape, as ``torch.optim.Muon`` computes it (Jordan et
al., 2024)::

    X = U.T if rows > cols else U          (the wide orientation: X X^T is the small Gram)
    X = X / max(||X||_F, eps)
    repeat ns_steps times:
        A = X X^T
        X = a X + (b A + c A A) X
    O = X.T if rows > cols else X

in the working dtype of ``U`` (float32 or float64), with NumPy's matrix products
(its BLAS). torch runs the same iteration in bfloat16; ``fusedopt.torch.Muon`` calls
torch's own, so that it matches ``torch.optim.Muon``.
"""

from __future__ import annotations

import math

import numpy as np


class Workspace:
    """Every array Muon's step of matrices of ``shapes`` (``(rows, cols)`` pairs)
    needs, allocated at once for the largest of them and reused by each in turn: an
    optimizer reserves it before the first write of a step, so that running out of
    memory cannot stop a step half-way. Holds, per element of the largest matrix,
    the update ``U``, the new momentum buffer (of ``state_dtype``: the buffer's, bf16
    bits as ``uint16`` included), the iterate and its product; the result of the
    largest tall matrix; and two Gram matrices of the largest smaller side squared."""

    #: arrays of the largest matrix's size: U, the iterate, its product
    _ROWS = 3

    def __init__(self, shapes, dtype, state_dtype=None) -> None:
        shapes = [tuple(s) for s in shapes]
        self.dtype = np.dtype(dtype)
        self.state_dtype = np.dtype(dtype if state_dtype is None else state_dtype)
        self.size = max((r * c for r, c in shapes), default=0)
        self.gram = max((min(r, c) ** 2 for r, c in shapes), default=0)
        own = self._ROWS > 1  # (a subclass with an iteration of its own needs U only)
        self._arrays = np.empty((self._ROWS, self.size), self.dtype)
        self._buffer = np.empty(self.size, self.state_dtype)
        self._grams = np.empty((2, self.gram if own else 0), self.dtype)
        # the result of a tall matrix, iterated transposed, back in its shape
        self._out = np.empty(max((r * c for r, c in shapes if r > c), default=0)
                             if own else 0, self.dtype)

    def buffers(self, size: int) -> tuple[np.ndarray, np.ndarray]:
        """``(U, B)``: flat arrays of ``size`` elements for the update (zeroed) and
        the new momentum buffer."""
        u = self._arrays[0, :size]
        u.fill(0)
        return u, self._buffer[:size]

    @staticmethod
    def copy(dst: np.ndarray, src: np.ndarray) -> None:
        """``dst[...] = src`` (flat arrays of one size; the momentum buffer to and
        from the workspace's)."""
        np.copyto(dst, src)

    def orthogonalise(self, u: np.ndarray, a: float, b: float, c: float, eps: float,
                      steps: int) -> np.ndarray:
        """The orthogonalised ``u`` (a ``rows x cols`` array of the workspace's
        dtype), as a flat array (a view of the workspace: valid until its next
        use)."""
        rows, cols = u.shape
        transposed = rows > cols
        n, m = (cols, rows) if transposed else (rows, cols)
        x, t = (self._arrays[k, :n * m].reshape(n, m) for k in (1, 2))
        gram, poly = (self._grams[k, :n * n].reshape(n, n) for k in (0, 1))
        np.copyto(x, u.T if transposed else u)
        flat = x.reshape(-1)  # (a view: x is C-contiguous)
        norm = math.sqrt(float(np.dot(flat, flat)))  # only the scale: BLAS's dot
        with np.errstate(divide="ignore", invalid="ignore"):  # eps = 0, U = 0: NaN,
            x /= x.dtype.type(max(norm, eps))                 # as torch
        for _ in range(steps):
            np.matmul(x, x.T, out=gram)
            np.matmul(gram, gram, out=poly)
            poly *= c
            gram *= b
            poly += gram
            np.matmul(poly, x, out=t)
            x *= a
            x += t
        if not transposed:
            return flat
        out = self._out[:n * m].reshape(rows, cols)  # row-major in u's shape
        np.copyto(out, x.T)
        return out.reshape(-1)
