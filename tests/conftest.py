"""Backend fixture: every test that takes ``backend`` runs on each CPU backend that
imports here; the Numba backend twice, serial and forced parallel (its prange loop)."""

from __future__ import annotations

import os

# The CUDA tests run on Numba's CUDA simulator unless told otherwise: on a machine
# with a GPU, NUMBA_ENABLE_CUDASIM=0 runs them on the device. Set before numba.cuda
# is first imported.
os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")

import numpy as np  # noqa: E402
import pytest

import fusedopt
from fusedopt.backends import available

CPU_BACKENDS = [name for name, status in available().items()
                if status.ok and name != "cuda"]  # test_cuda.py tests that one
COMPILED = ("numba", "cython")
MODES = [m for b in CPU_BACKENDS for m in ([b + "-serial", b + "-parallel"]
                                           if b in COMPILED else [b])]


@pytest.fixture(params=MODES)
def backend(request, monkeypatch):
    """The backend name; ``<name>-parallel`` lowers the parallel threshold to 0 so
    even tiny arrays run the parallel (``prange``) loop."""
    name, _, mode = request.param.partition("-")
    if name in COMPILED:
        from fusedopt.backends import policy
        monkeypatch.setattr(policy, "PARALLEL_MIN_SIZE",
                            0 if mode == "parallel" else 1 << 62)
    return name


@pytest.fixture
def rng():
    return np.random.default_rng(12345)


def relative_error(ours, reference) -> float:
    """max |ours - ref| / (|ref| + 1e-3): the contract's parity measure."""
    ours = np.asarray(ours, dtype=np.float64)
    reference = np.asarray(reference, dtype=np.float64)
    return float(np.max(np.abs(ours - reference) / (np.abs(reference) + 1e-3),
                        initial=0.0))


TOL = {np.float32: 2e-4, np.float64: 1e-10}
#: a state's entries that are numbers, not arrays: the step and the scalar state of
#: NAdam (mu_product) and ASGD (eta, mu)
NUMBERS = ("step", "mu_product", "eta", "mu")
SHAPES = [(7,), (3, 5), (1,), (2, 3, 4)]

__all__ = ["fusedopt"]
