"""Every error path: a clear exception naming the argument, raised before any write,
parameters and state left bit-identical."""

from __future__ import annotations

import copy
import re

import numpy as np
import pytest

import fusedopt
from cases import ALGORITHMS
from fusedopt import functional


def trained(name, backend, dtype=np.float32, groups=False):
    """An optimizer of ``name`` over two params after two good steps."""
    cls, _, options = ALGORITHMS[name]
    rng = np.random.default_rng(0)
    params = [rng.standard_normal((3, 4)).astype(dtype), rng.standard_normal(5).astype(dtype)]
    if groups:
        opt = cls([{"params": [params[0]]}, {"params": [params[1]]}], **options[-1],
                  backend=backend)
    else:
        opt = cls(params, **options[-1], backend=backend)
    for _ in range(2):
        opt.step([rng.standard_normal(p.shape).astype(dtype) for p in params])
    return opt, params


def snapshot(opt, params):
    return [p.copy() for p in params], copy.deepcopy(opt.state), copy.deepcopy(
        [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups])


def assert_unchanged(opt, params, snap):
    before_params, before_state, before_groups = snap
    for p, q in zip(params, before_params):
        np.testing.assert_array_equal(p, q, strict=True)
    assert opt.state.keys() == before_state.keys()
    for i, st in before_state.items():
        assert opt.state[i].keys() == st.keys()
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(opt.state[i][k], v, strict=True)
            else:
                assert opt.state[i][k] == v


def good_grads(params):
    return [np.ones_like(p) for p in params]


BAD_GRADS = {
    "too few": (lambda ps: good_grads(ps)[:1], ValueError, "grads: expected 2 arrays"),
    "not a list": (lambda ps: good_grads(ps)[0], TypeError, "grads: expected a list"),
    "not arrays": (lambda ps: [g.tolist() for g in good_grads(ps)], TypeError,
                   "grads[0]: expected a numpy.ndarray"),
    "second shape": (lambda ps: [np.ones_like(ps[0]), np.ones(6, ps[1].dtype)],
                     ValueError, "grads[1]: expected shape (5,)"),
    "second dtype": (lambda ps: [np.ones_like(ps[0]), np.ones(5, np.float64)],
                     TypeError, "grads[1]: expected dtype float32"),
    "second non-contiguous": (
        lambda ps: [np.ones_like(ps[0]), np.ones(10, ps[1].dtype)[::2]],
        ValueError, "grads[1]: expected a C-contiguous array"),
    "grad is its param": (lambda ps: [np.ones_like(ps[0]), ps[1]], ValueError,
                          "grads[1]: shares memory with params[1]"),
}


@pytest.mark.parametrize("case", list(BAD_GRADS))
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_bad_grads_change_nothing(name, case, backend):
    make, exc, message = BAD_GRADS[case]
    opt, params = trained(name, backend)
    snap = snapshot(opt, params)
    with pytest.raises(exc, match=re.escape(message)):
        opt.step(make(params))
    assert_unchanged(opt, params, snap)


BAD_HYPER = {
    "lr": [-1.0, float("nan"), float("inf"), "0.1", True],
    "eps": [-1e-8, float("nan")],
    "weight_decay": [-0.1, float("inf")],
    "betas": [(0.9, 1.0), (-0.1, 0.9), (0.9,), (float("nan"), 0.9)],
    "momentum": [-0.5, float("nan")],
    "alpha": [-0.1, 1.5],
    "lr_decay": [-1.0],
    "maximize": [1, "yes"],
    "amsgrad": [None],
    "centered": [0],
    "etas": [(0.5, 1.0), (1.0, 1.2), (0.5,), (float("nan"), 1.2)],
    "momentum_decay": [-1e-3, float("nan")],
    "lambd": [-1.0], "t0": [float("inf")],
    "step_sizes": [(1e-3, 1e-6), (-1.0, 1.0), (1e-6, float("nan")), (1e-6,)],
}


def bad_hyper_cases():
    for name, (cls, _, _) in ALGORITHMS.items():
        opt_keys = set(cls.__init__.__code__.co_varnames)
        for key, values in BAD_HYPER.items():
            if key in opt_keys:
                for value in values:
                    if (name, key, value) != ("asgd", "alpha", 1.5):  # RMSprop's <= 1
                        yield name, key, value


@pytest.mark.parametrize("name,key,value", list(bad_hyper_cases()))
def test_bad_hyperparameter_in_second_group_changes_nothing(name, key, value):
    """A bad value set between steps in the second group: the first group, though
    valid, is not updated either (no partial update)."""
    opt, params = trained(name, "numpy", groups=True)
    snap = snapshot(opt, params)
    opt.param_groups[1][key] = value
    with pytest.raises((TypeError, ValueError), match=rf"param_groups\[1\]\['{key}'\]"):
        opt.step(good_grads(params))
    opt.param_groups[1][key] = snap[2][1][key]
    assert_unchanged(opt, params, snap)


@pytest.mark.parametrize("name,key,value", list(bad_hyper_cases()))
def test_bad_hyperparameter_in_constructor(name, key, value):
    cls = ALGORITHMS[name][0]
    with pytest.raises((TypeError, ValueError), match=rf"^{key}"):
        cls([np.zeros(3)], **{key: value})


@pytest.mark.parametrize("dampening", [0.0, 0.1])
def test_nesterov_needs_momentum_and_no_dampening(dampening):
    momentum = 0.0 if dampening == 0 else 0.9
    with pytest.raises(ValueError, match="nesterov: Nesterov momentum needs momentum > 0"):
        fusedopt.SGD([np.zeros(3)], momentum=momentum, dampening=dampening, nesterov=True)


