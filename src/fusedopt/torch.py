"""fusedopt.torch: drop-in replacements for torch.optim running fusedopt's fused kernels.

    - from torch.optim import AdamW
    + from fusedopt.torch import AdamW

Same constructor arguments and defaults as the torch twins plus ``backend=`` and
``flatten=``; subclasses of ``torch.optim.Optimizer``, so ``zero_grad``, param groups,
``state_dict`` / ``load_state_dict``, learning-rate schedulers, ``GradScaler``,
``clip_grad_norm_``, DDP and ``ZeroRedundancyOptimizer`` work as with torch. The state
has torch's keys and types (``step`` a float32 tensor, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``, ``momentum_buffer``, ``sum``, ``square_avg``, ``grad_avg``,
``exp_inf``, ``acc_delta``, ``prev``, ``step_size``, ``ax``, Adafactor's ``row_var``,
``col_var`` and ``variance`` in torch's shapes; NAdam's ``mu_product`` and ASGD's
``eta`` and ``mu`` as 0-d tensors), so a checkpoint moves between
``fusedopt.torch.X`` and ``torch.optim.X`` both ways. ``from fusedopt.torch import
LBFGS`` (or another optimizer fusedopt lacks) raises an ImportError saying what to
use instead.

CPU tensors are updated zero-copy through NumPy views, by the algorithm definitions
of ``fusedopt.optim`` (no second copy of any update rule). CUDA tensors go to the
``cuda`` backend (picked from the parameters' device; one optimizer steps one
device): one launch per group and dtype over a table of the tensors' device
addresses (an algorithm that steps tensor by tensor, LAMB, Adafactor or Muon: each
tensor wrapped once as a Numba device array through ``__cuda_array_interface__``;
Muon's Newton-Schulz products by torch on the device), on torch's current stream,
with the step count on the host as torch keeps it; state lives beside the
parameters, with torch's keys. ``torch.bfloat16``
parameters (numba and cython backends) keep bf16 state, as torch does, but the math
runs in float32 and the parameters are stored with stochastic rounding, drawn from
``seed=`` (default 0), the step and the parameter's position: reproducible whatever
the thread count. On the GPU they are stepped as float16 ones: through float32
working copies, rounded back to nearest (torch's fused numerics).
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import functools
import inspect
import math
import operator
import sys
import threading
from typing import Any, Callable, MutableMapping

import numpy as np
import torch
from torch.optim import optimizer as _torch_optimizer

from . import _checks, _device, _guard, _torch_ext
from . import algorithms as _algorithms
from . import flat as _flat
from . import newton_schulz as _newton_schulz
from . import optim as _optim
from .optim import base as _optim_base
from .optim.flatmode import segment_slots, state_layout
from . import scalars
from .backends import policy, select

_FLOAT_DTYPES = (torch.float32, torch.float64)
#: complex parameters are stepped as their real views (as torch steps them)
_COMPLEX = {torch.complex64: torch.float32, torch.complex128: torch.float64}
_STEP_DTYPES = (torch.float32, torch.float64, torch.int64)  # hold any count + 1
#: the kernels' storage kinds (``_kernels``), per parameter dtype; their itemsizes
#: and the NumPy dtypes the kernels take (parameter, gradient, state)
_KINDS = {torch.float32: 0, torch.float64: 1, torch.bfloat16: 2}
_ITEMSIZE = (4, 8, 2)
_KIND_DTYPES = tuple((np.dtype(d),) * 3 for d in (np.float32, np.float64, np.uint16))
_TYPES = (torch.Tensor, torch.nn.Parameter)
_STATE_TYPES = (dict, collections.defaultdict)  # what torch.optim keeps


class _AllSlots(dict):
    """Per tuple of slot names, a dict holding each: what ``Optimizer._arguments``
    reads the kernel's slots from (made once)."""

    def __missing__(self, slots):
        value = self[slots] = dict.fromkeys(slots, True)
        return value


_ALL_SLOTS = _AllSlots()


def _np(t: torch.Tensor) -> np.ndarray:
    """A flat NumPy view of a contiguous CPU tensor (shares its memory); bf16 as the
    uint16 view of its bits, as the kernels take it."""
    if t.dtype == torch.bfloat16:
        return t.detach().view(torch.int16).numpy().view(np.uint16).reshape(-1)
    if t.is_complex():
        return torch.view_as_real(t.detach()).numpy().reshape(-1)
    return t.detach().numpy().reshape(-1)


def _cuda_view(t: torch.Tensor):
    """The flat Numba device array over a contiguous CUDA tensor's memory (no copy;
    complex as its real view, a DTensor as its local shard). Under Numba's CUDA
    simulator, where device memory is host memory, over a CPU tensor's: what the
    ``cuda`` backend's tests step."""
    if _device.simulated():
        return _device.simulated_view(_np(t))
    t = _local(t).detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    return _device.wrap(t, _device.info(t, "tensor"))


def _device_of(groups: list, backend: str) -> torch.device | None:
    """The CUDA device the optimizer steps on: that of its parameters, which must
    all be on it; None for CPU tensors (and for other devices, refused by name at
    the step). Under Numba's CUDA simulator ``backend="cuda"`` steps CPU tensors as
    device memory (the CPU device is returned)."""
    devices = {p.device for group in groups for p in group["params"]}
    cuda = sorted(str(d) for d in devices if d.type == "cuda")
    if cuda and _device.simulated():
        raise ValueError(f"params: on {cuda[0]}, but Numba's CUDA simulator is on "
                         "(NUMBA_ENABLE_CUDASIM=1), whose device memory is host "
                         "memory; unset it to step CUDA tensors")
    if cuda and len(devices) > 1:
        raise ValueError(f"params: on {', '.join(sorted(map(str, devices)))}; one "
                         "fusedopt.torch optimizer steps the tensors of one CUDA "
                         "device (build one optimizer per device)")
    if cuda:
        return devices.pop()
    if backend == "cuda" and _device.simulated():
        return torch.device("cpu")
    return None


class _TorchNewtonSchulz(_newton_schulz.Workspace):
    """torch.optim.Muon's own Newton-Schulz iteration (in bfloat16), in the place of
    ``fusedopt.newton_schulz.Workspace``'s: what makes ``fusedopt.torch.Muon`` match
    torch's. The result comes back in the parameter's dtype (exactly: bfloat16
    values are float32 and float64 values); the iteration's own arrays are torch's,
    allocated as torch.optim.Muon allocates them (only U and the buffer are here)."""

    _ROWS = 1

    def orthogonalise(self, u: np.ndarray, a: float, b: float, c: float, eps: float,
                      steps: int) -> np.ndarray:
        from torch.optim._muon import _zeropower_via_newtonschulz

        o = _zeropower_via_newtonschulz(torch.from_numpy(u), (a, b, c), steps, eps)
        return o.to(torch.from_numpy(u).dtype).reshape(-1).numpy()


class _TorchDeviceNewtonSchulz:
    """``_TorchNewtonSchulz`` on CUDA tensors (the ``cuda`` backend): the workspace
    (``newton_schulz.Workspace``'s contract) is torch tensors on the current device,
    allocated at once for the largest matrix before the step's first write, seen by
    the kernels as device arrays; torch's iteration runs its matrix products on the
    device, on torch's current stream, where the kernels launch too (no
    synchronisation), and allocates as torch.optim.Muon does. Under Numba's CUDA
    simulator the device is the CPU."""

    def __init__(self, shapes, dtype, state_dtype=None) -> None:
        size = max((r * c for r, c in shapes), default=1) or 1  # (no null pointers)
        device = (torch.device("cpu") if _device.simulated()
                  else torch.device("cuda", torch.cuda.current_device()))
        dtype = _TORCH_OF[np.dtype(dtype)]
        state = dtype if state_dtype is None else _TORCH_OF[np.dtype(state_dtype)]
        self._u, self._out = (torch.empty(size, dtype=dtype, device=device)
                              for _ in range(2))
        self._buffer = torch.empty(size, dtype=state, device=device)
        self._views = [_cuda_view(t) for t in (self._u, self._buffer, self._out)]

    def buffers(self, size: int) -> tuple:
        """``(U, B)``: device arrays of ``size`` elements for the update (zeroed) and
        the new momentum buffer."""
        self._u[:size].zero_()
        return self._views[0][:size], self._views[1][:size]

    @staticmethod
    def copy(dst, src) -> None:
        """``dst[...] = src`` on the device (flat device arrays of one size)."""
        _impl_cuda().copy(dst, src)

    def orthogonalise(self, u, a: float, b: float, c: float, eps: float, steps: int):
        """The orthogonalised ``u`` (``buffers``' U, seen as ``rows x cols``), as a flat
        device array (the workspace's: valid until its next use)."""
        from torch.optim._muon import _zeropower_via_newtonschulz

        rows, cols = u.shape
        n = rows * cols
        o = _zeropower_via_newtonschulz(self._u[:n].view(rows, cols), (a, b, c), steps,
                                        eps)
        self._out[:n].view(rows, cols).copy_(o)
        return self._views[2][:n]


def _impl_cuda():
    from .backends import numba_cuda

    return numba_cuda


_TORCH_OF = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


class _TorchMuon:
    """A backend whose ``muon`` runs torch's Newton-Schulz (``_TorchNewtonSchulz``,
    on CUDA tensors ``_TorchDeviceNewtonSchulz``) between the backend's own SGD
    passes; everything else is the backend's."""

    def __init__(self, impl, device: bool = False) -> None:
        self._backend = impl
        # (the numpy reference backend has its own Muon, with its own iteration)
        self.muon = (_algorithms.muon_contract(
            *impl.MUON_PASSES, _TorchDeviceNewtonSchulz if device else _TorchNewtonSchulz)
            if hasattr(impl, "MUON_PASSES") else impl.muon)

    def __getattr__(self, name: str):
        return getattr(self._backend, name)


