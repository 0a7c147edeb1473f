"""The documented non-finite policy: NaN and inf in gradients propagate exactly as in
torch.optim, element by element, for every algorithm, option set and backend."""

from __future__ import annotations

import numpy as np
import pytest

from cases import TORCH_ALGORITHMS as ALGORITHMS, TORCH_CASES as CASES, case_id
from conftest import NUMBERS

torch = pytest.importorskip("torch")


def assert_same_nonfinite(ours, theirs, label, exact_kind):
    """Same elements non-finite; with ``exact_kind`` also NaN vs +inf vs -inf. The
    kernels follow torch's operation order (``lerp``), so they match exactly; the
    NumPy oracle's textbook ``b1*m + (1-b1)*g`` keeps an inf where lerp makes NaN."""
    ours, theirs = np.asarray(ours).ravel(), np.asarray(theirs).ravel()
    np.testing.assert_array_equal(np.isfinite(ours), np.isfinite(theirs), err_msg=label)
    if exact_kind:
        np.testing.assert_array_equal(np.isnan(ours), np.isnan(theirs), err_msg=label)
        np.testing.assert_array_equal(np.isposinf(ours), np.isposinf(theirs),
                                      err_msg=label)
    finite = np.isfinite(theirs)
    np.testing.assert_allclose(ours[finite], theirs[finite], rtol=1e-10, atol=1e-12,
                               err_msg=label)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning")
@pytest.mark.parametrize("case", CASES, ids=[case_id(c) for c in CASES])
def test_nonfinite_grads_propagate_like_torch(case, backend):
    name, kwargs = case
    cls, torch_name, _ = ALGORITHMS[name]
    rng = np.random.default_rng(5)
    # 37 elements: positions at the start, the end and inside a SIMD block
    p = rng.standard_normal(37)
    tp = torch.tensor(p.copy(), requires_grad=True)
    ours = cls([p], **kwargs, backend=backend)
    theirs = getattr(torch.optim, torch_name)([tp], **kwargs)
    for step in range(4):
        g = rng.standard_normal(37)
        if step == 1:
            g[[0, 9]] = np.nan
            g[[17, 36]] = [np.inf, -np.inf]
        tp.grad = torch.from_numpy(g.copy())
        ours.step([g])
        theirs.step()
    exact = backend != "numpy"
    assert_same_nonfinite(p, tp.detach().numpy(), "params", exact)
    for key, value in theirs.state[tp].items():
        if key not in NUMBERS and value is not None:
            assert_same_nonfinite(ours.state[0][key], value.numpy(), key, exact)
