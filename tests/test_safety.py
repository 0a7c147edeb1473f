"""Never corrupt, never half-write, never train silently wrong.

One test per way a user's ordinary habits (or an unlucky input) could make a step
write out of bounds, write before raising, or silently stop training a parameter.
Each asserts either torch.optim's behaviour or a clean exception after which the
parameters, gradients, state and a canary array allocated next to them are
bit-identical. Cases that could crash the interpreter run in a subprocess, so a
crash fails the test instead of the run.
"""

from __future__ import annotations

import copy
import gc
import os
import subprocess
import sys
import textwrap
import threading
import weakref

import numpy as np
import pytest

import fusedopt
from fusedopt import functional

BACKENDS = ["numba", "cython", "numpy"]


def run_isolated(code: str) -> str:
    """Run ``code`` in a fresh interpreter; fail on a crash or an error."""
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONFAULTHANDLER": "1"})
    assert proc.returncode == 0, (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc.stdout


# -- the NumPy API ----------------------------------------------------------------

def np_snapshot(opt, arrays):
    return ([a.copy() for a in arrays],
            {i: {k: (v.copy() if isinstance(v, np.ndarray) else v)
                 for k, v in st.items()} for i, st in opt.state.items()})


def assert_np_unchanged(opt, arrays, snap):
    for a, b in zip(arrays, snap[0]):
        np.testing.assert_array_equal(a.view(np.uint8), b.view(np.uint8))
    assert set(opt.state) == set(snap[1])
    for i, st in snap[1].items():
        assert set(opt.state[i]) == set(st)
        for k, v in st.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_array_equal(opt.state[i][k].view(np.uint8),
                                              v.view(np.uint8))
            else:
                assert opt.state[i][k] == v


def adam_pair(backend="numba", n=64):
    """Two params and a canary carved from one allocation, an Adam trained 2 steps."""
    block = np.random.default_rng(0).standard_normal(3 * n).astype(np.float32)
    p0, p1, canary = block[:n], block[n:2 * n], block[2 * n:]
    opt = fusedopt.Adam([p0, p1], lr=0.1, weight_decay=0.1, backend=backend)
    g = [np.ones(n, np.float32), np.full(n, 0.5, np.float32)]
    opt.step(g)
    opt.step(g)
    return opt, [p0, p1], canary, g


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_aliasing_a_parameter_by_any_route_is_refused(backend):
    opt, params, canary, g = adam_pair(backend)
    block = params[0].base
    via_strides = np.lib.stride_tricks.as_strided(params[1][3:], shape=(64,),
                                                  strides=(4,))
    via_buffer = np.frombuffer(block.data, np.float32, count=64, offset=4 * 70)
    for bad in (via_strides, via_buffer):
        snap = np_snapshot(opt, params + [canary, g[0]])
        with pytest.raises(ValueError, match=r"shares memory with params\[1\]"):
            opt.step([g[0], bad])
        assert_np_unchanged(opt, params + [canary, g[0]], snap)


def test_gradient_aliasing_a_torch_parameter_through_numpy_is_refused():
    torch = pytest.importorskip("torch")
    t = torch.zeros(32)
    p = t[:16].numpy()
    opt = fusedopt.SGD([p], lr=0.1)
    grad = t[8:24].numpy()  # another NumPy view of the same torch storage
    with pytest.raises(ValueError, match=r"grads\[0\]: shares memory with params\[0\]"):
        opt.step([grad])
    assert not t.any()


def test_overlapping_parameters_built_with_as_strided_are_refused():
    buf = np.zeros(16)
    a = np.lib.stride_tricks.as_strided(buf, shape=(8,), strides=(8,))
    b = np.lib.stride_tricks.as_strided(buf[7:], shape=(8,), strides=(8,))
    with pytest.raises(ValueError, match=r"params\[1\]: shares memory with params\[0\]"):
        fusedopt.SGD([a, b])


def test_state_is_guarded_after_load_and_the_replaced_state_is_freed():
    opt, params, canary, g = adam_pair()
    old = weakref.ref(opt.state[0]["exp_avg"])
    opt.load_state_dict(copy.deepcopy(opt.state_dict()))
    gc.collect()
    assert old() is None, "the replaced state is still alive"
    live = opt.state[0]["exp_avg_sq"]
    snap = np_snapshot(opt, params + [canary])
    with pytest.raises(ValueError, match=r"grads\[1\]: shares memory with "
                       r"state\[0\]\['exp_avg_sq'\]"):
        opt.step([g[0], live])
    assert_np_unchanged(opt, params + [canary], snap)


@pytest.mark.parametrize("backend", BACKENDS)
def test_functional_refuses_state_aliasing_state(backend):
    p, g = np.ones(8, np.float32), np.ones(8, np.float32)
    m = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match="exp_avg_sq: shares memory with exp_avg"):
        functional.adam_step(p, g, m, m, step=1, backend=backend)
    assert (p == 1).all() and (m == 0).all()