class _Fused(torch.optim.Optimizer):
    _algorithm: type[_optim.Optimizer]
    _has_step = True  # torch's SGD keeps no step

    def __init__(self, params, defaults: dict[str, Any], backend: str,
                 flatten: bool, seed: int = 0) -> None:
        """An algorithm torch.optim lacks: fusedopt's own checks and defaults."""
        self._algorithm._check_group(defaults, "")
        self._flat = None
        torch.optim.Optimizer.__init__(self, params, defaults)
        self._start(backend, flatten, seed)

    def _start(self, backend: str, flatten: bool, seed: int) -> None:
        """After the constructor of the torch twin (or ``__init__``): fusedopt's
        checks of every group, the backend, the flat buffers, eager state."""
        seed = _checks.seed(seed, "seed")
        self._flat = None
        for k, group in enumerate(self.param_groups):
            self._hyper(group, k)
        self._hyper_memo: list = []  # see _hypers
        #: the CUDA device stepped (the ``cuda`` backend, on torch's current
        #: stream), None for CPU tensors
        self._device = _device_of(self.param_groups, backend)
        self.backend, self._impl = select(backend, "cpu" if self._device is None
                                          else "cuda")
        #: the stochastic-rounding seed of bf16 parameters
        self.seed = seed
        #: one kernel call per (group, dtype, step, scalar state) over all its tensors
        #: (not for a per-tensor reduction, LAMB's: it steps tensor by tensor)
        kernel = self._algorithm._algorithm.kernel
        self._multi = (hasattr(self._impl, "multi")
                       and kernel.name not in _algorithms.PER_TENSOR)
        #: parameter dtypes the multi-tensor plan steps through float32 working
        #: copies, rounded back to nearest (torch's fused math): float16, and on the
        #: GPU bfloat16 (the cuda backend has no bf16 parameter kernels)
        widened = (torch.float16,) + ((torch.bfloat16,) if self._device is not None
                                      else ())
        self._widened = widened if self._multi else ()
        self._dtypes = _FLOAT_DTYPES + tuple(_COMPLEX) + (
            (torch.bfloat16,) if "params" in getattr(self._impl, "BF16", ()) else ()) + (
            self._widened)
        if kernel.host:  # Muon, Adafactor: float32/float64 (host BLAS, host factors)
            self._dtypes, self._widened = _FLOAT_DTYPES, ()
        if kernel.name == "muon":  # torch's own Newton-Schulz
            self._impl = _TorchMuon(self._impl, device=self._device is not None)
        # NumPy views of parameters and state tensors: id -> (tensor, data_ptr, numel,
        # dtype, view). Building one costs ~2 us; each step reuses it only while the
        # live tensor still has that pointer, size and dtype, and keeps only the
        # entries it used (a replaced tensor is let go).
        self._views: dict[int, tuple] = {}
        self._plan_memo: list = []  # torch's guards for the C plan (tensor_plan)
        #: the multi-tensor plan's reads of CPU tensors in C++ (``_torch_ext``,
        #: built on first use), or None: the C plan through torch's Python API
        self._reader = (_torch_ext.plan() if self._multi and self._device is None
                        and not flatten else None)
        self._reader_memo: list = []  # the byte ranges its last sweep passed
        # one step (or load) at a time: a second thread's waits
        self._lock = threading.Lock()
        #: the algorithm's per-tensor scalar state (NAdam's mu_product), if any
        self._scalars = self._algorithm._algorithm.scalar_state
        self._flat = _FlatTorch(self) if flatten else None
        self._kinds = {dt: (_KINDS[dt], _ITEMSIZE[_KINDS[dt]]) for dt in self._dtypes
                       if dt in _KINDS and dt not in self._widened}  # (the C plan's
        # common case: real dtypes the kernels step in place)
        if self._eager_state:
            self._start_state()

    #: torch's Adagrad creates its state (step 0, the accumulator) in the constructor
    _eager_state = False

    def _hyper(self, group: dict[str, Any], k) -> tuple:
        """The checked hyperparameters of ``group`` (``Optimizer._check_group``); a
        value torch allows as a Tensor (``lr``, ``betas``, ``weight_decay``) is read
        as its number, every time (torch's constructor has checked it has one
        element; a Tensor changed in place since is read as it now is). A group
        that asks for what fusedopt refuses (``_REFUSED``: given to the constructor,
        ``add_param_group`` or set between steps) is refused by name."""
        for key in _REFUSED:
            if group.get(key):
                raise ValueError(f"param_groups[{k}]: {key}=True: {_REFUSED[key]}")
        for v in group.values():
            if isinstance(v, torch.Tensor) or (type(v) is tuple and any(
                    isinstance(x, torch.Tensor) for x in v)):
                group = {key: _number(v, (k, key)) for key, v in group.items()
                         if key != "params"}
                break
        return self._algorithm._check_group(group, k)

    def _start_state(self) -> None:
        """Create every parameter's first state now, as the torch twin does."""
        if self._flat is not None:
            self.state.clear()  # the torch twin's constructor made it per tensor
            return self._flat.start_state()
        algo = self._algorithm
        for k, group in enumerate(self.param_groups):
            spec = algo._state_spec(self._hyper(group, k))
            for p in group["params"]:
                st = self.state[p]
                st["step"] = torch.tensor(0.0, dtype=torch.float32)
                for name, init in spec:
                    st[name] = _full_like(p, init)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        if getattr(self, "_flat", None) is not None:
            raise ValueError("add_param_group: with flatten=True the parameters live in "
                             "flat buffers laid out at construction; build the optimizer "
                             "with every group (or use flatten=False)")
        super().add_param_group(param_group)
        try:  # (checked with torch's defaults filled in; refused, it is not added)
            self._hyper(self.param_groups[-1], len(self.param_groups) - 1)
        except BaseException:
            self.param_groups.pop()
            raise

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """One update of every parameter that has a gradient (as torch, parameters
        whose ``grad`` is None are skipped). Every tensor the kernels will touch is
        read from the live ``param_groups`` and ``state`` and checked (device, dtype,
        size, layout, overlap in memory), and first-step state is allocated, before
        the first write: an exception leaves parameters and state untouched.

        With ``fused=True`` (as torch's fused step) a ``torch.amp.GradScaler`` hands
        over its scale instead of unscaling the gradients in a pass of its own: the
        kernels multiply the gradients by its inverse, and a step with an inf or NaN
        found in them is skipped (parameters, state and step count unchanged)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        scale = 1.0
        if getattr(self, "_step_supports_amp_scaling", False):  # set by the scaler
            found_inf, grad_scale = (getattr(self, "found_inf", None),
                                     getattr(self, "grad_scale", None))
            if found_inf is not None and _number(found_inf, "found_inf") != 0.0:
                return loss
            if grad_scale is not None:
                value = float(_number(grad_scale, "grad_scale"))
                scale = 1.0 / value if value else math.inf  # (as torch's 1 / 0)
        with self._lock, self._stream():
            if self._flat is not None:
                self._flat.step(scale)
            elif self._multi:
                checked, plan = self._plan_multi()
                self._run_multi(*plan, checked=checked, scale=scale)
            else:
                self._run(self._plan(), scale)
        return loss

    def _plan_multi(self) -> tuple:
        """The multi-tensor plan: per parameter with a gradient, the addresses of its
        parameter, gradient and state, checked like ``_plan``'s views (device, dtype,
        size, layout), first-step state allocated but not yet in ``state``; then the
        byte ranges of everything against each other. The common case runs in one C
        call (``_guard.tensor_plan``, which says what it is; for CPU tensors, where
        it could be built, first ``_torch_ext.tensor_plan``, its reads in C++);
        anything else (a first step, a step that is not a float32 tensor, an error to
        name) here. Returns the groups' checked hyperparameters and state names, and
        the plan ``(table, counts, meta, indices, step addresses, step tensors, keep,
        new, copies)`` as ``tensor_plan`` documents; ``new``: the state to commit per
        parameter; ``copies``: ``(tensor, the copy stepped in its place)``, written
        back after the kernels."""
        slots = self._algorithm._algorithm.kernel.slots
        checked = self._hypers()
        groups = [(group["params"], tuple((name, 2 + slots.index(name)) for name in names))
                  for group, (_, names) in zip(self.param_groups, checked)]
        if (_guard.tensor_plan is not None and type(self.state) in _STATE_TYPES
                and not self._scalars):
            common = None
            if self._reader is not None:
                common = self._reader(groups, self.state, self._kinds, _TYPES,
                                      self._has_step, float(_checks.MAX_STEP),
                                      self._reader_memo)
            if common is None:  # (what the C++ reads decline, such as a step
                # under a torch function mode, torch's Python API may still plan)
                common = _guard.tensor_plan(groups, self.state, self._kinds, _TYPES,
                                            self._has_step, float(_checks.MAX_STEP),
                                            self._device, self._plan_memo)
            if common is not None:
                return checked, common
        return checked, self._plan_multi_full(checked)

    def _hypers(self) -> list[tuple]:
        """Per group, its checked hyperparameters and state names
        (``fusedopt.optim.base.checked_groups``)."""
        return _optim_base.checked_groups(self.param_groups, self._hyper_memo,
                                          self._hyper, self._algorithm._state_spec)

    def _plan_multi_full(self, checked: list) -> tuple:
        """``_plan_multi`` in Python: every case, every error named; ``checked``: the
        groups' (hyperparameters, state names)."""
        algo, owner, dtypes = self._algorithm, type(self).__name__, self._dtypes
        slots = algo._algorithm.kernel.slots
        rows, counts, meta, indices, steps, step_tensors, keep = [], [], [], [], [], [], []
        copies: list = []  # (parameter, the row-major copy stepped in its place)
        copied: list = []  # the name of each, for errors
        read: list = []  # (gradient, index): read through a copy (_check_overlap)
        new_state: dict = {}
        state, index = self.state, 0
        for k, (group, (hyper, _)) in enumerate(zip(self.param_groups, checked)):
            spec = algo._state_spec(hyper)
            for param in group["params"]:
                g = param.grad
                if g is None:
                    index += 1
                    continue
                p, g = _local(param), _local(g)  # a DTensor's shard on this rank
                _check_tensor(p, owner, dtypes, self.backend, layouts=True, grad=g,
                              device=self._device)
                _check_storage(p, ("params", index))
                _check_storage(g, ("grads", index))
                _check_writable(p, ("params", index))
                live = state.get(param)
                if live is None:
                    live = {}
                elif type(live) is not dict and not isinstance(live, MutableMapping):
                    raise TypeError(f"state[params[{index}]]: expected a dict of state, "
                                    f"got {type(live).__name__}")
                numel, dtype, fresh, new = p.numel(), p.dtype, False, {}
                # the layout the kernel steps: the parameter's own where it is dense
                # (any order of dimensions: channels_last, transposed), else row-major
                # through a copy (written back after the kernel); gradient and state
                # in the same layout (torch.preserve_format), a gradient in another
                # through a copy
                # float16 (bfloat16 on the GPU): float32 copies of the parameter,
                # gradient and state, stepped and rounded back (the math in float32,
                # as torch's fused step does it; the state stays in the parameter's
                # dtype, as torch keeps it)
                _check_shown(p, index)
                strides = _dense_strides(p)
                half = dtype in self._widened
                if half:
                    work = p.detach().float()
                    copies.append((p, work))
                    copied.append(("params", index))
                    dtype = torch.float32
                elif strides is None:
                    if torch._debug_has_internal_overlap(p) == 1:  # (expanded: stride 0)
                        raise ValueError(
                            f"params[{index}]: elements that share memory (an expanded "
                            "tensor, stride 0), which no update can write one by one; "
                            "train p.contiguous() (or p.clone()) instead")
                    work = p.detach().contiguous()
                    copies.append((p, work))
                    copied.append(("params", index))
                else:
                    work = p
                layout = work.stride()
                # (a lazily conjugated or negated gradient: its values, through a copy)
                if not (_same_strides(g, layout) and g.dtype is work.dtype) or (
                        g.is_conj() or g.is_neg()):
                    read.append((g, index))  # (its bytes still count for overlap)
                    g = torch.empty_like(work, memory_format=torch.preserve_format
                                         ).copy_(g)
                row = [work.data_ptr(), g.data_ptr(), 0, 0, 0, 0]
                keep += (p, work, g)
                for name, init in spec:
                    t = live.get(name)
                    if t is None:  # (a DTensor for a DTensor, as torch's)
                        t = new[name] = _full_like(param, init)
                        t = _local(t)
                        fresh = True
                    else:
                        t = _local(t)
                        _check_state(t, p, ("state", ("params", index), name),
                                     strides or layout)
                        _check_storage(t, ("state", ("params", index), name))
                        _check_writable(t, ("state", ("params", index), name))
                    if half:
                        copies.append((t, t.float()))
                        copied.append(("state", ("params", index), name))
                        t = copies[-1][1]
                    row[2 + slots.index(name)] = t.data_ptr()
                    keep.append(t)
                step = 0
                if self._has_step:
                    step_t = live.get("step")
                    if step_t is None and any(isinstance(v, torch.Tensor)
                                              for v in live.values()):
                        raise ValueError(
                            f"state[params[{index}]]: holds state tensors but no "
                            "'step'; set opt.state[p] = {} to start it afresh")
                    if step_t is not None:
                        step = self._odd_step(step_t, index)
                    if not (type(step_t) is torch.Tensor and step_t.is_cpu
                            and step_t.dtype is torch.float32 and step_t.numel() == 1):
                        # as torch converts at load: a float32 tensor
                        step_t = new["step"] = torch.tensor(float(step),
                                                            dtype=torch.float32)
                    _check_writable(step_t, ("state", ("params", index), "step"))
                    steps.append(step_t.data_ptr())
                    step_tensors.append(step_t)
                values = ()
                if self._scalars:  # the scalar state: read now, its next values
                    values = self._plan_scalars(live, step, hyper, index, new, copies)
                    copied += [("state", ("params", index), "scalar state")] * (
                        len(copies) - len(copied))
                if new:
                    new_state[param] = new
                rows.append(row)
                if dtype in _COMPLEX:  # its real view: (re, im) pairs
                    dtype, numel = _COMPLEX[dtype], 2 * numel
                counts.append(numel)
                meta.append((k, _KINDS[dtype], step, fresh, *values))
                indices.append(index)
                index += 1
        plan = (np.array(rows, np.int64).reshape(-1, policy.TABLE_COLUMNS),
                np.array(counts, np.int64),
                np.array(meta, np.int64).reshape(
                    -1, 4 + (len(self._scalars) + 1 if self._scalars else 0)),
                np.array(indices, np.int64),
                np.array(steps if self._has_step else [0] * len(rows), np.int64),
                step_tensors, keep, new_state, copies)
        self._check_overlap(plan, read, copied)
        return plan

    def _read_scalars(self, held, step: int, hyper, where: str) -> dict[str, Any]:
        """The algorithm's scalar state (NAdam's ``mu_product``) as ``held`` (a
        parameter's state, or a flat segment's) keeps it: checked and rounded as its
        0-d tensors store it (``Optimizer._plan_scalars``), with ``scalar_kinds``,
        how they store it (``fusedopt.scalars``): the dtype of the tensor held, else
        torch's default scalar dtype."""
        kinds = _scalar_kinds(held.get(self._scalars[0]))
        values = self._algorithm._plan_scalars(
            {name: _scalar(held.get(name), where, name) for name in self._scalars},
            step, hyper, where, kinds)
        values["scalar_kinds"] = kinds
        return values

    def _plan_scalars(self, live, step: int, hyper, index: int, new: dict,
                      copies: list) -> tuple[int, ...]:
        """The multi-tensor plan's part of the scalar state for one parameter
        (``_read_scalars``), returned as the bits of the values' float64s and the
        index of their kinds (for ``meta``: tensors with the same values share a
        launch); their values after the step written after the kernels
        (``copies``) into the 0-d tensors torch keeps, or created (``new``)."""
        held = self._read_scalars(live, step, hyper, f"state[params[{index}]]")
        kinds = held.pop("scalar_kinds")
        values = tuple(held.values())
        after = self._algorithm._algorithm.scalar_next(hyper, step + 1, values, kinds)
        for name, value in zip(self._scalars, after):
            t = live.get(name)
            if _is_scalar_tensor(t):
                _check_writable(t, ("state", ("params", index), name))
                copies.append((t, torch.tensor(value, dtype=t.dtype)))
            else:
                new[name] = torch.tensor(value, dtype=_SCALAR_DTYPE())
        return (*np.array(values, np.float64).view(np.int64).tolist(),
                _SCALAR_KINDS.index(kinds))

    def _check_overlap(self, plan: tuple, read: list, copied: list) -> None:
        """No two tensors of the step share a byte (``_guard``), read from the
        plan's addresses and ``read``, the ``(gradient, index)`` of each gradient
        read through a copy (another layout or dtype): the copy is private, the
        gradient itself must not share a byte with what the step writes (a
        parameter written back from its copy; any byte between its first and last
        element counts); an error names the tensors as ``_plan`` does
        (``copied``: the names of the tensors written back from copies)."""
        table, counts, meta, indices, steps = plan[:5]
        slots = self._algorithm._algorithm.kernel.slots
        starts, stops, names = [], [], []
        for (p, _), name in zip(plan[8], copied):  # written after the kernels:
            start, stop = _span(p)                 # every byte they span
            starts.append(start)
            stops.append(stop)
            names.append(name)
        for row, n, kind, j, step in zip(table.tolist(), counts.tolist(),
                                         meta[:, 1].tolist(), indices.tolist(),
                                         steps.tolist()):
            for c, a in enumerate(row):
                if a or c < 2:
                    starts.append(a)
                    stops.append(a + n * _ITEMSIZE[kind])
                    names.append(("params", j) if c == 0 else ("grads", j) if c == 1
                                 else ("state", ("params", j), slots[c - 2]))
            if step:
                starts.append(step)
                stops.append(step + 4)
                names.append(("state", ("params", j), "step"))
        pair = _guard.first_overlap(starts, stops)
        if pair is not None:
            _guard._raise(pair, lambda: names)
        if not read:
            return
        # each gradient read through a copy against what the step writes (gradients
        # are only read): those ranges overlap nothing, so sorted, the ones a range
        # may meet are the last starting at or before it and the next
        written = sorted(((a, b, name) for a, b, name in zip(starts, stops, names)
                         if a < b and not (isinstance(name, tuple)
                                           and name[0] == "grads")), key=lambda w: w[0])
        firsts = [a for a, _, _ in written]
        for g, j in read:
            lo, hi = _span(g)
            k = bisect.bisect_right(firsts, lo) - 1
            for a, b, name in written[max(k, 0):k + 2]:
                if lo < hi and a < hi and lo < b:
                    raise ValueError(
                        f"grads[{j}]: shares memory with {_checks._name(name)}; a step "
                        "writes parameters and state while it reads gradients, so each "
                        "array must own its elements (pass separate arrays)")

    def _run_multi(self, table, counts, meta, indices, steps, step_tensors, keep,
                   new_state, copies, checked: list, scale: float = 1.0) -> None:
        """The kernel calls of a checked multi-tensor plan, one per (group, dtype,
        step, first step) (usually one per group and dtype), their arguments made
        first; then first-step state joins ``state``, the kernels run, the steps
        are counted."""
        if len(meta) == 1 or (len(meta) and (meta == meta[0]).all()):
            launches = [self._launch_args(table, counts, meta[0], indices, checked,
                                          scale)]
        else:
            keys, which = np.unique(meta, axis=0, return_inverse=True)
            launches = []
            for b, key in enumerate(keys):
                mine = which.reshape(-1) == b
                launches.append(self._launch_args(
                    np.ascontiguousarray(table[mine]), counts[mine], key, indices[mine],
                    checked, scale))
        state = self.state
        for p, new in new_state.items():
            live = state.get(p)
            if live is None:
                state[p] = new
            else:
                live.update(new)
        for args in launches:
            self._impl.multi(*args)
        for p, work in copies:
            p.detach().copy_(work)
        if step_tensors is None:
            _guard.count_steps(steps)
        elif step_tensors:
            torch._foreach_add_(step_tensors, 1.0)

    def _launch_args(self, table, counts, key, indices, checked: list, scale: float
                     ) -> tuple:
        """The arguments of one kernel call (``impl.multi``) over the parameters of
        ``table`` (one group, dtype, step and first step: ``key``); ``checked``: the
        groups' (hyperparameters, state names)."""
        algo = self._algorithm
        k, kind, step, fresh = key[:4].tolist()
        hyper, names = checked[k]
        slots = algo._algorithm.kernel.slots
        given = _ALL_SLOTS[slots]
        if self._scalars:  # the float64 bits of their values, their kinds' index
            n = len(self._scalars)  # (_plan_scalars)
            given = {**given, **dict(zip(self._scalars,
                                         key[4:4 + n].view(np.float64).tolist())),
                     "scalar_kinds": _SCALAR_KINDS[int(key[4 + n])]}
        flags, present, h, scale = algo._arguments(given, hyper, step + 1,
                                                   bool(fresh), scale)
        if present != tuple(name in names for name in slots):
            raise RuntimeError(f"fusedopt: the state {names} and the kernel's slots "
                               f"{present} disagree")
        n = len(counts)
        if kind == _KINDS[torch.bfloat16]:
            seeds = np.array([scalars.rounding_seed(self.seed, step + 1, j)
                              for j in indices.tolist()], np.int64)
        else:
            seeds = np.zeros(n, np.int64)
        total = int(counts[0]) if n == 1 else int(counts.sum())
        return (algo._kernel, flags, present, h, _KIND_DTYPES[kind], table, counts,
                seeds, scale, total >= policy.PARALLEL_MIN_SIZE)

    def _plan(self) -> list[tuple]:
        """Per parameter with a gradient, its kernel call: NumPy views of the live
        parameter, gradient and state (checked), first-step state allocated but not
        yet in ``state``. Then the byte ranges of all of them against each other."""
        algo, views, owner = self._algorithm, {}, type(self).__name__
        plans, arrays, index = [], [], 0
        # the numba and cython backends plan any layout in multi-tensor calls; an
        # algorithm that reduces per tensor (LAMB) comes here on them too
        reducing = owner if hasattr(self._impl, "multi") else ""
        for k, group in enumerate(self.param_groups):
            hyper = self._hyper(group, k)
            spec = algo._state_spec(hyper)
            for p in group["params"]:
                if p.grad is not None:
                    if algo._algorithm.kernel.host:  # Muon, Adafactor (torch's words)
                        if p.is_complex():
                            raise RuntimeError(f"{owner} does not support complex "
                                               "parameters")
                        if algo._algorithm.kernel.name == "muon" and p.ndim != 2:
                            raise ValueError(f"{owner} only supports 2D parameters; "
                                             f"params[{index}] has size {p.size()} (was "
                                             "it replaced, or added to a group?)")
                        if p.numel() == 0:
                            raise ValueError(f"{owner}: params[{index}] has no elements "
                                             "(its norms and means divide by their "
                                             "count)")
                    _check_tensor(p, owner, self._dtypes, self.backend,
                                  reducing=reducing, device=self._device)
                    plans.append(self._plan_param(p, hyper, spec, index, views, arrays))
                index += 1
        check = _guard.check_arrays if self._device is None else _check_device_arrays
        check(arrays, lambda: [
            name for plan in plans for name in (
                ("params", plan[3]), ("grads", plan[3]),
                *(("state", ("params", plan[3]), n) for n, a in plan[5].items()
                  if isinstance(a, np.ndarray) or _device.is_device_array(a)),
                *((("state", ("params", plan[3]), "step"),) if plan[9] is not None
                  else ()))])
        self._views = views
        return plans

    def _view(self, t: torch.Tensor, views: dict, name, host: bool = False
              ) -> np.ndarray:
        """The NumPy view of ``t`` (its device array on the ``cuda`` backend, unless
        ``host``: a step count), reused while ``t`` still has the pointer, size and
        dtype it was made for, and its storage still holds it (``name``: ``t``'s,
        for the error)."""
        _check_storage(t, name)
        key, ptr = id(t), t.data_ptr()
        c = self._views.get(key)
        if c is None or c[0] is not t or c[1] != ptr or c[2] != t.numel() or (
                c[3] is not t.dtype):
            view = _np(t) if host or self._device is None else _cuda_view(t)
            c = (t, ptr, t.numel(), t.dtype, view)
        views[key] = c
        return c[4]

    def _state_view(self, t, numel: int, dtype, views: dict, name, p,
                    shape: tuple | None = None) -> np.ndarray:
        """The NumPy view of the live state tensor ``t`` of ``p`` (``numel``
        elements of ``dtype``; of ``shape`` where given, a factored moment): the
        cached one while ``t`` is the same contiguous tensor at the same address with
        that size and dtype, else checked in full (``_check_state``) and made anew."""
        c = self._views.get(id(t))
        if (c is not None and c[0] is t and c[1] == t.data_ptr() and c[2] == numel
                and c[3] is dtype and t.numel() == numel and t.dtype is dtype
                and t.is_contiguous() and (shape is None or t.shape == shape)):
            _check_storage(t, name)
            views[id(t)] = c
            return c[4]
        _check_state(t, p, name, numel=numel, shape=shape)
        return self._view(t, views, name)

    def _plan_param(self, p, hyper, spec, index: int, views: dict, arrays: list
                    ) -> tuple:
        live = self.state.get(p)
        if live is None:
            live = {}
        elif type(live) is not dict and not isinstance(live, MutableMapping):
            raise TypeError(f"state[params[{index}]]: expected a dict of state, got "
                            f"{type(live).__name__}")
        step_t = live.get("step") if self._has_step else None
        if step_t is None and self._has_step and any(
                isinstance(v, torch.Tensor) for v in live.values()):
            raise ValueError(f"state[params[{index}]]: holds state tensors but no "
                             "'step'; set opt.state[p] = {} to start it afresh")
        _check_shown(p, index)
        _check_writable(p, ("params", index))
        param = self._view(p, views, ("params", index))
        g = p.grad
        if g.is_conj() or g.is_neg():  # its values, through a copy (torch reads it:
            _check_storage(g, ("grads", index))  # its storage checked first)
            grad = self._view(g.resolve_conj().resolve_neg(), views, None)
        else:
            grad = self._view(g, views, ("grads", index))
        arrays += (param, grad)
        new, work, fresh = {}, {}, False
        if self._algorithm._algorithm.kernel.host:  # (its host stage needs the shape)
            work["shape"] = tuple(p.shape)
        numel, dtype = p.numel(), p.dtype
        shaped = self._algorithm._algorithm.state_shape is not None  # (Adafactor)
        for name, init in spec:
            if shaped:
                shape = self._algorithm._algorithm.state_shape(name, tuple(p.shape))
                if shape is None:
                    continue
            t = live.get(name)
            if t is None:
                t = new[name] = (torch.full(shape, init, dtype=dtype, device=p.device)
                                 if shaped else _full_like(p, init))
                fresh = True
                work[name] = self._view(t, views, None)
            else:  # (of its parameter's shape, or of the shape its algorithm keeps)
                work[name] = self._state_view(t, math.prod(shape) if shaped else numel,
                                              dtype, views,
                                              ("state", ("params", index), name), p,
                                              shape if shaped else tuple(p.shape))
                _check_writable(t, ("state", ("params", index), name))
            arrays.append(work[name])
        step, step_view = 0, None
        if type(step_t) is torch.Tensor and step_t.dtype in _STEP_DTYPES and (
                step_t.is_cpu and step_t.numel() == 1):
            _check_writable(step_t, ("state", ("params", index), "step"))
            step_view = self._view(step_t, views, ("state", ("params", index), "step"),
                                   host=True)
            step = _checks.state_step(step_view.item(0),
                                      ("state", ("params", index), "step"))
            arrays.append(step_view)  # written too: it must not alias anything
        elif step_t is not None:
            step = self._odd_step(step_t, index)
        if self._scalars:
            work.update(self._read_scalars(live, step, hyper, f"state[params[{index}]]"))
        return p, param, grad, index, hyper, work, new, fresh, step, step_view

    @staticmethod
    def _odd_step(step_t, index: int) -> int:
        """A ``step`` that is not a one-element CPU float/int tensor: a number (older
        checkpoints) or another tensor (one on the GPU, as torch's fused and
        capturable steps keep it); it becomes a float32 CPU tensor after the step, as
        torch converts it at load."""
        name = f"state[params[{index}]]['step']"
        if isinstance(step_t, torch.Tensor):
            if step_t.numel() != 1 or step_t.is_complex() or step_t.is_meta:
                raise ValueError(f"{name}: expected a one-element real tensor, got "
                                 f"shape {tuple(step_t.shape)}, {step_t.dtype}"
                                 + " on meta" * step_t.is_meta)
            _check_storage(step_t, ("state", ("params", index), "step"))
            step_t = step_t.item()
        return _checks.state_step(step_t, name)

    def _stream(self):
        """Where the ``cuda`` backend launches: on the parameters' device (made
        current for torch and Numba alike, whichever device was current), on
        torch's current stream there, so a step is ordered after the backward that
        made its gradients without a synchronisation (the simulator's: its
        default)."""
        if self._device is None:
            return contextlib.nullcontext()
        if _device.simulated():
            return self._impl.on_stream(None)
        stack = contextlib.ExitStack()
        stack.enter_context(torch.cuda.device(self._device))
        stack.enter_context(_device.on_device(self._device.index))
        stack.enter_context(self._impl.on_stream(torch.cuda.current_stream(
            self._device)))
        return stack

    def _run(self, plans, scale: float = 1.0) -> None:
        algo, impl = self._algorithm, self._impl
        if algo._algorithm.kernel.host:  # (Muon's scratch, before any write)
            algo._reserve(impl, [(plan[5], plan[5]["shape"], plan[1]) for plan in plans])
        for p, param, grad, index, hyper, work, new, fresh, step, step_view in plans:
            live = self.state.get(p)
            if live is None:
                live = self.state[p] = {}
            step_t = None
            if self._has_step and step_view is None:
                step_t = torch.tensor(float(step), dtype=torch.float32)
                step_view = step_t.numpy()
            work["step"] = step
            seed = (scalars.rounding_seed(self.seed, step + 1, index)
                    if param.dtype == np.uint16 else 0)
            algo._update(impl, param, grad, work, hyper, fresh, scale, seed)
            # new state joins after its step: a step that raises part-way (Muon's
            # host stage out of memory) leaves each tensor's state whole
            live.update(new)
            if step_t is not None:
                live["step"] = step_t
            if step_view is not None:
                step_view[...] = work["step"]
            for name in self._scalars:  # 0-d tensors, as torch keeps them
                t = live.get(name)
                if _is_scalar_tensor(t):
                    t.fill_(work[name])
                else:
                    live[name] = torch.tensor(work[name], dtype=_SCALAR_DTYPE())

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self._flat is not None:
            self._flat.zero_grad()  # grads stay views of the flat gradient buffer
        else:
            super().zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        if self._flat is not None:  # plain dicts with per-parameter step (and scalar
            for key, st in sd["state"].items():  # state) tensors, never the live
                sd["state"][key] = dict(st)      # entries, nor one tensor shared
                for name in ("step", *self._scalars):
                    if name in st:
                        sd["state"][key][name] = st[name].clone()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """torch's load, then every loaded entry checked against its parameter (size,
        dtype, a complete state, a step that is a count), older formats converted as
        torch converts them (a number ``step`` becomes a float32 tensor) and
        non-contiguous state made contiguous (the loaded tensor is a copy either
        way). All or nothing: on an exception the optimizer is as it was."""
        with self._lock:
            before = self.state, self.param_groups
            try:
                super().load_state_dict(state_dict)  # __setstate__: _adopt_loaded
                if self._flat is not None:
                    self._flat.check_loaded()
                    self._flat.adopt_state()
            except BaseException:
                self.state, self.param_groups = before
                raise
            self._views.clear()  # the state tensors were replaced

    def __getstate__(self) -> dict[str, Any]:
        """torch's (defaults, state, param groups), and what unpickling rebuilds the
        rest from: the backend, ``flatten`` and the seed."""
        return {**super().__getstate__(),
                "_fusedopt": (self.backend, self._flat is not None, self.seed)}

    def __setstate__(self, state: dict[str, Any]) -> None:
        """torch's load (and unpickling) ends here: the torch twin's defaults for
        group keys that older checkpoints lack, then every state entry checked and
        converted (``_adopt_loaded``) before the twin would convert steps itself
        (it cannot name what is wrong: a missing step is a KeyError there). An
        unpickled copy (``copy.deepcopy``, ``torch.load`` of a whole optimizer) is
        first rebuilt as the constructor builds it, over its copied parameters."""
        fused = state.get("_fusedopt")
        super().__setstate__({key: value for key, value in state.items()
                              if key not in ("state", "_fusedopt")} | {"state": {}})
        if fused is not None and "_impl" not in self.__dict__:  # unpickled
            self.state = collections.defaultdict(dict)  # (as the constructor starts)
            self._start(*fused)
            if self._flat is not None:
                self.state = state["state"]
                self._adopt_loaded()
                self._flat.check_loaded()
                self._flat.adopt_state()
                return
        self.state = state["state"]
        self._adopt_loaded()

    def _adopt_loaded(self) -> None:
        algo, index = self._algorithm, 0
        for k, group in enumerate(self.param_groups):
            spec = algo._state_spec(self._hyper(group, k))
            for p in group["params"]:
                st = self.state.get(p)
                label = f"state_dict['state'][{index}]"
                index += 1
                if st is None:
                    continue
                if not isinstance(st, MutableMapping):
                    raise TypeError(f"{label}: expected a dict of state, got "
                                    f"{type(st).__name__}")
                tensors = [n for n in algo._state_names
                           if isinstance(st.get(n), torch.Tensor)]
                kept = {n: shape for n, _, shape in _algorithms.state_shapes(
                    algo._algorithm, spec, tuple(p.shape))}
                if tensors or _started(st.get("step")) or (
                        self._eager_state and "step" in st):
                    missing = [n for n in kept if st.get(n) is None]
                    if self._has_step and "step" not in st:
                        missing.insert(0, "step")
                    if missing:
                        raise ValueError(f"{label}: incomplete state, missing {missing} "
                                         f"beside {tensors + ['step'] if 'step' in st else tensors}"
                                         "; a parameter's state is loaded whole (or left "
                                         "out, to start it afresh)")
                for name in algo._state_names:
                    t = st.get(name)
                    if t is None:
                        continue
                    if not isinstance(t, torch.Tensor):
                        raise TypeError(f"{label}[{name!r}]: expected a tensor, got "
                                        f"{type(t).__name__}")
                    if algo._algorithm.state_shape is not None and name not in kept:
                        raise ValueError(f"{label}[{name!r}]: a parameter of shape "
                                         f"{tuple(p.shape)} keeps {sorted(kept)}, not "
                                         f"{name!r}")
                    want = kept.get(name, tuple(p.shape))
                    if tuple(t.shape) != tuple(want):
                        raise ValueError(f"{label}[{name!r}]: expected shape "
                                         f"{tuple(want)} (its parameter's is "
                                         f"{tuple(p.shape)}), got {tuple(t.shape)}")
                    st[name] = (_in_layout(t, p) if tuple(want) == tuple(p.shape)
                                else t.contiguous())
                if self._has_step and "step" in st:
                    step = st["step"]
                    if isinstance(step, torch.Tensor):
                        if step.numel() != 1 or step.is_complex():
                            raise ValueError(f"{label}['step']: expected a one-element "
                                             f"tensor, got shape {tuple(step.shape)}")
                        step = step.item()
                    step = _checks.state_step(step, f"{label}['step']")
                    st["step"] = torch.tensor(float(step), dtype=torch.float32)
                for name in self._scalars:  # a number or a one-element tensor
                    if st.get(name) is not None:
                        value = _checks.state_scalar(_scalar(st[name], label, name),
                                                     (label, name))
                        if not _is_scalar_tensor(st[name]):
                            st[name] = torch.tensor(value, dtype=_SCALAR_DTYPE())
                    elif ("step" in st and _started(st["step"])) or any(
                            st.get(n) is not None for n in self._scalars):
                        raise ValueError(f"{label}: incomplete state, missing "
                                         f"{[name]} beside its 'step'; a parameter's "
                                         "state is loaded whole (or left out, to start "
                                         "it afresh)")


