"""state_dict / load_state_dict: training resumes identically from a checkpoint."""

from __future__ import annotations

import copy
import re
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


SCALAR_STATE = {"nadam": ("mu_product",), "asgd": ("eta", "mu")}


@pytest.mark.parametrize("name", list(SCALAR_STATE))
def test_scalar_state_is_kept_checked_and_loaded_whole(name, backend):
    """NAdam's mu_product, ASGD's eta and mu: numbers in each parameter's state (as
    torch keeps them, in float32), in the checkpoint, checked before any write; a
    stepped state without them is refused, and so is a bad value, leaving
    parameters and state as they were."""
    cls, _, options = ALGORITHMS[name]
    kwargs = options[-1]
    rng = np.random.default_rng(2)
    params = [rng.standard_normal(s) for s in ((5,), (2, 3), (4,), (1,), (3,))]
    opt = cls(params, **kwargs, backend=backend)
    grads = [np.ones_like(p) for p in params]
    for _ in range(4):
        opt.step(grads)
    names = SCALAR_STATE[name]
    for st in opt.state.values():
        assert type(st["step"]) is int and st["step"] == 4
        for key in names:
            assert type(st[key]) is float and st[key] == float(np.float32(st[key]))
    sd = copy.deepcopy(opt.state_dict())
    assert set(sd["state"][0]) >= {"step", *names}
    for bad, error in [("0.5", "expected a finite number"),
                       (float("nan"), "expected a finite number")]:
        broken = copy.deepcopy(sd)
        broken["state"][1][names[-1]] = bad
        with pytest.raises(ValueError, match=re.escape(
                f"state_dict['state'][1]['{names[-1]}']: {error}")):
            opt.load_state_dict(broken)
    broken = copy.deepcopy(sd)
    del broken["state"][2][names[0]]
    with pytest.raises(ValueError, match=re.escape(
            f"state_dict['state'][2]: incomplete state, missing ['{names[0]}']")):
        opt.load_state_dict(broken)
    # the live state, spoiled in place: refused at the step, before any write
    before = [p.copy() for p in params]
    snap = copy.deepcopy(opt.state)
    opt.state[3][names[-1]] = float("inf")
    with pytest.raises(ValueError, match=re.escape(
            f"state[3]['{names[-1]}']: expected a finite number")):
        opt.step(grads)
    del opt.state[3][names[-1]]
    with pytest.raises(ValueError, match=re.escape(
            f"state[3]: holds 'step' 4 but no '{names[-1]}'")):
        opt.step(grads)
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b)
    for i, st in opt.state.items():
        for key, value in st.items():
            if i != 3 or key != names[-1]:
                np.testing.assert_array_equal(value, snap[i][key])
    # the checkpoint loads whole, and the step goes on
    opt.load_state_dict(sd)
    opt.step(grads)
    assert all(st["step"] == 5 for st in opt.state.values())