@pytest.mark.parametrize("breaker, message", [
    (lambda st: st.pop("exp_avg_sq"), r"incomplete state, missing \['exp_avg_sq'\]"),
    (lambda st: st.pop("step"), r"incomplete state, missing \['step'\]"),
    (lambda st: st.update(step=10 ** 400), r"\['step'\]: expected an int >= 0"),
    (lambda st: st.update(step=float("inf")), r"\['step'\]: expected an int >= 0"),
])
def test_incomplete_or_impossible_state_is_refused_at_load(breaker, message):
    opt, params, canary, g = adam_pair()
    sd = copy.deepcopy(opt.state_dict())
    breaker(sd["state"][1])
    snap = np_snapshot(opt, params + [canary])
    with pytest.raises(ValueError, match=message):
        opt.load_state_dict(sd)
    assert_np_unchanged(opt, params + [canary], snap)


def test_state_replaced_between_steps_is_used_and_checked():
    opt, params, canary, g = adam_pair()
    ref, ref_params, _, _ = adam_pair()
    opt.state[0] = {}  # reset the moments of one parameter
    ref.state[0] = {}
    opt.step(g)
    ref.step(g)
    np.testing.assert_array_equal(params[0], ref_params[0])
    assert opt.state[0]["step"] == 1
    snap = np_snapshot(opt, params + [canary])
    opt.state[1]["exp_avg"] = np.zeros(63, np.float32)
    with pytest.raises(ValueError, match=r"state\[1\]\['exp_avg'\]: expected 64 elements"):
        opt.step(g)
    opt.state[1]["exp_avg"] = np.zeros(64, np.float64)
    with pytest.raises(TypeError, match=r"state\[1\]\['exp_avg'\]: expected dtype float32"):
        opt.step(g)
    opt.state[1]["exp_avg"] = snap[1][1]["exp_avg"].copy()
    assert_np_unchanged(opt, params + [canary], snap)


def test_edited_param_groups_are_refused_before_any_write():
    opt, params, canary, g = adam_pair()
    snap = np_snapshot(opt, params + [canary])
    opt.param_groups[0]["params"].append(np.zeros(64, np.float32))
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]: changed"):
        opt.step(g + [np.ones(64, np.float32)])
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]: changed"):
        opt.step(g)
    assert_np_unchanged(opt, params + [canary], snap)


def test_out_of_memory_while_allocating_first_step_state_writes_nothing(monkeypatch):
    from fusedopt import _checks

    params = [np.ones(16, np.float32) for _ in range(3)]
    opt = fusedopt.Adam(params, lr=0.1)
    real, calls = _checks.full_like, []

    def failing(a, value, dtype=None, shape=None):
        calls.append(a.size)
        if len(calls) == 5:  # the third parameter's exp_avg
            raise MemoryError("simulated")
        return real(a, value, dtype, shape)

    monkeypatch.setattr(_checks, "full_like", failing)
    with pytest.raises(MemoryError):
        opt.step([np.ones(16, np.float32) for _ in range(3)])
    assert all((p == 1).all() for p in params)
    assert len(opt.state) == 0
    monkeypatch.setattr(_checks, "full_like", real)
    opt.step([np.ones(16, np.float32) for _ in range(3)])
    assert all(st["step"] == 1 for st in opt.state.values())


def test_flat_params_optimizer_refuses_add_param_group_and_replaced_state():
    flat = fusedopt.FlatParams([(4,), (3,)])
    opt = fusedopt.AdamW(flat)
    with pytest.raises(ValueError, match="add_param_group: this optimizer steps a "
                       "FlatParams"):
        opt.add_param_group({"params": [np.zeros(3)]})
    opt.state = {}
    with pytest.raises(ValueError, match="state: a FlatParams optimizer"):
        opt.step()


