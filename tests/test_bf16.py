"""bfloat16 storage: state in bf16 (round to nearest even) and bf16 parameters
(stochastic rounding), on the numba backend."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numba
import numpy as np
import pytest

import fusedopt
from cases import CASES, ALGORITHMS, case_id
from fusedopt import lowbit
from fusedopt.backends import policy
from conftest import NUMBERS

BF16 = np.dtype(ml_dtypes.bfloat16)


@numba.njit(cache=True)
def _rne(x, out):
    for i in range(x.size):
        out[i] = lowbit.f32_to_bf16(x[i])


@numba.njit(cache=True)
def _stochastic(x, seed, out):
    for i in range(x.size):
        out[i] = lowbit.f32_to_bf16_stochastic(x[i], seed, i)


def test_round_to_nearest_even_matches_ml_dtypes():
    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
    special = np.array([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x7F7FFFFF, 0x00008000,
                        0x00018000, 0x80000000, 0x7F800000, 0xFF800000, 0x7FC00000,
                        0x7F800001], np.uint32)  # ties both ways, overflow, subnormal
    x = np.concatenate([bits, special]).view(np.float32)
    out = np.empty(x.size, np.uint16)
    _rne(x, out)
    with np.errstate(invalid="ignore"):
        ref = x.astype(BF16).view(np.uint16)
    nan = np.isnan(x)
    np.testing.assert_array_equal(out[~nan], ref[~nan])
    assert np.isnan(out[nan].view(BF16).astype(np.float32)).all()  # NaN stays NaN


def test_stochastic_rounding_is_unbiased():
    # a value 0.3 of the way between two bf16 neighbours rounds up 30% of the time
    lo = np.float32(1.0)
    ulp = np.float32(2.0 ** -7)
    for frac in (0.3, 0.5, 0.97):
        x = np.full(400_000, lo + np.float32(frac) * ulp, np.float32)
        out = np.empty(x.size, np.uint16)
        _stochastic(x, 12345, out)
        vals = out.view(BF16).astype(np.float64)
        assert set(np.unique(vals)) <= {1.0, 1.0 + 2.0 ** -7}
        sigma = ulp * np.sqrt(frac * (1 - frac) / x.size)
        assert abs(vals.mean() - float(x[0])) < 5 * sigma, frac


def test_sgd_on_bf16_params_moves_where_round_to_nearest_would_stall():
    """An update below half a bf16 ulp is lost by round to nearest; stochastic
    rounding keeps its expectation: after 100 steps of -1e-3 from 1.0 the mean
    parameter is 0.9 (round to nearest would leave every element at 1.0)."""
    n = 200_000
    p = np.ones(n, BF16)
    opt = fusedopt.SGD([p], lr=1e-3, seed=7)
    g = np.ones(n, BF16)
    for _ in range(100):
        opt.step([g])
    mean = p.astype(np.float64).mean()
    assert abs(mean - 0.9) < 2e-4, mean


def _bf16_adam_run(n, seed, parallel, threads, monkeypatch):
    monkeypatch.setattr(policy, "PARALLEL_MIN_SIZE", 0 if parallel else 1 << 62)
    before = numba.get_num_threads()
    numba.set_num_threads(threads)
    try:
        rng = np.random.default_rng(0)
        p = rng.standard_normal(n).astype(BF16)
        opt = fusedopt.AdamW([p], lr=1e-2, seed=seed, backend="numba")
        for _ in range(5):
            opt.step([rng.standard_normal(n).astype(BF16)])
        return p.view(np.uint16).copy()
    finally:
        numba.set_num_threads(before)


def test_stochastic_rounding_is_reproducible_across_thread_counts(monkeypatch):
    n = 100_003
    serial = _bf16_adam_run(n, 1, False, 1, monkeypatch)
    one = _bf16_adam_run(n, 1, True, 1, monkeypatch)
    many = _bf16_adam_run(n, 1, True, numba.config.NUMBA_NUM_THREADS, monkeypatch)
    np.testing.assert_array_equal(serial, one)
    np.testing.assert_array_equal(serial, many)
    other_seed = _bf16_adam_run(n, 2, True, 1, monkeypatch)
    assert (other_seed != serial).mean() > 0.05  # the seed drives the rounding


def test_bf16_state_adam_tracks_fp32_on_a_quadratic():
    """1,000 steps of Adam on 0.5 * sum(a * (x - t)**2): the bf16-state run stays
    within 0.01 of the float32 run (stated bound; measured 0.0025) and converges."""
    rng = np.random.default_rng(0)
    n = 4096
    a = rng.uniform(0.5, 2.0, n).astype(np.float32)
    t = rng.standard_normal(n).astype(np.float32)
    x32, xbf = np.zeros(n, np.float32), np.zeros(n, np.float32)
    o32 = fusedopt.Adam([x32], lr=1e-2)
    obf = fusedopt.Adam([xbf], lr=1e-2, state_dtype="bfloat16")
    for _ in range(1000):
        o32.step([a * (x32 - t)])
        obf.step([a * (xbf - t)])
    assert np.abs(xbf - x32).max() < 0.01
    assert np.abs(xbf - t).max() < 0.01
    assert obf.state[0]["exp_avg"].dtype == np.uint16  # 2 bytes per state element


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bf16_state_tracks_fp32_for_every_algorithm(case):
    """20 steps with bf16 state against float32 state: within 2e-2 of the values'
    scale, |a - b| / (|b| + 1) (bf16 keeps 8 significant bits; the state's rounding
    error reaches the parameters scaled by lr, and a relative measure alone would
    blow up where a parameter crosses zero)."""
    name, kwargs = case
    cls = ALGORITHMS[name][0]
    rng = np.random.default_rng(5)
    shapes = [(300,), (4, 5)]
    ref = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    low = [p.copy() for p in ref]
    o_ref = cls(ref, **kwargs)
    o_low = cls(low, **kwargs, state_dtype="bfloat16")
    for _ in range(20):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        o_ref.step(grads)
        o_low.step(grads)
    def scaled_error(a, b):
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        return float(np.max(np.abs(a - b) / (np.abs(b) + 1.0)))

    for a, b in zip(low, ref):
        assert scaled_error(a, b) < 2e-2
    for i, st in o_low.state_dict()["state"].items():
        for key, value in st.items():
            if key not in NUMBERS:
                assert value.dtype == BF16
                # a state with momentum 0.9 sums ~10 roundings of 2**-9 each
                assert scaled_error(value.astype(np.float32),
                                    o_ref.state_dict()["state"][i][key]) < 5e-2


def test_bf16_digits_mlp_accuracy_within_one_point():
    """1,035 Adam steps on the digits MLP: bf16 state, bf16 weights and gradients
    with stochastic rounding, and bf16 weights through a float32 master copy each
    end within 1 point of test accuracy of the float32 run."""
    pytest.importorskip("sklearn")
    script = Path(__file__).resolve().parent.parent / "examples" / "digits_mlp.py"
    variants = {"float32": [], "bf16 state": ["--state-dtype", "bfloat16"],
                "bf16 params": ["--param-dtype", "bfloat16"],
                "bf16 params, master": ["--param-dtype", "bfloat16", "--master-weights"]}
    acc = {}
    for label, extra in variants.items():
        out = subprocess.run([sys.executable, str(script), "--optimizer", "adam",
                              "--epochs", "23", *extra],  # 23 epochs: 1,035 steps
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        acc[label] = float(re.findall(r"test accuracy: ([0-9.]+)", out.stdout)[-1])
    assert acc["float32"] >= 0.95
    for label in variants:
        assert abs(acc[label] - acc["float32"]) <= 0.01, acc


def test_state_dict_carries_bf16_and_resumes_exactly():
    rng = np.random.default_rng(3)
    grads = [[rng.standard_normal(50).astype(np.float32)] for _ in range(10)]
    p = rng.standard_normal(50).astype(np.float32)
    opt = fusedopt.Adam([p], lr=0.01, amsgrad=True, state_dtype="bfloat16")
    for g in grads[:5]:
        opt.step(g)
    sd = opt.state_dict()
    assert {v.dtype for k, v in sd["state"][0].items() if k not in NUMBERS} == {BF16}
    saved = {k: (v if k in NUMBERS else v.copy()) for k, v in sd["state"][0].items()}
    q = p.copy()
    for g in grads[5:]:
        opt.step(g)
    again = fusedopt.Adam([q], lr=0.01, amsgrad=True, state_dtype="bfloat16")
    again.load_state_dict({"state": {0: saved}, "param_groups": sd["param_groups"]})
    for g in grads[5:]:
        again.step(g)
    np.testing.assert_array_equal(p, q)
    # into float32 state: the bf16 values exactly; back into bf16: rounded to nearest
    wide = fusedopt.Adam([q.copy()], lr=0.01, amsgrad=True)
    wide.load_state_dict({"state": {0: saved}, "param_groups": sd["param_groups"]})
    np.testing.assert_array_equal(wide.state[0]["exp_avg"],
                                  saved["exp_avg"].astype(np.float32))


def test_flat_bf16_state_equals_per_tensor():
    shapes = [(30, 4), (7,), (5, 5)]
    rng = np.random.default_rng(4)
    values = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    flat = fusedopt.FlatParams.from_arrays(values)
    loose = [v.copy() for v in values]
    o_flat = fusedopt.RMSprop(flat, lr=0.01, momentum=0.9, centered=True,
                              state_dtype="bfloat16")
    o_loose = fusedopt.RMSprop(loose, lr=0.01, momentum=0.9, centered=True,
                               state_dtype="bfloat16")
    for _ in range(5):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        for gv, g in zip(flat.grad_views, grads):
            gv[...] = g
        o_flat.step()
        o_loose.step(grads)
    for a, b in zip(flat.views, loose):
        np.testing.assert_array_equal(a, b)


def test_bf16_errors_change_nothing():
    p32 = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="state_dtype: expected None, 'float32' or "
                       "'bfloat16', got 'float16'"):
        fusedopt.Adam([p32], state_dtype="float16")
    with pytest.raises(ValueError, match="state_dtype: bfloat16 state runs on the numba, "
                       "cuda and cython backends; backend 'numpy'"):
        fusedopt.Adam([p32], state_dtype="bfloat16", backend="numpy")
    with pytest.raises(ValueError, match="params: bfloat16 parameters run on the numba "
                       "and cython backends; backend 'numpy'"):
        fusedopt.SGD([np.ones(4, BF16)], lr=0.1, backend="numpy")
    with pytest.raises(ValueError, match="some parameters are float64"):
        fusedopt.Adam([np.ones(4)], state_dtype="bfloat16")
    with pytest.raises(ValueError, match="seed: expected an int >= 0"):
        fusedopt.Adam([np.ones(4, BF16)], seed=-1)
    p = np.ones(4, BF16)
    opt = fusedopt.Adam([p], lr=0.1)
    with pytest.raises(TypeError, match=r"grads\[0\]: expected dtype bfloat16"):
        opt.step([np.ones(4, np.float32)])
    np.testing.assert_array_equal(p.astype(np.float32), np.ones(4))
    assert opt.state == {}


# -- master weights: bf16 parameters stepped through a float32 copy ----------------

@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_master_weights_step_exactly_as_float32_and_round_to_nearest(case):
    """With master_weights=True, the float32 master copy follows a float32 run fed
    the same (bf16) gradients to float32 rounding (the two kernels may contract
    multiply-adds differently); the bf16 parameter is exactly that copy rounded to
    nearest even after every step. Serial and parallel loops both."""
    name, kwargs = case
    cls = ALGORITHMS[name][0]
    rng = np.random.default_rng(6)
    shapes = [(300,), (policy.PARALLEL_MIN_SIZE,)]
    low = [rng.standard_normal(s).astype(BF16) for s in shapes]
    ref = [p.astype(np.float32) for p in low]
    o_low = cls(low, **kwargs, master_weights=True)
    o_ref = cls(ref, **kwargs)
    for _ in range(5):
        grads = [rng.standard_normal(s).astype(BF16) for s in shapes]
        o_low.step(grads)
        o_ref.step([g.astype(np.float32) for g in grads])
        for i, (p, q) in enumerate(zip(low, ref)):
            master = o_low.state[i]["master_param"]
            assert master.dtype == np.float32
            np.testing.assert_allclose(master, q, rtol=1e-5, atol=1e-6)
            np.testing.assert_array_equal(p.view(np.uint16), master.astype(BF16).view(np.uint16))
    for i, st in o_low.state.items():  # state follows the master: float32
        for key, value in st.items():
            if key not in NUMBERS:
                np.testing.assert_allclose(value, o_ref.state[i].get(key, ref[i]),
                                           rtol=1e-5, atol=1e-6)


def test_master_weights_with_bf16_state_mixed_params_and_flat():
    """bf16 state on top of the master copy; a float32 parameter beside bf16 ones is
    its own master; a FlatParams optimizer steps exactly as the per-tensor one."""
    rng = np.random.default_rng(7)
    values = [rng.standard_normal((40, 3)).astype(BF16),
              rng.standard_normal(17).astype(np.float32),
              rng.standard_normal(9).astype(BF16)]
    flat = fusedopt.FlatParams.from_arrays(values)
    loose = [v.copy() for v in values]
    opts = {"lr": 0.01, "amsgrad": True, "state_dtype": "bfloat16", "master_weights": True}
    o_flat, o_loose = fusedopt.AdamW(flat, **opts), fusedopt.AdamW(loose, **opts)
    for _ in range(4):
        grads = [rng.standard_normal(v.shape).astype(v.dtype) for v in values]
        for gv, g in zip(flat.grad_views, grads):
            gv[...] = g
        o_flat.step()
        o_loose.step(grads)
    assert "master_param" not in o_loose.state[1]
    assert o_loose.state[0]["exp_avg"].dtype == np.uint16
    for i, (a, b) in enumerate(zip(flat.views, loose)):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
        for key, value in o_loose.state[i].items():
            if key not in NUMBERS:
                np.testing.assert_array_equal(o_flat.state[i][key].reshape(-1), value)
    master = o_loose.state[0]["master_param"]
    np.testing.assert_array_equal(loose[0].reshape(-1), master.astype(BF16))


def test_master_weights_state_dict_resumes_exactly():
    rng = np.random.default_rng(8)
    grads = [[rng.standard_normal(64).astype(BF16)] for _ in range(8)]
    p = rng.standard_normal(64).astype(BF16)
    opt = fusedopt.Adam([p], lr=0.01, master_weights=True)
    for g in grads[:4]:
        opt.step(g)
    sd = opt.state_dict()
    assert sd["state"][0]["master_param"].dtype == np.float32
    assert sd["state"][0]["exp_avg"].dtype == np.float32
    saved = {k: (v if k in NUMBERS else v.copy()) for k, v in sd["state"][0].items()}
    q = p.copy()
    for g in grads[4:]:
        opt.step(g)
    again = fusedopt.Adam([q], lr=0.01, master_weights=True)
    again.load_state_dict({"state": {0: saved}, "param_groups": sd["param_groups"]})
    for g in grads[4:]:
        again.step(g)
    np.testing.assert_array_equal(p.view(np.uint16), q.view(np.uint16))
    plain = fusedopt.Adam([q], lr=0.01)  # no master copy: refused, nothing changed
    with pytest.raises(ValueError, match=r"unknown state \['master_param'\]"):
        plain.load_state_dict({"state": {0: saved}, "param_groups": sd["param_groups"]})
    assert plain.state == {}


def test_master_weights_errors_change_nothing():
    p32 = np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"master_weights: keeps float32 master copies "
                       r"of bfloat16 parameters, and these parameters are \['float32'\]"):
        fusedopt.Adam([p32], master_weights=True)
    with pytest.raises(TypeError, match="master_weights: expected a bool"):
        fusedopt.Adam([np.ones(4, BF16)], master_weights="yes")
    with pytest.raises(ValueError, match="bfloat16 parameters run on the numba and "
                       "cython backends"):
        fusedopt.Adam([np.ones(4, BF16)], master_weights=True, backend="numpy")
    p = np.ones(4, BF16)
    opt = fusedopt.Adam([p], lr=0.1, master_weights=True)
    with pytest.raises(TypeError, match=r"grads\[0\]: expected dtype bfloat16"):
        opt.step([np.ones(4, np.float32)])
    np.testing.assert_array_equal(p.astype(np.float32), np.ones(4))
    assert opt.state == {}
