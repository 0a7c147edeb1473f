"""Fuzzing: random constructor arguments, gradients (aliasing ones included, built
with ``as_strided`` and ``np.frombuffer`` over the parameters' memory), live state
edits and state dicts. Only clean exceptions (TypeError, ValueError,
FloatingPointError) come out, and whenever one does, the parameters, the state and
a canary beside them in memory are bit-identical to before."""

from __future__ import annotations

import copy

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cases import ALGORITHMS

#: the errors a bad input may raise, named, before any write (OverflowError: a
#: schedule that leaves the float range, such as ASGD's eta for a huge alpha)
CLEAN = (TypeError, ValueError, FloatingPointError, OverflowError)
junk = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.booleans(),
    st.none(), st.text(max_size=3), st.tuples(st.floats(-1, 2), st.floats(-1, 2)),
    st.just([0.9]), st.just(np.float32(0.5)))
KEYS = ["lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "betas",
        "eps", "amsgrad", "lr_decay", "initial_accumulator_value", "alpha", "centered",
        "nonfinite", "max_grad_norm"]


@st.composite
def grads_for(draw, shapes, dtype, block):
    out = []
    for shape in shapes:
        kind = draw(st.sampled_from(["ok", "ok", "ok", "nan", "shape", "dtype", "list",
                                     "none", "strided", "readonly", "alias_strided",
                                     "alias_buffer"]))
        g = np.random.default_rng(draw(st.integers(0, 99))).standard_normal(shape)
        g = g.astype(dtype)
        n = int(np.prod(shape))
        if kind in ("alias_strided", "alias_buffer"):  # somewhere in the params' block
            at = draw(st.integers(0, block.size - n))
            if kind == "alias_strided":
                g = np.lib.stride_tricks.as_strided(block[at:], shape=shape,
                                                    strides=g.strides)
            else:
                g = np.frombuffer(block.data, dtype, count=n,
                                  offset=at * block.itemsize).reshape(shape)
        elif kind == "nan":
            g.reshape(-1)[draw(st.integers(0, g.size - 1))] = np.nan
        elif kind == "shape":
            g = np.zeros(g.size + 1, dtype)
        elif kind == "dtype":
            g = g.astype(np.float16)
        elif kind == "list":
            g = g.tolist()
        elif kind == "none":
            g = None
        elif kind == "strided":
            g = np.repeat(g.reshape(-1), 2)[::2].reshape(shape)
        elif kind == "readonly":
            g.flags.writeable = False
        out.append(g)
    return out


def mutate_state_dict(draw, sd):
    sd = copy.deepcopy(sd)
    what = draw(st.sampled_from(["none", "drop_key", "bad_step", "bad_shape", "junk_group",
                                 "extra_state", "wrong_type", "truncated", "huge_step"]))
    if what == "drop_key":
        sd.pop(draw(st.sampled_from(["state", "param_groups"])))
    elif what == "bad_step" and sd["state"]:
        sd["state"][0]["step"] = draw(junk)
    elif what == "bad_shape" and sd["state"]:
        for k, v in sd["state"][0].items():
            if isinstance(v, np.ndarray):
                sd["state"][0][k] = np.zeros(v.size + 1)
    elif what == "junk_group":
        sd["param_groups"][0][draw(st.sampled_from(KEYS[:4]))] = draw(junk)
    elif what == "extra_state":
        sd["state"][draw(st.integers(-2, 5))] = {"step": 1}
    elif what == "wrong_type":
        sd["param_groups"] = draw(junk)
    elif what == "truncated" and sd["state"]:
        arrays = sorted(k for k, v in sd["state"][0].items() if isinstance(v, np.ndarray))
        sd["state"][0].pop(draw(st.sampled_from(arrays + ["step"])), None)
    elif what == "huge_step" and sd["state"]:
        sd["state"][0]["step"] = draw(st.sampled_from([10 ** 400, 2 ** 63, 2 ** 53,
                                                       float("nan"), -1]))
    return sd


def edit_live_state(draw, opt):
    """What users do to ``opt.state`` between steps: reset or replace an entry."""
    if not opt.state:
        return
    i = draw(st.sampled_from(sorted(opt.state)))
    what = draw(st.sampled_from(["none", "none", "reset", "zeros", "wrong_size",
                                 "wrong_dtype", "readonly", "alias_param"]))
    arrays = sorted(k for k, v in opt.state[i].items() if isinstance(v, np.ndarray))
    if what == "reset":
        opt.state[i] = {}
    elif arrays and what != "none":
        k = draw(st.sampled_from(arrays))
        v = opt.state[i][k]
        opt.state[i][k] = {
            "zeros": lambda: np.zeros_like(v),
            "wrong_size": lambda: np.zeros(v.size + 1, v.dtype),
            "wrong_dtype": lambda: np.zeros(v.shape, np.float16),
            "readonly": lambda: np.require(np.zeros_like(v), requirements="C").view(),
            "alias_param": lambda: opt._flat[i].view(v.dtype)[:v.size],
        }[what]()
        if what == "readonly":
            opt.state[i][k].flags.writeable = False


def snapshot(opt, block):
    return block.copy(), {i: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                              for k, v in st_.items()} for i, st_ in opt.state.items()}


def assert_unchanged(opt, block, snap):
    np.testing.assert_array_equal(block.view(np.uint8), snap[0].view(np.uint8))
    assert set(opt.state) == set(snap[1])
    for i, st_ in snap[1].items():
        assert set(opt.state[i]) == set(st_)
        for k, v in st_.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(np.asarray(opt.state[i][k]).view(np.uint8),
                                              v.view(np.uint8))
            else:
                assert opt.state[i][k] == v


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), name=st.sampled_from(list(ALGORITHMS)),
       dtype=st.sampled_from([np.float32, np.float64]),
       shapes=st.lists(st.tuples(st.integers(1, 6)), min_size=1, max_size=3))
def test_fuzz_only_clean_exceptions_and_no_partial_writes(data, name, dtype, shapes):
    cls = ALGORITHMS[name][0]
    sizes = [int(np.prod(s)) for s in shapes]
    # the parameters and a canary carved from one allocation, back to back
    block = np.random.default_rng(0).standard_normal(sum(sizes) + 8).astype(dtype)
    offsets = np.cumsum([0] + sizes)
    params = [block[a:b].reshape(s) for a, b, s in zip(offsets, offsets[1:], shapes)]
    kwargs = data.draw(st.dictionaries(st.sampled_from(KEYS), junk, max_size=3))
    try:
        opt = cls(params, **kwargs)
    except CLEAN:
        return
    for _ in range(3):
        edit_live_state(data.draw, opt)
        snap = snapshot(opt, block)
        try:
            opt.step(data.draw(grads_for(shapes, dtype, block)))
        except CLEAN:
            assert_unchanged(opt, block, snap)
    for i in list(opt.state):  # a consistent state to save: reset, one clean step
        opt.state[i] = {}
    snap = snapshot(opt, block)
    try:
        opt.step([np.ones(s, dtype) for s in shapes])
    except OverflowError:  # (hyperparameters no step survives: refused, untouched)
        assert_unchanged(opt, block, snap)
        return
    snap = snapshot(opt, block)
    try:
        opt.load_state_dict(mutate_state_dict(data.draw, opt.state_dict()))
    except CLEAN:
        assert_unchanged(opt, block, snap)
    np.testing.assert_array_equal(block, snap[0])  # loading never touches the parameters
