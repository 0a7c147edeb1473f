"""An optimizer over a ``FlatParams``: one kernel call per contiguous segment of the
flat buffers, state in flat buffers of its own, and ``state`` as read-only views."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from .. import _checks
from .. import flat as _flat
from .precision import MASTER


class FlatMode:
    """The FlatParams mode of ``Optimizer`` (``flat_params`` is not None)."""

    def _setup_flat(self) -> None:
        """Flat mode, when every parameter is one of the ``views`` of one FlatParams:
        each group becomes contiguous segments of its buffers, stepped with one
        backend call each, and the state lives in buffers of the same layout
        (``state[i]`` holds views of them)."""
        fp = _flat.owner(self._params[0])
        if fp is None or any(_flat.owner(p) is not fp for p in self._params):
            return
        index = {id(v): j for j, v in enumerate(fp.views)}
        if any(id(p) not in index for p in self._params):
            return  # views of the buffer, but not the FlatParams' own tensors
        self.flat_params = fp
        self._flat_state: dict[str, dict[np.dtype, np.ndarray]] = {}
        self._segments: list[dict[str, Any]] = []
        where: dict[int, tuple[dict, int, int]] = {}  # tensor -> (segment, start, stop)
        # state of other shapes than the parameters' (Adafactor's factors): per slot,
        # where each tensor's lies in that slot's buffer, and the buffers' sizes
        shaped = self._algorithm.state_shape
        self._layout = None if shaped is None else state_layout(
            fp, self._state_names, shaped)
        self._ranges: dict[int, dict | None] = {}  # tensor -> its slots in its segment's
        i = 0
        for k, group in enumerate(self.param_groups):
            members = {index[id(p)]: i + j for j, p in enumerate(group["params"])}
            for dt, a, b, run in _flat.segments(fp, list(members)):
                seg = {"group": k, "dtype": dt, "start": a, "stop": b,
                       "param": _checks.kernel_view(fp.buffers[dt][a:b]),
                       "grad": _checks.kernel_view(fp.grad_buffers[dt][a:b]),
                       "state": {"step": 0}, "tensors": [], "slots": {}}
                self._segments.append(seg)
                ranges = [None] * len(run)
                if self._layout is not None:
                    seg["slots"], ranges = segment_slots(self._layout[0], run)
                for t, r in zip(run, ranges):
                    where[members[t]] = (seg, *fp.offsets[t][1:])
                    self._ranges[members[t]] = r
                    seg["tensors"].append((fp.offsets[t][1] - a, fp.offsets[t][2] - a,
                                           fp.views[t].shape) + ((r,) if r else ()))
            i += len(group["params"])
        self._where = where
        self.state = _FlatState(self)

    def _step_flat(self, grads) -> None:
        """One backend call per segment; no Python work per tensor unless ``grads``
        are given, which are then copied into the gradient buffer first. The flat
        state buffers a step needs are allocated before the first write."""
        if grads is not None:
            checked = self._check_grads(grads)
        hypers = [h for h, _ in self._hypers()]
        needed = []
        for seg in self._segments:
            names = [name for name, _ in self._state_spec(hypers[seg["group"]])]
            if self._mastered(seg["param"]):
                names.insert(0, MASTER)
            needed.append([name for name in names if name not in seg["state"]])
            for name in needed[-1]:
                self._flat_state_buffer(name, seg["dtype"])
        numbers = [{}] * len(self._segments)
        if self._algorithm.scalar_state:  # scalar state, checked before any write
            numbers = [self._plan_scalars(seg["state"], seg["state"]["step"],
                                          hypers[seg["group"]],
                                          f"the state of segment {k}")
                       for k, seg in enumerate(self._segments)]
        if grads is not None:
            for i, g in enumerate(checked):
                seg, a, b = self._where[i]
                seg["grad"][a - seg["start"]:b - seg["start"]] = g
        scale = self._grad_scale(
            [seg["grad"] for seg in self._segments],
            lambda j: f"the gradient buffer of param_groups[{self._segments[j]['group']}]")
        if scale is None:
            return
        impl = self._impl
        made = self._step_workspaces(  # (Muon's scratch, for every segment at once)
            impl, self._segments, lambda name, dtype: self._flat_state_buffer(
                name, dtype).dtype)
        # every segment's reads before any segment's writes (LAMB's, Adafactor's)
        stage = [] if self._algorithm.staged else None
        for k, (seg, missing, held) in enumerate(zip(self._segments, needed, numbers)):
            hyper, state = hypers[seg["group"]], seg["state"]
            state.update(held)
            for name in missing:
                state[name] = self._segment_state(seg, name)
                if name != MASTER:
                    _checks.fill(state[name], dict(self._state_spec(hyper))[name])
            p, out = seg["param"], None
            if self._mastered(p):
                p, out = state[MASTER], p
            fresh = any(name != MASTER for name in missing)
            self._update(impl, p, seg["grad"], state, hyper, fresh, scale,
                         self._seed(p, state, k), out, seg["tensors"], made, stage)
        for commit in stage or ():
            commit()

    def _flat_state_buffer(self, name: str, dtype) -> np.ndarray:
        per_dtype = self._flat_state.setdefault(name, {})
        if dtype not in per_dtype:
            like = _checks.kernel_view(self.flat_params.buffers[dtype])
            sizes = {} if self._layout is None else self._layout[1]
            per_dtype[dtype] = (
                self._master_copy(like) if name == MASTER else self._new_state(
                    like, 0.0, sizes[name].get(dtype, 0) if name in sizes else None))
        return per_dtype[dtype]

    def _segment_state(self, seg: dict, name: str) -> np.ndarray:
        """``seg``'s view of the flat buffer of state ``name`` (allocated if need be):
        its parameters' range, or the range its tensors' state of other shapes takes
        (``state_layout``)."""
        lo, hi = seg["slots"].get(name, (seg["start"], seg["stop"]))
        return self._flat_state_buffer(name, seg["dtype"])[lo:hi]

    def _tensor_range(self, i: int, name: str) -> tuple[int, int] | None:
        """Where tensor ``i``'s state ``name`` lies in its segment's view of that
        state, or None where it keeps none of that name (Adafactor's ``variance``
        beside a matrix)."""
        ranges = self._ranges[i]
        if ranges is None or name not in ranges:
            seg, a, b = self._where[i]
            return a - seg["start"], b - seg["start"]
        return ranges[name]

    def _check_flat_steps(self, new_state: Mapping[int, Mapping[str, Any]]) -> None:
        """A segment steps as one: its tensors must come with the same step and the
        same state arrays (all or none)."""
        seen: dict[int, tuple] = {}
        for i in range(len(self._params)):
            seg = self._where[i][0]
            st = new_state.get(i, {"step": 0})
            numbers = ("step", *self._algorithm.scalar_state)
            kept = tuple(sorted(k for k in st if k not in numbers))
            if self._layout is not None:  # which arrays depends on the tensor's shape
                kept = bool(kept)  # (_load_param_state checked that they are its)
            key = (*(st.get(k) for k in numbers), kept)
            if seen.setdefault(id(seg), key) != key:
                raise ValueError(
                    f"state_dict['state'][{i}]: a FlatParams optimizer steps each "
                    f"segment as one, but this tensor's step/state {key} differs from "
                    f"its segment's {seen[id(seg)]}")


def state_layout(fp: _flat.FlatParams, names: list[str], shaped) -> tuple[dict, dict]:
    """Where each tensor of ``fp`` keeps its state of each slot in ``names`` when the
    algorithm's ``state_shape`` (``shaped``) gives it other shapes than the
    parameters' (Adafactor's factors): ``(at, sizes)``, ``at[name][t]`` the ``(lo,
    hi)`` of tensor ``t``'s in the flat buffer of ``name`` for its dtype (None: it
    keeps none), in the tensors' order, so that a segment's are one range;
    ``sizes[name][dtype]`` that buffer's size."""
    at: dict[str, list] = {}
    sizes: dict[str, dict] = {}
    for name in names:
        at[name], total = [], sizes.setdefault(name, {})
        for (dt, _, _), view in zip(fp.offsets, fp.views):
            shape = shaped(name, view.shape)
            if shape is None:
                at[name].append(None)
                continue
            start = total.get(dt, 0)
            total[dt] = start + math.prod(shape)
            at[name].append((start, total[dt]))
    return at, sizes


