"""Fuzzing fusedopt.torch with hostile-but-plausible user actions, against torch.optim.

Each example builds two identical sets of parameters (canaries around them), one
stepped by ``fusedopt.torch.<X>``, the other (the twin) by ``torch.optim.<X>``
(foreach=False), and applies the same scenario to both: steps with all kinds of
gradients (None, non-contiguous, NaN, aliasing the parameter through torch.as_strided
or NumPy) and, between steps, edits of ``opt.state``, ``p.data`` re-pointing, dtype
changes, new parameters and groups, bad hyperparameters, and state-dict loads
(round trips, mutated dicts, the twin's). The property, at every optimizer call:

- canaries (arena gaps, tensors allocated next to parameters and state) never change;
- fusedopt either raises a clean exception (``CLEAN``) and then its parameters,
  gradients and state are bit-identical to before the call (the example ends), or it
  succeeds, and then torch.optim must succeed too and, after a step, agree on the
  parameters and state (float64: 1e-9, float32: 2e-4 in |a-b| / (|b| + 1e-3)).

``flatten=True`` steps a parameter whose gradient is None with a zero gradient (its
documented behaviour); the twin is given zero gradients for those parameters. bf16
parameters are compared loosely (see ``TOL``). When torch.optim cannot load a state
dict because of its own ``__setstate__`` (see ``torch_setstate_defect``), the example
ends without a verdict.
"""

from __future__ import annotations

import copy
import math

import pytest

torch = pytest.importorskip("torch")
from hypothesis import HealthCheck, given, note, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import fusedopt.torch as ft  # noqa: E402
from fusedopt.backends import available  # noqa: E402

CLEAN = (TypeError, ValueError, RuntimeError, KeyError, FloatingPointError, MemoryError)
BACKENDS = [b for b in ("numba", "cython", "numpy") if available()[b].ok]
F32, F64 = torch.float32, torch.float64
ODD = [torch.float16, torch.bfloat16, torch.complex64, torch.int64]
#: |a - b| / (|b| + 1e-3) allowed per dtype
TOL = {F64: 1e-9, F32: 2e-4, torch.float16: 5e-3, torch.complex64: 2e-4, torch.int64: 0.0,
       # float32 math (and stochastic rounding, for bf16) in fusedopt, bf16 or float16
       # arithmetic in torch's single-tensor step: results that cancel are off by ulps
       # of their operands, so the floor is the tensor's largest magnitude (two bf16
       # ulps of it, about)
       torch.bfloat16: 2e-2}
