"""Non-finite policies, fused gradient clipping and the gradient reduction, on every
backend."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import fusedopt
from cases import ALGORITHMS, TORCH_ALGORITHMS
from conftest import relative_error

SHAPES = [(37,), (4, 9)]
# first element, last, inside a SIMD block, and only in the second tensor
POSITIONS = {"first": (0, 0), "last": (0, 36), "mid-block": (0, 9), "second": (1, 20)}


def setup(name, backend, **kw):
    cls, _, options = ALGORITHMS[name]
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(s) for s in SHAPES]
    opt = cls(params, **options[-1], backend=backend, **kw)
    for _ in range(2):
        opt.step([rng.standard_normal(s) for s in SHAPES])
    return opt, params, rng


def bad_grads(rng, where, value):
    grads = [rng.standard_normal(s) for s in SHAPES]
    t, i = POSITIONS[where]
    grads[t].reshape(-1)[i] = value
    return grads


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("where", list(POSITIONS))
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_raise_refuses_before_any_write(name, where, value, backend):
    opt, params, rng = setup(name, backend, nonfinite="raise")
    before = [p.copy() for p in params], copy.deepcopy(opt.state)
    tensor = POSITIONS[where][0]
    with pytest.raises(FloatingPointError, match=rf"grads\[{tensor}\]: 1 non-finite"):
        opt.step(bad_grads(rng, where, value))
    for p, b in zip(params, before[0]):
        np.testing.assert_array_equal(p, b, strict=True)
    for i, st in before[1].items():
        for k, v in st.items():
            np.testing.assert_array_equal(opt.state[i][k], v)


@pytest.mark.parametrize("where", list(POSITIONS))
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_skip_leaves_everything_and_training_goes_on(name, where, backend):
    opt, params, rng = setup(name, backend, nonfinite="skip")
    twin, twin_params, _ = setup(name, backend)
    before = [p.copy() for p in params]
    opt.step(bad_grads(rng, where, np.nan))
    assert opt.last_step_skipped and opt.skipped_steps == 1
    for p, b in zip(params, before):
        np.testing.assert_array_equal(p, b, strict=True)
    good = [np.random.default_rng(9).standard_normal(s) for s in SHAPES]
    opt.step(good)
    twin.step(good)  # never saw the bad step
    assert not opt.last_step_skipped
    for p, q in zip(params, twin_params):
        np.testing.assert_array_equal(p, q)


def test_skip_on_flat_params():
    flat = fusedopt.FlatParams.from_arrays([np.ones(5), np.ones(3)])
    opt = fusedopt.Adam(flat, nonfinite="skip")
    flat.grad_views[1][2] = np.inf
    opt.step()
    assert opt.last_step_skipped and len(opt.state) == 0
    assert all(np.all(v == 1) for v in flat.views)


@pytest.mark.parametrize("name", list(TORCH_ALGORITHMS))
def test_clipping_matches_torch_clip_grad_norm(name, backend):
    torch = pytest.importorskip("torch")
    cls, torch_name, options = ALGORITHMS[name]
    kwargs = options[-1]
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(s) for s in SHAPES]
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    ours = cls(params, **kwargs, backend=backend, max_grad_norm=0.7)
    theirs = getattr(torch.optim, torch_name)(tparams, **kwargs)
    for step in range(30):
        grads = [rng.standard_normal(s) * (0.01 if step % 3 == 0 else 3.0) for s in SHAPES]
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g.copy())
        torch.nn.utils.clip_grad_norm_(tparams, max_norm=0.7)
        theirs.step()
        ours.step(grads)
    for p, tp in zip(params, tparams):
        assert relative_error(p, tp.detach().numpy()) <= 1e-10


def test_clipping_and_skipping_reach_the_host_stage_algorithms(backend):
    """Adafactor (its means see the clipped gradient) against torch with
    clip_grad_norm_; Muon (whose iteration differs from torch's bf16 one) against
    itself fed the clipped gradients; both skip a step with a non-finite gradient
    without a write."""
    torch = pytest.importorskip("torch")
    shapes = [(6, 5), (2, 3, 4), (7,)]
    rng = np.random.default_rng(4)
    params = [rng.standard_normal(s) for s in shapes]
    tparams = [torch.tensor(p.copy(), requires_grad=True) for p in params]
    ours = fusedopt.Adafactor(params, lr=0.05, backend=backend, max_grad_norm=0.7,
                              nonfinite="skip")
    theirs = torch.optim.Adafactor(tparams, lr=0.05)
    matrices = [rng.standard_normal((6, 5)), rng.standard_normal((4, 8))]
    twins = [m.copy() for m in matrices]
    muon = fusedopt.Muon(matrices, lr=0.05, backend=backend, max_grad_norm=0.7,
                         nonfinite="skip")
    muon_twin = fusedopt.Muon(twins, lr=0.05, backend=backend)
    for step in range(12):
        big = 0.01 if step % 3 == 0 else 3.0
        grads = [rng.standard_normal(s) * big for s in shapes]
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g.copy())
        torch.nn.utils.clip_grad_norm_(tparams, max_norm=0.7)
        theirs.step()
        ours.step(grads)
        mgrads = [rng.standard_normal(m.shape) * big for m in matrices]
        norm = np.sqrt(sum(float(np.sum(g * g)) for g in mgrads))
        muon.step(mgrads)
        muon_twin.step([g * min(1.0, 0.7 / (norm + 1e-6)) for g in mgrads])
    for p, tp in zip(params, tparams):
        assert relative_error(p, tp.detach().numpy()) <= 1e-10
    for m, t in zip(matrices, twins):
        assert relative_error(m, t) <= 1e-12
    for opt, arrays in ((ours, params), (muon, matrices)):
        before = [a.copy() for a in arrays]
        state = {i: {k: np.copy(v) for k, v in st.items()} for i, st in opt.state.items()}
        bad = [np.full(a.shape, np.inf) if i == 1 else np.ones(a.shape)
               for i, a in enumerate(arrays)]
        opt.step(bad)
        assert opt.last_step_skipped
        for a, b in zip(arrays, before):
            np.testing.assert_array_equal(a, b)
        for i, st in state.items():
            for k, v in st.items():
                np.testing.assert_array_equal(opt.state[i][k], v)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_grad_stats_is_the_sum_of_squares_and_the_nonfinite_count(backend, dtype):
    impl = fusedopt.backends.load(backend)
    g = np.random.default_rng(1).standard_normal(100_003).astype(dtype)
    for parallel in (False, True):
        s, bad = impl.grad_stats(g, parallel)
        assert bad == 0
        assert s == pytest.approx(float(np.sum(g.astype(np.float64) ** 2)), rel=1e-12)
    g[[0, 500, 100_002]] = [np.nan, np.inf, -np.inf]
    assert impl.grad_stats(g, True)[1] == 3 and impl.grad_stats(g, False)[1] == 3


def test_bad_policy_arguments_are_named():
    with pytest.raises(ValueError, match=r"nonfinite: expected one of \['propagate'"):
        fusedopt.Adam([np.zeros(2)], nonfinite="ignore")
    with pytest.raises(ValueError, match="max_grad_norm: expected a finite number"):
        fusedopt.SGD([np.zeros(2)], max_grad_norm=-1.0)


ALIASES = {
    "grad views its own param": (lambda ps, opt: [ps[0][::-1][::-1], np.ones(5)],
                                 r"grads\[0\]: shares memory with params\[0\]"),
    "grad views another param": (lambda ps, opt: [np.ones(6), ps[0][:5]],
                                 r"grads\[1\]: shares memory with params\[0\]"),
    "two grads share memory": (lambda ps, opt: [np.ones(11)[:6], None],
                               r"grads\[1\]: shares memory with grads\[0\]"),
    "grad is the optimizer's state": (
        lambda ps, opt: [opt.state_dict()["state"][0]["exp_avg"], np.ones(5)],
        r"grads\[0\]: shares memory with state\[0\]\['exp_avg'\]"),
}


@pytest.mark.parametrize("case", list(ALIASES))
def test_aliasing_is_refused_before_any_write(case, backend):
    params = [np.ones(6), np.ones(5)]
    opt = fusedopt.Adam(params, lr=0.1, backend=backend)
    opt.step([np.ones(6), np.ones(5)])
    make, message = ALIASES[case]
    grads = make(params, opt)
    if grads[1] is None:  # two views of one buffer
        base = grads[0].base
        grads = [base[:6], base[5:10]]
    before = [p.copy() for p in params], copy.deepcopy(opt.state)
    with pytest.raises(ValueError, match=message):
        opt.step(grads)
    for p, b in zip(params, before[0]):
        np.testing.assert_array_equal(p, b, strict=True)
    for k, v in before[1][0].items():
        np.testing.assert_array_equal(opt.state[0][k], v)


def test_overlapping_params_are_refused():
    buf = np.zeros(10)
    with pytest.raises(ValueError, match=r"params\[1\]: shares memory with params\[0\]"):
        fusedopt.SGD([buf[:6], buf[4:]])
    with pytest.raises(ValueError, match=r"params\[1\]: shares memory with params\[0\]"):
        fusedopt.SGD([{"params": [buf[:6]]}, {"params": [buf[5:]]}])
    fusedopt.SGD([buf[:5], buf[5:]])  # adjacent is fine


@pytest.mark.parametrize("size", [1000, 200_000])  # serial and parallel kernels
def test_two_threads_give_the_sequential_result(backend, size):
    """Steps release the GIL; two optimizers stepping at once in two threads end
    bit-identical to stepping one after the other."""
    import threading

    def run(params_list, threaded):
        opts = [fusedopt.AdamW([p], lr=1e-3, backend=backend) for p in params_list]
        grads = [np.random.default_rng(7 + k).standard_normal(size).astype(np.float32)
                 for k in range(2)]

        def loop(k):
            for _ in range(30):
                opts[k].step([grads[k]])
        if threaded:
            threads = [threading.Thread(target=loop, args=(k,)) for k in range(2)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
        else:
            loop(0)
            loop(1)
        return params_list

    start = [np.random.default_rng(k).standard_normal(size).astype(np.float32)
             for k in range(2)]
    sequential = run([a.copy() for a in start], threaded=False)
    threaded = run([a.copy() for a in start], threaded=True)
    for a, b in zip(sequential, threaded):
        np.testing.assert_array_equal(a, b)


def test_state_dict_survives_pickle_savez_and_torch_save(tmp_path):
    import io
    import pickle
    rng = np.random.default_rng(2)
    params = [rng.standard_normal((3, 4)), rng.standard_normal(5)]
    opt = fusedopt.Adam(params, amsgrad=True)
    opt.step([np.ones((3, 4)), np.ones(5)])
    sd = opt.state_dict()

    copies = [pickle.loads(pickle.dumps(sd))]
    np.savez(tmp_path / "sd.npz", state_dict=np.array(sd, dtype=object))
    copies.append(np.load(tmp_path / "sd.npz", allow_pickle=True)["state_dict"].item())
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    copies.append(torch.load(buf, weights_only=False))
    for loaded in copies:
        twin = fusedopt.Adam([p.copy() for p in params], amsgrad=True)
        twin.load_state_dict(loaded)
        for i in sd["state"]:
            for k, v in sd["state"][i].items():
                np.testing.assert_array_equal(twin.state_dict()["state"][i][k], v)


def test_foreign_state_dict_is_refused_with_the_reason():
    torch = pytest.importorskip("torch")
    tp = torch.nn.Parameter(torch.zeros(3))
    tp.grad = torch.ones(3)
    t_opt = torch.optim.Adam([tp])
    t_opt.step()
    opt = fusedopt.Adam([np.zeros(3)])
    with pytest.raises((TypeError, ValueError), match=r"state_dict\['state'\]\[0\]"):
        opt.load_state_dict(t_opt.state_dict())
    with pytest.raises(TypeError, match="expected a dict with keys 'state' and "
                                        "'param_groups'"):
        opt.load_state_dict({"state": {}})


def test_soak_10000_float32_adam_steps_track_the_float64_oracle():
    """10,000 float32 Adam steps against the same run in float64 (the NumPy oracle):
    rounding drift stays bounded; the figure is printed."""
    rng = np.random.default_rng(11)
    start = rng.standard_normal(1000)
    p32, p64 = start.astype(np.float32), start.copy()
    fast = fusedopt.Adam([p32], lr=1e-3)
    oracle = fusedopt.Adam([p64], lr=1e-3, backend="numpy")
    worst = 0.0
    for step in range(10_000):
        g = rng.standard_normal(1000) + 0.1 * p64  # a noisy pull towards 0
        fast.step([g.astype(np.float32)])
        oracle.step([g])
        if step % 1000 == 999:
            worst = max(worst, float(np.max(np.abs(p32 - p64))))
    print(f"soak: max |float32 - float64| over 10,000 Adam steps = {worst:.2e} "
          f"(|params| ~ {np.abs(p64).mean():.2f})")
    assert worst < 1e-4
