"""The optimizer machinery shared by every algorithm: param groups, state, checks.

Semantics follow ``torch.optim.Optimizer``: ``param_groups`` is a list of dicts whose
hyperparameters may be changed between steps; ``state_dict()`` has the same layout
(``{"state": {index: {...}}, "param_groups": [{..., "params": [index, ...]}]}``) and
returns references to the live state, not copies.
"""

from __future__ import annotations

import contextlib
import math
import operator
import threading
from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from typing import Any

import numpy as np

from .. import _checks, _device, _guard, scalars
from .. import algorithms as _algorithms
from ..backends import policy, select
from ..flat import FlatParams
from .flatmode import FlatMode, _FlatState
from .precision import BITS, MASTER, Precision
from .serialise import Serialise

ParamsT = Iterable[Any] | Iterable[Mapping[str, Any]] | FlatParams


#: nonfinite= policies: "propagate" (torch's behaviour: a NaN or inf gradient element
#: reaches its parameter and state elements, and no others), "skip" (leave parameters
#: and state untouched, count it in ``skipped_steps``, set ``last_step_skipped``, like
#: GradScaler with found_inf), "raise" (FloatingPointError before any write).
NONFINITE = ("propagate", "skip", "raise")

class Optimizer(Precision, FlatMode, Serialise):
    """Base class. Each algorithm is a subclass built from its declaration
    (``fusedopt.algorithms.Algorithm``, see ``fusedopt.optim.optimizer_class``),
    which three hooks read:

    ``_check_group(group, where)`` validates one group's hyperparameters and returns
    them as a namedtuple (``where``: the group's index, or a label for messages);
    ``_state_spec(hyper)`` names the state arrays the step needs with their initial
    value; ``_update(impl, p, g, state, hyper, fresh, scale)`` runs one backend call
    (``fresh``: a state array was created for this step; ``scale``: the gradient's
    clipping factor).

    Options every optimizer takes (keyword-only):

    - ``backend``: "auto" (``cuda`` for CUDA arrays; for host arrays the compiled
      ``cython`` kernels, else ``numba``, else ``numpy``), or a name from
      ``fusedopt.backends.available()``.
    - ``nonfinite``: what a step does with NaN/inf gradients (see ``NONFINITE``).
    - ``max_grad_norm``: clip the global L2 norm of each step's gradients to this.
    - ``stream``: CUDA arrays only: the stream the kernels are launched on (a Numba
      stream, ``torch.cuda.Stream``, ``cupy.cuda.Stream`` or a raw handle); None is
      the default stream. May be reassigned between steps.
    - ``state_dtype``: None (the parameters' dtype), "bfloat16" (state stored in
      bf16, math in float32, rounded to nearest even on store: Adam moves 20 bytes
      per element instead of 28) or "float32" (with bf16 parameters). bf16 state runs
      on the numba, cython and cuda backends beside float32 parameters; bfloat16
      parameters on the numba and cython backends.
    - ``seed``: bfloat16 parameters (``ml_dtypes.bfloat16`` arrays) are updated with
      stochastic rounding; its random bits are a function of (seed, step, parameter
      index, element index) only, so runs are reproducible whatever the threads.
    - ``master_weights``: instead, keep a float32 copy of each bfloat16 parameter in
      its state (``"master_param"``, made from the parameter at its first step),
      update that copy, and write it back into the parameter rounded to nearest even,
      in the same pass. State then defaults to float32. Adam with bf16 gradients
      moves 28 bytes per element (20 with ``state_dtype="bfloat16"``).

    Parameters are NumPy arrays, or CUDA arrays (anything with
    ``__cuda_array_interface__``: Numba device arrays, CuPy arrays, PyTorch CUDA
    tensors, given as ``tensor.detach()``), all on one device; state is allocated
    next to them.
    """

    _algorithm: Any = None  # its fusedopt.algorithms.Algorithm
    _group: Any = None  # the namedtuple of a checked group
    _kernel: str = ""  # its backend contract function (the rule's name)
    _state_names: tuple[str, ...] = ()  # every array name the algorithm may keep

    def __init__(self, params: ParamsT, defaults: dict[str, Any], backend: str = "auto",
                 nonfinite: str = "propagate", max_grad_norm: float | None = None,
                 stream: Any = None, state_dtype: str | None = None, seed: int = 0,
                 master_weights: bool = False):
        self._check_group(defaults, "")
        # one step at a time: a second thread's step waits for the first (state is
        # allocated once, and the two updates apply one after the other)
        self._lock = threading.Lock()
        self.nonfinite = nonfinite
        self.max_grad_norm = max_grad_norm
        #: steps skipped by nonfinite="skip", and whether the last one was
        self.skipped_steps, self.last_step_skipped = 0, False
        self.defaults = defaults
        self.param_groups: list[dict[str, Any]] = []
        self.state: dict[int, dict[str, Any]] = {}
        self._params: list[Any] = []
        self._flat: list[Any] = []  # flat views (NumPy) or flat device arrays (CUDA)
        self._shapes: list[tuple[int, ...]] = []
        # per group, the parameter objects add_param_group took: a step refuses
        # param_groups whose lists were edited since (see _check_live)
        self._registered: list[tuple[Any, ...]] = []
        #: "cpu" or "cuda", from the first parameter; every other array must match
        self.device: str | None = None
        self._space: Any = None  # _checks (host arrays) or _device (CUDA arrays)
        #: set when every parameter is a view of this FlatParams (see _setup_flat)
        self.flat_params: FlatParams | None = None
        if isinstance(params, FlatParams):
            params = [{"params": params.views}]
        if isinstance(params, np.ndarray) or isinstance(params, Mapping):
            raise TypeError("params: expected a list of arrays or of param-group dicts, "
                            f"got a single {type(params).__name__}; wrap it in a list")
        groups = list(params)
        if not groups:
            raise ValueError("params: got an empty list; the optimizer has nothing to "
                             "update")
        if not isinstance(groups[0], Mapping):
            groups = [{"params": groups}]
        for group in groups:
            self.add_param_group(group)
        self.backend, self._impl = select(backend, self.device)
        if self._algorithm.kernel is _algorithms.MUON and self.device == "cuda":
            raise ValueError("params: CUDA arrays; Muon's Newton-Schulz iteration needs "
                             "the device's matrix products, which fusedopt takes from "
                             "torch: step CUDA tensors with fusedopt.torch.Muon")
        if stream is not None and self.device != "cuda":
            raise ValueError("stream: only CUDA arrays run on a stream; these parameters "
                             "are host arrays")
        #: CUDA mode: the stream the step's kernels are launched on (None: default)
        self.stream = stream
        #: keep float32 master copies of bfloat16 parameters (see master_weights)
        self._master_weights = _checks.flag(master_weights, "master_weights")
        self._state_dtype, self.seed = self._check_lowbit(state_dtype, seed)
        self._kinds: list[tuple[np.dtype, bool]] = []  # see _tensor_kinds
        self._hyper_memo: list = []  # see _hypers
        self._sizes_memo: tuple | None = None  # see _group_sizes
        self._setup_flat()

    @property
    def nonfinite(self) -> str:
        """What a step does when a gradient holds NaN or inf (see ``NONFINITE``);
        checked when set."""
        return self._nonfinite

    @nonfinite.setter
    def nonfinite(self, value: str) -> None:
        if not (isinstance(value, str) and value in NONFINITE):
            raise ValueError(f"nonfinite: expected one of {list(NONFINITE)}, got "
                             f"{value!r}")
        self._nonfinite = value

    @property
    def max_grad_norm(self) -> float | None:
        """Clip the global L2 norm of each step's gradients to this (torch's
        ``clip_grad_norm_``), or None; checked when set (a positive finite number)."""
        return self._max_grad_norm

    @max_grad_norm.setter
    def max_grad_norm(self, value: float | None) -> None:
        self._max_grad_norm = (None if value is None else _checks.number(
            value, "max_grad_norm", low=1e-300))

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]  # a lock does not pickle; each copy gets its own
        del state["_impl"], state["_space"]  # modules do not pickle: both are
        # chosen again from backend and device
        state["_hyper_memo"] = []  # each copy checks its groups afresh
        state["_sizes_memo"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self.__dict__.setdefault("_hyper_memo", [])
        self.__dict__.setdefault("_sizes_memo", None)
        self._lock = threading.Lock()
        self._space = _device if self.device == "cuda" else _checks
        self._impl = select(self.backend, self.device)[1]

    def add_param_group(self, param_group: Mapping[str, Any]) -> None:
        """Append a group; missing hyperparameters take the constructor's defaults."""
        k = len(self.param_groups)
        if self.flat_params is not None:
            raise ValueError("add_param_group: this optimizer steps a FlatParams segment "
                             "by segment, and a new group would not be one of them; "
                             "build one optimizer over all groups (or a FlatParams "
                             "holding every parameter)")
        if not isinstance(param_group, Mapping) or "params" not in param_group:
            raise TypeError(f"param_groups[{k}]: expected a dict with a 'params' list, "
                            f"got {type(param_group).__name__}")
        unknown = set(param_group) - set(self.defaults) - {"params"}
        if unknown:
            raise ValueError(f"param_groups[{k}]: unknown option(s) {sorted(unknown)}; "
                             f"expected some of {sorted(self.defaults)}")
        group = {**self.defaults, **param_group}
        params = group["params"]
        params = [params] if (isinstance(params, np.ndarray) or
                              _device.is_device_array(params)) else list(params)
        space, flats = self._space, []
        for j, p in enumerate(params):
            name = f"params[{len(self._params) + j}]"
            here = _device if _device.is_device_array(p) else _checks
            if space is None:
                space = here
            elif here is not space:
                raise ValueError(
                    f"{name}: a {'CUDA' if here is _device else 'host'} array, but "
                    f"params[0] is a {'CUDA' if space is _device else 'host'} array; one "
                    "optimizer updates arrays on one device")
            flats.append(space.param_array(p, name))
            if self._algorithm.check_param is not None:
                self._algorithm.check_param(p, ("params", len(self._params) + j))
            if any(p is q for q in self._params) or any(p is q for q in params[:j]):
                raise ValueError(f"{name}: the same array appears twice in the "
                                 "optimizer's parameters")
            if space is _device:
                first = params[0] if not self._params else self._params[0]
                _device.same_device(_device.info(p, name), _device.info(first, "params[0]"),
                                    name, "params[0]")
        self._check_group(group, k)
        arrays = self._flat + flats  # each parameter owns its elements
        names = lambda: [("params", i) for i in range(len(arrays))]  # noqa: E731
        if space is _device:
            _guard.check_spans([_device.span(a, "") for a in arrays], names)
        else:
            _guard.check_arrays(arrays, names)
        group["params"] = params
        self.param_groups.append(group)
        self._registered.append(tuple(params))
        self._space, self.device = space, "cuda" if space is _device else "cpu"
        self._params.extend(params)
        self._flat.extend(flats)
        self._shapes.extend(tuple(int(n) for n in p.shape) for p in params)

    def _check_live(self) -> None:
        """What a step will update is what the optimizer registered: ``param_groups``
        lists edited in place (a parameter appended or replaced) are refused, since
        their new arrays were never checked and have no state slot."""
        if type(self.state) is not dict and not isinstance(self.state, Mapping):
            raise TypeError(f"state: expected a dict {{param index: state}}, got "
                            f"{type(self.state).__name__}")
        if self.flat_params is not None and not isinstance(self.state, _FlatState):
            raise ValueError("state: a FlatParams optimizer keeps its state in flat "
                             "buffers and cannot adopt a replaced state; change it "
                             "with load_state_dict()")
        groups, registered = self.param_groups, self._registered
        if len(groups) != len(registered):
            raise ValueError(f"param_groups: {len(groups)} groups, but "
                             f"{len(registered)} were added; add groups with "
                             "add_param_group()")
        k = 0
        try:
            for k, params in enumerate(registered):
                live = groups[k]["params"]
                if len(live) != len(params) or any(map(operator.is_not, live, params)):
                    break
            else:
                return
        except (TypeError, KeyError, IndexError):
            pass
        raise ValueError(
            f"param_groups[{k}]['params']: changed since the group was added; "
            "parameters are added with add_param_group(), and an array is updated in "
            "place, never replaced")

    def step(self, grads: Sequence[np.ndarray] | None = None) -> None:
        """One update of every parameter, in place. ``grads`` holds one array per
        parameter, in the order the parameters were given (group by group), each of
        the parameter's shape and dtype; a FlatParams optimizer steps without it, from
        the FlatParams' gradient buffer. Everything is checked before the first write
        (every array the kernels will touch, read from the live ``param_groups`` and
        ``state``, and their overlap in memory) and first-step state is allocated
        before it too: on an exception nothing has changed. Non-finite gradients
        propagate, as in torch: a NaN or inf in ``grads[i][j]`` reaches
        ``params[i][j]`` and its state, and no other element. Steps from two threads
        run one after the other."""
        with self._lock:
            hypers = None
            if (type(self.state) is dict and self.flat_params is None
                    and grads is not None and _guard.same_groups is not None):
                # the common case in C: the groups as last checked, or None
                hypers = _guard.same_groups(self.param_groups, self._registered,
                                            self._hyper_memo)
            if hypers is None:
                self._check_live()
                if self.flat_params is not None:
                    return self._step_flat(grads)
                if grads is None:
                    raise TypeError("grads: expected a list of arrays, one per "
                                    "parameter (only an optimizer over a FlatParams "
                                    "steps without them)")
                hypers = self._hypers()
            common = None
            if (type(grads) is list and type(self.state) is dict
                    and self._space is _checks and _guard.common_plan is not None
                    and not self._algorithm.scalar_state
                    and not self._algorithm.kernel.host):  # (Muon: shapes, not here)
                common = _guard.common_plan(
                    self._flat, self._params, grads, self.state, self._tensor_kinds(),
                    self._group_sizes(hypers), _checks.MAX_STEP)
            if common is not None:  # the common case, checked in one C call
                flat_grads, plans = common
            else:
                flat_grads = self._check_grads(grads)
                plans = self._plan(flat_grads, [h for h, _ in hypers])
            if common is not None:  # (host arrays: no stream to launch on)
                scale = self._grad_scale(flat_grads, _grads_name)
                if scale is not None:
                    self._run(plans, flat_grads, scale, checked=True)
                return
            with self._on_stream():
                scale = self._grad_scale(flat_grads, _grads_name)
                if scale is not None:
                    self._run(plans, flat_grads, scale)

    def _group_sizes(self, hypers: list) -> list[tuple]:
        """``common_plan``'s groups: per group, its number of parameters (the live
        lists are the registered ones: ``_check_live``), checked hyperparameters and
        state names; the last list again while ``hypers`` holds the very checks it
        was made from (``checked_groups`` reuses them)."""
        last = self._sizes_memo
        if (last is None or len(last[0]) != len(hypers)
                or any(map(operator.is_not, hypers, last[0]))):
            last = self._sizes_memo = (hypers, [
                (len(params), h, names)
                for params, (h, names) in zip(self._registered, hypers)])
        return last[1]

    def _hypers(self) -> list[tuple[tuple, tuple[str, ...]]]:
        """Per group, its checked hyperparameters and the names of the state arrays
        they need (``checked_groups``)."""
        return checked_groups(self.param_groups, self._hyper_memo, self._check_group,
                              self._state_spec)

    def _on_stream(self):
        """CUDA mode: launch on ``self.stream`` inside."""
        if self.device == "cuda":
            return self._impl.on_stream(self.stream)
        return _HOST

    def _plan(self, flat_grads, hypers) -> list[tuple]:
        """Per tensor, its kernel call's arguments ``(hyper, p, out, work, new,
        fresh)``: ``work`` holds the flat views of its live state (checked) and
        ``new`` the first-step state allocated here, committed to ``state`` only
        when every check has passed. Then the overlap of everything touched:
        parameters, state, gradients, in that order (an error names the later)."""
        plans, i, plan_tensor, kinds = [], 0, self._plan_tensor, self._tensor_kinds()
        arrays, names = list(self._flat), []  # names: of the state arrays
        for group, hyper in zip(self.param_groups, hypers):
            spec = self._state_spec(hyper)
            for _ in group["params"]:
                plans.append(plan_tensor(i, hyper, spec, kinds[i], arrays, names))
                i += 1
        arrays += flat_grads

        def all_names():
            return ([("params", i) for i in range(len(self._flat))] + names
                    + [("grads", i) for i in range(len(flat_grads))])

        if self._space is _device:
            _guard.check_spans([_device.span(a, "") for a in arrays], all_names)
        else:
            _guard.check_arrays(arrays, all_names)
        return plans

    def _plan_tensor(self, i: int, hyper, spec, kind, arrays: list, names: list
                     ) -> tuple:
        """One tensor's plan; its state arrays are appended to ``arrays`` (their
        names, ``("state", i, name)``, to ``names``)."""
        flat = self._flat[i]
        if self._space is _checks and not self._params[i].flags.writeable:  # since
            raise ValueError(f"params[{i}]: the array is read-only; an optimizer "
                             "updates its parameters in place")
        live = self.state.get(i)
        if live is None:
            live = {}
        elif type(live) is not dict and not isinstance(live, MutableMapping):
            raise TypeError(f"state[{i}]: expected a dict of state, got "
                            f"{type(live).__name__}")
        step = live.get("step")
        if type(step) is int and 0 <= step <= _checks.MAX_STEP:
            pass  # as the step left it
        elif step is not None:
            step = _checks.state_step(step, ("state", i, "step"))
        elif any(v is not None for v in live.values()):
            raise ValueError(f"state[{i}]: holds state arrays but no 'step'; set "
                             f"state[{i}] = {{}} to start this parameter afresh")
        else:
            step = 0
        space, work, new, fresh = self._space, {"step": step}, {}, False
        if self._algorithm.kernel.host:  # (its host stage needs the shape)
            work["shape"] = self._shapes[i]
        if self._algorithm.scalar_state:
            work.update(self._plan_scalars(live, step, hyper, f"state[{i}]"))
        dtype, mastered = kind
        p, out, size = flat, None, flat.size
        if mastered:
            master = live.get(MASTER)
            if master is None:
                master = new[MASTER] = self._master_copy(flat)
            else:
                master = space.state_array(master, size, np.dtype(np.float32),
                                           ("state", i, MASTER))
            work[MASTER], p, out = master, master, flat
            arrays.append(master)
            names.append(("state", i, MASTER))
        shaped = self._algorithm.state_shape is not None  # (Adafactor's factors)
        for name, init in spec:
            if shaped:
                shape = self._algorithm.state_shape(name, self._shapes[i])
                if shape is None:
                    continue
                size = math.prod(shape)
            a = live.get(name)
            if (type(a) is np.ndarray and space is _checks and a.dtype is dtype
                    and a.size == size and a.ndim == 1 and a.flags.carray):
                pass  # as the step left it: _checks.state_array's common case, inline
            elif a is None:
                a = new[name] = self._new_state(flat, init, size if shaped else None)
                fresh = True
            else:
                a = space.state_array(a, size, dtype, ("state", i, name))
            work[name] = a
            arrays.append(a)
            names.append(("state", i, name))
        return hyper, p, out, work, new, fresh

    @classmethod
    def _plan_scalars(cls, live, step: int, hyper, where: str,
                      kinds: tuple = scalars.FLOAT32_KINDS) -> dict[str, float]:
        """The algorithm's scalar state (``Algorithm.scalar_state``) as ``live`` holds
        it, checked and rounded as it is stored (``kinds``, see
        ``fusedopt.scalars``); its first values where ``live`` holds none and has not
        stepped. Its values after the step are computed here too, once, so that
        what they would raise (NAdam's product rounding to 1) is raised before any
        write. ``where`` names ``live`` in errors (``state[3]``)."""
        algo = cls._algorithm
        names = algo.scalar_state
        values = [live.get(name) for name in names]
        if step == 0 and all(v is None for v in values):
            values = algo.scalar_init(hyper, kinds)
        else:
            for name, v in zip(names, values):
                if v is None:
                    raise ValueError(
                        f"{where}: holds 'step' {step} but no {name!r} (its "
                        f"{algo.title} state: {list(names)}); set it to {{}} to start "
                        "this parameter afresh")
            values = [float(kinds[0](_checks.state_scalar(v, (where, name))))
                      for name, v in zip(names, values)]
        algo.scalar_next(hyper, step + 1, tuple(values), kinds)
        return dict(zip(names, values))

    def _run(self, plans, flat_grads, scale: float, checked: bool = False) -> None:
        """The kernel calls of a checked plan; first-step state joins ``state``.
        On the compiled host backends and on CUDA, one multi-tensor call
        (``impl.multi``) per group, dtype and step over all its arrays; else (and
        for master copies, or fewer than ``_MULTI_MIN`` arrays, where building the
        table costs more than it saves) one call per array. ``checked``: ``plans``
        is ``common_plan``'s (host arrays, state as the last step left it)."""
        impl, state = self._impl, self.state
        multi = (getattr(impl, "multi", None) if len(plans) >= _MULTI_MIN
                 and _guard.plan_table is not None
                 and self._kernel not in _algorithms.PER_TENSOR
                 else None)  # (LAMB's reduction, Muon's host stage: tensor by tensor)
        if checked and multi is None:
            return self._run_checked(plans, flat_grads, scale)
        buckets: dict[tuple, list[int]] = {}
        names = self._algorithm.scalar_state
        if multi is None and self._algorithm.kernel.host:  # (Muon's scratch, before
            self._reserve(impl, [(work, work["shape"], p)   # the first write)
                                 for _, p, _, work, _, _ in plans])
        for i, (hyper, p, out, work, new, fresh) in enumerate(plans):
            live = state.get(i)
            if live is None:
                live = state[i] = {}
            if multi is not None and out is None:
                if new:
                    live.update(new)
                key = (id(hyper), p.dtype, work["step"], fresh)
                if names:  # (scalar state: its values too)
                    key += tuple(work[name] for name in names)
                bucket = buckets.get(key)
                if bucket is None:
                    bucket = buckets[key] = []
                bucket.append(i)
                continue
            self._update(impl, p, flat_grads[i], work, hyper, fresh, scale,
                         self._seed(p, work, i), out)
            # new state joins after its step: a step that raises part-way (Muon's
            # host stage out of memory) leaves each tensor's state whole, stepped or not
            if new:
                live.update(new)
            live["step"] = work["step"]
            for name in names:
                live[name] = work[name]
        for (_, _, step, fresh, *_), members in buckets.items():
            self._run_multi(plans, flat_grads, members, step, fresh, scale)

    def _run_checked(self, plans, flat_grads, scale: float) -> None:
        """``_run``'s per-array calls for a plan of ``common_plan`` (what a small
        step takes, ~1 us less than through ``_update``): its arrays have state as
        the last step left it (none to allocate), no master copy or bf16 view, and
        its algorithm no scalar state nor host stage; so each is one contract call
        and its count."""
        call, run = self._algorithm.call, getattr(self._impl, self._kernel)
        state = self.state
        for i, (hyper, p, _, work, _, _) in enumerate(plans):
            step = work["step"] + 1
            call(run, p, flat_grads[i], work, hyper, step, False,
                 -scale if getattr(hyper, "maximize", False) else scale, 0, None)
            state[i]["step"] = work["step"] = step

    @classmethod
    def _reserve(cls, impl, tensors: list[tuple], made: dict | None = None) -> None:
        """Each ``(work, shape, p)`` of ``tensors`` (a call's state and arguments)
        gets ``work["workspace"]``, the scratch arrays its call uses (``workspaces``:
        Muon's), where its kernel needs them; else nothing. ``made``: the workspaces
        reserved for the whole step (``_step_workspaces``), else made here."""
        run = getattr(impl, cls._kernel)
        if getattr(run, "workspace", None) is None:
            return
        first = cls._algorithm.kernel.slots[0]  # (the state array the scratch mirrors)
        key = [(p.dtype, work[first].dtype) for work, _, p in tensors]
        if made is None:
            made = workspaces(run, [(shape, *k) for (_, shape, _), k in zip(tensors,
                                                                              key)])
        for (work, _, _), k in zip(tensors, key):
            work["workspace"] = made[k]

    @classmethod
    def _step_workspaces(cls, impl, segments: list[dict], state_dtype) -> dict | None:
        """The scratch arrays (``workspaces``) of every tensor of every segment of a
        flat step, made before its first write; ``state_dtype(name, dtype)``: the
        kernels' dtype of the state ``name`` of a segment of ``dtype``. None for a
        kernel that needs none."""
        run = getattr(impl, cls._kernel)
        if getattr(run, "workspace", None) is None:
            return None
        first = cls._algorithm.kernel.slots[0]
        return workspaces(run, [(t[2], seg["dtype"], state_dtype(first, seg["dtype"]))
                                for seg in segments for t in seg["tensors"]])

    def _run_multi(self, plans, flat_grads, members: list[int], step: int,
                   fresh: bool, scale: float) -> None:
        """One multi-tensor call over the arrays ``members`` of ``plans`` (one
        group, dtype and step)."""
        hyper, p0, _, work0, _, _ = plans[members[0]]
        slots = self._algorithm.kernel.slots
        flags, present, h, grad_scale = self._arguments(work0, hyper, step + 1, fresh,
                                                        scale)
        columns = [name for name, on in zip(slots, present) if on]
        if self._space is _checks:  # (the addresses of host arrays, read in C)
            table, counts = _guard.plan_table(
                plans, flat_grads, members, tuple(columns),
                tuple(2 + slots.index(name) for name in columns), policy.TABLE_COLUMNS)
        else:
            arrays = []
            for i in members:
                work = plans[i][3]
                arrays += (plans[i][1], flat_grads[i], *(work[name] for name in columns))
            found = np.array([_device.info(a, "array").ptr for a in arrays], np.int64
                             ).reshape(len(members), 2 + len(columns))
            table = np.zeros((len(members), policy.TABLE_COLUMNS), np.int64)
            table[:, :2] = found[:, :2]
            for c, name in enumerate(columns):
                table[:, 2 + slots.index(name)] = found[:, 2 + c]
            counts = np.array([plans[i][1].size for i in members], np.int64)
        seeds = (np.array([self._seed(plans[i][1], plans[i][3], i) for i in members],
                          np.int64) if p0.dtype is BITS  # (bf16: stochastic rounding)
                 else np.zeros(len(members), np.int64))
        sdtype = work0[columns[0]].dtype if columns else p0.dtype
        self._impl.multi(self._kernel, flags, present, h, (p0.dtype, p0.dtype, sdtype),
                         table, counts, seeds, grad_scale,
                         int(counts.sum()) >= policy.PARALLEL_MIN_SIZE)
        state, algo = self.state, self._algorithm
        after = {}
        if algo.scalar_state:
            after = dict(zip(algo.scalar_state, algo.scalar_next(
                hyper, step + 1, tuple(work0[name] for name in algo.scalar_state),
                scalars.FLOAT32_KINDS)))
        for i in members:
            plans[i][3]["step"] = state[i]["step"] = step + 1
            if after:
                plans[i][3].update(after)
                state[i].update(after)

    def _grad_scale(self, grads: list[np.ndarray], name) -> float | None:
        """The factor every gradient is multiplied by this step (clipping), or None
        to skip the step. One read of each gradient (``grad_stats``), and only with a
        policy other than "propagate" or with max_grad_norm."""
        self.last_step_skipped = False
        if self._nonfinite == "propagate" and self._max_grad_norm is None:
            return 1.0
        sumsq = 0.0
        for i, g in enumerate(grads):
            s, bad = self._impl.grad_stats(g, g.size >= policy.PARALLEL_MIN_SIZE)
            if bad and self.nonfinite == "raise":
                raise FloatingPointError(
                    f"{name(i)}: {bad} non-finite values (NaN or inf); nonfinite='raise' "
                    "refused the step before any write")
            if bad and self.nonfinite == "skip":
                self.skipped_steps += 1
                self.last_step_skipped = True
                return None
            sumsq += s
        if self.max_grad_norm is None:
            return 1.0
        # torch's clip_grad_norm_: max_norm / (total + 1e-6), clamped at 1; a
        # non-finite total (nonfinite="propagate") makes every update NaN, as there.
        coef = self.max_grad_norm / (math.sqrt(sumsq) + 1e-6)
        return coef if (coef < 1.0 or coef != coef) else 1.0

    def _check_grads(self, grads) -> list[np.ndarray]:
        """Each gradient matches its parameter (shape, dtype, layout); overlaps are
        checked with everything else the step touches (``_plan``)."""
        if not isinstance(grads, (list, tuple)) and (
                isinstance(grads, np.ndarray) or not isinstance(grads, Sequence)):
            raise TypeError("grads: expected a list of arrays, one per parameter, got "
                            f"{type(grads).__name__}")
        if len(grads) != len(self._params):
            raise ValueError(f"grads: expected {len(self._params)} arrays (one per "
                             f"parameter), got {len(grads)}")
        like = _device.like_param if self._space is _device else _checks.like_param
        return [like(g, p, ("grads", i), ("params", i))
                for i, (g, p) in enumerate(zip(grads, self._params))]


    # -- hooks --------------------------------------------------------------------

    # The hooks take no instance: the PyTorch adapter (fusedopt.torch) runs the same
    # algorithm definitions on NumPy views of tensors.

    @classmethod
    def _check_group(cls, group: Mapping[str, Any], where: int | str) -> tuple:
        algo = cls._algorithm
        hyper = cls._group(*[h.check(group[h.name], (where, h.name))
                             for h in algo.params])
        if algo.validate is not None:
            algo.validate(hyper, where)
        return hyper

    @classmethod
    def _state_spec(cls, hyper: tuple) -> tuple[tuple[str, float], ...]:
        return cls._algorithm.state(hyper)

    @classmethod
    def _update(cls, impl, p: np.ndarray, g: np.ndarray, state: dict, hyper: tuple,
                fresh: bool, scale: float = 1.0, seed: int = 0, out=None,
                tensors: list[tuple[int, int]] | None = None,
                made: dict | None = None, stage: list | None = None) -> None:
        """One backend call; ``scale`` multiplies the gradient (gradient clipping),
        ``seed`` drives stochastic rounding into bf16 parameters, ``out`` (master
        weights) is the bf16 parameter whose float32 master copy ``p`` is.
        ``tensors``: where ``p`` is a flat segment, the ``(lo, hi, shape)`` of each
        tensor in it (its elements ``[lo, hi)``); an algorithm that steps tensor by
        tensor (``algorithms.PER_TENSOR``: LAMB's norms, Muon's host stage) then
        makes one call per tensor, over its slices of ``p``, ``g`` and the state
        (where the state has other shapes, Adafactor's, a fourth item maps each state
        name to the tensor's ``(lo, hi)`` in it, None where it keeps none); ``made``:
        the step's scratch arrays, reserved for every segment (``_step_workspaces``);
        ``stage``: the step's list of writes, where the caller runs every segment's
        reads first (``Algorithm.staged``): this segment's writes and then its count
        are appended to it instead of being made."""
        step = state["step"] + 1
        algo = cls._algorithm
        run = getattr(impl, cls._kernel)
        if getattr(hyper, "maximize", False):  # (Muon has no maximize)
            scale = -scale
        if tensors is None or cls._kernel not in _algorithms.PER_TENSOR:
            algo.call(run, p, g, state, hyper, step, fresh, scale, seed, out)
        else:  # a segment: everything allocated before the first tensor's writes
            parts = []
            for lo, hi, shape, *ranges in tensors:
                part = {}
                for k, v in state.items():
                    if not (hasattr(v, "shape") and v.shape):
                        part[k] = v
                    elif not ranges or k not in ranges[0]:
                        part[k] = v[lo:hi]
                    elif (r := ranges[0][k]) is not None:
                        part[k] = v[r[0]:r[1]]
                part["shape"] = shape
                parts.append((lo, hi, part))
            cls._reserve(impl, [(part, part["shape"], p) for _, _, part in parts], made)
            staged = None
            if algo.staged:
                staged = [] if stage is None else stage
            for lo, hi, part in parts:
                part["stage"] = staged
                algo.call(run, p[lo:hi], g[lo:hi], part, hyper, step, fresh, scale,
                          scalars.rounding_seed(seed, step, lo) if seed else 0,
                          None if out is None else out[lo:hi])
            if algo.staged and stage is not None:  # the caller runs the step's writes
                stage.append(lambda: cls._count(state, hyper, step))
                return
            for commit in staged or ():  # the writes, once every tensor's reads ran
                commit()
        cls._count(state, hyper, step)

    @classmethod
    def _count(cls, state: dict, hyper: tuple, step: int) -> None:
        """``state`` after a step's writes: its count, and its scalar state."""
        state["step"] = step
        algo = cls._algorithm
        if algo.scalar_state:
            state.update(zip(algo.scalar_state, algo.scalar_next(
                hyper, step, tuple(state[name] for name in algo.scalar_state),
                state.get("scalar_kinds", scalars.FLOAT32_KINDS))))

    @classmethod
    def _arguments(cls, names: dict, hyper: tuple, step: int, fresh: bool,
                   scale: float = 1.0) -> tuple:
        """What ``_update`` would pass the kernel at ``step`` (the new count) for a
        state holding ``names``: ``(flags, present slots, host scalars, grad_scale)``,
        for one multi-tensor call (``impl.multi``) over tensors in that state."""
        return cls._algorithm.call(_algorithms.ARGUMENTS[cls._kernel], None, None, names,
                                   hyper, step, fresh,
                                   -scale if getattr(hyper, "maximize", False) else scale,
                                   0, None)

    def __repr__(self) -> str:
        mode = (f", flat: {len(self._segments)} segments" if self.flat_params is not None
                else "")
        groups = "".join(
            f"\n  group {k}: {len(g['params'])} params, "
            + ", ".join(f"{key}={g[key]!r}" for key in self.defaults)
            for k, g in enumerate(self.param_groups))
        return f"{type(self).__name__}(backend={self.backend!r}{mode}){groups}"


#: the fewest arrays a step runs as multi-tensor calls (each call costs ~8 us to set up,
#: each per-array call ~2.5 us)
_MULTI_MIN = 4
_HOST = contextlib.nullcontext()  # (reusable: it holds nothing)


def _grads_name(i: int) -> str:
    return f"grads[{i}]"


def workspaces(run, needs: list[tuple]) -> dict[tuple, Any]:
    """The scratch arrays of a step whose host stage needs them (Muon's, made by
    ``run.workspace``: see ``algorithms.muon_contract``), for ``needs``: ``(shape,
    dtype, state dtype)`` per tensor. One workspace per pair of dtypes, for the
    largest of its tensors, by that pair; made here, before the step's first write,
    so that running out of memory cannot stop a step half-way. Empty for a kernel
    that needs none."""
    make = getattr(run, "workspace", None)
    if make is None or not needs:
        return {}
    shapes: dict[tuple, list] = {}
    for shape, dtype, state_dtype in needs:
        shapes.setdefault((np.dtype(dtype), np.dtype(state_dtype)), []).append(shape)
    return {key: make(s, *key) for key, s in shapes.items()}


def checked_groups(groups: list, memo: list, check, state_spec) -> list[tuple]:
    """Per group, ``(check(group, k), names of the state arrays it needs)``. Groups
    are read on every step (a value may have changed since the last); one that holds
    the very objects of the group last checked, under the same keys, all of them
    immutable (numbers, bools, strings, None, tuples of numbers), reuses that check's
    result (~0.3 us instead of ~1-4 us); ``memo`` keeps them between steps."""
    if len(memo) != len(groups):
        memo[:] = [None] * len(groups)
    out = []
    for k, group in enumerate(groups):
        last = memo[k]
        if (last is not None and len(group) == len(last[1])
                and all(map(operator.is_, group.values(), last[1]))
                and group == last[0]):  # the same keys (values: identical)
            out.append(last[2])
            continue
        hyper = check(group, k)
        checked = hyper, tuple(name for name, _ in state_spec(hyper))
        memo[k] = ((dict(group), list(group.values()), checked) if _immutable(group)
                   else None)
        out.append(checked)
    return out


def _immutable(group: Mapping[str, Any]) -> bool:
    """Whether every hyperparameter of ``group`` is immutable, so that a group equal
    to a snapshot of it still holds the same values (see ``Optimizer._hypers``)."""
    for key, v in group.items():
        if key == "params" or type(v) in _SCALARS or isinstance(v, np.generic):
            continue
        if type(v) is tuple and all(type(x) in _SCALARS or isinstance(x, np.generic)
                                    for x in v):
            continue
        return False
    return True


_SCALARS = (float, int, bool, str, type(None))
