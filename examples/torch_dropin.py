"""A small PyTorch model trained with fusedopt.torch.Adam: the one-line change.

    - from torch.optim import Adam
    + from fusedopt.torch import Adam

    python examples/torch_dropin.py
"""

from __future__ import annotations

import argparse
import sys

import torch

from fusedopt.torch import Adam


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--flatten", action="store_true",
                    help="one buffer for all parameters: one kernel call per step")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    x = torch.linspace(-3, 3, 256).unsqueeze(1)
    y = torch.sin(x) + 0.05 * torch.randn_like(x)
    model = torch.nn.Sequential(torch.nn.Linear(1, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 64), torch.nn.Tanh(),
                                torch.nn.Linear(64, 1))
    opt = Adam(model.parameters(), lr=1e-2, flatten=args.flatten)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=args.steps)
    first = None
    for step in range(1, args.steps + 1):
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x), y)
        loss.backward()
        opt.step()
        sched.step()
        first = first if first is not None else loss.item()
        if step % 100 == 0:
            print(f"step {step:4d}  loss {loss.item():.5f}")
    print(f"backend: {opt.backend}; loss {first:.4f} -> {loss.item():.5f}")
    print(f"final loss: {loss.item():.5f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