def test_run_time_options_are_checked_when_set():
    opt, params, canary, g = adam_pair()
    with pytest.raises(ValueError, match="max_grad_norm: expected a finite number"):
        opt.max_grad_norm = -1.0
    with pytest.raises(ValueError, match="nonfinite: expected one of"):
        opt.nonfinite = "ignore"
    assert opt.max_grad_norm is None and opt.nonfinite == "propagate"


@pytest.mark.parametrize("backend", BACKENDS)
def test_size_zero_parameters_step(backend):
    out = run_isolated(f"""
        import numpy as np, fusedopt
        for name in ("SGD", "Adam", "Adagrad", "RMSprop"):
            for size in (0, 40000):  # serial and parallel drivers
                p = [np.zeros(0, np.float32), np.ones(size, np.float32)]
                opt = getattr(fusedopt, name)(p, lr=0.1, backend={backend!r})
                opt.step([np.zeros(0, np.float32), np.ones(size, np.float32)])
                assert p[0].size == 0 and (size == 0 or p[1][0] < 1)
        print("ok")
    """)
    assert out.strip() == "ok"


def test_one_optimizer_stepped_from_two_threads_equals_sequential_steps():
    n = 50_000  # parallel kernels
    p, ref = np.ones(n, np.float32), np.ones(n, np.float32)
    opt = fusedopt.Adam([p], lr=1e-3)
    opt_ref = fusedopt.Adam([ref], lr=1e-3)
    g = np.linspace(-1, 1, n, dtype=np.float32)
    barrier = threading.Barrier(2)

    def worker():
        barrier.wait()
        for _ in range(40):
            opt.step([g])

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for _ in range(80):
        opt_ref.step([g])
    assert opt.state[0]["step"] == 80
    np.testing.assert_array_equal(p, ref)
    np.testing.assert_array_equal(opt.state[0]["exp_avg_sq"], opt_ref.state[0]["exp_avg_sq"])


def test_two_optimizers_in_two_threads_survive_the_workqueue_layer():
    out = run_isolated("""
        import os
        os.environ["NUMBA_THREADING_LAYER"] = "workqueue"
        import threading, numpy as np, numba, fusedopt
        out = {}
        def run(seed):
            rng = np.random.default_rng(seed)
            p = rng.standard_normal(100_000).astype(np.float32)
            opt = fusedopt.Adam([p], lr=1e-3, backend="numba", max_grad_norm=1.0)
            for _ in range(20):
                opt.step([rng.standard_normal(p.size).astype(np.float32)])
            out[seed] = p
        threads = [threading.Thread(target=run, args=(s,)) for s in range(2)]
        [t.start() for t in threads]; [t.join() for t in threads]
        for s in range(2):
            rng = np.random.default_rng(s)
            p = rng.standard_normal(100_000).astype(np.float32)
            opt = fusedopt.Adam([p], lr=1e-3, backend="numba", max_grad_norm=1.0)
            for _ in range(20):
                opt.step([rng.standard_normal(p.size).astype(np.float32)])
            assert np.array_equal(p, out[s])
        print(numba.threading_layer())
    """)
    assert out.strip() == "workqueue"


def test_overlap_check_c_and_python_twins_agree():
    """The C half of fusedopt._guard and its pure-Python twin give the same byte
    ranges and the same verdicts; for contiguous arrays, the verdict is NumPy's."""
    from fusedopt import _guard

    bounds = pytest.importorskip("fusedopt._overlap").bounds
    rng = np.random.default_rng(0)
    buf = np.zeros(400)
    for _ in range(300):
        arrays = []
        for _ in range(rng.integers(1, 6)):
            a, n = int(rng.integers(0, 390)), int(rng.integers(0, 12))
            kind = rng.integers(0, 4)
            if kind == 1:
                view = buf[a:a + 2 * n:2]
            elif kind == 2:
                view = buf[a:a + n][::-1]
            elif kind == 3 and n >= 4:
                view = buf[a:a + n - n % 2].reshape(2, -1).T
            else:
                view = buf[a:a + n]
            arrays.append(view)
        c_ranges, py_ranges = ([], []), ([], [])
        bounds(arrays, *c_ranges)
        _guard.py_bounds(arrays, *py_ranges)
        assert c_ranges == py_ranges
        verdict = _guard.overlap(arrays)
        assert (verdict is None) == (_guard.py_overlap(arrays) is None)
        if all(x.flags.c_contiguous for x in arrays):
            shared = any(np.shares_memory(x, y) for i, x in enumerate(arrays)
                         for y in arrays[:i])
            assert (verdict is not None) == shared


