"""The ``cuda`` backend: every algorithm and option against the float64 NumPy oracle,
CUDA arrays of every kind updated in place, state on the device, and the error paths.

Runs on Numba's CUDA simulator (``conftest`` sets ``NUMBA_ENABLE_CUDASIM=1`` unless
the environment says otherwise); ``NUMBA_ENABLE_CUDASIM=0`` runs it on a GPU. Under
the simulator, "device" memory is host memory: ``Foreign`` below exports only
``__cuda_array_interface__`` over a NumPy buffer, which is how CuPy arrays and
PyTorch CUDA tensors reach fusedopt.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import fusedopt
from fusedopt import _device, functional
from cases import ALGORITHMS, CASES, case_id
from conftest import NUMBERS, TOL, relative_error

pytest.importorskip("numba_cuda", reason="numba-cuda is not installed")
from numba import cuda  # noqa: E402

pytestmark = pytest.mark.skipif(
    not fusedopt.backends.available()["cuda"].ok,
    reason=f"cuda backend: {fusedopt.backends.available()['cuda'].detail}")

SIM = _device.simulated()
SHAPES = [(100,), (3, 5), (1,)]  # 100 > the simulator's grid: the stride loop runs
# enough arrays for one multi-tensor launch (optim.base._MULTI_MIN), one of them
# empty and one cut into several pieces (numba_cuda.CHUNK under the simulator)
MANY = SHAPES + [(0,), (150,), (2, 33)]
STEPS = 8


class Foreign:
    """A CUDA array known only through ``__cuda_array_interface__`` (like a CuPy
    array or a PyTorch CUDA tensor), over ``host`` memory (simulator only)."""

    def __init__(self, host, readonly=False, strides=None, device=None, shape=None):
        self.host, self.readonly, self.strides = host, readonly, strides
        self.shape = host.shape if shape is None else shape
        if device is not None:  # torch's spelling of the device
            self.device = types.SimpleNamespace(type="cuda", index=device)

    @property
    def __cuda_array_interface__(self):
        return {"shape": self.shape, "typestr": self.host.dtype.str,
                "data": (self.host.ctypes.data, self.readonly),
                "strides": self.strides, "version": 3}


needs_sim = pytest.mark.skipif(not SIM, reason="Foreign wraps host memory: simulator "
                               "only (CuPy/torch arrays stand in for it on a GPU)")


def host(a) -> np.ndarray:
    return a.host.copy() if isinstance(a, Foreign) else a.copy_to_host()


def run_pair(name, kwargs, dtype, steps=STEPS, seed=0, shapes=SHAPES, **options):
    """The same steps on CUDA arrays (cuda backend) and on host arrays (oracle)."""
    cls = ALGORITHMS[name][0]
    rng = np.random.default_rng(seed)
    ref_params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    dev_params = [cuda.to_device(p) for p in ref_params]
    ours = cls(dev_params, **kwargs, **options)
    oracle = cls(ref_params, **kwargs, **options, backend="numpy")
    for _ in range(steps):
        grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
        ours.step([cuda.to_device(g) for g in grads])
        oracle.step(grads)
    return dev_params, ref_params, ours, oracle


@pytest.mark.parametrize("shapes", [SHAPES, MANY], ids=["per-array", "multi"])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_matches_numpy_oracle(case, dtype, shapes):
    name, kwargs = case
    dev_params, ref_params, ours, oracle = run_pair(name, kwargs, dtype, shapes=shapes)
    assert ours.backend == "cuda" and ours.device == "cuda"
    tol = TOL[dtype]
    for i, (d, r) in enumerate(zip(dev_params, ref_params)):
        out = host(d)
        assert out.dtype == dtype
        assert relative_error(out, r) <= tol, f"params[{i}]"
    ours_sd, oracle_sd = ours.state_dict(), oracle.state_dict()
    for i, st in oracle_sd["state"].items():
        assert set(ours_sd["state"][i]) == set(st)
        for key, value in st.items():
            if key in NUMBERS:
                assert ours_sd["state"][i][key] == value
            else:
                assert isinstance(ours_sd["state"][i][key], np.ndarray)  # host copy
                assert relative_error(ours_sd["state"][i][key], value) <= tol, key


@pytest.mark.parametrize("shapes", [SHAPES, MANY], ids=["per-array", "multi"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bf16_state_matches_the_numba_backend(case, shapes):
    """state_dtype="bfloat16" on the device: the same rounding as the numba backend
    (float32 math, round to nearest even on store). The two compilers may contract
    multiply-adds differently, so a state element may differ by one bf16 step."""
    name, kwargs = case
    cls = ALGORITHMS[name][0]
    rng = np.random.default_rng(11)
    ref = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    dev = [cuda.to_device(p) for p in ref]
    ours = cls(dev, **kwargs, state_dtype="bfloat16")
    cpu = cls(ref, **kwargs, state_dtype="bfloat16", backend="numba")
    for _ in range(STEPS):
        grads = [rng.standard_normal(s).astype(np.float32) for s in shapes]
        ours.step([cuda.to_device(g) for g in grads])
        cpu.step(grads)
    for d, r in zip(dev, ref):
        np.testing.assert_allclose(host(d), r, rtol=1e-3, atol=1e-4)
    ours_sd, cpu_sd = ours.state_dict(), cpu.state_dict()
    for i, st in cpu_sd["state"].items():
        assert set(ours_sd["state"][i]) == set(st)
        for key, value in st.items():
            if key not in NUMBERS:
                assert ours_sd["state"][i][key].dtype == value.dtype  # bfloat16
                np.testing.assert_allclose(ours_sd["state"][i][key].astype(np.float32),
                                           value.astype(np.float32), rtol=2 ** -7,
                                           atol=1e-6)
    for st in ours.state.values():  # on the device: 2 bytes per element
        assert all(v.dtype == np.uint16 for k, v in st.items() if k not in NUMBERS)


@pytest.mark.parametrize("arrays", [1, 5], ids=["per-array", "multi"])
# (the simulator computes the discarded average in NumPy scalars, which warn on inf)
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_asgd_copy_phase_overwrites_a_non_finite_average(arrays):
    """test_oracle's twin on the device: a NaN or inf in ASGD's average before
    ``t0`` never reaches the copy of the parameter."""
    rng = np.random.default_rng(4)
    dev = [cuda.to_device(rng.standard_normal(7 + k).astype(np.float32))
           for k in range(arrays)]
    opt = fusedopt.ASGD(dev, lr=0.05, t0=2)
    opt.step([cuda.to_device(rng.standard_normal(7 + k).astype(np.float32))
              for k in range(arrays)])
    for i in range(arrays):
        ax = host(opt.state[i]["ax"])
        ax[0], ax[1], ax[2:] = np.nan, -np.inf, np.inf
        opt.state[i]["ax"].copy_to_device(ax)
    opt.step([cuda.to_device(rng.standard_normal(7 + k).astype(np.float32))
              for k in range(arrays)])
    for i, p in enumerate(dev):
        np.testing.assert_array_equal(host(opt.state[i]["ax"]), host(p))


def test_many_arrays_step_in_one_launch_per_group(monkeypatch):
    """From ``_MULTI_MIN`` arrays in a step on, one multi-tensor launch per group
    and dtype."""
    from fusedopt.backends import numba_cuda

    sizes = []
    real = numba_cuda.multi
    monkeypatch.setattr(numba_cuda, "multi", lambda *a: sizes.append(a[6].tolist())
                        or real(*a))
    dev = [cuda.to_device(np.zeros(s, np.float32)) for s in MANY]
    opt = fusedopt.SGD([{"params": dev[:4]}, {"params": dev[4:], "lr": 0.5}], lr=1.0)
    opt.step([cuda.to_device(np.ones(s, np.float32)) for s in MANY])
    assert sizes == [[100, 15, 1, 0], [150, 66]]
    assert [host(d).sum() for d in dev] == [-100.0, -15.0, -1.0, 0.0, -75.0, -33.0]


def test_bf16_state_resumes_on_the_device_and_refuses_bf16_params():
    rng = np.random.default_rng(12)
    p = rng.standard_normal(40).astype(np.float32)
    grads = [rng.standard_normal(40).astype(np.float32) for _ in range(6)]
    dev = cuda.to_device(p)
    opt = fusedopt.Adam([dev], lr=0.01, state_dtype="bfloat16")
    for g in grads[:3]:
        opt.step([cuda.to_device(g)])
    sd = opt.state_dict()
    saved = {k: (v if k in NUMBERS else v.copy()) for k, v in sd["state"][0].items()}
    again_dev = cuda.to_device(host(dev))
    for g in grads[3:]:
        opt.step([cuda.to_device(g)])
    again = fusedopt.Adam([again_dev], lr=0.01, state_dtype="bfloat16")
    again.load_state_dict({"state": {0: saved}, "param_groups": sd["param_groups"]})
    for g in grads[3:]:
        again.step([cuda.to_device(g)])
    np.testing.assert_array_equal(host(again_dev), host(dev))
    with pytest.raises(ValueError, match="bfloat16 state is for float32 or bfloat16 "
                       "parameters, and some parameters are float64"):
        fusedopt.Adam([cuda.to_device(np.ones(4))], state_dtype="bfloat16")


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_functional_step_matches_oracle(name):
    rng = np.random.default_rng(3)
    p, g = rng.standard_normal(40), rng.standard_normal(40)
    n_state = {"sgd": 1, "adam": 2, "adamw": 2, "adagrad": 1, "rmsprop": 1,
               "lion": 1, "adamax": 2, "adadelta": 2, "radam": 2, "rprop": 2, "nadam": 2,
               "asgd": 1, "lamb": 2}[name]
    kwargs = {"sgd": dict(momentum=0.9, step=1), "adam": dict(step=1),
              "adamw": dict(step=1), "adagrad": dict(step=1), "rmsprop": {},
              "lion": dict(lr=0.01, weight_decay=0.1), "adamax": dict(step=1),
              "adadelta": dict(weight_decay=0.1), "radam": dict(step=7),
              "rprop": {}, "nadam": dict(step=3, mu_product=0.7),
              "asgd": dict(step=3, eta=0.01, mu=0.5),
              "lamb": dict(step=2, weight_decay=0.1)}[name]
    ref = [p.copy(), g, *[np.zeros(40) for _ in range(n_state)]]
    dev = [cuda.to_device(a) for a in ref]
    fn = getattr(functional, f"{name}_step")
    fn(*dev, **kwargs, stream=cuda.stream())
    fn(*ref, **kwargs, backend="numpy")
    for d, r in zip(dev, ref):
        assert relative_error(d.copy_to_host(), r) <= 1e-12


@needs_sim
def test_foreign_arrays_are_updated_in_place_without_copies():
    rng = np.random.default_rng(0)
    buf = rng.standard_normal(64)
    before = buf.copy()
    p = Foreign(buf)
    opt = fusedopt.AdamW([p], lr=0.1)  # backend "auto"
    assert opt.backend == "cuda"
    opt.step([Foreign(np.ones(64))])
    assert not np.array_equal(buf, before)  # the caller's own memory moved
    expected = before.copy()
    fusedopt.AdamW([expected], lr=0.1, backend="numpy").step([np.ones(64)])
    np.testing.assert_allclose(buf, expected, rtol=1e-14)


def test_grad_clipping_and_nonfinite_policies_on_device():
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(50), rng.standard_normal(7)]
    dev = [cuda.to_device(p) for p in params]
    grads = [10 * rng.standard_normal(50), 10 * rng.standard_normal(7)]
    ours = fusedopt.SGD(dev, lr=0.1, momentum=0.9, max_grad_norm=1.0,
                        nonfinite="skip")
    oracle = fusedopt.SGD(params, lr=0.1, momentum=0.9, max_grad_norm=1.0,
                          nonfinite="skip", backend="numpy")
    ours.step([cuda.to_device(g) for g in grads])
    oracle.step(grads)
    for d, p in zip(dev, params):
        assert relative_error(d.copy_to_host(), p) <= 1e-12
    bad = [grads[0], grads[1].copy()]
    bad[1][3] = np.nan
    before = [d.copy_to_host() for d in dev]
    ours.step([cuda.to_device(g) for g in bad])
    assert ours.last_step_skipped and ours.skipped_steps == 1
    for d, b in zip(dev, before):
        np.testing.assert_array_equal(d.copy_to_host(), b)
    ours.nonfinite = "raise"
    with pytest.raises(FloatingPointError, match=r"grads\[1\]: 1 non-finite"):
        ours.step([cuda.to_device(g) for g in bad])


def test_state_dict_is_host_and_loads_back_to_device():
    rng = np.random.default_rng(2)
    params = [rng.standard_normal((4, 5))]
    grads = [[rng.standard_normal((4, 5))] for _ in range(6)]
    dev = [cuda.to_device(params[0])]
    opt = fusedopt.Adam(dev, lr=0.01, amsgrad=True)
    for g in grads[:3]:
        opt.step([cuda.to_device(g[0])])
    sd = opt.state_dict()
    assert sd["state"][0]["exp_avg"].shape == (4, 5)
    assert all(isinstance(v, np.ndarray) for k, v in sd["state"][0].items()
               if k not in NUMBERS)
    # resume on the host from the device checkpoint, and on the device again
    host_params = [dev[0].copy_to_host()]
    on_host = fusedopt.Adam(host_params, backend="numpy")
    on_host.load_state_dict(sd)
    dev2 = [cuda.to_device(host_params[0])]
    again = fusedopt.Adam(dev2)
    again.load_state_dict(on_host.state_dict())
    for g in grads[3:]:
        opt.step([cuda.to_device(g[0])])
        on_host.step(g)
        again.step([cuda.to_device(g[0])])
    assert relative_error(dev[0].copy_to_host(), host_params[0]) <= 1e-12
    np.testing.assert_array_equal(dev[0].copy_to_host(), dev2[0].copy_to_host())


# -- Adafactor: its factored stage on the device ---------------------------------------

#: a vector, a batch of matrices, a matrix wider than the simulator's blocks (its
#: tree and stride loops run); few and small: the simulator runs a thread per element
ADAFACTOR_SHAPES = [(7,), (2, 3, 4), (5, 20)]


@pytest.mark.parametrize("options,dtype", [
    (dict(lr=0.02), np.float32),
    (dict(lr=0.05, weight_decay=0.1, maximize=True, beta2_decay=-0.5, eps=(1e-3, 1e-2),
          d=1.5), np.float64)], ids=["defaults-float32", "options-float64"])
def test_adafactor_matches_the_numpy_oracle(options, dtype):
    """Row and column means reduced on the device, the factors lerped between, the
    estimate laid out on the device; the state leaves in torch's shapes and a device
    optimizer resumes from it."""
    rng = np.random.default_rng(4)
    ref = [np.asarray(rng.standard_normal(s), dtype=dtype) for s in ADAFACTOR_SHAPES]
    dev = [cuda.to_device(p) for p in ref]
    ours = fusedopt.Adafactor(dev, **options)
    oracle = fusedopt.Adafactor([p.astype(np.float64) for p in ref], **options,
                                backend="numpy")
    assert ours.backend == "cuda"
    grads = [[np.asarray(rng.standard_normal(s), dtype=dtype) for s in ADAFACTOR_SHAPES]
             for _ in range(5)]
    for gs in grads[:3]:
        ours.step([cuda.to_device(g) for g in gs])
        oracle.step([g.astype(np.float64) for g in gs])
    sd = ours.state_dict()
    resumed = [cuda.to_device(host(d)) for d in dev]
    again = fusedopt.Adafactor(resumed, **options)
    again.load_state_dict(sd)
    for gs in grads[3:]:
        for opt in (ours, again):
            opt.step([cuda.to_device(g) for g in gs])
        oracle.step([g.astype(np.float64) for g in gs])
    oracle_sd = oracle.state_dict()["state"]
    for i, (d, r) in enumerate(zip(dev, oracle.param_groups[0]["params"])):
        assert relative_error(host(d), r) <= TOL[dtype], i
        np.testing.assert_array_equal(host(resumed[i]), host(d))
        for name, value in ours.state_dict()["state"][i].items():
            if name == "step":
                assert value == oracle_sd[i]["step"] == 5
            else:
                assert value.shape == oracle_sd[i][name].shape, (i, name)
                assert relative_error(value, oracle_sd[i][name]) <= TOL[dtype], (i, name)


def test_adafactor_bf16_state_matches_the_numba_backend():
    rng = np.random.default_rng(7)
    ref = [rng.standard_normal(s).astype(np.float32) for s in ADAFACTOR_SHAPES]
    dev = [cuda.to_device(p) for p in ref]
    ours = fusedopt.Adafactor(dev, lr=0.02, state_dtype="bfloat16")
    cpu = fusedopt.Adafactor(ref, lr=0.02, state_dtype="bfloat16", backend="numba")
    for _ in range(3):
        grads = [rng.standard_normal(s).astype(np.float32) for s in ADAFACTOR_SHAPES]
        ours.step([cuda.to_device(g) for g in grads])
        cpu.step(grads)
    for d, r in zip(dev, ref):
        np.testing.assert_allclose(host(d), r, rtol=1e-5, atol=1e-6)
    ours_sd, cpu_sd = ours.state_dict()["state"], cpu.state_dict()["state"]
    for i, st in cpu_sd.items():
        for key, value in st.items():
            if key != "step":
                assert ours_sd[i][key].dtype == value.dtype  # bfloat16
                assert ours_sd[i][key].shape == value.shape
                np.testing.assert_allclose(ours_sd[i][key].astype(np.float32),
                                           value.astype(np.float32), rtol=2 ** -7)


def test_adafactor_functional_on_device_and_its_errors():
    rng = np.random.default_rng(5)
    p, row, col = rng.standard_normal((2, 3, 4)), np.zeros((2, 3, 1)), np.zeros((2, 1, 4))
    dev = [cuda.to_device(a) for a in (p, row, col)]
    for t in range(1, 3):
        g = rng.standard_normal(p.shape)
        functional.adafactor_step(dev[0], cuda.to_device(g), dev[1], dev[2], step=t,
                                  lr=0.03, stream=cuda.stream())
        functional.adafactor_step(p, g, row, col, step=t, lr=0.03, backend="numpy")
    for d, r in zip(dev, (p, row, col)):
        assert relative_error(d.copy_to_host(), r) <= 1e-12
    before = [d.copy_to_host() for d in dev]
    g = cuda.to_device(rng.standard_normal(p.shape))
    with pytest.raises(ValueError, match=r"^col_var: expected shape \(2, 1, 4\) \(for "
                       r"param of shape \(2, 3, 4\)\), got \(2, 4\)"):
        functional.adafactor_step(dev[0], g, dev[1], cuda.to_device(np.zeros((2, 4))),
                                  step=3)
    with pytest.raises(TypeError, match="^row_var: expected a CUDA array"):
        functional.adafactor_step(dev[0], g, row, dev[2], step=3)
    for d, b in zip(dev, before):
        np.testing.assert_array_equal(d.copy_to_host(), b)


# -- error paths: a clear exception before any write ----------------------------------

def _snapshot(opt, dev):
    return [host(d) for d in dev], {i: {k: (v if k in NUMBERS else v.copy())
                                        for k, v in st.items()}
                                    for i, st in opt.state_dict()["state"].items()}


def _assert_unchanged(opt, dev, snap):
    params, state = _snapshot(opt, dev)
    for a, b in zip(params, snap[0]):
        np.testing.assert_array_equal(a, b)
    assert state.keys() == snap[1].keys()
    for i in state:
        for k in state[i]:
            np.testing.assert_array_equal(state[i][k], snap[1][i][k])


BAD_GRADS = {
    "host grad": (lambda g: g.copy_to_host(), TypeError,
                  r"grads\[1\]: expected a CUDA array.*host and device"),
    "wrong shape": (lambda g: cuda.to_device(np.zeros(3)), ValueError,
                    r"grads\[1\]: expected shape \(5,\)"),
    "wrong dtype": (lambda g: cuda.to_device(np.zeros(5, np.float32)), TypeError,
                    r"grads\[1\]: expected dtype float64"),
    "not an array": (lambda g: [0.0] * 5, TypeError, r"grads\[1\]: expected a CUDA"),
}


@pytest.mark.parametrize("case", list(BAD_GRADS))
def test_bad_grads_change_nothing(case):
    make, exc, match = BAD_GRADS[case]
    dev = [cuda.to_device(np.ones(4)), cuda.to_device(np.ones(5))]
    opt = fusedopt.Adam(dev, lr=0.1)
    opt.step([cuda.to_device(np.ones(4)), cuda.to_device(np.ones(5))])
    snap = _snapshot(opt, dev)
    g1 = cuda.to_device(np.ones(5))
    with pytest.raises(exc, match=match):
        opt.step([cuda.to_device(np.ones(4)), make(g1)])
    _assert_unchanged(opt, dev, snap)


@needs_sim
def test_foreign_errors_change_nothing():
    a, b = np.ones(6), np.ones(6)
    opt = fusedopt.RMSprop([Foreign(a, device=0), Foreign(b, device=0)], lr=0.1,
                           momentum=0.9)
    opt.step([Foreign(np.ones(6)), Foreign(np.ones(6))])
    snap = _snapshot(opt, [Foreign(a), Foreign(b)])
    grad_buf = np.ones(12)
    cases = [
        ([Foreign(np.ones(6)), Foreign(a)], r"grads\[1\]: shares memory with params\[0\]"),
        ([Foreign(grad_buf[:6]), Foreign(grad_buf[3:9])],
         r"grads\[1\]: shares memory with grads\[0\]"),
        ([Foreign(np.ones(6)), Foreign(np.ones(6), device=1)],
         r"grads\[1\]: on CUDA device 1"),
        ([Foreign(np.ones(6)), Foreign(np.ones(12), strides=(16,), shape=(6,))],
         r"grads\[1\]: expected a C-contiguous"),
    ]
    for grads, match in cases:
        with pytest.raises(ValueError, match=match):
            opt.step(grads)
        _assert_unchanged(opt, [Foreign(a), Foreign(b)], snap)


@needs_sim
def test_bad_params_refused():
    buf = np.ones(10)
    with pytest.raises(ValueError, match=r"params\[1\]: a host array, but params\[0\] "
                       r"is a CUDA array"):
        fusedopt.SGD([Foreign(np.ones(3)), np.ones(3)], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[1\]: a CUDA array, but params\[0\] "
                       r"is a host array"):
        fusedopt.SGD([np.ones(3), Foreign(np.ones(3))], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[1\]: shares memory with params\[0\]"):
        fusedopt.SGD([Foreign(buf[:6]), Foreign(buf[4:])], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[1\]: on CUDA device 1, but "
                       r"params\[0\] is on device 0"):
        fusedopt.SGD([Foreign(np.ones(3), device=0), Foreign(np.ones(3), device=1)],
                     lr=0.1)
    with pytest.raises(ValueError, match=r"params\[0\]: the array is read-only"):
        fusedopt.SGD([Foreign(np.ones(3), readonly=True)], lr=0.1)
    with pytest.raises(ValueError, match=r"params\[0\]: expected a C-contiguous"):
        fusedopt.SGD([Foreign(np.ones(6), strides=(16,), shape=(3,))], lr=0.1)
    with pytest.raises(TypeError, match=r"params\[0\]: expected dtype float32 or "
                       r"float64, got int64"):
        fusedopt.SGD([Foreign(np.ones(3, np.int64))], lr=0.1)

    class RequiresGrad:  # torch refuses to export a tensor that requires grad
        @property
        def __cuda_array_interface__(self):
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that "
                               "requires grad")
    with pytest.raises(TypeError, match=r"params\[0\].*tensor\.detach\(\)"):
        fusedopt.SGD([RequiresGrad()], lr=0.1)


def test_backend_and_stream_mismatches_are_named():
    with pytest.raises(fusedopt.backends.BackendUnavailable,
                       match="runs on cpu arrays, but the parameters are cuda arrays"):
        fusedopt.Adam([cuda.to_device(np.ones(3))], backend="numba")
    with pytest.raises(fusedopt.backends.BackendUnavailable,
                       match="runs on cuda arrays, but the parameters are cpu arrays"):
        fusedopt.Adam([np.ones(3)], backend="cuda")
    with pytest.raises(ValueError, match="stream: only CUDA arrays run on a stream"):
        fusedopt.Adam([np.ones(3)], stream=cuda.stream())
    with pytest.raises(ValueError, match="stream: only CUDA arrays"):
        functional.sgd_step(np.ones(3), np.ones(3), lr=0.1, stream=cuda.stream())
    p = cuda.to_device(np.ones(3))
    opt = fusedopt.Adam([p], stream="fast")
    with pytest.raises(TypeError, match="stream: expected None, a Numba stream"):
        opt.step([cuda.to_device(np.ones(3))])
    np.testing.assert_array_equal(p.copy_to_host(), np.ones(3))


def _has_nvvm() -> bool:
    try:
        from cuda.pathfinder import load_nvidia_dynamic_lib
        load_nvidia_dynamic_lib("nvvm")
        load_nvidia_dynamic_lib("nvrtc")
    except Exception:
        return False
    return True


@pytest.mark.skipif(not _has_nvvm(), reason="NVVM/NVRTC are not installed (pip install "
                    "nvidia-nvvm nvidia-cuda-nvrtc); .ci/run installs them")
def test_kernels_compile_for_the_gpu_in_their_dtype():
    """The real CUDA target (not the simulator) types and compiles every kernel, for
    float32, float64 and bf16 state (uint16 bits beside float32 parameters), the
    multi-tensor launches among them, and a float32 kernel does no float64
    arithmetic. Needs
    NVVM (the ``nvidia-nvvm`` wheel or a CUDA toolkit), not a GPU."""
    code = r"""