LOW_PRECISION = (torch.bfloat16, torch.float16)
SHAPES = [(7,), (3, 5), (1,), (2, 3, 2, 2), (0,), (40,)]
GAP = 4  # canary elements around every arena slot and after every fenced tensor
LR = st.sampled_from([0.1, 0.01])
WD = st.sampled_from([0.0, 0.1])
HYPER = {
    "SGD": st.fixed_dictionaries(dict(
        lr=LR, momentum=st.sampled_from([0.0, 0.9]), dampening=st.sampled_from([0.0, 0.3]),
        weight_decay=WD, nesterov=st.booleans(), maximize=st.booleans())).map(
        lambda h: {**h, "nesterov": h["nesterov"] and h["momentum"] > 0
                   and h["dampening"] == 0}),
    "Adam": st.fixed_dictionaries(dict(
        lr=LR, betas=st.sampled_from([(0.9, 0.999), (0.8, 0.99)]),
        eps=st.sampled_from([1e-8, 1e-3]), weight_decay=WD, amsgrad=st.booleans(),
        maximize=st.booleans())),
    "AdamW": st.fixed_dictionaries(dict(
        lr=LR, betas=st.sampled_from([(0.9, 0.999), (0.8, 0.99)]),
        eps=st.sampled_from([1e-8, 1e-3]), weight_decay=st.sampled_from([0.01, 0.0, 0.1]),
        amsgrad=st.booleans(), maximize=st.booleans())),
    "Adagrad": st.fixed_dictionaries(dict(
        lr=LR, lr_decay=st.sampled_from([0.0, 0.1]), weight_decay=WD,
        initial_accumulator_value=st.sampled_from([0.0, 0.5]),
        eps=st.sampled_from([1e-10, 1e-3]), maximize=st.booleans())),
    "RMSprop": st.fixed_dictionaries(dict(
        lr=LR, alpha=st.sampled_from([0.99, 0.9]), eps=st.sampled_from([1e-8, 1e-3]),
        weight_decay=WD, momentum=st.sampled_from([0.0, 0.9]), centered=st.booleans(),
        maximize=st.booleans())),
}
NAN = float("nan")
BAD_HYPER = {
    "SGD": [("lr", -0.1), ("momentum", -0.5), ("weight_decay", NAN)],
    "Adam": [("lr", -0.1), ("eps", NAN), ("betas", (0.9, 1.5)), ("betas", (-0.1, 0.999))],
    "AdamW": [("lr", -0.1), ("eps", NAN), ("betas", (0.9, 1.5)), ("weight_decay", -1.0)],
    "Adagrad": [("lr", -0.1), ("eps", NAN), ("lr_decay", -1.0)],
    "RMSprop": [("lr", -0.1), ("eps", NAN), ("alpha", 1.5)],
}
PLAIN_GRADS = ["new", "new", "new", "inplace", "keep", "none"]
#: drawn in one example in three: each of them ends most examples it appears in
HOSTILE_GRADS = PLAIN_GRADS + ["noncontig", "nan", "alias_same", "alias_shift",
                               "numpy_same", "numpy_shift"]
ACTIONS = ["reset_state", "zero_entry", "bad_entry", "noncontig_entry", "data_same",
           "data_larger", "data_dtype", "model_dtype", "append_param", "add_group",
           "bad_hyper", "roundtrip", "load_mutated", "load_twin"]
LOAD_MUTATIONS = ["truncated", "step_only", "step_int", "step_huge", "wrong_size",
                  "noncontig"]


# -- helpers ------------------------------------------------------------------------

