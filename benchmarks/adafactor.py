"""Adafactor against torch.optim.Adafactor on CPU: one step over tensors of transformer
shapes, float32, each implementation on its own copy of the parameters and
gradients, rounds interleaved (each round: one timed batch of steps per
implementation, in turn).

    python benchmarks/adafactor.py

Rows: a 768 x 3072 matrix (GPT-2 small's MLP layer), and GPT-2 small's 148 tensors
(124M elements). Printed: the median time per
step and the median over rounds of torch's time / this one's (higher is better).
torch's default on CPU is its single-tensor loop (``foreach=None``); its
``foreach=True`` row is timed too.
"""

from __future__ import annotations

import torch

import fusedopt
import fusedopt.torch as ft
from against_torch import compare, numpy_step, tensors

D = 768
V, CTX = 50257, 1024
BLOCK = [(D,), (D,), (D, 3 * D), (3 * D,), (D, D), (D,), (D,), (D,), (D, 4 * D), (4 * D,),
         (4 * D, D), (D,)]
ROWS = {"768x3072": [(D, 4 * D)],
        "GPT-2 small (148)": [(V, D), (CTX, D)] + BLOCK * 12 + [(D,), (D,)]}


def make(impl: str, shapes):
    params = tensors(shapes)
    if impl == "torch.optim.Adafactor":
        opt = torch.optim.Adafactor(params)
    elif impl == "torch foreach=True":
        opt = torch.optim.Adafactor(params, foreach=True)
    elif impl == "fusedopt.torch":
        opt = ft.Adafactor(params)
    else:
        return numpy_step(fusedopt.Adafactor, params)
    opt.step()
    return opt.step


def main() -> None:
    impls = ["torch.optim.Adafactor", "torch foreach=True", "fusedopt.torch",
             "fusedopt.Adafactor"]
    compare(ROWS, impls, make)


if __name__ == "__main__":
    main()
