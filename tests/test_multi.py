"""Multi-tensor calls: one kernel call over many tensors given by address.

The multi-tensor kernels (``impl.multi``: ``numba_cpu._multi_template`` and the
Cython ``<name>_multi``) must step each tensor exactly as one call per tensor does,
serial and parallel, for every algorithm, option and storage; the drop-in's default
path (``fusedopt.torch``, one call per group and dtype) must equal its per-tensor
path; and its C plans (``_overlap.tensor_plan``, through torch's Python API, and
``_torch_ext.tensor_plan``, its reads in C++) must give what their Python twin gives
wherever they answer, and leave every other case to it.
"""

from __future__ import annotations

import collections
import gc
import os
import subprocess
import sys

import numpy as np
import pytest

from fusedopt import _guard, _torch_ext
from fusedopt.backends import select
from fusedopt.backends.template import TABLE_COLUMNS
from cases import ALGORITHMS, CASES, case_id

torch = pytest.importorskip("torch")
import fusedopt.torch as ft  # noqa: E402

BACKENDS = ["numba", "cython"]
SIZES = [0, 3, 1000, 17, 4099, 1]


def _arrays(rng, dtype, sizes):
    return [rng.standard_normal(n).astype(dtype) for n in sizes]


FLOAT32 = (np.float32, np.float32)
#: (parameter, state) storages: float64, bf16 parameters with bf16 state, float32
#: parameters with bf16 state
OTHER_STORAGES = [(np.float64, np.float64), (np.uint16, np.uint16),
                  (np.float32, np.uint16)]
# every case in float32; each algorithm's last case (most options on) in the other
# storages too (each storage is one more compiled specialisation per case)
# (not the algorithms with a per-tensor reduction, LAMB's norms: they step tensor by
# tensor, with no multi-tensor call)
MULTI_CASES = [c for c in CASES if ALGORITHMS[c[0]][0]._algorithm.kernel.norms is None]
STORAGE_CASES = [(case, FLOAT32) for case in MULTI_CASES] + [
    (case, storage) for case in MULTI_CASES
    if case is [c for c in MULTI_CASES if c[0] == case[0]][-1]
    for storage in OTHER_STORAGES]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case, storage", STORAGE_CASES,
                         ids=[f"{case_id(c)}-{s[0].__name__}-{s[1].__name__}"
                              for c, s in STORAGE_CASES])
def test_multi_call_steps_each_tensor_as_its_own_call(backend, case, storage):
    """In both loops (serial, parallel), one multi-tensor call leaves every parameter
    and state array bit-identical to one contract call per tensor."""
    name, kwargs = case
    opt_cls = ALGORITHMS[name][0]
    algo = opt_cls._algorithm
    hyper = opt_cls._check_group({**{h.name: h.default for h in algo.params}, **kwargs},
                                 0)
    spec = opt_cls._state_spec(hyper)
    _, impl = select(backend, "cpu")
    slots = algo.kernel.slots
    for pdt, sdt in [storage]:
        for parallel in (False, True):
            rng = np.random.default_rng(1)

            def make(dt):
                a = _arrays(rng, np.float32, SIZES)
                if dt == np.uint16:  # bf16 bits of those values
                    return [(x.view(np.uint32) >> 16).astype(np.uint16) for x in a]
                return [x.astype(dt) for x in a]

            params, grads = make(pdt), make(pdt)
            states = {n: [np.abs(x) if sdt != np.uint16 else x for x in make(sdt)]
                      for n, _ in spec}
            ref = ([p.copy() for p in params],
                   {n: [a.copy() for a in arrs] for n, arrs in states.items()})
            step = 4
            # scalar state (NAdam, ASGD) as the fifth step would find it
            kinds = (np.float32, np.float32)
            numbers = dict(zip(algo.scalar_state, algo.scalar_next(
                hyper, 5, algo.scalar_init(hyper, kinds), kinds))) if (
                algo.scalar_state) else {}
            for t in range(len(SIZES)):
                work = {"step": step - 1, **numbers,
                        **{n: ref[1][n][t] for n in states}}
                seed = 7 * t + 1 if pdt == np.uint16 else 0
                opt_cls._update(impl, ref[0][t], grads[t], work, hyper, False, 1.0, seed)
            table = np.zeros((len(SIZES), TABLE_COLUMNS), np.int64)
            for t in range(len(SIZES)):
                table[t, 0] = params[t].ctypes.data
                table[t, 1] = grads[t].ctypes.data
                for n in states:
                    table[t, 2 + slots.index(n)] = states[n][t].ctypes.data
            flags, present, h, scale = opt_cls._arguments(
                {**dict.fromkeys(slots, True), **numbers}, hyper, step, False)
            seeds = np.array([7 * t + 1 if pdt == np.uint16 else 0
                              for t in range(len(SIZES))], np.int64)
            impl.multi(opt_cls._kernel, flags, present, h,
                       (np.dtype(pdt), np.dtype(pdt), np.dtype(sdt)), table,
                       np.array(SIZES, np.int64), seeds, scale, parallel)
            where = f"{pdt.__name__} params, {sdt.__name__} state, parallel={parallel}"
            for a, b in zip(params, ref[0]):
                np.testing.assert_array_equal(a, b, err_msg=where)
            for n in states:
                for a, b in zip(states[n], ref[1][n]):
                    np.testing.assert_array_equal(a, b, err_msg=f"{n}: {where}")


