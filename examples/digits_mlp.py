"""A NumPy MLP for handwritten digits, trained with fusedopt.

Forward and backward are written in NumPy; the weights live in a FlatParams, so the
optimizer step is one fused kernel call for the whole network. With no download it
trains on the 8x8 digits that scikit-learn ships (64-128-10); with --mnist DIR it
reads the original MNIST IDX files (784-128-10).

    python examples/digits_mlp.py                        # SGD with momentum
    python examples/digits_mlp.py --optimizer adam --lr 1e-3
    python examples/digits_mlp.py --compare loss.png     # every optimizer, one plot
    python examples/digits_mlp.py --optimizer adam --param-dtype bfloat16 --master-weights
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys

import ml_dtypes
import numpy as np

import fusedopt
from fusedopt import schedules

# lr per optimizer for this model (batch 32): the classic choices.
DEFAULT_LR = {"sgd": 0.1, "adam": 1e-3, "adamw": 1e-3, "adagrad": 0.05, "rmsprop": 1e-3}


def load_digits(seed: int):
    """sklearn's 8x8 digits, scaled to [0, 1], split 80/20."""
    from sklearn.datasets import load_digits as sk_digits
    data = sk_digits()
    x, y = data.data.astype(np.float32) / 16.0, data.target.astype(np.int64)
    order = np.random.default_rng(seed).permutation(len(x))
    x, y = x[order], y[order]
    cut = int(0.8 * len(x))
    return x[:cut], y[:cut], x[cut:], y[cut:]


def _idx(path: str) -> np.ndarray:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        raw = f.read()
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_mnist(directory: str):
    """The original MNIST IDX files (optionally .gz) from ``directory``."""
    def find(stem):
        for name in (stem, stem + ".gz"):
            if os.path.exists(os.path.join(directory, name)):
                return os.path.join(directory, name)
        raise FileNotFoundError(f"--mnist: {stem}[.gz] not found in {directory}")
    xs = [_idx(find(f"{s}-images-idx3-ubyte")) for s in ("train", "t10k")]
    ys = [_idx(find(f"{s}-labels-idx1-ubyte")) for s in ("train", "t10k")]
    return (xs[0].reshape(len(xs[0]), -1).astype(np.float32) / 255.0, ys[0].astype(np.int64),
            xs[1].reshape(len(xs[1]), -1).astype(np.float32) / 255.0, ys[1].astype(np.int64))


class MLP:
    """in-hidden-out with ReLU and softmax cross-entropy; weights in a FlatParams of
    ``dtype`` (float32, or bfloat16 with the arithmetic in float32, as autocast does)."""

    def __init__(self, n_in: int, n_hidden: int, n_out: int, seed: int,
                 dtype=np.float32) -> None:
        rng = np.random.default_rng(seed)
        he = lambda fan_in, shape: rng.normal(0, np.sqrt(2 / fan_in), shape)  # noqa: E731
        self.flat = fusedopt.FlatParams.from_arrays([a.astype(dtype) for a in (
            he(n_in, (n_in, n_hidden)), np.zeros(n_hidden),
            he(n_hidden, (n_hidden, n_out)), np.zeros(n_out))])
        self.gw1, self.gb1, self.gw2, self.gb2 = self.flat.grad_views

    def weights(self):
        """w1, b1, w2, b2 in float32 (no copy when they are float32)."""
        return [np.asarray(v, np.float32) for v in self.flat.views]

    def logits(self, x):
        w1, b1, w2, b2 = self.weights()
        return np.maximum(x @ w1 + b1, 0) @ w2 + b2

    def loss_and_grads(self, x, y) -> float:
        """Mean cross-entropy; writes the gradients into the FlatParams' grad views."""
        w1, b1, w2, b2 = self.weights()
        h_pre = x @ w1 + b1
        h = np.maximum(h_pre, 0)
        z = h @ w2 + b2
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        n = len(x)
        loss = -np.log(p[np.arange(n), y] + 1e-12).mean()
        dz = p
        dz[np.arange(n), y] -= 1
        dz /= n
        self.gw2[...] = h.T @ dz
        self.gb2[...] = dz.sum(axis=0)
        dh = (dz @ w2.T) * (h_pre > 0)
        self.gw1[...] = x.T @ dh
        self.gb1[...] = dh.sum(axis=0)
        return float(loss)

    def accuracy(self, x, y) -> float:
        return float((self.logits(x).argmax(axis=1) == y).mean())


