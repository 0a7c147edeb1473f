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
    """Every array one orthogonalisation of a ``rows x cols`` matrix of ``dtype``
    needs, allocated once: the iteration itself allocates nothing."""

    def __init__(self, rows: int, cols: int, dtype) -> None:
        self.transposed = rows > cols
        n, m = (cols, rows) if self.transposed else (rows, cols)
        self.x = np.empty((n, m), dtype)  # the iterate, wide
        self.t = np.empty((n, m), dtype)
        self.gram = np.empty((n, n), dtype)
        self.poly = np.empty((n, n), dtype)
        # the result, row-major in the parameter's shape
        self.out = np.empty((rows, cols), dtype) if self.transposed else self.x

    def orthogonalise(self, u: np.ndarray, a: float, b: float, c: float, eps: float,
                      steps: int) -> np.ndarray:
        """The orthogonalised ``u`` (a ``rows x cols`` array of the workspace's
        dtype), as a flat array (a view of the workspace: valid until its next
        use)."""
        x, t, gram, poly = self.x, self.t, self.gram, self.poly
        np.copyto(x, u.T if self.transposed else u)
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
        if self.transposed:
            np.copyto(self.out, x.T)
        return self.out.reshape(-1)
