"""state_dict / load_state_dict: training resumes identically from a checkpoint."""

from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import fusedopt

from cases import ALGORITHMS


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_resume_from_checkpoint_is_bit_identical(name, backend):
    cls, _, options = ALGORITHMS[name]
    rng = np.random.default_rng(1)
    grads = [[rng.standard_normal(s) for s in ((4, 3), (6,))] for _ in range(20)]
    params = [rng.standard_normal((4, 3)), rng.standard_normal(6)]
    opt = cls(params, **options[-1], backend=backend)
    for g in grads[:10]:
        opt.step(g)
    checkpoint = pickle.loads(pickle.dumps(opt.state_dict()))
    saved_params = [p.copy() for p in params]
    for g in grads[10:]:
        opt.step(g)

    resumed_params = saved_params
    resumed = cls(resumed_params, backend=backend)  # defaults: the checkpoint sets options
    resumed.load_state_dict(checkpoint)
    for g in grads[10:]:
        resumed.step(g)
    for a, b in zip(params, resumed_params):
        np.testing.assert_array_equal(a, b)
    assert resumed.param_groups[0]["lr"] == options[-1]["lr"]


def test_state_dict_layout_is_torch_like():
    import fusedopt
    p = np.zeros((2, 3), np.float32)
    opt = fusedopt.Adam([{"params": [p], "lr": 0.1}], amsgrad=True)
    opt.step([np.ones_like(p)])
    sd = opt.state_dict()
    assert sd["param_groups"] == [{"lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8,
                                   "weight_decay": 0.0, "amsgrad": True,
                                   "maximize": False, "decoupled_weight_decay": False,
                                   "params": [0]}]
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"][0]["step"] == 1
    assert sd["state"][0]["exp_avg"].shape == (2, 3)


def test_loaded_state_is_copied_in():
    import fusedopt
    p = np.zeros(3)
    opt = fusedopt.SGD([p], lr=0.1, momentum=0.9)
    opt.step([np.ones(3)])
    sd = copy.deepcopy(opt.state_dict())
    opt.load_state_dict(sd)
    sd["state"][0]["momentum_buffer"][:] = 99.0
    assert not np.any(opt.state[0]["momentum_buffer"] == 99.0)


def test_float64_checkpoint_loads_into_float32_model():
    import fusedopt
    p64, p32 = np.ones(4), np.ones(4, np.float32)
    a = fusedopt.Adam([p64])
    a.step([np.full(4, 0.5)])
    b = fusedopt.Adam([p32])
    b.load_state_dict(a.state_dict())
    assert b.state[0]["exp_avg"].dtype == np.float32


@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop"])
def test_constructors_have_torchs_parameters_and_defaults(name):
    """The classes are built from their declarations (fusedopt.algorithms), with real
    signatures: each hyperparameter of torch.optim's twin, same default, same kind
    (keyword-only where torch's is), same order."""
    import inspect

    torch = pytest.importorskip("torch")
    ours = inspect.signature(getattr(fusedopt, name)).parameters
    theirs = inspect.signature(getattr(torch.optim, name)).parameters
    for key, p in theirs.items():
        if key in ours:
            assert ours[key].default == p.default, key
    shared = [k for k in theirs if k in ours]
    assert shared == [k for k in ours if k in theirs]
    assert {"lr", "maximize"} <= set(shared)
    assert ours["maximize"].kind is inspect.Parameter.KEYWORD_ONLY
    assert "theta" in getattr(fusedopt, name).__doc__  # the update formula


@pytest.mark.parametrize("backend", ["numba", "cython", "numpy"])
def test_an_optimizer_deep_copies_and_pickles(backend):
    """copy.deepcopy and pickle give an independent optimizer that steps as the
    original would (its backend chosen again by name)."""
    import copy
    import pickle

    p = np.linspace(-1, 1, 10)
    opt = fusedopt.Adam([p], lr=0.1, amsgrad=True, backend=backend)
    opt.step([np.ones(10)])
    for twin in (copy.deepcopy(opt), pickle.loads(pickle.dumps(opt))):
        twin.step([np.full(10, 0.5)])
        q = twin.param_groups[0]["params"][0]
        assert q is not p and twin.backend == backend
        expected = p.copy()
        ref = fusedopt.Adam([expected], lr=0.1, amsgrad=True, backend=backend)
        ref.load_state_dict(copy.deepcopy(opt.state_dict()))
        ref.step([np.full(10, 0.5)])
        np.testing.assert_array_equal(q, expected)