@pytest.mark.parametrize("backend", BACKENDS)
def test_parameter_made_read_only_after_construction_is_refused(backend):
    p0, p1 = np.ones((2, 2), np.float32), np.ones((2, 2), np.float32)
    opt = fusedopt.Adam([p0, p1], lr=0.1, backend=backend)
    p1.flags.writeable = False
    with pytest.raises(ValueError, match=r"params\[1\]: the array is read-only"):
        opt.step([np.ones((2, 2), np.float32), np.ones((2, 2), np.float32)])
    assert (p0 == 1).all() and (p1 == 1).all() and not opt.state


def test_flat_params_state_entries_refuse_assignment():
    flat = fusedopt.FlatParams([(4,)])
    opt = fusedopt.Adam(flat, lr=0.1)
    flat.grad_views[0][...] = 1
    opt.step()
    with pytest.raises(TypeError):
        opt.state[0]["exp_avg"] = np.full(4, 100, np.float32)  # would be lost
    opt.state[0]["exp_avg"][...] = 0  # in place: the flat state itself
    assert (opt.state[0]["exp_avg"] == 0).all()


def test_load_waits_for_a_running_step():
    opt, params, canary, g = adam_pair()
    sd = copy.deepcopy(opt.state_dict())
    opt._lock.acquire()  # a step in progress
    done = threading.Event()
    loader = threading.Thread(target=lambda: (opt.load_state_dict(sd), done.set()))
    loader.start()
    assert not done.wait(0.2), "the load did not wait for the step"
    opt._lock.release()
    loader.join()
    assert done.is_set()


def test_first_kernel_lookups_from_many_threads_never_fail():
    out = run_isolated("""
        import sys, threading, itertools
        sys.setswitchinterval(1e-7)
        from fusedopt.backends import numba_cpu as nc
        errors, barrier = [], threading.Barrier(8)
        def look():
            barrier.wait()
            try:
                for name, slots in (("adam", 3), ("sgd", 1)):
                    for flags in itertools.product((False, True), repeat=3):
                        nc.kernel(name, flags, slots, parallel=True)
            except Exception as exc:
                errors.append(repr(exc))
        import unittest.mock as mock
        with mock.patch.object(nc, "_jit", lambda f: f):  # no compiling: the lookups
            threads = [threading.Thread(target=look) for _ in range(8)]
            [t.start() for t in threads]; [t.join() for t in threads]
        print(errors or "ok")
    """)
    assert out.strip() == "ok"


# -- the step's checks in one C call, and the memo of checked groups --------------

