"""The worked examples run (short settings) and reach what they promise."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(EXAMPLES / script), *args],
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return out.stdout


def last_number(text: str, label: str) -> float:
    return float(re.findall(rf"^{re.escape(label)}\s*([0-9.]+)", text, re.M)[-1])


def test_digits_mlp_reaches_95_percent():
    pytest.importorskip("sklearn")
    out = run("digits_mlp.py", "--epochs", "10")
    assert last_number(out, "test accuracy:") >= 0.95, out


def test_digits_mlp_compare_plots_every_optimizer(tmp_path):
    pytest.importorskip("sklearn")
    pytest.importorskip("matplotlib")
    png = tmp_path / "loss.png"
    out = run("digits_mlp.py", "--compare", str(png), "--epochs", "2")
    assert png.read_bytes()[:4] == b"\x89PNG"
    for name in ("sgd", "adam", "adamw", "adagrad", "rmsprop"):
        assert re.search(rf"^{name}\s+final loss", out, re.M), out


def test_linear_regression_recovers_the_weights():
    out = run("linear_regression_momentum.py")
    assert last_number(out, "max weight error:") <= 0.05, out


@pytest.mark.parametrize("flatten", [[], ["--flatten"]])
def test_torch_dropin_trains(flatten):
    pytest.importorskip("torch")
    out = run("torch_dropin.py", "--steps", "200", *flatten)
    assert last_number(out, "final loss:") <= 0.02, out


def test_digits_mlp_reads_mnist_idx_files(tmp_path):
    """--mnist reads the IDX format (gzip or not): a tiny synthetic set in it."""
    import gzip

    import numpy as np
    rng = np.random.default_rng(0)

    def idx(path, array, opener=open):
        header = bytes([0, 0, 8, array.ndim]) + b"".join(
            d.to_bytes(4, "big") for d in array.shape)
        with opener(path, "wb") as f:
            f.write(header + array.astype(np.uint8).tobytes())

    for split, n in (("train", 64), ("t10k", 16)):
        labels = rng.integers(0, 10, n)
        images = np.zeros((n, 28, 28), np.uint8)
        for i, y in enumerate(labels):  # a bright column per class: learnable
            images[i, :, 2 * y + 4] = 255
        idx(tmp_path / f"{split}-images-idx3-ubyte.gz", images, gzip.open)
        idx(tmp_path / f"{split}-labels-idx1-ubyte", labels)
    out = run("digits_mlp.py", "--mnist", str(tmp_path), "--epochs", "15")
    assert last_number(out, "test accuracy:") >= 0.9, out