def make_optimizer(name: str, model: MLP, lr: float, **lowbit):
    """``lowbit``: the optimizer's state_dtype / master_weights options."""
    params = model.flat  # biases without weight decay for the decoupled variant
    if name == "sgd":
        return fusedopt.SGD(params, lr=lr, momentum=0.9, nesterov=True, **lowbit)
    if name == "adamw":
        w1, b1, w2, b2 = model.flat.views
        return fusedopt.AdamW([{"params": [w1, w2]},
                               {"params": [b1, b2], "weight_decay": 0.0}], lr=lr,
                              **lowbit)
    return {"adam": fusedopt.Adam, "adagrad": fusedopt.Adagrad,
            "rmsprop": fusedopt.RMSprop}[name](params, lr=lr, **lowbit)


def train(data, optimizer: str, epochs: int, batch: int, lr: float, hidden: int,
          seed: int, verbose: bool = True, dtype=np.float32, **lowbit):
    x_train, y_train, x_test, y_test = data
    model = MLP(x_train.shape[1], hidden, int(y_train.max()) + 1, seed, dtype)
    opt = make_optimizer(optimizer, model, lr, **lowbit)
    steps_per_epoch = -(-len(x_train) // batch)
    warmup = min(steps_per_epoch, 100)
    sched = schedules.WarmupThen(
        schedules.LinearWarmup(opt, start_factor=0.1, total_steps=warmup),
        schedules.CosineAnnealing(opt, total_steps=epochs * steps_per_epoch - warmup))
    rng = np.random.default_rng(seed)
    losses = []
    for epoch in range(1, epochs + 1):
        order = rng.permutation(len(x_train))
        total = 0.0
        for start in range(0, len(x_train), batch):
            idx = order[start:start + batch]
            total += model.loss_and_grads(x_train[idx], y_train[idx]) * len(idx)
            opt.step()  # one fused call over the whole network
            sched.step()
        losses.append(total / len(x_train))
        if verbose:
            print(f"epoch {epoch:3d}  loss {losses[-1]:.4f}  "
                  f"test accuracy {model.accuracy(x_test, y_test):.4f}  "
                  f"lr {opt.param_groups[0]['lr']:.2e}")
    return model, losses


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--optimizer", choices=list(DEFAULT_LR), default="sgd")
    ap.add_argument("--lr", type=float, default=None,
                    help="peak learning rate (default: per optimizer)")
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--state-dtype", choices=["bfloat16"], default=None,
                    help="keep the optimizer state in bfloat16 (math stays float32)")
    ap.add_argument("--param-dtype", choices=["float32", "bfloat16"], default="float32",
                    help="bfloat16: the weights and gradients are bf16, updated with "
                         "stochastic rounding (or through --master-weights)")
    ap.add_argument("--master-weights", action="store_true",
                    help="with bf16 weights, step a float32 master copy of them")
    ap.add_argument("--mnist", metavar="DIR", help="train on the MNIST IDX files in DIR")
    ap.add_argument("--compare", metavar="PNG",
                    help="train with every optimizer and plot their loss curves")
    args = ap.parse_args(argv)
    data = load_mnist(args.mnist) if args.mnist else load_digits(args.seed)

    if args.compare:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(6, 4))
        for name in DEFAULT_LR:
            model, losses = train(data, name, args.epochs, args.batch, DEFAULT_LR[name],
                                  args.hidden, args.seed, verbose=False)
            acc = model.accuracy(data[2], data[3])
            print(f"{name:8s} final loss {losses[-1]:.4f}  test accuracy {acc:.4f}")
            ax.plot(range(1, len(losses) + 1), losses, label=f"{name} ({acc:.3f})")
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.set_ylabel("training loss")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.compare, dpi=110)
        print(f"wrote {args.compare}")
        return 0

    lr = args.lr if args.lr is not None else DEFAULT_LR[args.optimizer]
    dtype = ml_dtypes.bfloat16 if args.param_dtype == "bfloat16" else np.float32
    model, _ = train(data, args.optimizer, args.epochs, args.batch, lr, args.hidden,
                     args.seed, dtype=dtype, state_dtype=args.state_dtype,
                     master_weights=args.master_weights)
    print(f"test accuracy: {model.accuracy(data[2], data[3]):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
