"""An optimizer over a ``FlatParams``: one kernel call per contiguous segment of the
flat buffers, state in flat buffers of its own, and ``state`` as read-only views."""

from __future__ import annotations

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
        if self._algorithm.state_shape is not None:
            raise ValueError(f"params: a FlatParams; {self._algorithm.title} keeps state "
                             "of other shapes than its parameters' (factored moments), "
                             "which flat buffers do not hold: pass the arrays as a list")
        self.flat_params = fp
        self._flat_state: dict[str, dict[np.dtype, np.ndarray]] = {}
        self._segments: list[dict[str, Any]] = []
        where: dict[int, tuple[dict, int, int]] = {}  # tensor -> (segment, start, stop)
        i = 0
        for k, group in enumerate(self.param_groups):
            members = {index[id(p)]: i + j for j, p in enumerate(group["params"])}
            for dt, a, b, run in _flat.segments(fp, list(members)):
                seg = {"group": k, "dtype": dt, "start": a, "stop": b,
                       "param": _checks.kernel_view(fp.buffers[dt][a:b]),
                       "grad": _checks.kernel_view(fp.grad_buffers[dt][a:b]),
                       "state": {"step": 0}, "tensors": []}
                self._segments.append(seg)
                for t in run:
                    where[members[t]] = (seg, *fp.offsets[t][1:])
                    seg["tensors"].append((fp.offsets[t][1] - a, fp.offsets[t][2] - a,
                                           fp.views[t].shape))
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
        for k, (seg, missing, held) in enumerate(zip(self._segments, needed, numbers)):
            hyper, state = hypers[seg["group"]], seg["state"]
            state.update(held)
            for name in missing:
                state[name] = self._flat_state_buffer(name, seg["dtype"])[
                    seg["start"]:seg["stop"]]
                if name != MASTER:
                    _checks.fill(state[name], dict(self._state_spec(hyper))[name])
            p, out = seg["param"], None
            if self._mastered(p):
                p, out = state[MASTER], p
            fresh = any(name != MASTER for name in missing)
            self._update(impl, p, seg["grad"], state, hyper, fresh, scale,
                         self._seed(p, state, k), out, seg["tensors"])

    def _flat_state_buffer(self, name: str, dtype) -> np.ndarray:
        per_dtype = self._flat_state.setdefault(name, {})
        if dtype not in per_dtype:
            like = _checks.kernel_view(self.flat_params.buffers[dtype])
            per_dtype[dtype] = (self._master_copy(like) if name == MASTER
                                else self._new_state(like, 0.0))
        return per_dtype[dtype]

    def _check_flat_steps(self, new_state: Mapping[int, Mapping[str, Any]]) -> None:
        """A segment steps as one: its tensors must come with the same step and the
        same state arrays (all or none)."""
        seen: dict[int, tuple] = {}
        for i in range(len(self._params)):
            seg = self._where[i][0]
            st = new_state.get(i, {"step": 0})
            numbers = ("step", *self._algorithm.scalar_state)
            key = (*(st.get(k) for k in numbers),
                   tuple(sorted(k for k in st if k not in numbers)))
            if seen.setdefault(id(seg), key) != key:
                raise ValueError(
                    f"state_dict['state'][{i}]: a FlatParams optimizer steps each "
                    f"segment as one, but this tensor's step/state {key} differs from "
                    f"its segment's {seen[id(seg)]}")


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
        seg, a, b = self._opt._where[i]
        lo, hi = a - seg["start"], b - seg["start"]
        # read-only: an assignment into it would be lost (views of the flat state
        # are updated in place instead, or replaced with load_state_dict)
        return _ReadOnly({k: (v[lo:hi] if isinstance(v, np.ndarray) else v)
                          for k, v in seg["state"].items()})

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
