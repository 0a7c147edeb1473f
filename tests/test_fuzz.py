"""Fuzzing: random constructor arguments, gradients and state dicts. Only clean
exceptions (TypeError, ValueError, FloatingPointError) come out, and whenever one
does, the parameters are bit-identical to before."""

from __future__ import annotations

import copy

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cases import ALGORITHMS

CLEAN = (TypeError, ValueError, FloatingPointError)
junk = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.integers(-5, 5), st.booleans(),
    st.none(), st.text(max_size=3), st.tuples(st.floats(-1, 2), st.floats(-1, 2)),
    st.just([0.9]), st.just(np.float32(0.5)))
KEYS = ["lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize", "betas",
        "eps", "amsgrad", "lr_decay", "initial_accumulator_value", "alpha", "centered",
        "nonfinite", "max_grad_norm"]


@st.composite
def grads_for(draw, shapes, dtype):
    out = []
    for shape in shapes:
        kind = draw(st.sampled_from(["ok", "ok", "ok", "nan", "shape", "dtype", "list",
                                     "none", "strided", "readonly"]))
        g = np.random.default_rng(draw(st.integers(0, 99))).standard_normal(shape)
        g = g.astype(dtype)
        if kind == "nan":
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
                                 "extra_state", "wrong_type"]))
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
    return sd


@settings(max_examples=1000, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data(), name=st.sampled_from(list(ALGORITHMS)),
       dtype=st.sampled_from([np.float32, np.float64]),
       shapes=st.lists(st.tuples(st.integers(1, 6)), min_size=1, max_size=3))
def test_fuzz_only_clean_exceptions_and_no_partial_writes(data, name, dtype, shapes):
    cls = ALGORITHMS[name][0]
    params = [np.random.default_rng(i).standard_normal(s).astype(dtype)
              for i, s in enumerate(shapes)]
    kwargs = data.draw(st.dictionaries(st.sampled_from(KEYS), junk, max_size=3))
    try:
        opt = cls(params, **kwargs)
    except CLEAN:
        return
    for _ in range(3):
        before = [p.copy() for p in params]
        try:
            opt.step(data.draw(grads_for(shapes, dtype)))
        except CLEAN:
            for p, b in zip(params, before):
                np.testing.assert_array_equal(p, b, strict=True)
    before = [p.copy() for p in params]
    state_before = copy.deepcopy(dict(opt.state))
    try:
        opt.load_state_dict(mutate_state_dict(data.draw, opt.state_dict()))
    except CLEAN:
        assert set(opt.state) == set(state_before)
    for p, b in zip(params, before):  # loading never touches the parameters
        np.testing.assert_array_equal(p, b, strict=True)