# -- the drop-in's default path ------------------------------------------------------

def _model(dtypes=(torch.float32,), seed=0, strided=False):
    g = torch.Generator().manual_seed(seed)
    shapes = [(7, 5), (5,), (0,), (3, 4, 2), (1,), (4099,)] + [(2, 3, 4, 5)] * strided
    params = [torch.randn(s, generator=g, dtype=dtypes[k % len(dtypes)])
              for k, s in enumerate(shapes)]
    if strided:  # dense in another order of dimensions
        params[-1] = params[-1].to(memory_format=torch.channels_last)
    return [torch.nn.Parameter(p) for p in params]


def _grads(params, step):
    g = torch.Generator().manual_seed(100 + step)
    for k, p in enumerate(params):
        # every third parameter gets no gradient on odd steps (skipped, as torch)
        p.grad = None if (k % 3 == 2 and step % 2) else torch.empty_like(p).copy_(
            torch.randn(p.shape, generator=g, dtype=p.dtype))  # in p's layout


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["SGD", "Adam", "AdamW", "Adagrad", "RMSprop", "Lion"])
def test_default_path_steps_as_the_per_tensor_path(backend, name):
    """Two groups, float32 and float64 in each, parameters without gradients on some
    steps, one parameter whose step count differs (its state loaded from another
    run): the multi-tensor default path equals one call per tensor, bit for bit."""
    kwargs = {"SGD": dict(lr=0.1, momentum=0.9), "RMSprop": dict(centered=True,
                                                                 momentum=0.5)}.get(
        name, {})
    runs = []
    for multi in (True, False):
        params = _model((torch.float32, torch.float64))
        opt = ft.CLASSES[name]([{"params": params[:3]},
                                {"params": params[3:], "lr": 0.003}],
                               backend=backend, **kwargs)
        opt._multi = multi
        for step in range(4):
            _grads(params, step)
            opt.step()
            if step == 1 and "step" in opt.state[params[0]]:
                opt.state[params[0]]["step"] += 5  # its own bias correction from now
        runs.append((params, opt.state_dict()))
    (a, sa), (b, sb) = runs
    for p, q in zip(a, b):
        assert torch.equal(p, q)
    assert sa["state"].keys() == sb["state"].keys()
    for k in sa["state"]:
        for key, v in sa["state"][k].items():
            assert torch.equal(v, sb["state"][k][key]), (k, key)


def _full_plan(opt):
    return opt._plan_multi_full(opt._hypers())


