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