def values(shape, dtype, seed: int) -> torch.Tensor:
    """Deterministic values (the same on both sides)."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed),
                    dtype=torch.float64)
    return (x * 3).round().to(dtype) if dtype == torch.int64 else x.to(dtype)


def other(dtype):
    return F32 if dtype == F64 else F64


def bits(t: torch.Tensor) -> torch.Tensor:
    """The bytes of ``t`` (NaN-safe bit comparison with torch.equal)."""
    dense = torch.empty(t.shape, dtype=t.dtype)  # standard strides, even for size 1
    dense.copy_(t.detach())
    return dense.reshape(-1).view(torch.uint8)


def describe(v):
    """A comparable snapshot of a state value, a parameter or a gradient."""
    if v is None:
        return None
    if isinstance(v, torch.Tensor):
        return ("tensor", tuple(v.shape), v.dtype, bits(v))
    return ("value", repr(v))


def same(a, b) -> bool:
    if isinstance(a, tuple) and isinstance(b, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def as_f64(t: torch.Tensor) -> torch.Tensor:
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    return t.to(torch.float64).reshape(-1)


def mismatch(ours, ref, tol: float, low: bool = False) -> str | None:
    """Why ``ours`` is not ``ref`` within ``tol`` (NaN where NaN, inf where inf);
    ``low``: bf16 math was involved (the floor is then ``ref``'s largest magnitude)."""
    if ours.shape != ref.shape or ours.dtype != ref.dtype:
        return f"{tuple(ours.shape)} {ours.dtype} vs torch's {tuple(ref.shape)} {ref.dtype}"
    x, y = as_f64(ours), as_f64(ref)
    nx, ny = torch.isnan(x), torch.isnan(y)
    if not torch.equal(nx, ny):
        where = [t.nonzero().flatten().tolist() for t in (nx, ny)]
        return f"NaN at {where[0]} vs torch's {where[1]}"
    x, y = x[~nx], y[~ny]
    inf = torch.isinf(x) | torch.isinf(y)
    if not torch.equal(x[inf], y[inf]):
        return f"inf differ: {x[inf].tolist()} vs {y[inf].tolist()}"
    x, y = x[~inf], y[~inf]
    if x.numel() == 0:
        return None
    floor = max(1e-3, y.abs().max().item()) if low else 1e-3
    err = ((x - y).abs() / (y.abs() + floor)).max().item()
    if err <= tol:
        return None
    return f"relative error {err:.3g} > {tol} ({x[:6].tolist()} vs {y[:6].tolist()})"


def sentinel(dtype):
    return 1234 if dtype == torch.int64 else 1234.5678


class Side:
    """One of the two worlds: parameters, canaries, optimizer."""

    def __init__(self, label: str):
        self.label = label
        self.canaries: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.arenas: dict = {}   # dtype -> arena tensor
        self.slots: dict = {}    # id(param) -> (arena, start, stop, data_ptr)
        self.opt = None

    def guard(self, t: torch.Tensor) -> None:
        self.canaries.append((t, bits(t)))

    def canary_after(self, t: torch.Tensor) -> None:
        """A canary allocated right after ``t`` (the allocator often puts it next)."""
        self.guard(torch.full((max(t.numel(), 1) + GAP,), sentinel(t.dtype), dtype=t.dtype))

    def fenced(self, shape, dtype, src: torch.Tensor) -> torch.Tensor:
        """A tensor of ``shape`` filled from ``src``, followed in its own buffer by
        canary elements: a kernel writing past its end changes them."""
        n = math.prod(shape)
        buf = torch.full((n + GAP,), sentinel(dtype), dtype=dtype)
        t = buf[:n].view(shape)
        flat = src.detach().reshape(-1).to(dtype)
        t.reshape(-1)[:min(n, flat.numel())] = flat[:n]
        self.guard(buf[n:])
        return t

    def check_canaries(self, when: str) -> None:
        for t, b in self.canaries:
            assert torch.equal(bits(t), b), f"{self.label}: a canary changed {when}"

    def params(self) -> list:
        return [p for g in self.opt.param_groups for p in g["params"]]

    def snapshot(self):
        params = self.params()
        pos = {id(p): i for i, p in enumerate(params)}
        state = {}
        for p, st_ in list(self.opt.state.items()):
            key = pos.get(id(p), ("unknown", id(p)))
            state[key] = {k: describe(v) for k, v in st_.items()}
        return {"params": [describe(p) for p in params],
                "grads": [describe(p.grad) for p in params], "state": state,
                "groups": [{k: repr(v) for k, v in g.items() if k != "params"}
                           for g in self.opt.param_groups]}


def assert_unchanged(before, after, why: str) -> None:
    for what in ("params", "grads", "groups"):
        assert len(before[what]) == len(after[what]), f"{what} count changed {why}"
        for i, (a, b) in enumerate(zip(before[what], after[what])):
            assert same(a, b), f"{what}[{i}] changed {why}"
    assert before["state"].keys() == after["state"].keys(), f"opt.state keys changed {why}"
    for i, st_ in before["state"].items():
        assert st_.keys() == after["state"][i].keys(), f"state[{i}] keys changed {why}"
        for k, v in st_.items():
            assert same(v, after["state"][i][k]), f"state[{i}][{k!r}] changed {why}"


def make_param(side: Side, spec: dict, arena_plan: dict) -> torch.nn.Parameter:
    shape, dtype, layout = spec["shape"], spec["dtype"], spec["layout"]
    v = values(shape, dtype, spec["seed"])
    slot = None
    if layout == "arena":
        arena, start = arena_plan[spec["index"]]
        t = arena[start:start + v.numel()].view(shape)
        slot = (arena, start, start + v.numel())
    elif layout == "transposed":
        t = torch.empty(shape[::-1], dtype=dtype).t()
    elif layout == "slice":
        t = torch.empty((2 * shape[0],) + shape[1:], dtype=dtype)[::2]
    elif layout == "channels_last":
        t = torch.empty(shape, dtype=dtype, memory_format=torch.channels_last)
    else:
        t = torch.empty(shape, dtype=dtype)
    t.copy_(v)
    if layout != "arena":
        side.canary_after(t)
    grad_ok = (dtype.is_floating_point or dtype.is_complex) and not spec["frozen"]
    p = torch.nn.Parameter(t, requires_grad=grad_ok)
    if slot is not None:
        side.slots[id(p)] = (*slot, p.data_ptr())
    return p


def build(side: Side, specs: list[dict]) -> list:
    """The parameters of ``specs`` on ``side``; "arena" ones share one buffer per
    dtype, GAP canary elements before, between and after them."""
    plan, sizes = {}, {}
    for spec in specs:
        if spec["layout"] == "arena":
            sizes[spec["dtype"]] = sizes.get(spec["dtype"], GAP) + \
                math.prod(spec["shape"]) + GAP
    for dtype, size in sizes.items():
        side.arenas[dtype] = torch.full((size,), sentinel(dtype), dtype=dtype)
    offset = {dtype: GAP for dtype in sizes}
    for spec in specs:
        if spec["layout"] == "arena":
            plan[spec["index"]] = (side.arenas[spec["dtype"]], offset[spec["dtype"]])
            offset[spec["dtype"]] += math.prod(spec["shape"]) + GAP
    params = [make_param(side, spec, plan) for spec in specs]
    for dtype, arena in side.arenas.items():  # the gaps are canaries
        start = 0
        for spec in specs:
            if spec["layout"] == "arena" and spec["dtype"] == dtype:
                a = plan[spec["index"]][1]
                side.guard(arena[start:a])
                start = a + math.prod(spec["shape"])
        side.guard(arena[start:])
    return params


@st.composite
def param_specs(draw, main):
    n = draw(st.integers(1, 4), label="n_params")
    weird = draw(st.sampled_from([False, False, False, True]), label="weird_layouts")
    odd = draw(st.sampled_from([None] * 40 + ODD), label="odd_dtype")
    odd_at = draw(st.integers(0, n - 1))
    specs = []
    for i in range(n):
        shape = draw(st.sampled_from(SHAPES))
        dtype = draw(st.sampled_from([main] * 5 + [other(main)]))
        if odd is not None and i == odd_at:
            dtype = odd
        layouts = ["own", "arena"] + (["transposed", "slice", "channels_last"]
                                      if weird else [])
        layout = draw(st.sampled_from(layouts))
        if (layout == "transposed" and len(shape) != 2 or
                layout == "channels_last" and len(shape) != 4 or
                layout == "slice" and shape[0] == 0):
            layout = "own"
        specs.append(dict(index=i, shape=shape, dtype=dtype, layout=layout,
                          seed=draw(st.integers(0, 2**16)),
                          frozen=draw(st.sampled_from([False] * 7 + [True]))))
    return specs


# -- the scenario -------------------------------------------------------------------

def torch_setstate_defect(exc: BaseException) -> bool:
    """torch.optim's own load failing in its ``__setstate__``, which reads
    ``state_values[0]["step"]`` (a KeyError once a user set ``opt.state[p] = {}``):
    a defect of the reference, which then gives no verdict."""
    tb = exc.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "__setstate__" and "optim" in code.co_filename:
            return isinstance(exc, KeyError)
        tb = tb.tb_next
    return False


class Stop(Exception):
    """fusedopt raised cleanly (and nothing changed): the example ends."""


class Scenario:
    def __init__(self, draw, name, hyper, backend, flatten, main):
        self.draw, self.name, self.hyper = draw, name, hyper
        self.backend, self.flatten, self.main = backend, flatten, main
        self.ours, self.twin = Side("fusedopt"), Side("torch")
        self.grad_kinds = PLAIN_GRADS
        self.aliased: set[int] = set()  # params whose grad aliases memory
        self.frozen: set[int] = set()
        #: ids of the twin's parameters that were ever bf16: compared as bf16 after
        #: a cast too (the two sides' bf16 rounding differences persist)
        self.lossy: set[int] = set()
        self.history_tol: dict[int, float] = {}  # id(twin param) -> loosest tolerance

    def note_lossy(self) -> None:
        self.lossy.update(id(q) for q in self.twin.params() if q.dtype in LOW_PRECISION)

    def sides(self):
        return (self.ours, self.twin)

    # an optimizer call on both sides --------------------------------------------
    def call(self, what: str, ours_fn, twin_fn) -> None:
        before = self.ours.snapshot() if self.ours.opt is not None else None
        try:
            ours_fn()
        except CLEAN as exc:
            self.ours.check_canaries(f"by {what} (which raised {exc!r})")
            if before is not None:
                assert_unchanged(before, self.ours.snapshot(),
                                 f"by {what}, which raised {exc!r}")
            note(f"fusedopt refused {what}: {exc!r}")
            raise Stop from None
        self.ours.check_canaries(f"by {what}")
        try:
            twin_fn()
        except Exception as exc:  # noqa: BLE001 - any refusal of torch's counts
            if torch_setstate_defect(exc):
                note(f"torch.optim's __setstate__ failed: {exc!r}; no reference")
                raise Stop from None
            raise AssertionError(f"torch.optim refused {what} ({exc!r}), fusedopt "
                                 "accepted it") from None

    def construct(self, specs) -> None:
        groups_at = self.draw(st.sampled_from([None, 1, 2, 3]), label="second_group_at")
        lr2 = self.draw(LR)
        built = []
        for side in self.sides():
            params = side.initial = build(side, specs)
            side.model = torch.nn.ParameterList(params)  # for model.double() / .float()
            if groups_at is None or groups_at >= len(params):
                built.append(params)
            else:
                built.append([{"params": params[:groups_at]},
                              {"params": params[groups_at:], "lr": lr2}])
        self.frozen = {i for i, s in enumerate(specs) if s["frozen"]}
        cls_ours, cls_twin = getattr(ft, self.name), getattr(torch.optim, self.name)

        def ours():
            self.ours.opt = cls_ours(built[0], backend=self.backend,
                                     flatten=self.flatten, **self.hyper)

        def twin():
            self.twin.opt = cls_twin(built[1], foreach=False, **self.hyper)
        try:
            ours()
        except CLEAN as exc:
            self.ours.check_canaries(f"by the constructor (which raised {exc!r})")
            for spec, p in zip(specs, self.ours.initial):
                assert torch.equal(bits(p), bits(values(spec["shape"], spec["dtype"],
                                                        spec["seed"]))), \
                    f"params[{spec['index']}] changed by a constructor that raised {exc!r}"
            note(f"fusedopt refused the constructor: {exc!r}")
            raise Stop from None
        self.ours.check_canaries("by the constructor")
        try:
            twin()
        except Exception as exc:  # noqa: BLE001
            raise AssertionError(f"torch.optim refused the constructor ({exc!r}), "
                                 "fusedopt accepted it") from None

    # actions between steps -------------------------------------------------------
    def pick(self, label: str) -> int:
        return self.draw(st.integers(0, len(self.ours.params()) - 1), label=label)

    def act(self, kind: str) -> None:
        draw = self.draw
        self.note_lossy()
        if kind in ("reset_state", "zero_entry", "bad_entry", "noncontig_entry"):
            i = self.pick("param")
            tp = self.twin.params()[i]
            keys = sorted(k for k, v in self.twin.opt.state.get(tp, {}).items()
                          if k != "step" and isinstance(v, torch.Tensor))
            variant = draw(st.sampled_from(["size", "dtype"])) if kind == "bad_entry" \
                else None
            key = draw(st.sampled_from(keys)) if keys else None
            seed = draw(st.integers(0, 99))
            note(f"{kind} on params[{i}] {key!r} {variant or ''}")
            for side in self.sides():
                p = side.params()[i]
                if kind == "reset_state":
                    side.opt.state[p] = {}
                    continue
                if key is None:
                    continue
                old = side.opt.state[p].get(key, torch.zeros_like(p))
                if kind == "zero_entry":
                    new = torch.zeros_like(p)
                elif kind == "noncontig_entry":
                    new = torch.empty(tuple(old.shape) + (2,), dtype=old.dtype)[..., 0]
                    new.copy_(old)
                elif variant == "size":
                    n = old.numel() - 1 if old.numel() >= 2 else old.numel() + 3
                    new = side.fenced((n,), old.dtype, values((n,), old.dtype, seed))
                else:
                    new = side.fenced(tuple(old.shape), other(old.dtype), old)
                side.opt.state[p][key] = new
        elif kind == "model_dtype":  # the model's floating parameters and grads
            note(f"model.{'double' if self.main == F32 else 'float'}()")
            for side in self.sides():
                side.model.double() if self.main == F32 else side.model.float()
        elif kind in ("data_same", "data_larger", "data_dtype"):
            i = self.pick("param")
            seed = draw(st.integers(0, 99))
            note(f"{kind} on params[{i}]")
            for side in self.sides():
                p = side.params()[i]
                shape, dtype = tuple(p.shape), p.dtype
                if kind == "data_larger":
                    shape = (shape[0] + 1,) + shape[1:]
                elif kind == "data_dtype":
                    dtype = other(dtype) if dtype in (F32, F64) else F64
                new = values(shape, dtype, seed)
                side.canary_after(new)
                p.data = new
                g = p.grad
                if g is not None and (g.shape != p.shape or g.dtype != p.dtype):
                    p.grad = None
        elif kind in ("append_param", "add_group"):
            shape = draw(st.sampled_from(SHAPES))
            seed = draw(st.integers(0, 99))
            lr = draw(LR)
            note(f"{kind} {shape}")
            new = []
            for side in self.sides():
                t = values(shape, self.main, seed)
                side.canary_after(t)
                new.append(torch.nn.Parameter(t))
            if kind == "append_param":
                for side, p in zip(self.sides(), new):
                    side.opt.param_groups[0]["params"].append(p)
            else:
                self.call("add_param_group",
                          lambda: self.ours.opt.add_param_group({"params": [new[0]],
                                                                  "lr": lr}),
                          lambda: self.twin.opt.add_param_group({"params": [new[1]],
                                                                  "lr": lr}))
        elif kind == "bad_hyper":
            key, value = draw(st.sampled_from(BAD_HYPER[self.name]))
            k = draw(st.integers(0, len(self.ours.opt.param_groups) - 1))
            note(f"param_groups[{k}][{key!r}] = {value!r}")
            for side in self.sides():
                side.opt.param_groups[k][key] = value
        elif kind == "roundtrip":
            note("load_state_dict(state_dict())")
            self.call("load_state_dict(state_dict())",
                      lambda: self.ours.opt.load_state_dict(self.ours.opt.state_dict()),
                      lambda: self.twin.opt.load_state_dict(self.twin.opt.state_dict()))
        elif kind == "load_twin":
            note("load_state_dict(<torch.optim's state_dict>)")
            self.call("load_state_dict(<torch.optim's state_dict>)",
                      lambda: self.ours.opt.load_state_dict(
                          copy.deepcopy(self.twin.opt.state_dict())),
                      lambda: self.twin.opt.load_state_dict(
                          copy.deepcopy(self.twin.opt.state_dict())))
        elif kind == "load_mutated":
            how = draw(st.sampled_from(LOAD_MUTATIONS), label="mutation")
            at, which, seed = draw(st.integers(0, 7)), draw(st.integers(0, 3)), \
                draw(st.integers(0, 99))
            note(f"load_state_dict(mutated: {how}, entry {at}, key {which})")

            def load(side):
                sd = copy.deepcopy(side.opt.state_dict())
                self.mutate(side, sd, how, at, which, seed)
                side.opt.load_state_dict(sd)
            self.call(f"load_state_dict(<{how}>)", lambda: load(self.ours),
                      lambda: load(self.twin))
        else:  # pragma: no cover
            raise AssertionError(kind)

    @staticmethod
    def mutate(side: Side, sd: dict, how: str, at: int, which: int, seed: int) -> None:
        n = sum(len(g["params"]) for g in sd["param_groups"])
        st_ = sd["state"].get(at % n)
        if not st_:
            return
        keys = sorted(k for k, v in st_.items() if k != "step" and
                      isinstance(v, torch.Tensor))
        if how == "truncated":
            drop = "exp_avg_sq" if "exp_avg_sq" in keys else (keys[0] if keys else None)
            st_.pop(drop, None)
        elif how == "step_only":  # every buffer dropped, the step count kept
            for key in keys:
                del st_[key]
        elif how in ("step_int", "step_huge"):
            if "step" in st_:
                st_["step"] = int(float(st_["step"])) if how == "step_int" else 10**400
        elif keys:
            key = keys[which % len(keys)]
            old = st_[key]
            if how == "wrong_size":
                n = old.numel() - 1 if old.numel() >= 2 else old.numel() + 3
                st_[key] = side.fenced((n,), old.dtype, values((n,), old.dtype, seed))
            else:  # noncontig
                new = torch.empty(tuple(old.shape) + (2,), dtype=old.dtype)[..., 0]
                new.copy_(old)
                st_[key] = new

    # gradients and the step --------------------------------------------------------
    def set_grads(self) -> None:
        n = len(self.ours.params())
        kinds = []
        for i in range(n):
            kind = self.draw(st.sampled_from(self.grad_kinds))
            seed = self.draw(st.integers(0, 2**16))
            shift = self.draw(st.sampled_from([1, -1]))
            if i in self.frozen:  # requires_grad_(False): never gets a gradient
                kinds.append("frozen")
                continue
            if kind in ("inplace", "keep") and i in self.aliased:
                kind = "new"  # the alias is of each side's own (stepped) memory
            if kind in ("alias_shift", "numpy_shift") and not all(
                    self.in_arena(side, i) for side in self.sides()):
                kind = "alias_same" if kind == "alias_shift" else "numpy_same"
            if kind == "numpy_same" and self.ours.params()[i].dtype == torch.bfloat16:
                kind = "alias_same"
            if kind == "numpy_shift" and self.ours.params()[i].dtype == torch.bfloat16:
                kind = "alias_shift"
            kinds.append(kind)
            if kind.startswith(("alias", "numpy")):
                self.aliased.add(i)
            elif kind not in ("keep",):
                self.aliased.discard(i)
            for side in self.sides():
                self.set_grad(side, side.params()[i], kind, seed, shift)
        note(f"grads: {kinds}")

    def in_arena(self, side: Side, i: int) -> bool:
        """Whether params[i] is still its arena slot (so a shifted alias is in bounds
        and reads the same memory layout on both sides)."""
        p = side.params()[i]
        slot = side.slots.get(id(p))
        return (slot is not None and not self.flatten and p.numel() > 0
                and p.dtype == slot[0].dtype and p.data_ptr() == slot[3])

    @staticmethod
    def set_grad(side: Side, p, kind: str, seed: int, shift: int) -> None:
        v = values(tuple(p.shape), p.dtype, seed)
        if kind == "keep":
            return
        if kind == "none":
            p.grad = None
        elif kind == "inplace" and p.grad is not None and p.grad.shape == p.shape \
                and p.grad.dtype == p.dtype:
            p.grad.copy_(v)
        elif kind == "noncontig":
            g = torch.empty(tuple(p.shape) + (2,), dtype=p.dtype)[..., 0]
            g.copy_(v)
            p.grad = g
        elif kind == "nan":
            if p.dtype.is_floating_point and v.numel():
                v.view(-1)[seed % v.numel()] = NAN
            p.grad = v
        elif kind == "alias_same":
            p.grad = torch.as_strided(p.detach(), p.shape, p.stride(), p.storage_offset())
        elif kind == "numpy_same":
            p.grad = torch.from_numpy(p.detach().numpy())
        elif kind in ("alias_shift", "numpy_shift"):
            arena, a, b, _ = side.slots[id(p)]
            if kind == "alias_shift":
                p.grad = torch.as_strided(arena, p.shape, torch.empty(p.shape).stride(),
                                          a + shift)
            else:
                p.grad = torch.from_numpy(arena.numpy()[a + shift:b + shift]).view(p.shape)
        else:  # new, or inplace without a gradient to write into
            p.grad = v

    def step(self) -> None:
        if self.flatten:  # fusedopt's documented semantics: a missing grad is zero
            for q in self.twin.params():
                if q.grad is None and q.requires_grad:
                    q.grad = torch.zeros_like(q)
        stepped = [q.grad is not None for q in self.twin.params()]
        self.call("step()", self.ours.opt.step, self.twin.opt.step)
        self.compare(stepped)

    def compare(self, stepped: list[bool]) -> None:
        ours, twin = self.ours.params(), self.twin.params()
        assert len(ours) == len(twin)
        self.note_lossy()
        for i, (p, q) in enumerate(zip(ours, twin)):
            low = id(q) in self.lossy
            # a parameter keeps the rounding of every dtype it was stepped in (a
            # float32 history cast to float64 is still float32-accurate)
            tol = max(TOL[torch.bfloat16] if low else TOL[q.dtype],
                      self.history_tol.get(id(q), 0.0))
            self.history_tol[id(q)] = tol
            why = mismatch(p, q, tol, low)
            assert why is None, f"params[{i}] differs from torch.optim's: {why}"
            if not stepped[i]:
                continue
            ts = {k: v for k, v in self.twin.opt.state.get(q, {}).items() if v is not None}
            os_ = {k: v for k, v in self.ours.opt.state.get(p, {}).items()
                   if v is not None}
            assert os_.keys() == ts.keys(), \
                f"state[{i}] has keys {sorted(os_)}, torch.optim's {sorted(ts)}"
            for k, v in ts.items():
                if k == "step":
                    assert float(os_[k]) == float(v), \
                        f"state[{i}]['step'] is {float(os_[k])}, torch.optim's {float(v)}"
                    continue
                why = mismatch(os_[k], v, tol if low else max(TOL.get(v.dtype, tol), tol),
                               low)
                assert why is None, f"state[{i}][{k!r}] differs from torch.optim's: {why}"


@settings(max_examples=800, deadline=None, suppress_health_check=list(HealthCheck))
@given(data=st.data())
def test_hostile_use_is_refused_cleanly_or_matches_torch(data):
    draw = data.draw
    name = draw(st.sampled_from(list(HYPER)), label="optimizer")
    hyper = draw(HYPER[name], label="hyper")
    backend = draw(st.sampled_from(BACKENDS), label="backend")
    flatten = draw(st.booleans(), label="flatten")
    main = draw(st.sampled_from([F32, F64]), label="dtype")
    specs = draw(param_specs(main), label="params")
    sc = Scenario(draw, name, hyper, backend, flatten, main)
    if draw(st.sampled_from([False, False, True]), label="hostile_grads"):
        sc.grad_kinds = HOSTILE_GRADS
    try:
        sc.construct(specs)
        for _ in range(draw(st.integers(1, 4), label="steps")):
            for _ in range(draw(st.integers(0, 2), label="actions")):
                sc.act(draw(st.sampled_from(ACTIONS), label="action"))
            sc.set_grads()
            sc.step()
    except Stop:
        pass
