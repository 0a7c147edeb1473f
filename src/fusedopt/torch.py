"""fusedopt.torch: drop-in replacements for torch.optim running fusedopt's fused kernels.

    - from torch.optim import AdamW
    + from fusedopt.torch import AdamW

Same constructor arguments and defaults as the torch twins plus ``backend=`` and
``flatten=``; subclasses of ``torch.optim.Optimizer``, so ``zero_grad``, param groups,
``state_dict`` / ``load_state_dict``, learning-rate schedulers, ``GradScaler``,
``clip_grad_norm_``, DDP and ``ZeroRedundancyOptimizer`` work as with torch. The state
has torch's keys and types (``step`` a float32 tensor, ``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq``, ``momentum_buffer``, ``sum``, ``square_avg``, ``grad_avg``), so a
checkpoint moves between ``fusedopt.torch.X`` and ``torch.optim.X`` both ways.

CPU tensors are updated zero-copy through NumPy views, by the algorithm definitions
of ``fusedopt.optim`` (no second copy of any update rule). ``torch.bfloat16``
parameters (numba and cython backends) keep bf16 state, as torch does, but the math
runs in float32 and the parameters are stored with stochastic rounding, drawn from
``seed=`` (default 0), the step and the parameter's position: reproducible whatever
the thread count.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np
import torch

from . import _checks
from . import flat as _flat
from . import optim as _optim
from . import scalars
from .backends import select

_FLOAT_DTYPES = (torch.float32, torch.float64)


def _np(t: torch.Tensor) -> np.ndarray:
    """A flat NumPy view of a contiguous CPU tensor (shares its memory); bf16 as the
    uint16 view of its bits, as the kernels take it."""
    if t.dtype == torch.bfloat16:
        return t.detach().view(torch.int16).numpy().view(np.uint16).reshape(-1)
    return t.detach().numpy().reshape(-1)


class _Fused(torch.optim.Optimizer):
    _algorithm: type[_optim.Optimizer]
    _has_step = True  # torch's SGD keeps no step

    def __init__(self, params, defaults: dict[str, Any], backend: str,
                 flatten: bool, seed: int = 0) -> None:
        self._algorithm._check_group(defaults, "")
        seed = _checks.seed(seed, "seed")
        super().__init__(params, defaults)
        for k, group in enumerate(self.param_groups):
            self._algorithm._check_group(group, k)
        self.backend, self._impl = select(backend, "cpu")
        #: the stochastic-rounding seed of bf16 parameters
        self.seed = seed
        self._dtypes = _FLOAT_DTYPES + (
            (torch.bfloat16,) if "params" in getattr(self._impl, "BF16", ()) else ())
        self._views: dict[int, dict[str, Any]] = {}  # id(param) -> views (holds param)
        self._flat = _FlatTorch(self) if flatten else None

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):
        """One update of every parameter that has a gradient (as torch, parameters
        whose ``grad`` is None are skipped). Checks everything first; an exception
        leaves parameters and state untouched."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if self._flat is not None:
            self._flat.step()
            return loss
        algo, work, index = self._algorithm, [], 0
        for k, group in enumerate(self.param_groups):
            hyper = algo._check_group(group, k)
            for p in group["params"]:
                if p.grad is not None:
                    _check_tensor(p, type(self).__name__, self._dtypes, self.backend)
                    work.append((p, hyper, index))
                index += 1
        for p, hyper, index in work:
            self._step_param(p, hyper, index)
        return loss

    def _step_param(self, p: torch.Tensor, hyper: tuple, index: int) -> None:
        algo = self._algorithm
        spec = algo._state_spec(hyper)
        # NumPy views of the parameter, its state and its step, made once: building
        # them costs ~10 us per tensor and step (the gradient may be a new tensor
        # every step, so its view is made each time). Rebuilt when the parameter's
        # storage moved, the state needed changed, or load_state_dict replaced it.
        # Keyed by id: hashing a tensor is a Python-level call (~1 us).
        views, fresh = self._views.get(id(p)), False
        if views is None or views["ptr"] != p.data_ptr() or views["spec"] != spec:
            state = self.state[p]
            if self._has_step and "step" not in state:
                state["step"] = torch.tensor(0.0, dtype=torch.float32)
            for name, init in spec:
                if state.get(name) is None:
                    state[name] = torch.full_like(p, init,
                                                  memory_format=torch.preserve_format)
                    fresh = True
            views = {name: _np(state[name]) for name, _ in spec}
            views.update(param=_np(p), ptr=p.data_ptr(), spec=spec, tensor=p,
                         step_view=state["step"].numpy() if self._has_step else None)
            self._views[id(p)] = views
        step_view = views["step_view"]
        work = {name: views[name] for name, _ in spec}
        work["step"] = int(step_view) if step_view is not None else 0
        seed = (scalars.rounding_seed(self.seed, work["step"] + 1, index)
                if views["param"].dtype == np.uint16 else 0)
        algo._update(self._impl, views["param"], _np(p.grad), work, hyper, fresh, 1.0,
                     seed)
        if step_view is not None:
            step_view[...] = work["step"]

    def zero_grad(self, set_to_none: bool = True) -> None:
        if self._flat is not None:
            self._flat.zero_grad()  # grads stay views of the flat gradient buffer
        else:
            super().zero_grad(set_to_none=set_to_none)

    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        if self._flat is not None:  # per-parameter step tensors, never one shared
            for st in sd["state"].values():
                if "step" in st:
                    st["step"] = st["step"].clone()
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._flat is not None:
            self._flat.check_loadable(state_dict)
        super().load_state_dict(state_dict)
        self._views.clear()  # the state tensors were replaced
        if self._flat is not None:
            self._flat.adopt_state()