def _common_case_run(monkeypatch, compiled: bool):
    from fusedopt import _guard

    if not compiled:
        monkeypatch.setattr(_guard, "common_plan", None)
    rng = np.random.default_rng(3)
    shapes = [(7,), (3, 5), (2, 2, 4), (1,)]
    params = [rng.standard_normal(s) for s in shapes]
    runs = []
    for cls, kw in [(fusedopt.Adam, dict(amsgrad=True, weight_decay=0.1)),
                    (fusedopt.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
                    (fusedopt.RMSprop, dict(centered=True, momentum=0.5)),
                    (fusedopt.Adagrad, dict(lr_decay=0.01))]:
        ps = [p.astype(np.float32) for p in params]
        opt = cls([{"params": ps[:2]}, {"params": ps[2:], "lr": 0.05}],
                  backend="numba", **kw)
        for _ in range(3):
            opt.step([rng.standard_normal(s).astype(np.float32) for s in shapes])
        runs.append((ps, {i: dict(st) for i, st in opt.state.items()}))
    return runs


def test_common_plan_steps_as_the_full_plan(monkeypatch):
    """The step's common case, checked in one C call (``_overlap.common_plan``),
    gives bit-identical parameters and state to the full plan in Python."""
    pytest.importorskip("fusedopt._overlap")
    fast = _common_case_run(monkeypatch, compiled=True)
    full = _common_case_run(monkeypatch, compiled=False)
    for (ps_a, st_a), (ps_b, st_b) in zip(fast, full):
        for a, b in zip(ps_a, ps_b):
            np.testing.assert_array_equal(a, b)
        assert st_a.keys() == st_b.keys()
        for i in st_a:
            assert st_a[i].keys() == st_b[i].keys()
            for k in st_a[i]:
                np.testing.assert_array_equal(st_a[i][k], st_b[i][k])


def test_common_plan_takes_the_common_case_and_leaves_the_rest(monkeypatch):
    """After the first step (which allocates state), an ordinary step is planned by
    the C call; anything off the common case (here a replaced state array of the
    wrong size, a gradient of another dtype) is left to the full plan, whose error
    names it, with nothing written."""
    from fusedopt import _guard

    pytest.importorskip("fusedopt._overlap")
    verdicts = []
    real = _guard.common_plan

    def spy(*args):
        verdicts.append(real(*args) is not None)
        return None if not verdicts[-1] else real(*args)

    monkeypatch.setattr(_guard, "common_plan", spy)
    p, canary = np.zeros(64, np.float32), np.zeros(64, np.float32)
    opt = fusedopt.Adam([p], backend="numba")
    g = np.ones(64, np.float32)
    opt.step([g])
    opt.step([g])
    assert verdicts == [False, True]
    snap = np_snapshot(opt, [p, g, canary])
    with pytest.raises(TypeError, match=r"grads\[0\]: expected dtype float32"):
        opt.step([g.astype(np.float64)])
    opt.state[0]["exp_avg"] = np.zeros(63, np.float32)
    snap = np_snapshot(opt, [p, g, canary])
    with pytest.raises(ValueError, match=r"state\[0\]\['exp_avg'\]: expected 64"):
        opt.step([g])
    assert verdicts == [False, True, False, False]
    assert_np_unchanged(opt, [p, g, canary], snap)


def test_same_groups_answers_as_the_python_checks_or_not_at_all():
    """``_overlap.same_groups`` (a step's group checks in one C call) gives what the
    Python checks give while nothing changed, and None (the Python checks then run
    and name what changed) after any edit of the groups: a parameter appended or
    replaced, a value replaced (even by an equal one), a key renamed, a group added
    or dropped behind ``add_param_group``'s back."""
    from fusedopt import _guard

    pytest.importorskip("fusedopt._overlap")
    edits = [
        lambda o: o.param_groups[0]["params"].append(np.zeros(4, np.float32)),
        lambda o: o.param_groups[0]["params"].__setitem__(1, np.zeros(4, np.float32)),
        lambda o: o.param_groups[1].__setitem__("lr", 0.5),
        lambda o: o.param_groups[1].__setitem__("lr", float("0.25")),  # equal, not it
        lambda o: o.param_groups[0].__setitem__("eps2", o.param_groups[0].pop("eps")),
        lambda o: o.param_groups[1].__setitem__("betas", [0.9, 0.999]),
        lambda o: o.param_groups.append(dict(o.param_groups[0])),
        lambda o: o.param_groups.pop(),
        lambda o: setattr(o, "param_groups", tuple(o.param_groups)),  # (steps: below)
    ]
    for edit in edits:
        params = [np.zeros(4, np.float32) for _ in range(3)]
        opt = fusedopt.Adam([{"params": params[:2]},
                             {"params": params[2:], "lr": 0.25}], backend="numba")
        opt.step([np.ones(4, np.float32) for _ in range(3)])

        def verdict():
            return _guard.same_groups(opt.param_groups, opt._registered,
                                      opt._hyper_memo)

        assert verdict() == opt._hypers() and verdict() is not None
        edit(opt)
        assert verdict() is None
    opt.step([np.ones(4, np.float32) for _ in range(3)])  # a tuple of groups: Python's
    assert opt.state[0]["step"] == 2
    with pytest.raises(ValueError, match="first_overlap: 3 starts but 1 stops"):
        _guard.first_overlap([0, 10, 20], [5])


def test_group_values_are_read_every_step():
    """A group's checked values are reused only while it holds the same objects:
    a list edited in place, a new value, a renamed key are each seen by the next
    step."""
    p = np.zeros(4)
    opt = fusedopt.Adam([{"params": [p], "betas": [0.9, 0.999]}], backend="numba")
    opt.step([np.ones(4)])
    opt.param_groups[0]["betas"][0] = 1.5  # in place: a list is never trusted
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['betas'\]"):
        opt.step([np.ones(4)])
    opt.param_groups[0]["betas"] = (0.9, 0.999)
    opt.step([np.ones(4)])
    opt.param_groups[0]["lr"] = float("nan")
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['lr'\]"):
        opt.step([np.ones(4)])
    opt.param_groups[0]["lr"] = 1e-3
    opt.step([np.ones(4)])
    group = opt.param_groups[0]
    group["maximize2"] = group.pop("maximize")  # the last key, renamed
    with pytest.raises(KeyError):
        opt.step([np.ones(4)])
