"""FlatParams: a flat step equals the per-tensor step for every algorithm, with mixed
param groups; state_dicts interchange; one backend call per segment."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import fusedopt
from cases import ALGORITHMS
from fusedopt import FlatParams

SHAPES = [(4, 3), (5,), (2, 2, 2), (7,), (1,), (3, 3)]


def make_arrays(dtype=np.float64, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in SHAPES]


def grouped(params, kwargs, cls):
    """Two groups that interleave in memory (weights vs biases style), the second with
    its own lr and no weight decay (where the algorithm has it)."""
    second = {"params": params[1::2], "lr": kwargs.get("lr", 0.01) * 0.5}
    if "weight_decay" in cls._group._fields:
        second["weight_decay"] = 0.0
    return [{"params": params[0::2]}, second]


def order_grads(grads):
    return grads[0::2] + grads[1::2]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_flat_step_equals_per_tensor_step(name, dtype, backend):
    cls, _, options = ALGORITHMS[name]
    kwargs = options[-1]
    arrays = make_arrays(dtype)
    flat = FlatParams.from_arrays(arrays)
    ref = [a.copy() for a in arrays]
    flat_opt = cls(grouped(flat.views, kwargs, cls), **kwargs, backend=backend)
    ref_opt = cls(grouped(ref, kwargs, cls), **kwargs, backend=backend)
    assert flat_opt.flat_params is flat
    rng = np.random.default_rng(1)
    for _ in range(6):
        grads = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
        for gv, g in zip(flat.grad_views, grads):
            gv[...] = g
        flat_opt.step()
        ref_opt.step(order_grads(grads))
    for v, r in zip(flat.views, ref):
        np.testing.assert_array_equal(v, r)
    flat_sd, ref_sd = flat_opt.state_dict(), ref_opt.state_dict()
    assert flat_sd["state"].keys() == ref_sd["state"].keys()
    for i, st in ref_sd["state"].items():
        assert flat_sd["state"][i].keys() == st.keys()
        for key, value in st.items():
            np.testing.assert_array_equal(flat_sd["state"][i][key], value)


def test_one_backend_call_per_segment(monkeypatch):
    """500 tensors in two contiguous groups: two kernel calls per step."""
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(rng.integers(256, 4096)).astype(np.float32)
              for _ in range(500)]
    flat = FlatParams.from_arrays(arrays)
    opt = fusedopt.AdamW([{"params": flat.views[:400]},
                          {"params": flat.views[400:], "weight_decay": 0.0}])
    calls = []
    real = opt._impl.adam
    monkeypatch.setattr(opt, "_impl", type("Spy", (), {
        "adam": staticmethod(lambda *a: (calls.append(a[0].size), real(*a)))})())
    opt.step()
    assert calls == [sum(a.size for a in arrays[:400]), sum(a.size for a in arrays[400:])]


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_state_dict_moves_between_flat_and_per_tensor(name):
    cls, _, options = ALGORITHMS[name]
    kwargs = options[-1]
    rng = np.random.default_rng(4)
    grads = [[rng.standard_normal(s) for s in SHAPES] for _ in range(8)]
    arrays = make_arrays()

    # per-tensor for 4 steps, then flat for 4 more; against per-tensor all along
    ref = [a.copy() for a in arrays]
    ref_opt = cls(ref, **kwargs)
    for g in grads:
        ref_opt.step(g)
    first = [a.copy() for a in arrays]
    opt1 = cls(first, **kwargs)
    for g in grads[:4]:
        opt1.step(g)
    flat = FlatParams.from_arrays(first)
    opt2 = cls(flat, **kwargs)
    opt2.load_state_dict(copy.deepcopy(opt1.state_dict()))
    for g in grads[4:]:
        opt2.step(g)  # per-tensor grads are copied into the grad buffer
    for v, r in zip(flat.views, ref):
        np.testing.assert_array_equal(v, r)

    # and back: flat state into a per-tensor optimizer
    back = [v.copy() for v in flat.views]
    opt3 = cls(back, **kwargs)
    opt3.load_state_dict(copy.deepcopy(opt2.state_dict()))
    ref_opt.step(grads[0])
    opt3.step(grads[0])
    for a, r in zip(back, ref):
        np.testing.assert_array_equal(a, r)


def test_mixed_dtypes_get_a_buffer_each():
    arrays = [np.ones(3, np.float32), np.ones(4), np.ones(2, np.float32)]
    flat = FlatParams.from_arrays(arrays)
    assert {dt.name: b.size for dt, b in flat.buffers.items()} == {"float32": 5,
                                                                   "float64": 4}
    opt = fusedopt.SGD(flat, lr=0.5)
    for gv in flat.grad_views:
        gv[...] = 1.0
    opt.step()
    assert [v.tolist() for v in flat.views] == [[0.5] * 3, [0.5] * 4, [0.5] * 2]


def test_segment_with_unequal_steps_is_refused_unchanged():
    flat = FlatParams.from_arrays(make_arrays())
    opt = fusedopt.Adam(flat)
    for gv in flat.grad_views:
        gv[...] = 1.0
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    sd["state"][2]["step"] = 7
    before = [v.copy() for v in flat.views], copy.deepcopy(dict(opt.state))
    with pytest.raises(ValueError, match=r"state_dict\['state'\]\[2\]: a FlatParams "
                                         "optimizer steps each segment as one"):
        opt.load_state_dict(sd)
    assert opt.state[2]["step"] == 1
    for k, v in before[1].items():
        np.testing.assert_array_equal(opt.state[k]["exp_avg"], v["exp_avg"])


def test_flat_step_with_bad_grads_changes_nothing():
    flat = FlatParams.from_arrays(make_arrays())
    opt = fusedopt.Adam(flat)
    before = [v.copy() for v in flat.views]
    bad = [np.ones(s) for s in SHAPES]
    bad[3] = np.ones(8)
    with pytest.raises(ValueError, match=r"grads\[3\]: expected shape \(7,\)"):
        opt.step(bad)
    for v, b in zip(flat.views, before):
        np.testing.assert_array_equal(v, b)
    assert not np.any(flat.grad_buffers[np.dtype(np.float64)])  # nothing copied in
    assert len(opt.state) == 0


def test_per_tensor_optimizer_without_grads_says_why():
    with pytest.raises(TypeError, match="only an optimizer over a FlatParams steps"):
        fusedopt.SGD([np.zeros(3)]).step()


def test_from_arrays_validates():
    with pytest.raises(TypeError, match=r"arrays\[1\]: expected a numpy.ndarray"):
        FlatParams.from_arrays([np.zeros(2), [1.0]])
    with pytest.raises(TypeError, match=r"dtypes\[0\]: expected float32, float64 or bfloat16"):
        FlatParams.from_arrays([np.zeros(2, np.int32)])