def _check_tensor(p: torch.Tensor, owner: str, dtypes: tuple, backend: str) -> None:
    """Everything a parameter and its gradient need, raised before any write;
    ``dtypes``: the parameter dtypes the backend steps."""
    g = p.grad
    if (p.is_cpu and g.is_cpu and not g.is_sparse and p.dtype in dtypes
            and g.dtype == p.dtype and p.is_contiguous() and g.is_contiguous()):
        return  # the common case, first and fast (~1 us, paid per tensor and step)
    if g.is_sparse:
        raise RuntimeError(f"{owner} does not support sparse gradients (fusedopt's "
                           "kernels update dense buffers); use torch.optim.SparseAdam")
    if not (p.is_cpu and g.is_cpu):
        raise RuntimeError(f"{owner}: parameter on {p.device}, gradient on {g.device}; "
                           "fusedopt.torch steps CPU tensors")
    if p.dtype not in dtypes or g.dtype != p.dtype:
        raise TypeError(f"{owner}: expected float32 or float64 parameters (bfloat16 on "
                        f"the numba and cython backends; this is {backend!r}) with "
                        f"gradients of the same dtype, got {p.dtype} and {g.dtype}")
    raise ValueError(f"{owner}: parameters and gradients must be contiguous (a fused "
                     "kernel updates them in place through one flat view)")