class _Watched(dict):
    """A flat parameter's ``opt.state`` entry: a dict that records, in a flag it
    shares with the others, that something was assigned into it (a moment reset by
    ``opt.state[p]['exp_avg'] = ...``), so a step refuses what it would ignore."""

    def __init__(self, entries, flag: list) -> None:
        super().__init__(entries)
        self._flag = flag

    def _edit(method):  # noqa: N805 - wraps dict's mutators
        def edited(self, *args, **kwargs):
            flag = self.__dict__.get("_flag")  # absent while unpickling
            if flag is not None:
                flag[0] = True
            return method(self, *args, **kwargs)
        return edited

    __setitem__ = _edit(dict.__setitem__)
    __delitem__ = _edit(dict.__delitem__)
    __ior__ = _edit(dict.__ior__)
    update, pop, popitem, setdefault, clear = map(
        _edit, (dict.update, dict.pop, dict.popitem, dict.setdefault, dict.clear))
    del _edit


#: torch.optim options fusedopt cannot honour: refused by name at construction
_REFUSED = {
    "differentiable": "fusedopt's kernels update parameters in place outside autograd; "
                      "for a step that autograd can differentiate use torch.optim",
    "capturable": "capturable steps (step counts kept on the GPU for CUDA graphs) are "
                  "not supported by fusedopt.torch, which keeps the count on the host "
                  "and passes it to each launch as a number (torch.optim refuses "
                  "capturable=True for CPU tensors too)",
}


