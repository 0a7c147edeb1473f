"""Linear regression by mini-batch SGD with momentum, done correctly.

The textbook version of this example multiplies matrices of mismatched shapes and
updates a momentum buffer it never initialised. Here: X is (n, d), w is (d,), the
bias is a separate parameter, the gradient of the mean squared error is
(2/B) X_b^T (X_b w + b - y_b), and the momentum buffer is the optimizer's own state
(it starts as the first gradient, as in torch.optim.SGD).

    python examples/linear_regression_momentum.py
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

import fusedopt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--features", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=0.01)
    ap.add_argument("--momentum", type=float, default=0.9)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    rng = np.random.default_rng(args.seed)
    w_true = rng.uniform(-3, 3, args.features)
    b_true = 1.5
    x = rng.standard_normal((args.samples, args.features))
    y = x @ w_true + b_true + 0.1 * rng.standard_normal(args.samples)

    w, b = np.zeros(args.features), np.zeros(1)
    gw, gb = np.zeros_like(w), np.zeros_like(b)
    opt = fusedopt.SGD([w, b], lr=args.lr, momentum=args.momentum)
    for epoch in range(1, args.epochs + 1):
        order = rng.permutation(args.samples)
        for start in range(0, args.samples, args.batch):
            idx = order[start:start + args.batch]
            residual = x[idx] @ w + b - y[idx]          # (B,)
            np.dot(x[idx].T, residual, out=gw)          # (d,)
            gw *= 2 / len(idx)
            gb[0] = 2 * residual.mean()
            opt.step([gw, gb])
        if epoch % 10 == 0 or epoch == args.epochs:
            mse = float(np.mean((x @ w + b - y) ** 2))
            print(f"epoch {epoch:3d}  mse {mse:.5f}")
    err = max(np.abs(w - w_true).max(), abs(b[0] - b_true))
    print("true weights   ", np.round(w_true, 3), "bias", b_true)
    print("learned weights", np.round(w, 3), "bias", round(float(b[0]), 3))
    print(f"max weight error: {err:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