BAD_PARAMS = {
    "integer": ([np.zeros(3, np.int64)], TypeError, r"params\[0\]: expected dtype float32"),
    "float16": ([np.zeros(3, np.float16)], TypeError, r"params\[0\]: expected dtype"),
    "list": ([[1.0, 2.0]], TypeError, r"params\[0\]: expected a numpy.ndarray"),
    "single array": (np.zeros(3), TypeError, "params: expected a list"),
    "empty": ([], ValueError, "params: got an empty list"),
    "non-contiguous": ([np.zeros(10)[::2]], ValueError,
                       r"params\[0\]: expected a C-contiguous array"),
    "fortran": ([np.zeros((3, 4), order="F")], ValueError, r"params\[0\]: expected a C-"),
    "twice": (None, ValueError, r"params\[1\]: the same array appears twice"),
    "unknown option": (None, ValueError, r"param_groups\[0\]: unknown option"),
}


@pytest.mark.parametrize("case", list(BAD_PARAMS))
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_bad_params_refused(name, case):
    cls = ALGORITHMS[name][0]
    params, exc, message = BAD_PARAMS[case]
    if case == "twice":
        p = np.zeros(3)
        params = [p, p]
    elif case == "unknown option":
        params = [{"params": [np.zeros(3)], "learning_rate": 0.1}]
    with pytest.raises(exc, match=message):
        cls(params)


def test_read_only_param_refused():
    p = np.zeros(3)
    p.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[0\]: the array is read-only"):
        fusedopt.Adam([p])


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match=r"backend: expected one of \['auto', 'cython'"):
        fusedopt.Adam([np.zeros(3)], backend="fortran")


LOAD_BREAKERS = {
    "not a dict": (lambda sd: [sd], TypeError, "state_dict: expected a dict"),
    "other shape": (lambda sd: sd["state"][1].update(
        {k: np.zeros(4, v.dtype) for k, v in sd["state"][1].items()
         if isinstance(v, np.ndarray)}) or sd, ValueError,
        r"state_dict\['state'\]\[1\]\[.*\]: expected shape \(5,\)"),
    "unknown state": (lambda sd: sd["state"][0].update(foo=np.zeros((3, 4))) or sd,
                      ValueError, r"unknown state \['foo'\]"),
    "bad step": (lambda sd: sd["state"][0].update(step=-1) or sd, ValueError,
                 r"\['step'\]: expected an int >= 0"),
    "bad index": (lambda sd: sd["state"].update({7: {}}) or sd, ValueError,
                  r"state_dict\['state'\]\[7\]: expected a parameter index"),
    "group count": (lambda sd: sd.update(param_groups=sd["param_groups"] * 2) or sd,
                    ValueError, r"state_dict\['param_groups'\]: expected 1 groups"),
    "bad lr": (lambda sd: sd["param_groups"][0].update(lr=-1.0) or sd, ValueError,
               r"state_dict\['param_groups'\]\[0\]\['lr'\]"),
}


@pytest.mark.parametrize("case", list(LOAD_BREAKERS))
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_bad_state_dict_changes_nothing(name, case):
    opt, params = trained(name, "numpy")
    snap = snapshot(opt, params)
    breaker, exc, message = LOAD_BREAKERS[case]
    bad = breaker(copy.deepcopy(opt.state_dict()))
    with pytest.raises(exc, match=message):
        opt.load_state_dict(bad)
    assert_unchanged(opt, params, snap)
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in snap[2]]


def test_functional_errors_change_nothing(backend):
    p, g, m, v = (np.full(4, x, np.float32) for x in (1.0, 2.0, 3.0, 4.0))
    before = [a.copy() for a in (p, g, m, v)]
    with pytest.raises(ValueError, match="exp_avg_sq: expected shape"):
        functional.adam_step(p, g, m, np.zeros(5, np.float32), step=1, backend=backend)
    with pytest.raises(ValueError, match="step: expected an int >= 1"):
        functional.adam_step(p, g, m, v, step=0, backend=backend)
    with pytest.raises(ValueError, match="momentum_buffer: expected an array"):
        functional.sgd_step(p, g, momentum=0.9, backend=backend)
    m.flags.writeable = False
    with pytest.raises(ValueError, match="exp_avg: the array is read-only"):
        functional.adam_step(p, g, m, v, step=1, backend=backend)
    m.flags.writeable = True
    with pytest.raises(ValueError, match="exp_avg: shares memory with param"):
        functional.adam_step(p, g, p, v, step=1, backend=backend)
    for a, b in zip((p, g, m, v), before):
        np.testing.assert_array_equal(a, b, strict=True)


def test_a_torch_tensor_is_pointed_to_the_drop_in():
    """fusedopt's NumPy optimizers take arrays; a CPU torch tensor is told where torch
    tensors go (and how to pass its memory as an array), not that it is no CUDA
    array."""
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"params\[0\]: a torch tensor on cpu; step torch "
                       r"tensors with fusedopt.torch .*t.detach\(\).numpy\(\)"):
        fusedopt.Adam([torch.ones(3)])
    t = torch.ones(3)
    fusedopt.Adam([t.detach().numpy()], lr=0.5).step([np.ones(3, np.float32)])
    assert torch.allclose(t, torch.full((3,), 0.5))  # the view shares its memory