@pytest.mark.parametrize("backend", BACKENDS)
def test_c_plan_answers_as_the_python_plan(backend, monkeypatch):
    """Wherever ``_overlap.tensor_plan`` answers, it gives the Python plan's table,
    counts, meta, indices and step addresses; the first step (state to allocate)
    and every error are left to the Python plan (it returns None)."""
    params = _model((torch.float32, torch.float64, torch.float32), strided=True)
    opt = ft.AdamW([{"params": params[:2]}, {"params": params[2:], "amsgrad": True}],
                   backend=backend)
    opt._reader = None  # (the C++ reads, where built, have their own tests below)
    _grads(params, 0)
    calls = []
    real = _guard.tensor_plan
    monkeypatch.setattr(_guard, "tensor_plan",
                        lambda *a: calls.append(real(*a)) or calls[-1])
    opt.step()
    assert calls[-1] is None  # the first step allocates state: the Python plan
    _grads(params, 2)
    opt.step()
    assert calls[-1] is not None  # the common case: the C plan
    fast, full = real(*_plan_args(opt)), _full_plan(opt)
    for x, y in zip(fast[:5], full[:5]):
        np.testing.assert_array_equal(x, y)
    assert full[6] and not full[7]  # kept tensors; no new state
    # off the common case: the C plan declines, the Python plan decides
    cases = {
        "non-contiguous grad": lambda: setattr(params[0], "grad",
                                               torch.randn(5, 7).t()),
        "float64 step": lambda: opt.state[params[1]].__setitem__(
            "step", torch.tensor(3.0, dtype=torch.float64)),
        "state replaced by a list": lambda: opt.state[params[3]].__setitem__(
            "exp_avg", [0.0]),
        "grad shares the parameter's memory": lambda: setattr(
            params[5], "grad", params[5].detach()),
    }
    for what, spoil in cases.items():
        _grads(params, 2)
        spoil()
        assert real(*_plan_args(opt)) is None, what


class _Sub(torch.Tensor):
    pass


def _spoilers(opt, params) -> dict:
    """Edits of a trained model's tensors, by name: each takes a step off the plans'
    common case, except the last two, which stay in it."""
    big = params[5]
    return {
        "a gradient in another layout": lambda: setattr(
            params[0], "grad", torch.randn(5, 7).t()),
        "a gradient of another dtype": lambda: (  # (torch refuses it unless told)
            setattr(params[1], "grad_dtype", None),
            setattr(params[1], "grad", params[1].grad.float())),
        "a parameter of another shape": lambda: setattr(
            params[0], "data", params[0].data.reshape(5, 7)),
        "a lazily negated gradient": lambda: setattr(
            params[0], "grad", params[0].grad._neg_view()),
        "a gradient of a tensor subclass": lambda: setattr(
            params[0], "grad", params[0].grad.as_subclass(_Sub)),
        "a state tensor of another dtype": lambda: opt.state[params[3]].__setitem__(
            "exp_avg", opt.state[params[3]]["exp_avg"].double()),
        "a state tensor replaced by a list": lambda: opt.state[params[3]].__setitem__(
            "exp_avg", [0.0]),
        "a state entry dropped": lambda: opt.state[params[3]].pop("max_exp_avg_sq"),
        "a float64 step": lambda: opt.state[params[1]].__setitem__(
            "step", torch.tensor(3.0, dtype=torch.float64)),
        "a step past the largest": lambda: opt.state[params[1]]["step"].fill_(2.0**60),
        "a gradient sharing the parameter's memory": lambda: setattr(
            big, "grad", big.detach()),
        "a gradient sharing another's memory": lambda: setattr(
            params[0], "grad", big.grad[:35].view(7, 5)),
        "a storage resized under its parameter": lambda: big.untyped_storage().resize_(8),
        "a state tensor in another layout": lambda: opt.state[big].__setitem__(
            "exp_avg", torch.zeros(4099, 2)[:, 0]),
        "a storage resized under a state tensor": lambda: opt.state[big][
            "exp_avg_sq"].untyped_storage().resize_(8),
        "a storage resized under a step": lambda: opt.state[params[1]][
            "step"].untyped_storage().resize_(0),
        "a gradient that is a parameter's state": lambda: setattr(
            params[4], "grad", opt.state[params[4]]["exp_avg"]),
        # off the guards' plan but in the common case: the full C plan answers
        # (and remakes the guards)
        "a gradient now missing": lambda: setattr(params[0], "grad", None),
        "a parameter added": lambda: opt.param_groups[0]["params"].append(
            torch.nn.Parameter(torch.randn(3))),
    }


#: the spoilers that stay in the common case (the plans answer, afresh)
_REMADE = ("a gradient now missing", "a parameter added")


def _same_as_full(opt, fast):
    full = _full_plan(opt)
    assert fast is not None
    for x, y in zip(fast[:5], full[:5]):
        np.testing.assert_array_equal(x, y)