import re, types
import numba.cuda.dispatcher as d
from numba import cuda, float32, float64, boolean
from numba.core import types as nt
# no GPU here: device functions (the rules) ask the current device for its
# compute capability; answer for an H100
d.get_current_device = lambda: types.SimpleNamespace(compute_capability=(9, 0))
from fusedopt import rules
from fusedopt.backends import cuda_kernels as k
f, b, none = float64, boolean, nt.none
# per algorithm: rule, options, slots present (None: absent), host scalars
ALGORITHMS = [(rules.sgd, 3, (True,), 4), (rules.adam, 3, (True, True, True), 8),
              (rules.adam, 3, (True, True, False), 8), (rules.adagrad, 1, (True,), 3),
              (rules.rmsprop, 3, (True, True, True), 6),
              (rules.rmsprop, 3, (True, False, False), 6), (rules.lion, 1, (True,), 6),
              (rules.lamb, 1, (True, True), 8), (rules.adafactor_update, 3, (True,), 9),
              (rules.asgd, 1, (True,), 5)]
for dt, st in ((float32, float32), (float64, float64), (float32, nt.uint16)):
    A, S = nt.Array(dt, 1, "C"), nt.Array(st, 1, "C")  # S: state (uint16: bf16 bits)
    sigs = [(k._fill.py_func, (S, f)), (k._grad_stats.py_func, (A, nt.Array(float64, 1, "C")))]
    for rule, nflags, present, nh in ALGORITHMS:
        slots = tuple(S if x else none for x in present)
        slots += (none,) * (4 - len(slots))
        sigs.append((k._template(rule, (True,) * nflags, len(present)),
                     (A, A, nt.UniTuple(f, nh), f) + slots))
        if rule not in (rules.lamb, rules.adafactor_update):  # (tensor by tensor)
            # the multi-tensor launch: tensors by address, from tables of int64
            table, ints = nt.Array(nt.int64, 2, "C"), nt.Array(nt.int64, 1, "C")
            sigs.append((k._multi_template(rule, (True,) * nflags, len(present)),
                         (table, ints, table, nt.int64, nt.UniTuple(f, nh), f, A)
                         + slots))
    # LAMB's reduction pass (its sums are float64 by design, as grad_stats')
    norms = k._norms_template(rules.lamb_norms, (True,), 2)
    sigs.append((norms, (A, A, nt.UniTuple(f, 8), f, nt.Array(float64, 1, "C"), S, S,
                         none, none)))
    factored = k._norms_template(rules.adafactor_update_norms, (True,) * 3, 1)
    sigs.append((factored, (A, A, nt.UniTuple(f, 9), f, nt.Array(float64, 1, "C"), S,
                            none, none, none)))
    # Adafactor's factored stage: its means and norms summed in float64 by design
    i64, out = nt.int64, nt.Array(float64, 1, "C")
    passes = [k._factored_template(rules.adafactor_update_norms, (True,) * 3, True),
              k._factored_template(rules.adafactor_update, (True,) * 3, False)]
    sigs += [(k._adafactor_means.py_func, (A, i64, i64, i64, out, out)),
             (passes[0], (A, A, A, A, A, A, i64, i64, nt.UniTuple(f, 9), f, out)),
             (passes[1], (A, A, A, A, A, A, i64, i64, nt.UniTuple(f, 9), f, none))]
    for kernel, sig in sigs:
        ptx, _ = cuda.compile_ptx(kernel, sig, cc=(9, 0))
        if dt is float32 and kernel not in (k._grad_stats.py_func, norms, factored,
                                            k._adafactor_means.py_func, passes[0]):
            math64 = re.findall(r"\b(?:add|sub|mul|div|fma|sqrt|neg|setp)\.\S*f64", ptx)
            assert not math64, (kernel.__name__, math64[:5])
print("ok")
"""
    env = {**os.environ, "NUMBA_ENABLE_CUDASIM": "0"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_gpu_bench_reports_every_provider(tmp_path, capsys):
    """The GPU harness end to end at a tiny size (timings mean nothing under the
    simulator; the rows, fractions and files are what is checked)."""
    import json

    from fusedopt.bench import cli
    assert cli.main(["--device", "cuda", "--sizes", "64", "--rounds", "2",
                     "--json", str(tmp_path / "g.json")]) == 0
    out = capsys.readouterr().out
    assert "| 64 | fusedopt-cuda | 28 |" in out and "| 64 | copy | 28 |" in out
    assert "| 64 | fusedopt-cuda-bf16-state | 20 |" in out
    if importlib.util.find_spec("torch") is not None:
        assert "| 64 | fusedopt.torch | 28 |" in out
    rows = json.loads((tmp_path / "g.json").read_text())["rows"]
    by = {r["provider"]: r for r in rows}
    assert by["copy"]["copy_fraction"] == pytest.approx(1.0)
    assert by["fusedopt-cuda"]["rounds"] == 2 and by["fusedopt-cuda"]["gb_per_second"] > 0
    if "torch-fused" not in by:
        assert "skipped torch-fused" in out