def segment_slots(at: dict, run: list[int]) -> tuple[dict, list[dict]]:
    """For a segment of the tensors ``run``: its range in each slot's buffer
    (``state_layout``'s ``at``), and each tensor's range relative to it (None where
    the tensor keeps none of that slot)."""
    slots = {}
    for name, where in at.items():
        kept = [where[t] for t in run if where[t] is not None]
        slots[name] = (kept[0][0], kept[-1][1]) if kept else (0, 0)
    ranges = [{name: None if where[t] is None else (where[t][0] - slots[name][0],
                                                    where[t][1] - slots[name][0])
               for name, where in at.items()} for t in run]
    return slots, ranges


class _FlatState(Mapping):
    """``state`` of a FlatParams optimizer: per tensor, views of the flat state and the
    step of its segment (read-only; ``load_state_dict`` replaces state)."""

    def __init__(self, opt) -> None:  # an Optimizer over a FlatParams
        self._opt = opt

    def _started(self, i: int) -> bool:
        return len(self._opt._where[i][0]["state"]) > 1

    def __getitem__(self, i: int) -> Mapping[str, Any]:
        if i not in self._opt._where or not self._started(i):
            raise KeyError(i)
        seg = self._opt._where[i][0]
        out = {}
        for k, v in seg["state"].items():
            if not isinstance(v, np.ndarray):
                out[k] = v
            elif (r := self._opt._tensor_range(i, k)) is not None:
                out[k] = v[r[0]:r[1]]
        # read-only: an assignment into it would be lost (views of the flat state
        # are updated in place instead, or replaced with load_state_dict)
        return _ReadOnly(out)

    def __iter__(self):
        return (i for i in range(len(self._opt._params)) if self._started(i))

    def __len__(self) -> int:
        return sum(1 for _ in self)


class _ReadOnly(dict):
    """One tensor's entry of a FlatParams optimizer's ``state``: its arrays are views
    of the flat state (change them in place), the entry itself refuses assignment,
    which would be lost. Copies (``copy``, ``pickle``) are plain dicts."""

    def _refuse(self, *args, **kwargs):
        raise TypeError("state[i]: a FlatParams optimizer's state entries are views of "
                        "its flat state; change an array in place (state[i]['exp_avg']"
                        "[...] = 0) or use load_state_dict()")

    __setitem__ = __delitem__ = __ior__ = update = pop = popitem = setdefault = \
        clear = _refuse

    def __reduce__(self):
        return dict, (dict(self),)