@pytest.mark.skipif(not hasattr(getattr(torch._C, "_dynamo", None), "guards"),
                    reason="this torch has no TensorGuards: the guarded plan is off")
def test_guarded_c_plan_checks_every_step_what_the_full_plan_checks():
    """Once the C plan has run, its next steps check the live tensors with torch's
    ``TensorGuards`` against those it checked in full (``tensor_plan``'s memo): it
    gives the full plan's answers while nothing changed and while only addresses
    did (new gradients each step, as backward makes them), and declines (None:
    the Python plan decides) whatever the full plan would decline."""
    params = _model((torch.float32, torch.float64, torch.float32), strided=True)
    opt = ft.AdamW([{"params": params[:2]}, {"params": params[2:], "amsgrad": True}])
    memo: list = []
    real = _guard.tensor_plan

    def plan():
        return real(*_plan_args(opt), None, memo)

    def same_as_full(fast):
        _same_as_full(opt, fast)

    _grads(params, 0)
    opt.step()
    _grads(params, 2)
    assert plan() is not None and memo  # checked in full, guards made
    guards = memo[0]
    same_as_full(plan())  # the guarded path: the same answers
    assert memo[0] is guards
    _grads(params, 4)  # new gradients at new addresses: guards pass, ranges swept
    same_as_full(plan())
    assert memo[0] is guards
    for what in _spoilers(opt, params):
        params = _model((torch.float32, torch.float64, torch.float32), strided=True)
        opt = ft.AdamW([{"params": params[:2]}, {"params": params[2:],
                                                "amsgrad": True}])
        spoil = _spoilers(opt, params)[what]
        memo.clear()
        for step in (0, 2):
            _grads(params, step)
            opt.step()
        _grads(params, 4)
        assert plan() is not None and memo and plan() is not None, what
        guards = memo[0]
        spoil()
        if what in _REMADE:
            same_as_full(plan())
            assert memo[0] is not guards, what
            continue
        assert plan() is None, what  # ... as the full C plan declines it:
        assert real(*_plan_args(opt)) is None, what
        assert memo[0] is guards, what  # (kept: the full plan remakes them)


def _reader():
    plan = _torch_ext.plan()
    assert plan is not None, (
        "fusedopt.torch's C++ tensor reader did not build here (its warning says why)")
    return plan


def _trained(steps=(0, 2)):
    params = _model((torch.float32, torch.float64, torch.float32), strided=True)
    opt = ft.AdamW([{"params": params[:2]}, {"params": params[2:], "amsgrad": True}])
    for step in steps:
        _grads(params, step)
        opt.step()
    return params, opt


def test_the_drop_in_plans_cpu_steps_with_the_cpp_reader(monkeypatch):
    """Where a C++ compiler and torch's headers are at hand (as here), the CPU
    default path reads its tensors in C++ (``fusedopt._torch_ext``); every step
    after the first goes through it."""
    reader = _reader()
    params, opt = _trained(steps=())
    assert opt._reader is reader
    calls = []
    monkeypatch.setattr(opt, "_reader", lambda *a: calls.append(reader(*a)) or calls[-1])
    for step in range(3):
        _grads(params, step)
        opt.step()
    assert calls[0] is None and None not in calls[1:]  # (the first allocates state)


def test_cpp_reader_answers_as_the_full_plan_and_declines_what_it_declines():
    """The C++ reads (``_torch_ext.tensor_plan``) give the Python plan's table,
    counts, meta, indices and step addresses in the common case, with the same or
    new gradients (the overlap sweep skipped only while every byte range is the one
    it last passed); and decline every edit that takes a step off the common case
    (None: the Python plan decides), as the C plan through torch's API does."""
    reader = _reader()
    params, opt = _trained()
    _grads(params, 4)
    memo: list = []
    _same_as_full(opt, reader(*_plan_args(opt), memo))
    swept = memo[0]
    _same_as_full(opt, reader(*_plan_args(opt), memo))
    assert memo[0] is swept  # the same ranges: not swept again
    _grads(params, 6)  # new gradients, new addresses: swept again
    _same_as_full(opt, reader(*_plan_args(opt), memo))
    assert memo[0] is not swept
    for what in _spoilers(opt, params):
        params, opt = _trained()
        _grads(params, 4)
        memo.clear()
        assert reader(*_plan_args(opt), memo) is not None, what
        _spoilers(opt, params)[what]()
        if what in _REMADE:
            _same_as_full(opt, reader(*_plan_args(opt), memo))
            continue
        assert reader(*_plan_args(opt), memo) is None, what
        assert _guard.tensor_plan(*_plan_args(opt)) is None, what