class _FlatTorch:
    """``flatten=True``: the parameters are re-pointed as views of one buffer per
    dtype (``p.data``), their gradients likewise (``p.grad``), and the state is flat;
    a step is one kernel call per contiguous (group, dtype) segment.

    ``zero_grad`` zeroes the gradient buffer instead of setting gradients to None, so
    autograd keeps accumulating into it; a gradient that was replaced anyway is copied
    in. A parameter with no gradient is stepped with a zero one (torch's behaviour
    with ``zero_grad(set_to_none=False)``).
    """

    def __init__(self, opt: _Fused) -> None:
        self.opt = opt
        params = [p for group in opt.param_groups for p in group["params"]]
        for p in params:
            if p.device.type != "cpu" or p.dtype not in _FLOAT_DTYPES:
                raise TypeError(f"flatten=True: expected float32/float64 CPU parameters, "
                                f"got {p.dtype} on {p.device}")
        shapes = [tuple(p.shape) for p in params]
        dtypes = [np.dtype(str(p.dtype).removeprefix("torch.")) for p in params]
        layout = _flat.FlatParams(shapes, dtypes)  # offsets only; buffers are torch's
        self.buffers = {dt: torch.from_numpy(b) for dt, b in layout.buffers.items()}
        self.grad_buffers = {dt: torch.from_numpy(b)
                             for dt, b in layout.grad_buffers.items()}
        self.grad_views = []
        for p, (dt, a, b) in zip(params, layout.offsets):
            view = self.buffers[dt][a:b].view_as(p)
            view.copy_(p.detach())
            p.data = view
            gview = self.grad_buffers[dt][a:b].view_as(p)
            if p.grad is not None:
                gview.copy_(p.grad)
            p.grad = gview
            self.grad_views.append(gview)
        self.params = params
        self.segments: list[dict[str, Any]] = []
        self.segment_of: list[dict[str, Any]] = [None] * len(params)
        i = 0
        for k, group in enumerate(opt.param_groups):
            members = list(range(i, i + len(group["params"])))
            for dt, a, b, run in _flat.segments(layout, members):
                seg = {"group": k, "dtype": dt, "start": a, "stop": b,
                       "param": self.buffers[dt][a:b].numpy(),
                       "grad": self.grad_buffers[dt][a:b].numpy(),
                       "step": torch.tensor(0.0, dtype=torch.float32), "arrays": {}}
                self.segments.append(seg)
                for j in run:
                    self.segment_of[j] = seg
            i += len(group["params"])
        self.offsets = layout.offsets
        self.state_buffers: dict[str, dict[np.dtype, torch.Tensor]] = {}

    def _state_buffer(self, name: str, dt) -> torch.Tensor:
        per_dtype = self.state_buffers.setdefault(name, {})
        if dt not in per_dtype:
            per_dtype[dt] = torch.zeros_like(self.buffers[dt])
        return per_dtype[dt]

    def zero_grad(self) -> None:
        for gbuf in self.grad_buffers.values():
            gbuf.zero_()
        for p, gview in zip(self.params, self.grad_views):
            p.grad = gview

    def step(self) -> None:
        opt, algo = self.opt, self.opt._algorithm
        hypers = [algo._check_group(group, k) for k, group in enumerate(opt.param_groups)]
        replaced = [(p, gview) for p, gview in zip(self.params, self.grad_views)
                    if p.grad is not gview]  # set_to_none, or assigned: copy it in
        for p, _ in replaced:
            if p.grad is not None:
                _check_tensor(p, type(opt).__name__, _FLOAT_DTYPES, opt.backend)
        for p, gview in replaced:
            if p.grad is None:
                gview.zero_()
            else:
                gview.copy_(p.grad)
            p.grad = gview
        for seg in self.segments:
            hyper = hypers[seg["group"]]
            fresh = False
            for name, init in algo._state_spec(hyper):
                if name not in seg["arrays"]:
                    buf = self._state_buffer(name, seg["dtype"])[seg["start"]:seg["stop"]]
                    buf.fill_(init)
                    seg["arrays"][name] = buf
                    seg["views"] = {n: t.numpy() for n, t in seg["arrays"].items()}
                    fresh = True
                    self._expose(seg, name)
            views = dict(seg.get("views", {}))
            views["step"] = int(seg["step"].item())
            algo._update(opt._impl, seg["param"], seg["grad"], views, hyper, fresh)
            seg["step"].fill_(views["step"])
            if views["step"] == 1:
                self._expose(seg, None)

    def _expose(self, seg: dict[str, Any], name: str | None) -> None:
        """``opt.state[p]`` entries as views of the flat state (and the segment's step
        tensor), so torch's state_dict sees per-parameter state."""
        for j, p in enumerate(self.params):
            if self.segment_of[j] is not seg:
                continue
            st = self.opt.state[p]
            if self.opt._has_step and "step" not in st:
                st["step"] = seg["step"]
            if name is not None:
                _, a, b = self.offsets[j]
                st[name] = seg["arrays"][name][a - seg["start"]:b - seg["start"]].view_as(p)

    def check_loadable(self, state_dict: dict[str, Any]) -> None:
        """A segment steps as one: its parameters' saved steps must agree."""
        saved = state_dict.get("state", {})
        steps: dict[int, float] = {}
        for j in range(len(self.params)):
            st = saved.get(j, {})
            step = float(st["step"]) if "step" in st else 0.0
            seg = id(self.segment_of[j])
            if steps.setdefault(seg, step) != step:
                raise ValueError(f"state_dict['state'][{j}]['step']: flatten=True steps "
                                 f"each segment as one, but this parameter's step {step} "
                                 f"differs from its segment's {steps[seg]}")

    def adopt_state(self) -> None:
        """After torch's load_state_dict: copy the loaded tensors into the flat state
        and point ``opt.state`` back at views of it."""
        for seg in self.segments:
            seg["arrays"] = {}
        for j, p in enumerate(self.params):
            loaded = self.opt.state.get(p, {})
            seg = self.segment_of[j]
            if "step" in loaded:
                seg["step"].fill_(float(loaded["step"]))
            _, a, b = self.offsets[j]
            for name, value in loaded.items():
                if name == "step" or not isinstance(value, torch.Tensor):
                    continue
                if name not in seg["arrays"]:
                    seg["arrays"][name] = self._state_buffer(name, seg["dtype"])[
                        seg["start"]:seg["stop"]]
                    seg["arrays"][name].zero_()
                seg["arrays"][name][a - seg["start"]:b - seg["start"]].copy_(
                    value.reshape(-1))
        for p in self.params:
            self.opt.state[p] = {}
        for seg in self.segments:
            seg["views"] = {n: t.numpy() for n, t in seg["arrays"].items()}
            if seg["arrays"] or seg["step"].item() > 0:
                for name in seg["arrays"]:
                    self._expose(seg, name)
                self._expose(seg, None)


