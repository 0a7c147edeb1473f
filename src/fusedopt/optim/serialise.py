"""``state_dict`` and ``load_state_dict`` in torch's layout; a load is validated in full
before anything changes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .. import _checks, _device
from .precision import MASTER


class Serialise:
    """Checkpoints of ``Optimizer``."""

    def state_dict(self) -> dict[str, Any]:
        """``{"state": {i: {"step": int, <name>: array}}, "param_groups": [...]}``
        (and the algorithm's scalar state, e.g. NAdam's ``"mu_product"``: floats).
        Arrays have their parameter's shape and are views of the live state (as in
        torch): copy them if you keep them while training goes on. With CUDA
        parameters they are host copies (NumPy arrays), taken after the last step."""
        state, numbers = {}, ("step", *self._algorithm.scalar_state)
        shaped = self._algorithm.state_shape  # (Adafactor's factors), else None
        for i, st in self.state.items():
            shape = self._shapes[i]
            state[i] = {k: (v if k in numbers else _checks.user_view(
                self._host(v)).reshape(shape if shaped is None or k == MASTER
                                       else shaped(k, shape))) for k, v in st.items()}
        groups, i = [], 0
        for group in self.param_groups:
            n = len(group["params"])
            groups.append({**{k: v for k, v in group.items() if k != "params"},
                           "params": list(range(i, i + n))})
            i += n
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Replace state and hyperparameters with those of ``state_dict``. Everything
        is validated first (layout, option values, every array's shape and dtype); on
        an exception the optimizer is unchanged. Arrays are copied in. Waits for a
        step running in another thread."""
        with self._lock:
            self._load_state_dict(state_dict)

    def _load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        if not isinstance(state_dict, Mapping) or not {"state", "param_groups"} <= set(
                state_dict):
            raise TypeError("state_dict: expected a dict with keys 'state' and "
                            "'param_groups' (from state_dict())")
        saved_groups = state_dict["param_groups"]
        if not isinstance(saved_groups, Sequence) or len(saved_groups) != len(
                self.param_groups):
            raise ValueError(f"state_dict['param_groups']: expected "
                             f"{len(self.param_groups)} groups, got "
                             f"{len(saved_groups) if isinstance(saved_groups, Sequence) else saved_groups!r}")
        new_groups, spec_of = [], []  # spec_of[i]: the state parameter i's group needs
        for k, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            label = f"state_dict['param_groups'][{k}]"
            if not isinstance(saved, Mapping) or len(saved.get("params", ())) != len(
                    group["params"]):
                raise ValueError(f"{label}: expected a group of {len(group['params'])} "
                                 "parameters")
            merged = {**group, **{key: saved[key] for key in self.defaults if key in saved}}
            spec = self._state_spec(self._check_group(merged, label))
            new_groups.append(merged)
            spec_of.extend([spec] * len(group["params"]))
        saved_state = state_dict["state"]
        if not isinstance(saved_state, Mapping):
            raise TypeError("state_dict['state']: expected a dict {param index: state}")
        new_state, numbers = {}, ("step", *self._algorithm.scalar_state)
        for key, st in saved_state.items():
            label = f"state_dict['state'][{key!r}]"
            if isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not (
                    0 <= key < len(self._params)):
                raise ValueError(f"{label}: expected a parameter index in "
                                 f"[0, {len(self._params)})")
            new_state[int(key)] = self._load_param_state(
                st, self._shapes[key], self._state_dtype_of(self._flat[key]),
                spec_of[key], label)
        # everything is valid: allocate what the new state needs, then swap it in (an
        # allocation failing leaves the optimizer as it was)
        if self.flat_params is None:
            if self._space is _device:  # validated on the host, then moved over
                for st in new_state.values():
                    for name in st:
                        if name not in numbers:
                            st[name] = _device.to_device(st[name])
            for group, merged in zip(self.param_groups, new_groups):
                group.update(merged)
            self.state = new_state
            return
        self._check_flat_steps(new_state)
        for i, st in new_state.items():
            for name in st:
                if name not in numbers:
                    self._flat_state_buffer(name, self._where[i][0]["dtype"])
        for group, merged in zip(self.param_groups, new_groups):
            group.update(merged)
        for seg in self._segments:  # copy into the flat state, segment by segment
            seg["state"] = {"step": 0}
        for i, st in new_state.items():
            seg = self._where[i][0]
            for name in numbers:
                if name in st:
                    seg["state"][name] = st[name]
            for name, value in st.items():
                if name not in numbers:
                    if name not in seg["state"]:
                        seg["state"][name] = self._segment_state(seg, name)
                        seg["state"][name].fill(0)
                    lo, hi = self._tensor_range(i, name)
                    seg["state"][name][lo:hi] = value

    def _host(self, a):
        return _device.to_host(a) if self._space is _device else a

    def _load_param_state(self, st, shape: tuple[int, ...], dtype: np.dtype, spec,
                          label: str) -> dict[str, Any]:
        """One parameter's saved state, checked in full and copied: a known name for
        every entry, and a started state (one holding any array) complete, with its
        'step' and every array its group's options need (``spec``)."""
        if not isinstance(st, Mapping):
            raise TypeError(f"{label}: expected a dict of state, got {type(st).__name__}")
        names = self._state_names + ((MASTER,) if self.master_weights else ())
        scalars = self._algorithm.scalar_state
        unknown = set(st) - {"step", *scalars, *names}
        if unknown:
            raise ValueError(f"{label}: unknown state {sorted(unknown)}; this optimizer "
                             f"keeps {['step', *scalars]} and {list(names)}")
        arrays = [name for name in names if st.get(name) is not None]
        out: dict[str, Any] = {"step": _checks.state_step(st.get("step", 0),
                                                          f"{label}['step']")}
        for name in scalars:
            if st.get(name) is not None:
                out[name] = _checks.state_scalar(st[name], (label, name))
        if 0 < sum(name in out for name in scalars) < len(scalars):
            raise ValueError(f"{label}: incomplete state, missing "
                             f"{[n for n in scalars if n not in out]} beside "
                             f"{[n for n in scalars if n in out]}; a parameter's state "
                             "is loaded whole (or left out, to start it afresh)")
        shaped = self._algorithm.state_shape  # (Adafactor's factors), else None
        if shaped is not None:  # the arrays a parameter of this shape keeps
            spec = [(name, init) for name, init in spec
                    if shaped(name, shape) is not None]
        if arrays or out["step"]:  # stepped: loaded whole
            missing = [name for name, _ in spec if st.get(name) is None]
            missing += [name for name in scalars if st.get(name) is None]
            if "step" not in st:
                missing.insert(0, "step")
            if missing:
                raise ValueError(f"{label}: incomplete state, missing {missing} beside "
                                 f"{arrays + ['step'] if 'step' in st else arrays}; a "
                                 "parameter's state is loaded whole (or left out, to "
                                 "start it afresh)")
        for name in arrays:
            value = st[name]
            if not isinstance(value, np.ndarray) or not (
                    value.dtype.kind == "f" or _checks.is_bf16(value.dtype)):
                raise TypeError(f"{label}[{name!r}]: expected a float array, got "
                                f"{getattr(value, 'dtype', type(value).__name__)}")
            want = shape if shaped is None or name == MASTER else shaped(name, shape)
            if want is None:
                raise ValueError(f"{label}[{name!r}]: a parameter of shape {shape} keeps "
                                 f"{[n for n, _ in spec]}, not {name!r}")
            if value.shape != want:
                raise ValueError(f"{label}[{name!r}]: expected shape {want} (that "
                                 f"{'of its parameter' if want == shape else 'its parameter keeps'}"
                                 f"), got {value.shape}")
            if name == MASTER:
                out[name] = np.array(value, dtype=np.float32, order="C").reshape(-1)
            elif dtype == np.uint16:  # bf16 state: round to nearest even, keep the bits
                out[name] = np.array(value, dtype=_checks.bf16(), order="C").reshape(
                    -1).view(np.uint16)
            else:
                out[name] = np.array(value, dtype=dtype, order="C").reshape(-1)
        return out