def test_cpp_reader_finds_state_in_any_order_and_leaves_a_mode_to_the_python_api():
    """Parameters met in another order than their state entries were made are
    found all the same. Under a torch function mode every read of the Python-API
    plan goes through the mode: the C++ reads decline, that plan answers, and the
    steps give torch's numbers."""
    reader = _reader()
    params, opt = _trained()
    _grads(params, 4)
    for group in opt.param_groups:
        group["params"].reverse()
    _same_as_full(opt, reader(*_plan_args(opt), []))
    opt.state = collections.defaultdict(dict, list(opt.state.items())[::-1])
    _same_as_full(opt, reader(*_plan_args(opt), []))

    class Passing(torch.overrides.TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            return func(*args, **(kwargs or {}))

    ours = [torch.nn.Parameter(torch.randn(5, generator=torch.Generator().manual_seed(k)))
            for k in range(3)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    a, b = ft.AdamW(ours, lr=0.1), torch.optim.AdamW(theirs, lr=0.1, foreach=False)
    for step in range(3):
        for p, q in zip(ours, theirs):
            p.grad = torch.full((5,), 0.5 + step)
            q.grad = p.grad.clone()
        with Passing():
            if step:
                assert reader(*_plan_args(a), []) is None
                assert _guard.tensor_plan(*_plan_args(a)) is not None
            a.step()
        b.step()
    for p, q in zip(ours, theirs):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def test_cpp_reader_runs_no_python_code_while_it_reads():
    """No collection (whose finalizers are Python code that could edit the tensors
    being read) starts inside the C++ reads, however often the collector is asked
    to run: a collection seen from the reader's frame finds ``keep`` empty (before
    the reads) or whole (after), never part-filled."""
    reader = _reader()
    ps = [torch.nn.Parameter(torch.randn(4, 5)) for _ in range(6)]
    opt = ft.AdamW(ps, lr=0.1)
    for step in range(2):
        for p in ps:
            p.grad = None
        sum((p * (step + 1)).sum() for p in ps).backward()  # grads made by autograd
        if step == 0:
            opt.step()
    seen = []

    def callback(phase, info):
        frame = sys._getframe(1)
        if phase == "start" and frame.f_code.co_name == "tensor_plan":
            seen.append(len(frame.f_locals.get("keep", ())))
    args = _plan_args(opt)
    gc.collect()
    gc.callbacks.append(callback)
    threshold = gc.get_threshold()
    gc.set_threshold(1)
    try:
        plan = reader(*args, [])
    finally:
        gc.set_threshold(*threshold)
        gc.callbacks.remove(callback)
    assert gc.isenabled()
    _same_as_full(opt, plan)
    whole = 5 * len(ps) + 1  # (parameter, gradient, two state tensors, step; pins)
    assert seen and set(seen) <= {0, whole}, seen


_REPOINTED_MID_STEP = """
import gc, sys, torch
import fusedopt.torch as ft
n = 1 << 16  # 256 KB a tensor: freed memory goes back to the system
for trial in range(5):
    ps = [torch.nn.Parameter(torch.randn(n)) for _ in range(3)]
    opt = ft.AdamW(ps, lr=0.1)
    assert opt._reader is not None
    for p in ps:
        p.grad = torch.ones(n)
    opt.step()
    fired = []
    def callback(phase, info):
        frame, names = sys._getframe(1), []
        while frame:
            names.append(frame.f_code.co_name)
            frame = frame.f_back
        if phase == "start" and not fired and "_run_multi" in names:
            fired.append(1)  # after the checks, before the kernels
            for p in ps:
                p.data = torch.zeros(n)  # the old storages' last references go
    gc.callbacks.append(callback)
    gc.set_threshold(1)
    opt.step()
    gc.set_threshold(700, 10, 10)
    gc.callbacks.remove(callback)
    assert fired and all((p == 0).all() for p in ps)
print("ok")
"""


def test_storages_the_cpp_reads_found_outlive_a_tensor_re_pointed_before_the_kernels(
        tmp_path):
    """Python code run between the checks and the kernels (a finalizer, another
    thread) re-points every parameter, dropping the last references to the storages
    the step checked: the reads hold those storages until the kernels have run, so
    the update lands in them (the new storages stay zero) and nothing writes to
    freed memory (in a subprocess: a write there can crash it)."""
    _reader()
    done = subprocess.run([sys.executable, "-c", _REPOINTED_MID_STEP],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-2000:]


def test_the_cpp_reader_is_skipped_on_request_and_warns_once_where_it_cannot_build(
        tmp_path, monkeypatch):
    """``FUSEDOPT_TORCH_EXT=0``: not built, no warning. A build that fails (here a
    compiler that exits 1) warns, naming the way to skip it, leaves nothing
    half-built, and keeps its reason beside the cache: later processes warn
    without building again until it is deleted. A cached build that cannot load is
    built again."""
    import warnings
    monkeypatch.setenv("FUSEDOPT_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("FUSEDOPT_TORCH_EXT", "0")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _torch_ext._load() is None
    assert _torch_ext.status().startswith("off")
    monkeypatch.setenv("FUSEDOPT_TORCH_EXT", "1")
    monkeypatch.setenv("CXX", "sh -c 'kill -9 $$'")  # (a compiler killed: may pass
    with pytest.warns(RuntimeWarning, match="signal 9"):  # next time, not kept)
        assert _torch_ext._load() is None
    assert not list(tmp_path.glob("*.failed"))
    monkeypatch.setenv("CXX", "false")
    assert _torch_ext.status().startswith("built on first use")
    with pytest.warns(RuntimeWarning, match="FUSEDOPT_TORCH_EXT=0"):
        assert _torch_ext._load() is None
    target = _torch_ext._target()
    failed = target.with_name(target.name + ".failed")
    assert "exited with 1" in failed.read_text()
    assert _torch_ext.status().startswith("build failed")
    assert not target.exists() and not list(tmp_path.glob("*.so"))
    built = []
    monkeypatch.setattr(_torch_ext, "_compile", lambda path: built.append(path) or "new")
    with pytest.warns(RuntimeWarning, match="to try the build again"):
        assert _torch_ext._load() is None
    assert not built
    failed.unlink()
    target.write_bytes(b"not a shared object")
    assert _torch_ext._load() == "new" and built == [target]


def test_a_parameter_moved_between_groups_takes_its_new_group_s_hyperparameters():
    """The guarded plan keeps each row's group from the step it checked in full; a
    parameter moved across a group boundary (the order of all parameters the same)
    is planned afresh, with its new group's ``lr``, as torch steps it."""
    gen = torch.Generator().manual_seed(0)
    ours = [torch.nn.Parameter(torch.randn(4, generator=gen)) for _ in range(3)]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    opts = [ft.Adam([{"params": ps[:2], "lr": 0.0}, {"params": ps[2:], "lr": 0.1}])
            for ps in (ours,)] + [torch.optim.Adam(
                [{"params": theirs[:2], "lr": 0.0}, {"params": theirs[2:], "lr": 0.1}],
                foreach=False)]
    for step in range(4):
        if step == 2:  # b from the lr=0 group to the lr=0.1 one, in both
            for opt, ps in zip(opts, (ours, theirs)):
                opt.param_groups[0]["params"] = ps[:1]
                opt.param_groups[1]["params"] = ps[1:]
        for opt, ps in zip(opts, (ours, theirs)):
            for p in ps:
                p.grad = torch.ones(4)
            opt.step()
        for p, q in zip(ours, theirs):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-6)


def _plan_args(opt):
    algo = opt._algorithm
    slots = algo._algorithm.kernel.slots
    groups = []
    for k, group in enumerate(opt.param_groups):
        spec = algo._state_spec(algo._check_group(group, k))
        groups.append((group["params"], tuple((n, 2 + slots.index(n)) for n, _ in spec)))
    from fusedopt.torch import _TYPES
    from fusedopt import _checks
    return groups, opt.state, opt._kinds, _TYPES, opt._has_step, float(_checks.MAX_STEP)