def _number(v, where):
    """A hyperparameter as the number torch reads from it: a one-element Tensor's
    value, a tuple's Tensors' values; anything else unchanged."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1:
            raise ValueError(f"{_checks._name(where)}: expected a number or a "
                             f"one-element Tensor, got shape {tuple(v.shape)}")
        return v.item()
    if type(v) is tuple:
        return tuple(_number(x, (where, j)) for j, x in enumerate(v))
    return v


#: torch's dtype for an optimizer's scalar state (float32, or float64 when that is
#: the default dtype)
_SCALAR_DTYPE = _torch_optimizer._get_scalar_dtype


def _is_scalar_tensor(t) -> bool:
    """A one-element real CPU tensor: scalar state (``mu_product``) as torch keeps
    it, filled in place by a step."""
    return (type(t) is torch.Tensor and t.numel() == 1 and t.is_cpu
            and t.dtype.is_floating_point)


#: the NumPy scalar type of each dtype torch may keep scalar state in (a loaded
#: state takes its parameter's dtype), and every pair of kinds (``fusedopt.scalars``:
#: the tensor's, the default scalar dtype's) a multi-tensor plan may name by index
_NUMPY_SCALARS = {torch.float32: np.float32, torch.float64: np.float64,
                  torch.float16: np.float16, torch.bfloat16: _checks.bf16().type}
_SCALAR_KINDS = [(t, d) for t in _NUMPY_SCALARS.values() for d in (np.float32,
                                                                    np.float64)]


def _scalar_kinds(t) -> tuple:
    """How scalar state held as ``t`` is stored (``fusedopt.scalars``): in ``t``'s
    dtype where it is a real one-element tensor, else (a new one) in torch's default
    scalar dtype."""
    default = _NUMPY_SCALARS[_SCALAR_DTYPE()]
    if _is_scalar_tensor(t):
        return _NUMPY_SCALARS.get(t.dtype, default), default
    return default, default


def _scalar(v, where: str, name):
    """Scalar state ``v`` as a number for ``_checks.state_scalar``: a one-element
    tensor's value (None, numbers and anything else as they are, to be checked)."""
    if isinstance(v, torch.Tensor):
        if v.numel() != 1 or v.is_complex():
            raise ValueError(f"{where}[{name!r}]: expected a one-element real tensor "
                             f"(per-tensor scalar state), got shape {tuple(v.shape)}, "
                             f"{v.dtype}")
        _check_storage(v, f"{where}[{name!r}]")  # (read here, written after the step)
        return v.item()
    return v