_NOTE = ("\n\nRun by fusedopt's fused kernels with torch.optim's arguments and defaults. "
         "``backend``: 'auto' | 'numba' | 'cython' | 'numpy'; ``flatten=True``: the "
         "parameters become views of one buffer, one kernel call per group; "
         "``seed``: stochastic rounding of bfloat16 parameters.")


class SGD(_Fused):
    __doc__ = (_optim.SGD.__doc__ or "") + _NOTE
    _algorithm = _optim.SGD
    _has_step = False

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0,
                 dampening: float = 0.0, weight_decay: float = 0.0,
                 nesterov: bool = False, *, maximize: bool = False,
                 backend: str = "auto", flatten: bool = False, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, momentum=momentum, dampening=dampening,
                                      weight_decay=weight_decay, nesterov=nesterov,
                                      maximize=maximize), backend, flatten, seed)


class Adam(_Fused):
    __doc__ = (_optim.Adam.__doc__ or "") + _NOTE
    _algorithm = _optim.Adam

    def __init__(self, params, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0, amsgrad: bool = False, *,
                 maximize: bool = False, backend: str = "auto",
                 flatten: bool = False, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps,
                                      weight_decay=weight_decay, amsgrad=amsgrad,
                                      maximize=maximize), backend, flatten, seed)


class AdamW(Adam):
    __doc__ = (_optim.AdamW.__doc__ or "") + _NOTE
    _algorithm = _optim.AdamW

    def __init__(self, params, lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, amsgrad: bool = False, *,
                 maximize: bool = False, backend: str = "auto",
                 flatten: bool = False, seed: int = 0) -> None:
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize, backend=backend,
                         flatten=flatten, seed=seed)


class Adagrad(_Fused):
    __doc__ = (_optim.Adagrad.__doc__ or "") + _NOTE
    _algorithm = _optim.Adagrad

    def __init__(self, params, lr: float = 1e-2, lr_decay: float = 0.0,
                 weight_decay: float = 0.0, initial_accumulator_value: float = 0.0,
                 eps: float = 1e-10, *, maximize: bool = False, backend: str = "auto",
                 flatten: bool = False, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                                      initial_accumulator_value=initial_accumulator_value,
                                      eps=eps, maximize=maximize), backend, flatten, seed)


class RMSprop(_Fused):
    __doc__ = (_optim.RMSprop.__doc__ or "") + _NOTE
    _algorithm = _optim.RMSprop

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 weight_decay: float = 0.0, momentum: float = 0.0, centered: bool = False,
                 *, maximize: bool = False, backend: str = "auto",
                 flatten: bool = False, seed: int = 0) -> None:
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps,
                                      weight_decay=weight_decay, momentum=momentum,
                                      centered=centered, maximize=maximize),
                         backend, flatten, seed)


__all__ = ["SGD", "Adagrad", "Adam", "AdamW", "RMSprop"]
