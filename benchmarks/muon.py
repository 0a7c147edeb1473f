"""Muon against torch.optim.Muon on CPU: one step over matrices of transformer
shapes, float32, each implementation on its own copy of the parameters and
gradients, rounds interleaved (each round: one timed batch of steps per
implementation, in turn).

    python benchmarks/muon.py

Rows: a 768 x 768 and a 768 x 3072 matrix (GPT-2 small's attention projection and
MLP layer). Printed: the median time per
step and the median over rounds of torch's time / this one's (higher is better).
``fusedopt.Muon`` runs the Newton-Schulz iteration in float32 on NumPy's BLAS,
``fusedopt.torch.Muon`` torch's own (bfloat16, as torch.optim.Muon).
"""

from __future__ import annotations

import torch

import fusedopt
import fusedopt.torch as ft
from against_torch import compare, numpy_step, tensors

D = 768
ROWS = {"768x768": [(D, D)], "768x3072": [(D, 4 * D)]}


def make(impl: str, shapes):
    params = tensors(shapes)
    if impl == "torch.optim.Muon":
        opt = torch.optim.Muon(params, lr=0.02)
    elif impl == "fusedopt.torch.Muon":
        opt = ft.Muon(params, lr=0.02)
    else:
        return numpy_step(fusedopt.Muon, params, lr=0.02)
    opt.step()
    return opt.step


def main() -> None:
    impls = ["torch.optim.Muon", "fusedopt.torch.Muon", "fusedopt.Muon"]
    compare(ROWS, impls, make)


if __name__ == "__main__":
    main()