def _started(step) -> bool:
    """A loaded ``step`` that says the parameter was stepped (its state must then be
    complete); one that cannot be read counts too (and is refused as such)."""
    try:
        return step is not None and float(step) != 0.0
    except (TypeError, ValueError, RuntimeError, OverflowError):
        return True


def _check_state(t, p: torch.Tensor, name, strides=None, numel=None,
                 shape=None) -> None:
    """A live state tensor the kernel will update in place beside ``p``: contiguous,
    or with ``strides`` (those of the layout ``p`` is stepped in); of ``numel``
    elements and ``shape`` where given (a factored moment), else ``p``'s size."""
    numel = p.numel() if numel is None else numel
    if (isinstance(t, torch.Tensor) and t.dtype == p.dtype and t.device == p.device
            and t.numel() == numel and not t.is_sparse and not t.is_conj()
            and not t.is_neg()
            and (shape is None or t.shape == shape) and (
                t.is_contiguous() if strides is None
                else t.shape == p.shape and _same_strides(t, strides))):
        return  # the common case
    where = _checks._name(name)
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{where}: expected a tensor, got {type(t).__name__}")
    if t.dtype != p.dtype:
        raise TypeError(f"{where}: expected dtype {p.dtype} (that of its parameter), got "
                        f"{t.dtype}; torch.optim refuses mixed dtypes too (after "
                        "model.double() or .half(), build a new optimizer or load a "
                        "state_dict, which casts)")
    if t.device != p.device or t.is_sparse:
        raise ValueError(f"{where}: expected a dense tensor on {p.device} (its "
                         f"parameter's device), got {t.layout} on {t.device}")
    if t.numel() != numel or (shape is not None and t.shape != shape):
        want = (f"{numel} elements" if shape is None else f"shape {tuple(shape)}")
        raise ValueError(f"{where}: expected {want} (shape {tuple(p.shape)} is its "
                         f"parameter's), got shape {tuple(t.shape)}")
    if t.is_conj() or t.is_neg():
        raise ValueError(f"{where}: a lazily conjugated (or negated) view, whose memory "
                         "holds other values than it shows; assign t.resolve_conj()")
    if strides is None:
        raise ValueError(f"{where}: expected a contiguous tensor (the kernel updates it "
                         "in place through one flat view)")
    raise ValueError(f"{where}: expected shape {tuple(p.shape)} and strides "
                     f"{tuple(strides)} (the layout its parameter is stepped in, as "
                     f"torch.preserve_format makes it), got shape {tuple(t.shape)} and "
                     f"strides {t.stride()}; assign a tensor made with "
                     "torch.empty_like(p), or load a state_dict (which converts)")


def _dense_strides(t: torch.Tensor) -> tuple | None:
    """``t``'s strides if its elements fill one block of memory without gaps or
    overlap, in any order of dimensions (contiguous, channels_last, transposed,
    permuted), else None. Size-1 dimensions place nothing."""
    strides = t.stride()
    expected = 1
    for s, n in sorted((s, n) for n, s in zip(t.shape, strides) if n != 1):
        if s != expected:
            return None
        expected *= n
    return strides


def _same_strides(t: torch.Tensor, strides: tuple) -> bool:
    """``t`` (of its parameter's shape) laid out as ``strides`` (size-1 dimensions
    aside: they place nothing)."""
    return all(a == b or n == 1 for a, b, n in zip(t.stride(), strides, t.shape))


def _full_like(p: torch.Tensor, value: float) -> torch.Tensor:
    """New state of ``p``: ``value`` in ``p``'s layout (``torch.preserve_format``);
    for a complex ``p``, in both parts of each element (its real view is what is
    stepped), as torch's Adagrad starts its ``sum`` and Rprop its ``step_size``."""
    return torch.full_like(p, complex(value, value) if p.is_complex() else value,
                           memory_format=torch.preserve_format)


def _in_layout(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """Loaded state ``t`` in the layout ``p``'s state is stepped in (``p``'s strides
    where ``p`` is dense, else row-major): itself, or a copy."""
    strides = _dense_strides(p)
    if strides is None:
        return t.contiguous()
    if _same_strides(t, strides):
        return t
    return torch.empty_like(p, dtype=t.dtype, memory_format=torch.preserve_format
                            ).copy_(t)


def _check_device_arrays(arrays: list, names) -> None:
    """``_guard.check_arrays`` over the device arrays (and host step counts) of a
    step on the ``cuda`` backend: by byte range (CUDA's addresses are unified)."""
    _guard.check_spans([(a.ctypes.data, a.ctypes.data + a.nbytes)
                        if isinstance(a, np.ndarray) else _device.span(a, "array")
                        for a in arrays], names)


def _span(t: torch.Tensor) -> tuple[int, int]:
    """Every byte an element of ``t`` may occupy: ``[start, stop)``."""
    start = stop = t.data_ptr()
    if t.numel():
        stop += t.element_size()
        for n, s in zip(t.shape, t.stride()):
            stop += (n - 1) * s * t.element_size()
    return start, stop


def _check_shown(p: torch.Tensor, index: int) -> None:
    """A parameter whose memory holds the values it shows: not a lazily conjugated
    or negated view (a step would write the memory, not the values)."""
    if p.is_conj() or p.is_neg():
        raise ValueError(f"params[{index}]: a lazily conjugated (or negated) view, "
                         "whose memory holds other values than it shows; train "
                         "p.resolve_conj() (or p.resolve_neg()) instead")


def _check_storage(t: torch.Tensor, name) -> None:
    """``t``'s elements inside its storage, checked before a kernel writes or reads
    them through its address: a storage resized under its tensor
    (``t.untyped_storage().resize_()``, as FSDP frees unsharded parameters) is
    refused, not written past (torch's own optimizers do not check this); ``name``:
    ``t``'s, for the error (None: a tensor this step just made)."""
    if not t.numel() or name is None:
        return
    if not t.data_ptr() and t.untyped_storage().nbytes() and not t.is_meta:
        raise TypeError(f"{_checks._name(name)}: a tensor without memory of its own (a "
                        "wrapper tensor subclass, its values held in other tensors); "
                        "fusedopt's kernels step dense memory, so step it with "
                        "torch.optim")
    start, stop = _span(t)
    need = t.storage_offset() * t.element_size() + stop - start
    have = t.untyped_storage().nbytes()
    if need > have:
        raise ValueError(f"{_checks._name(name)}: its storage holds {have} bytes, its "
                         f"elements reach byte {need} of it (was the storage resized "
                         "under it, e.g. by untyped_storage().resize_() or FSDP freeing "
                         "it?); step it only when its storage holds it")


def _check_writable(t: torch.Tensor, name) -> None:
    """A tensor the step updates in place, as torch would: not an inference tensor
    (made under ``torch.inference_mode()``) outside inference mode, which torch
    refuses to update in place; checked before any write."""
    if t.is_inference() and not torch.is_inference_mode_enabled():
        raise RuntimeError(f"{_checks._name(name)}: an inference tensor (made under "
                           "torch.inference_mode()); torch updates none in place outside "
                           "inference mode: step inside torch.inference_mode(), or "
                           "clone it outside it first")


def _local(t):
    """A DTensor's local shard (FSDP2, tensor parallel: each rank steps its own),
    anything else itself."""
    dtensor = getattr(sys.modules.get("torch.distributed.tensor"), "DTensor", None)
    return t.to_local() if dtensor is not None and isinstance(t, dtensor) else t


def _check_tensor(p: torch.Tensor, owner: str, dtypes: tuple, backend: str,
                  layouts: bool = False, grad=None, reducing: str = "",
                  device: torch.device | None = None) -> None:
    """Everything a parameter and its gradient (``p.grad`` unless given) need,
    raised before any write; ``dtypes``: the parameter dtypes the backend steps;
    ``layouts``: any strides (the multi-tensor plan steps them), else contiguous
    only; ``reducing``: the name of an algorithm that steps tensor by tensor
    (``algorithms.PER_TENSOR``: LAMB's norms, Muon's Newton-Schulz), whose errors
    say so; ``device``: the CUDA device stepped (``_device_of``), None for CPU."""
    g = p.grad if grad is None else grad
    here = (p.is_cpu and g.is_cpu if device is None
            else p.device == device and g.device == device)
    if reducing and type(p).__name__ == "DTensor":
        raise TypeError(f"{reducing}: a DTensor parameter; its step needs the whole "
                        "tensor (LAMB's norms, Muon's Newton-Schulz), so each rank would "
                        "need every shard (not supported): step sharded parameters with "
                        "an element-wise optimizer")
    if (here and not g.is_sparse and p.dtype in dtypes
            and g.dtype == p.dtype and g.shape == p.shape and (
                layouts or (p.is_contiguous() and g.is_contiguous()))):
        return  # the common case, first and fast (~1 us, paid per tensor and step)
    if g.is_sparse:
        raise RuntimeError(f"{owner} does not support sparse gradients (fusedopt's "
                           "kernels update dense buffers); use torch.optim.SparseAdam")
    if not here:
        raise RuntimeError(f"{owner}: parameter on {p.device}, gradient on {g.device}; "
                           "this optimizer steps "
                           f"{'CPU tensors' if device is None else f'tensors on {device}'}"
                           " (those of the device its parameters were on when it was "
                           "built)")
    if reducing and p.dtype == torch.float16:
        raise TypeError(f"{reducing}: float16 parameters are stepped by multi-tensor "
                        "calls, which an algorithm that steps tensor by tensor does not "
                        "make; keep float32 parameters")
    if p.dtype not in dtypes or g.dtype != p.dtype:
        if dtypes == _FLOAT_DTYPES:  # (Muon, Adafactor: their host stage's dtypes)
            raise TypeError(f"{owner}: expected float32 or float64 parameters with "
                            f"gradients of the same dtype, got {p.dtype} and {g.dtype}")
        names = ", ".join(str(d).removeprefix("torch.") for d in dtypes)
        raise TypeError(f"{owner}: expected parameters of {names} on backend "
                        f"{backend!r} (bfloat16 on numba, cython and, for an algorithm "
                        "that steps many tensors per call, cuda; float16 on those three "
                        "for such an algorithm) with gradients of the same dtype, got "
                        f"{p.dtype} and {g.dtype}")
    if g.shape != p.shape:
        raise ValueError(f"{owner}: a gradient of shape {tuple(g.shape)} for a parameter "
                         f"of shape {tuple(p.shape)} (was p.data replaced?)")
    if reducing:
        raise ValueError(f"{reducing}: steps each tensor in one call over its flat view "
                         "(tensor by tensor), so it needs contiguous parameters "
                         "and gradients; make them contiguous (.contiguous(), "
                         "memory_format=torch.contiguous_format) or use flatten=True")
    raise ValueError(f"{owner}: the {backend!r} backend steps contiguous parameters and "
                     "gradients only (through one flat view); the numba and cython "
                     "backends step any layout (channels_last, transposed, slices)")


class _FlatTorch:
    """``flatten=True``: the parameters are re-pointed as views of one buffer per
    dtype (``p.data``), their gradients likewise (``p.grad``), and the state is flat;
    a step is one kernel call per contiguous (group, dtype) segment.

    ``zero_grad`` zeroes the gradient buffer instead of setting gradients to None, so
    autograd keeps accumulating into it; a gradient that was replaced anyway is copied
    in. A parameter with no gradient is stepped with a zero one (torch's behaviour
    with ``zero_grad(set_to_none=False)``). Parameters with ``requires_grad=False``
    when the optimizer is built stay out of the buffers and are never stepped, as
    torch never steps a parameter that gets no gradient.

    Each step first checks that the layout still holds (the same parameters, each
    still a view of its place in the buffer, the state in ``opt.state`` still the
    flat views), and refuses before any write when it does not: a parameter
    re-pointed by ``p.data = ...``, ``model.to(...)`` or ``model.double()`` after
    construction would otherwise silently stop training.
    """

    def __init__(self, opt: _Fused) -> None:
        self.opt = opt
        params = [p for group in opt.param_groups for p in group["params"]]
        check = opt._algorithm._algorithm.check_param  # (Muon's matrices, Adafactor's)
        device = torch.device("cpu") if opt._device is None else opt._device
        #: the kernels' view of a flat buffer: NumPy's, or a device array
        self.array = _np if opt._device is None else _cuda_view
        for j, p in enumerate(params):
            if p.device != device or p.dtype not in _FLOAT_DTYPES:
                raise TypeError(f"flatten=True: expected float32/float64 parameters on "
                                f"{device}, got {p.dtype} on {p.device}")
            if check is not None:  # its layout is fixed now: refused now
                check(p, ("params", j))
        self.params = params
        #: indices of the parameters in the buffers (requires_grad at construction)
        self.members = [j for j, p in enumerate(params) if p.requires_grad]
        self.frozen = [j for j, p in enumerate(params) if not p.requires_grad]
        self.buffers: dict[np.dtype, torch.Tensor] = {}
        self.grad_buffers: dict[np.dtype, torch.Tensor] = {}
        self.grad_views: dict[int, torch.Tensor] = {}
        self.offsets: dict[int, tuple] = {}
        #: per member, the (data_ptr, dtype) it must keep
        self.layout: list[tuple] = []
        self.member_params = [params[j] for j in self.members]
        self.exposed: list[dict] = []  # opt.state's entries, as the flat state left them
        self.exposed_tensors: list[torch.Tensor] = []
        self.exposed_ptrs: list[int] = []
        self.edited = [False]  # set by an assignment into one of them (_Watched)
        self.segments: list[dict[str, Any]] = []
        self.segment_of: dict[int, dict[str, Any]] = {}
        self.state_buffers: dict[str, dict[np.dtype, torch.Tensor]] = {}
        if not self.members:
            return
        members = [params[j] for j in self.members]
        layout = _flat.FlatParams([tuple(p.shape) for p in members],
                                  [np.dtype(str(p.dtype).removeprefix("torch."))
                                   for p in members])  # offsets only; buffers are torch's
        self.buffers = {dt: torch.from_numpy(b).to(device)
                        for dt, b in layout.buffers.items()}
        self.grad_buffers = {dt: torch.from_numpy(b).to(device)
                             for dt, b in layout.grad_buffers.items()}
        for m, (j, p, (dt, a, b)) in enumerate(zip(self.members, members, layout.offsets)):
            view = self.buffers[dt][a:b].view_as(p)
            view.copy_(p.detach())
            p.data = view
            gview = self.grad_buffers[dt][a:b].view_as(p)
            if p.grad is not None:
                gview.copy_(p.grad)
            p.grad = gview
            self.grad_views[j] = gview
            self.offsets[j] = (dt, a, b)
            self.layout.append((p.data_ptr(), p.dtype))
        # state of other shapes than the parameters' (Adafactor's factors): where each
        # member's lies in its slot's buffers (flatmode.state_layout), and per member
        # its range in its segment's view of each (None: it keeps none of that name)
        shaped = opt._algorithm._algorithm.state_shape
        self.state_layout = None if shaped is None else state_layout(
            layout, opt._algorithm._state_names, shaped)
        self.ranges: dict[int, dict | None] = {}
        position = {j: m for m, j in enumerate(self.members)}
        first = 0
        for k, group in enumerate(opt.param_groups):
            indices = [j for j in range(first, first + len(group["params"]))
                       if j in position]
            first += len(group["params"])
            for dt, a, b, run in _flat.segments(layout, [position[j] for j in indices]):
                seg = {"group": k, "dtype": dt, "start": a, "stop": b,
                       "param": self.array(self.buffers[dt][a:b]),
                       "grad": self.array(self.grad_buffers[dt][a:b]),
                       "step": torch.tensor(0.0, dtype=torch.float32), "arrays": {},
                       "scalars": {},  # scalar state: 0-d tensors, as the step
                       "members": [self.members[m] for m in run],
                       # each member's [lo, hi) in the segment and its shape (for
                       # the algorithms that step tensor by tensor)
                       "tensors": [(layout.offsets[m][1] - a, layout.offsets[m][2] - a,
                                    tuple(members[m].shape)) for m in run],
                       "slots": {}}
                self.segments.append(seg)
                for m in run:
                    self.segment_of[self.members[m]] = seg
                    self.ranges[self.members[m]] = None
                if self.state_layout is not None:  # as flatmode._setup_flat
                    seg["slots"], ranges = segment_slots(self.state_layout[0], run)
                    for i, (m, r) in enumerate(zip(run, ranges)):
                        seg["tensors"][i] += (r,)
                        self.ranges[self.members[m]] = r
        self._snapshot_state()

    def _state_buffer(self, name: str, dt) -> torch.Tensor:
        per_dtype = self.state_buffers.setdefault(name, {})
        if dt not in per_dtype:
            sizes = {} if self.state_layout is None else self.state_layout[1]
            per_dtype[dt] = (torch.zeros(sizes[name].get(dt, 0),
                                         dtype=self.buffers[dt].dtype,
                                         device=self.buffers[dt].device)
                             if name in sizes else torch.zeros_like(self.buffers[dt]))
        return per_dtype[dt]

    def _segment_state(self, seg: dict[str, Any], name: str) -> torch.Tensor:
        """``seg``'s view of the flat buffer of state ``name`` (flatmode's
        ``_segment_state``)."""
        lo, hi = seg["slots"].get(name, (seg["start"], seg["stop"]))
        return self._state_buffer(name, seg["dtype"])[lo:hi]

    def _member_state(self, j: int, name: str, t: torch.Tensor) -> torch.Tensor | None:
        """Parameter ``j``'s part of its segment's view ``t`` of state ``name``, in
        the shape it keeps; None where it keeps none of that name."""
        seg, p, ranges = self.segment_of[j], self.params[j], self.ranges[j]
        if ranges is None:
            _, a, b = self.offsets[j]
            return t[a - seg["start"]:b - seg["start"]].view_as(p)
        if ranges[name] is None:
            return None
        lo, hi = ranges[name]
        shape = self.opt._algorithm._algorithm.state_shape(name, tuple(p.shape))
        return t[lo:hi].view(shape)

    def zero_grad(self) -> None:
        for gbuf in self.grad_buffers.values():
            gbuf.zero_()
        for j, gview in self.grad_views.items():
            self.params[j].grad = gview

    def check_layout(self) -> None:
        """Refuse, before any write, a step the flat layout no longer describes. Each
        test runs over every parameter at C speed (lists compared whole, ``map``);
        only a failing one looks for the culprit to name."""
        opt, params, members = self.opt, self.params, self.member_params
        live = [p for group in opt.param_groups for p in group["params"]]
        if len(live) != len(params) or any(map(operator.is_not, live, params)):
            raise ValueError("param_groups: changed since the optimizer was built; with "
                             "flatten=True the parameters live in flat buffers laid out "
                             "at construction, so build a new optimizer (or use "
                             "flatten=False)")
        for j in self.frozen:
            if params[j].grad is not None:
                raise ValueError(f"params[{j}]: has a gradient, but had "
                                 "requires_grad=False when the optimizer was built, so "
                                 "flatten=True left it out of the flat buffers; build "
                                 "the optimizer after unfreezing (or use flatten=False)")
        # the step writes only the flat buffers, so a re-pointed parameter is a
        # parameter left untrained, not a write out of bounds: its pointer tells
        # (p.data = ..., model.to(), .double() and channels_last all allocate), and
        # its dtype where it has no memory to point at (size 0)
        now = [(p.data_ptr(), p.dtype) for p in members]
        if now != self.layout:
            j = next(j for j, a, b in zip(self.members, now, self.layout) if a != b)
            raise ValueError(
                f"params[{j}]: no longer a view of its place in the flat buffer "
                "(p.data was replaced, e.g. by model.to(), .double() or "
                "channels_last after the optimizer was built); flatten=True would "
                "step the old memory, so build the optimizer after moving the "
                "model (or use flatten=False)")
        # the flat buffers themselves, whose storages every member shares (a
        # member's untyped_storage().resize_() is theirs)
        for buf in self._all_buffers():
            _check_storage(buf, "a flat buffer (the storage of parameters, gradients "
                                "or state with flatten=True)")
        entries = list(opt.state.values())
        if (self.edited[0] or len(entries) != len(self.exposed)
                or any(map(operator.is_not, entries, self.exposed))
                or [t.data_ptr() for t in self.exposed_tensors] != self.exposed_ptrs):
            raise ValueError(
                "state: replaced since the last step; with flatten=True the state of "
                "each parameter is views of flat buffers: change it in place (e.g. "
                "opt.state[p]['exp_avg'].zero_()) or with load_state_dict()")

    def start_state(self) -> None:
        """Every segment's first state, created now (``_Fused._start_state``); frozen
        parameters get theirs as plain tensors, as the torch twin gives them."""
        opt, algo = self.opt, self.opt._algorithm
        index = [(k, p) for k, g in enumerate(opt.param_groups) for p in g["params"]]
        for j in self.frozen:
            k, p = index[j]
            st = opt.state[p]
            st["step"] = torch.tensor(0.0, dtype=torch.float32)
            for name, init in algo._state_spec(opt._hyper(opt.param_groups[k], k)):
                st[name] = _full_like(p, init)
        for seg in self.segments:
            for name, init in algo._state_spec(opt._hyper(
                    opt.param_groups[seg["group"]], seg["group"])):
                seg["arrays"][name] = self._segment_state(seg, name)
                seg["arrays"][name].fill_(init)
                self._expose(seg, name)
            seg["views"] = {n: self.array(t) for n, t in seg["arrays"].items()}
            self._expose(seg, None)
        self._snapshot_state()

    def _all_buffers(self) -> list[torch.Tensor]:
        """Every flat buffer: parameters, gradients, state."""
        return [*self.buffers.values(), *self.grad_buffers.values(),
                *(b for per in self.state_buffers.values() for b in per.values())]

    def _check_replaced(self, replaced: list[int]) -> None:
        """The gradients of parameters ``replaced`` (to copy in) share no byte with
        the flat buffers (parameters, gradients, state) nor with each other, as the
        per-tensor path refuses."""
        mine = self._all_buffers()
        grads = [self.params[j].grad for j in replaced]
        for j, g in zip(replaced, grads):
            _check_storage(g, ("grads", j))
        spans = [(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
                 for t in mine + grads]
        _guard.check_spans(spans, lambda: ["the flat buffers"] * len(mine)
                           + [("grads", j) for j in replaced])

    def _snapshot_state(self) -> None:
        """Record ``opt.state`` as the flat state left it (see ``check_layout``):
        its entries, made ``_Watched`` dicts so that an assignment into one shows."""
        state = self.opt.state
        for p, st in list(state.items()):
            if type(st) is not _Watched:
                state[p] = _Watched(st, self.edited)
        self.exposed = list(state.values())
        # and the pointers of the flat state's views in it (t.data = ... re-points)
        self.exposed_tensors = [t for st in self.exposed for n, t in st.items()
                                if n != "step" and isinstance(t, torch.Tensor)]
        self.exposed_ptrs = [t.data_ptr() for t in self.exposed_tensors]
        self.edited[0] = False

    def step(self, scale: float = 1.0) -> None:
        opt, algo = self.opt, self.opt._algorithm
        self.check_layout()
        hypers = [opt._hyper(group, k) for k, group in enumerate(opt.param_groups)]
        replaced = [(j, self.params[j], gview) for j, gview in self.grad_views.items()
                    if self.params[j].grad is not gview]  # set_to_none, or assigned
        for j, p, gview in replaced:
            if p.dtype is not gview.dtype or p.shape != gview.shape:  # (size 0: no
                raise ValueError(                                  # pointer to tell)
                    f"params[{j}]: now {p.dtype} of shape {tuple(p.shape)}, no longer "
                    "a view of its place in the flat buffer; build the optimizer after "
                    "changing the model (or use flatten=False)")
            if p.grad is not None:  # (copied into its place: any layout)
                _check_tensor(p, type(opt).__name__, _FLOAT_DTYPES, opt.backend,
                              layouts=True, device=opt._device)
        if replaced:
            self._check_replaced([j for j, p, _ in replaced if p.grad is not None])
        specs = [algo._state_spec(hypers[seg["group"]]) for seg in self.segments]
        for seg, spec in zip(self.segments, specs):  # allocate before any write
            for name, _ in spec:
                self._state_buffer(name, seg["dtype"])
        made = algo._step_workspaces(  # (Muon's scratch, for every segment at once)
            opt._impl, self.segments,
            lambda name, dtype: self.array(self._state_buffer(name, dtype)).dtype)
        for seg in self.segments:
            _check_storage(seg["step"], ("state", ("params", seg["members"][0]), "step"))
        steps = [_checks.state_step(seg["step"].item(), (
            "state", ("params", seg["members"][0]), "step")) for seg in self.segments]
        numbers = [{}] * len(self.segments)
        if opt._scalars:  # scalar state, checked before any write
            numbers = [opt._read_scalars(
                seg["scalars"], step, hypers[seg["group"]],
                f"the state of params[{seg['members'][0]}]'s segment")
                for seg, step in zip(self.segments, steps)]
        for _, p, gview in replaced:
            if p.grad is None:
                gview.zero_()
            else:
                gview.copy_(p.grad)
            p.grad = gview
        exposed = [False]
        # every segment's reads before any segment's writes (LAMB's, Adafactor's)
        stage = [] if algo._algorithm.staged else None
        try:
            for seg, spec, held, step in zip(self.segments, specs, numbers, steps):
                hyper = hypers[seg["group"]]
                fresh = False
                for name, init in spec:
                    if name not in seg["arrays"]:
                        buf = self._segment_state(seg, name)
                        buf.fill_(init)
                        seg["arrays"][name] = buf
                        seg["views"] = {n: self.array(t)
                                        for n, t in seg["arrays"].items()}
                        fresh = exposed[0] = True
                        self._expose(seg, name)
                views = dict(seg.get("views", {}))
                views["step"] = step
                views.update(held)
                algo._update(opt._impl, seg["param"], seg["grad"], views, hyper, fresh,
                             scale, tensors=seg["tensors"], made=made, stage=stage)
                after = functools.partial(self._counted, seg, views, exposed)
                if stage is None:
                    after()
                else:
                    stage.append(after)
            for commit in stage or ():
                commit()
        finally:  # opt.state gained entries (also on a step that raised): record them
            if exposed[0]:
                self._snapshot_state()

    def _counted(self, seg: dict[str, Any], views: dict, exposed: list) -> None:
        """A segment's step tensor and scalar state after its writes (``views``: as
        ``_update`` left them); ``exposed[0]``: set where ``opt.state`` gained
        entries."""
        seg["step"].fill_(views["step"])
        for name in self.opt._scalars:
            if name in seg["scalars"]:
                seg["scalars"][name].fill_(views[name])
            else:
                seg["scalars"][name] = torch.tensor(views[name], dtype=_SCALAR_DTYPE())
        if views["step"] == 1:
            self._expose(seg, None)
            exposed[0] = True

    def _expose(self, seg: dict[str, Any], name: str | None) -> None:
        """``opt.state[p]`` entries as views of the flat state (and the segment's step
        tensor), so torch's state_dict sees per-parameter state."""
        for j in seg["members"]:
            p = self.params[j]
            st = self.opt.state[p]
            if self.opt._has_step and "step" not in st:
                st["step"] = seg["step"]
            for key, t in seg["scalars"].items():
                st.setdefault(key, t)
            if name is not None:
                view = self._member_state(j, name, seg["arrays"][name])
                if view is not None:
                    st[name] = view

    def check_loaded(self) -> None:
        """After torch's load and ``_Fused._adopt_loaded`` (each entry complete, of
        its parameter's shape): a segment steps as one, so its parameters must hold
        the same step and the same state names (else the load is rolled back)."""
        held: dict[int, tuple] = {}
        names = set(self.opt._algorithm._state_names)
        for j in self.members:
            st = self.opt.state.get(self.params[j], {})
            numbers = ("step", *self.opt._scalars)
            unknown = sorted(n for n, v in st.items() if n not in numbers
                             and n not in names and isinstance(v, torch.Tensor))
            if unknown:
                raise ValueError(f"state_dict['state'][{j}]: unknown state {unknown}; "
                                 "flatten=True keeps only "
                                 f"{sorted(names)} in its flat buffers")
            kept = sorted(n for n, v in st.items() if n not in numbers and
                          isinstance(v, torch.Tensor))
            if self.state_layout is not None:  # which depends on the shape (checked)
                kept = bool(kept)
            key = (*(float(st.get(n, 0.0)) for n in numbers), kept)
            seg = id(self.segment_of[j])
            if held.setdefault(seg, key) != key:
                raise ValueError(f"state_dict['state'][{j}]: flatten=True steps each "
                                 f"segment as one, but this parameter's "
                                 f"({', '.join(numbers)}, state) {key} differs from its "
                                 f"segment's {held[seg]}")

    def adopt_state(self) -> None:
        """After torch's load (checked): copy the loaded tensors into the flat state
        and point ``opt.state`` back at views of it. Buffers are allocated first, so
        a failure leaves the flat state as it was."""
        loaded = {j: dict(self.opt.state.get(self.params[j], {})) for j in self.members}
        ours = {buf.untyped_storage().data_ptr() for per in self.state_buffers.values()
                for buf in per.values()}
        numbers = ("step", *self.opt._scalars)
        for j, st in loaded.items():
            for name, value in st.items():
                if name not in numbers and isinstance(value, torch.Tensor):
                    self._state_buffer(name, self.segment_of[j]["dtype"])
                    if value.untyped_storage().data_ptr() in ours:
                        st[name] = value.clone()  # a view of the buffer about to be reset
        for seg in self.segments:
            seg["arrays"], seg["scalars"] = {}, {}
            seg["step"] = torch.tensor(0.0, dtype=torch.float32)
        for j, st in loaded.items():
            seg = self.segment_of[j]
            if "step" in st:
                seg["step"].fill_(float(st["step"]))
            for name in self.opt._scalars:  # (as _adopt_loaded made them: 0-d tensors)
                if name in st:
                    seg["scalars"][name] = st[name].detach().clone()
            for name, value in st.items():
                if name in numbers or not isinstance(value, torch.Tensor):
                    continue
                if name not in seg["arrays"]:
                    seg["arrays"][name] = self._segment_state(seg, name)
                    seg["arrays"][name].zero_()
                with torch.no_grad():
                    self._member_state(j, name, seg["arrays"][name]).copy_(value)
        for j in self.members:
            self.opt.state[self.params[j]] = {}
        for seg in self.segments:
            seg["views"] = {n: self.array(t) for n, t in seg["arrays"].items()}
            if seg["arrays"] or seg["step"].item() > 0:
                for name in seg["arrays"]:
                    self._expose(seg, name)
                self._expose(seg, None)
        self._snapshot_state()


_NOTE = ("\n\nRun by fusedopt's fused kernels with torch.optim's arguments, defaults and "
         "checks (a subclass of the torch.optim class, whose constructor it runs). "
         "``foreach`` and ``fused`` are accepted and change nothing (every step is "
         "fused); ``differentiable=True`` and ``capturable=True`` are refused. "
         "``backend``: 'auto' | 'numba' | 'cython' | 'numpy' | 'cuda' (CUDA tensors); "
         "``flatten=True``: the "
         "parameters become views of one buffer, one kernel call per group; "
         "``seed``: stochastic rounding of bfloat16 parameters (CPU backends; on "
         "the GPU they round to nearest, as torch's fused step).")

_OPTIONS = (inspect.Parameter("backend", inspect.Parameter.KEYWORD_ONLY, default="auto",
                              annotation=str),
            inspect.Parameter("flatten", inspect.Parameter.KEYWORD_ONLY, default=False,
                              annotation=bool),
            inspect.Parameter("seed", inspect.Parameter.KEYWORD_ONLY, default=0,
                              annotation=int))


def fused_class(optim_class: type, base: type = _Fused) -> type:
    """The ``torch.optim.Optimizer`` of a fusedopt optimizer class. Where torch.optim
    has the algorithm, a subclass of torch's class (``isinstance`` holds) whose
    constructor is torch's, with torch's signature, defaults, checks and group keys,
    plus ``backend``, ``flatten`` and ``seed``; else fusedopt's constructor. The
    docstring is the algorithm's, with its formula."""
    algo = optim_class._algorithm
    twin = getattr(torch.optim, algo.title, None)
    namespace = {"__doc__": algo.doc + _NOTE, "__module__": __name__,
                 "_algorithm": optim_class, "_has_step": algo.torch_step,
                 "_eager_state": algo.torch_eager}
    if twin is None:
        namespace["__init__"] = _algorithms.constructor(
            algo, f"fusedopt.torch.{algo.title}", {"_Fused": _Fused},
            'backend: str = "auto", flatten: bool = False, seed: int = 0',
            "_Fused.__init__(self, params, {hyper}, backend, flatten, seed)")
        return type(algo.title, (base,), namespace)

    def __init__(self, *args, backend: str = "auto", flatten: bool = False,
                 seed: int = 0, **kwargs) -> None:
        self._flat = None
        twin.__init__(self, *args, **kwargs)
        self._start(backend, flatten, seed)

    signature = inspect.signature(twin.__init__)
    __init__.__signature__ = signature.replace(
        parameters=[*signature.parameters.values(), *_OPTIONS])
    __init__.__qualname__ = f"{algo.title}.__init__"
    __init__.__doc__ = twin.__init__.__doc__
    namespace["__init__"] = __init__
    return type(algo.title, (base, twin), namespace)


#: one torch.optim.Optimizer per fusedopt optimizer class, by name
CLASSES: dict[str, type] = {}
for _name, _cls in _optim.CLASSES.items():
    CLASSES[_name] = fused_class(_cls, CLASSES.get(_cls._algorithm.parent, _Fused))
globals().update(CLASSES)

__all__ = list(CLASSES)


#: ``from fusedopt.torch import LBFGS``: an ImportError that says why and what to use
__getattr__ = _algorithms.module_getattr(__name__)
