"""What each algorithm is, declared once: to the kernels (``Spec``) and to its users
(``Algorithm``).

A ``Spec`` names a kernel (its rule is ``fusedopt.rules.<name>``, the per-element
math, mirrored by ``kernels/rules.pxd``), its state slots in the rule's order (torch's
state keys), and its raw hyperparameters in the order of the backend contract
(``impl.<name>(param, grad, *slots, *hyper, grad_scale, seed=0, out=None)``, a slot
None when its option is off); ``scalars`` turns the raw hyperparameters into the
per-step host scalars the rule takes (``fusedopt.scalars``, float64 on the host), and
``flags`` into the boolean options compiled into the kernel. ``contract`` builds a backend's function from a spec and the backend's one
generic launcher, so a backend holds no code per algorithm.

An ``Algorithm`` is what a user constructs: its hyperparameters with torch's names,
defaults and order (``Hyper``: default, check), the state arrays a group's options
enable and their first value, how its kernel's slots and raw hyperparameters are read
from a group and a state, and the docstring with the update formula.
``fusedopt.optim`` builds an optimizer class from each (real signature, docstring),
and ``fusedopt.torch`` a ``torch.optim.Optimizer`` from that.

The NumPy reference backend does not use this module: it is written from the
textbook formulas, independently.
"""

from __future__ import annotations

import math
from collections import namedtuple
from typing import Any, Callable, NamedTuple

import numpy as np

from . import _checks, _device, scalars
from .backends import policy


class Spec(NamedTuple):
    name: str
    slots: tuple[str, ...]
    hyper: tuple[str, ...]
    scalars: Callable[..., tuple[float, ...]]
    flags: Callable[..., tuple[bool, ...]]  # (slots, *hyper) -> options
    #: a reduction before the element pass (LAMB's per-tensor norms), or None: the
    #: rule ``rules.<name>_norms`` returns two values per element whose squares are
    #: summed over the array (float64) by the backend's ``norms`` launcher, and
    #: ``norms(h, sum_a, sum_b)`` gives the element pass its host scalars from them
    norms: Callable[..., tuple[float, ...]] | None = None
    #: a step made of passes around a host stage (Muon: ``muon_momentum``'s pass, the
    #: Newton-Schulz iteration, SGD's pass), or None: the name of its first pass's
    #: spec; each backend's contract function is ``muon_contract``'s
    host: str | None = None


SGD = Spec(
    "sgd", ("momentum_buffer",),
    ("fresh_buffer", "lr", "momentum", "dampening", "weight_decay", "nesterov"),
    lambda fresh, lr, momentum, dampening, wd, nesterov: scalars.sgd(
        fresh, lr, momentum, dampening, wd),
    lambda s, fresh, lr, momentum, dampening, wd, nesterov: (
        wd != 0.0, s[0] is not None, s[0] is not None and nesterov))

ADAM = Spec(
    "adam", ("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    ("step", "lr", "beta1", "beta2", "eps", "weight_decay", "decoupled"),
    scalars.adam,
    lambda s, step, lr, beta1, beta2, eps, wd, decoupled: (
        wd != 0.0, decoupled, s[2] is not None))

ADAGRAD = Spec(
    "adagrad", ("sum",),
    ("step", "lr", "lr_decay", "eps", "weight_decay"),
    scalars.adagrad,
    lambda s, step, lr, lr_decay, eps, wd: (wd != 0.0,))

RMSPROP = Spec(
    "rmsprop", ("square_avg", "grad_avg", "momentum_buffer"),
    ("lr", "alpha", "eps", "weight_decay", "momentum"),
    scalars.rmsprop,
    lambda s, lr, alpha, eps, wd, momentum: (
        wd != 0.0, s[1] is not None, s[2] is not None))

LION = Spec(
    "lion", ("exp_avg",), ("lr", "beta1", "beta2", "weight_decay"),
    lambda lr, beta1, beta2, wd: (lr, beta1, 1.0 - beta1, beta2, 1.0 - beta2,
                                  1.0 - lr * wd),
    lambda s, lr, beta1, beta2, wd: (wd != 0.0,))

ADAMAX = Spec(
    "adamax", ("exp_avg", "exp_inf"),
    ("step", "lr", "beta1", "beta2", "eps", "weight_decay"),
    lambda step, lr, beta1, beta2, eps, wd: (1.0 - beta1, beta2, eps,
                                             lr / (1.0 - beta1 ** step), wd),
    lambda s, step, lr, beta1, beta2, eps, wd: (wd != 0.0,))

ADADELTA = Spec(
    "adadelta", ("square_avg", "acc_delta"), ("lr", "rho", "eps", "weight_decay"),
    lambda lr, rho, eps, wd: (lr, rho, 1.0 - rho, eps, wd),
    lambda s, lr, rho, eps, wd: (wd != 0.0,))

RADAM = Spec(
    "radam", ("exp_avg", "exp_avg_sq"),
    ("step", "lr", "beta1", "beta2", "eps", "weight_decay", "decoupled"),
    scalars.radam,
    lambda s, step, lr, beta1, beta2, eps, wd, decoupled: (wd != 0.0, decoupled))

RPROP = Spec(
    "rprop", ("prev", "step_size"),
    ("etaminus", "etaplus", "step_size_min", "step_size_max"),
    lambda etaminus, etaplus, lo, hi: (etaminus, etaplus, lo, hi),
    lambda s, etaminus, etaplus, lo, hi: ())

NADAM = Spec(
    "nadam", ("exp_avg", "exp_avg_sq"),
    ("step", "mu_product", "scalar_kinds", "lr", "beta1", "beta2", "eps",
     "weight_decay", "momentum_decay", "decoupled"),
    scalars.nadam,
    lambda s, step, mp, kinds, lr, beta1, beta2, eps, wd, md, decoupled: (
        wd != 0.0, decoupled))

ASGD = Spec(
    "asgd", ("ax",), ("eta", "mu", "lambd", "weight_decay"),
    scalars.asgd,
    lambda s, eta, mu, lambd, wd: (wd != 0.0,))

LAMB = Spec(
    "lamb", ("exp_avg", "exp_avg_sq"),
    ("step", "lr", "beta1", "beta2", "eps", "weight_decay"),
    scalars.lamb,
    lambda s, step, lr, beta1, beta2, eps, wd: (wd != 0.0,),
    norms=scalars.lamb_trust)

def _small_weight(w: float, state) -> bool:
    """torch's lerp switch ``|w| < 0.5``, decided as its kernel does on ``w`` in the
    compute dtype: float32 beside float32 (or bf16) ``state``, where ``1 - momentum``
    a hair below 0.5 rounds to 0.5 (a ``state`` with no dtype: as float64)."""
    dtype = getattr(state, "dtype", None)
    if dtype is not None and dtype != np.float64:
        w = float(np.float32(w))
    return abs(w) < 0.5


MUON_MOMENTUM = Spec(
    "muon_momentum", ("momentum_buffer",), ("momentum", "nesterov"),
    lambda momentum, nesterov: (1.0 - momentum, momentum),
    lambda s, momentum, nesterov: (nesterov, _small_weight(1.0 - momentum, s[0]),
                                   _small_weight(momentum, s[0])))

#: Muon: no rule of its own; its host stage between two passes (``muon_contract``)
MUON = Spec(
    "muon", ("momentum_buffer",),
    ("shape", "lr", "weight_decay", "momentum", "nesterov", "a", "b", "c", "eps",
     "ns_steps", "adjust_lr_fn"),
    scalars.muon, lambda s, *hyper: (), host="muon_momentum")

ADAFACTOR_UPDATE = Spec(
    "adafactor_update", ("variance",),
    ("w", "eps1", "param_scale", "eps2", "rho", "d", "numel", "factored", "small",
     "decay"),
    scalars.adafactor_update,
    lambda s, w, eps1, param_scale, eps2, rho, d, numel, factored, small, decay: (
        factored, small, decay),
    norms=scalars.adafactor_step_size)

#: Adafactor: its factored moments on the host, then ``adafactor_update``'s passes
#: (``adafactor_contract``)
ADAFACTOR = Spec(
    "adafactor", ("row_var", "col_var", "variance"),
    ("shape", "step", "lr", "beta2_decay", "eps1", "eps2", "d", "weight_decay"),
    scalars.adafactor_update, lambda s, *hyper: (), host="adafactor_update")

#: the specs with a rule of their own, compiled by every backend
SPECS = (SGD, ADAM, ADAGRAD, RMSPROP, LION, ADAMAX, ADADELTA, RADAM, RPROP, NADAM, ASGD,
         LAMB, MUON_MOMENTUM, ADAFACTOR_UPDATE)
#: the kernels with a reduction pass (``Spec.norms``): stepped tensor by tensor, never
#: in one multi-tensor call (their scalars differ per tensor)
REDUCING = frozenset(spec.name for spec in SPECS if spec.norms is not None)
#: the algorithms a step runs tensor by tensor: a reduction, or a host stage that
#: needs each tensor's shape (Muon)
PER_TENSOR = REDUCING | {MUON.name, ADAFACTOR.name}


def _torch_lerp(start, end, w: float):
    """torch's lerp on host arrays (its formula; its kernel's FMA aside)."""
    if abs(w) < 0.5:
        return start + w * (end - start)
    return end - (end - start) * (1.0 - w)


class HostFactors:
    """Adafactor's factored stage on host arrays (``adafactor_contract``), the base
    of the compiled backends' (``numba_cpu.NumbaFactors``, ``cython.CythonFactors``;
    ``numba_cuda.DeviceFactors`` is the device twin). A backend's class gives:

    - ``means(grad, n, m, scale2)``: ``(rows, cols)``, host arrays ``(batch, n)``
      and ``(batch, m)`` in ``grad``'s dtype, the means of ``scale2 g**2`` over each
      row and column of the flat ``grad`` seen as ``batch`` matrices ``n x m``;
    - ``prepare(r, c, denom)``: from the factors ``r`` ``(batch, n)``, ``c``
      ``(batch, m)`` and ``denom`` ``(batch,)`` (host arrays in the parameter's
      dtype), what the passes take: ``(a, s, c, t, parts, n, m)``, flat, with
      ``a = r / denom`` and ``s = 1 / sqrt(a)`` per row, ``t = 1 / sqrt(c)`` per
      column, and ``parts`` where the passes keep their blocks' sums (float64, two
      per block of ``policy.REDUCE_BLOCK`` elements: made here, before any write);
    - ``norms(flags, h, param, grad, factors, grad_scale)`` and ``update(...,
      seed=0, out=None)``: the read-only pass of ``rules.adafactor_update_norms``
      (its two sums of squares) and the pass of ``rules.adafactor_update``, each with
      the estimate's reciprocal root made per element from the prepared ``factors``
      (``rules.adafactor_root``): no array of the parameter's size;
    - ``read(state)`` and ``write(state, value)``: a factor to and from the host."""

    @staticmethod
    def roots(r, c, denom) -> tuple[np.ndarray, ...]:
        """``(a, s, c, t)`` of ``prepare``: host arrays, flat (a device's too)."""
        with np.errstate(divide="ignore", invalid="ignore"):  # (zeros: inf or NaN, as
            a = r / denom[:, None]                            # torch's estimate)
            s, t = (a.dtype.type(1) / np.sqrt(x) for x in (a, c))
        return a.reshape(-1), s.reshape(-1), c.reshape(-1), t.reshape(-1)

    @classmethod
    def prepare(cls, r, c, denom) -> tuple:
        n, m = r.shape[1], c.shape[1]
        parts = np.empty((-(-r.size * m // policy.REDUCE_BLOCK), 2), np.float64)
        return (*cls.roots(r, c, denom), parts, n, m)

    @staticmethod
    def sums_arrays(grad, n: int, m: int):
        """``(rows, parts)``: where a compiled means kernel puts the float64 sums of
        ``g**2`` of each row, and of each column of each block of
        ``backends.policy.MEANS_ROWS`` rows (one row of ``parts`` per block)."""
        batch, per = grad.size // (n * m), -(-n // policy.MEANS_ROWS)
        return np.empty(batch * n, np.float64), np.empty((batch * per, m), np.float64)

    @staticmethod
    def from_sums(rows, parts, grad, n: int, m: int, scale2: float):
        """``means``'s result from a kernel's ``sums_arrays``: the blocks' column sums
        added in order, both scaled to means and rounded to ``grad``'s dtype."""
        batch, dtype = grad.size // (n * m), grad.dtype.type
        cols = parts.reshape(batch, -1, m).sum(axis=1)
        return ((rows.reshape(batch, n) * (scale2 / m)).astype(dtype),
                (cols * (scale2 / n)).astype(dtype))

    @staticmethod
    def read(state):
        """A factor as a host array (here: itself)."""
        return state

    @staticmethod
    def write(state, value) -> None:
        """``state[...] = value`` (a host array of its size)."""
        state[...] = value.reshape(-1)


def adafactor_contract(update: Callable, factors) -> Callable:
    """A backend's ``adafactor(param, grad, row_var, col_var, variance, shape, step,
    lr, beta2_decay, eps1, eps2, d, weight_decay, grad_scale, seed=0, out=None,
    stage=None)``: torch's Adafactor step of one parameter of ``shape``
    (``variance`` for a tensor of fewer than two dimensions, else ``row_var`` and
    ``col_var``, its factored second moments over the last two). A vector: the
    backend's ``adafactor_update`` (a read-only norms pass, then the element pass,
    ``variance`` a state slot). A matrix (a batch of them): the row and column means
    of the squared gradient (``factors.means``, see ``HostFactors``) update the
    factors on the host, in the parameter's dtype, then ``factors.norms`` and
    ``factors.update`` make their estimate ``r_i c_j / max(mean(r), eps1)`` element
    by element in their passes; the factors are written after them, as made before
    the update pass, so nothing is written before it and nothing allocated after.
    ``stage``: a list, to which the writes are appended as one callable instead of
    being made (a segment of tensors runs every tensor's reads first, then their
    writes; a vector's norms pass runs now, its element pass is staged: on the host
    backends no allocation can fail between two tensors' writes). Reads 24 bytes per
    float32 element in all: the means read the gradient, the norms the parameter and
    gradient, the update those and writes the parameter."""
    def adafactor(param, grad, row_var, col_var, variance, shape, step, lr,
                  beta2_decay, eps1, eps2, d, weight_decay, grad_scale, seed=0,
                  out=None, stage=None):
        held = variance if variance is not None else row_var
        bf16 = held.dtype == np.uint16 and param.dtype == np.float32  # (bf16 bits)
        if held.dtype != param.dtype and not bf16:
            raise TypeError(f"adafactor: state of dtype {held.dtype} beside {param.dtype} "
                            "parameters; expected the parameters' dtype, or bf16 bits "
                            "(uint16) beside float32 parameters")
        if eps1 is None:
            eps1 = float(np.finfo(param.dtype).eps)
        w = float(step) ** beta2_decay
        rho = min(lr, 1 / (float(step) ** 0.5))
        common = (eps1, 1.0 - lr * weight_decay, eps2, rho, d, param.size)
        flags = (abs(w) < 0.5, weight_decay != 0)
        if variance is not None:  # (its norms pass now, its element pass staged)
            update(param, grad, variance, w, *common, False, *flags, grad_scale, seed,
                   out, stage)
            return
        n, m = shape[-2], shape[-1]
        rows, cols = factors.means(grad, n, m, grad_scale * grad_scale)
        r_held, c_held = factors.read(row_var), factors.read(col_var)
        if bf16:  # float32 math, rounded to nearest even when stored, as the kernels
            r_held, c_held = (a.view(_checks.bf16()).astype(np.float32)
                              for a in (r_held, c_held))
        r = _torch_lerp(r_held.reshape(-1, n), rows, w)
        c = _torch_lerp(c_held.reshape(-1, m), cols, w)
        denom = np.maximum(r.mean(axis=1), param.dtype.type(eps1))
        f = (True, *flags)  # factored, small, decay
        h = scalars.adafactor_update(w, *common, *f)
        prepared = factors.prepare(r, c, denom)
        h = scalars.adafactor_step_size(h, *factors.norms(f, h, param, grad, prepared,
                                                          grad_scale))
        kept = [v.astype(_checks.bf16()).view(np.uint16) if bf16 else v for v in (r, c)]

        def commit():
            factors.update(f, h, param, grad, prepared, grad_scale, seed, out)
            factors.write(row_var, kept[0])
            factors.write(col_var, kept[1])
        if stage is None:
            commit()
        else:
            stage.append(commit)
    return adafactor


def muon_contract(momentum_pass: Callable, sgd: Callable, workspace: Callable
                  ) -> Callable:
    """A backend's ``muon(param, grad, momentum_buffer, shape, lr, weight_decay,
    momentum, nesterov, a, b, c, eps, ns_steps, adjust_lr_fn, grad_scale, seed=0,
    out=None, work=None)``: Muon's step of one ``shape = (rows, cols)`` parameter,
    from the backend's ``muon_momentum`` (``momentum_pass``) and ``sgd`` contract
    functions and ``workspace(shapes, dtype, state_dtype)``, the scratch arrays for
    matrices of ``shapes`` (``fusedopt.newton_schulz.Workspace``: its ``buffers``,
    ``copy`` and ``orthogonalise``; on a device, device arrays). ``work``: such a
    workspace, reserved by the caller before its step's first write (an optimizer's,
    for all its matrices), else one is made here. Three stages:

    1. ``rules.muon_momentum`` over a copy of the buffer: ``B = B.lerp(g, 1 -
       momentum)`` and ``U = g.lerp(B, momentum)`` (Nesterov) or ``U = B``, into the
       workspace;
    2. ``O = orthogonalise(U)`` (the workspace's: host BLAS, or torch's products on
       the device);
    3. the new buffer copied in, and SGD's step with weight decay: ``theta - lr_t (O
       + lr wd / lr_t theta)``, which is torch's ``theta (1 - lr wd) - lr_t O`` with
       ``lr_t`` the adjusted rate (``fusedopt.scalars.muon``).

    Nothing the caller owns is written before the orthogonalisation has returned, so
    an exception there leaves the parameter and its buffer as they were."""
    def muon(param, grad, momentum_buffer, shape, lr, weight_decay, momentum, nesterov,
             a, b, c, eps, ns_steps, adjust_lr_fn, grad_scale, seed=0, out=None,
             work=None):
        rows, cols = shape
        lr_t, decay = scalars.muon(shape, lr, weight_decay, momentum, nesterov, a, b, c,
                                   eps, ns_steps, adjust_lr_fn)
        if work is None:
            work = workspace([shape], param.dtype, momentum_buffer.dtype)
        u, buf = work.buffers(rows * cols)
        work.copy(buf, momentum_buffer)
        momentum_pass(u, grad, buf, momentum, nesterov, grad_scale)
        o = work.orthogonalise(u.reshape(rows, cols), a, b, c, eps, ns_steps)
        work.copy(momentum_buffer, buf)
        sgd(param, o, None, False, lr_t, 0.0, 0.0, decay, False, 1.0, seed, out)
    muon.workspace = workspace
    return muon


def muon_passes(call: Callable) -> tuple[Callable, Callable]:
    """Muon's momentum pass and SGD's step (``muon_contract``'s ``momentum_pass`` and
    ``sgd``) from a CPU backend's launcher ``call`` (``contract``'s ``launch`` with a
    ``parallel=`` keyword), always on one thread: the Newton-Schulz products between
    them run on BLAS's threads, which a parallel region's OpenMP threads, spin-waiting
    after it, slow down 2x (256 x 256: 6.4 ms a step instead of 3.1); the passes are
    a small part of a step dominated by matrix products."""
    def serial(name, flags, states, h, param, grad, grad_scale, seed=0, out=None):
        call(name, flags, states, h, param, grad, grad_scale, seed, out, parallel=False)
    return contract(MUON_MOMENTUM, serial), contract(SGD, serial)


def contract(spec: Spec, launch: Callable, norms: Callable | None = None) -> Callable:
    """The backend contract's ``<name>(param, grad, *slots, *hyper, grad_scale,
    seed=0, out=None)`` for ``spec`` (with those parameter names), running
    ``launch(name, flags, slots, scalars, param, grad, grad_scale, seed, out)``.
    Written out and compiled as the named function, as ``collections.namedtuple``
    does: a generic ``*args`` wrapper costs ~0.5 us more per call. A spec with a
    reduction (``Spec.norms``) first runs the backend's ``norms(name, flags, slots,
    scalars, param, grad, grad_scale)``, a read-only pass that returns its two sums
    of squares, and launches with the scalars ``spec.norms`` makes of them; its
    function takes ``stage=None`` too: a list, to which the launch is appended (as
    one callable) instead of being made, after the norms pass (a segment runs
    every tensor's reads first, then the writes: ``Algorithm.staged``)."""
    slots, hyper = ", ".join(spec.slots), ", ".join(spec.hyper)
    if spec.norms is None:
        source = (
            f"def {spec.name}(param, grad, {slots}, {hyper}, grad_scale, seed=0,\n"
            f"        out=None):\n"
            f"    states = ({slots},)\n"
            f"    f, h = flags(states, {hyper}), host_scalars({hyper})\n"
            f"    return launch({spec.name!r}, f, states, h, param, grad, grad_scale,\n"
            f"                  seed, out)\n")
    else:
        source = (
            f"def {spec.name}(param, grad, {slots}, {hyper}, grad_scale, seed=0,\n"
            f"        out=None, stage=None):\n"
            f"    states = ({slots},)\n"
            f"    f, h = flags(states, {hyper}), host_scalars({hyper})\n"
            f"    h = finish(h, *norms({spec.name!r}, f, states, h, param, grad,\n"
            f"                         grad_scale))\n"
            f"    if stage is not None:\n"
            f"        stage.append(lambda: launch({spec.name!r}, f, states, h, param,\n"
            f"                                    grad, grad_scale, seed, out))\n"
            f"        return\n"
            f"    return launch({spec.name!r}, f, states, h, param, grad, grad_scale,\n"
            f"                  seed, out)\n")
    if spec.norms is not None and norms is None:
        raise TypeError(f"contract: {spec.name} needs the backend's norms launcher")
    run = define(spec.name, source, {"launch": launch, "flags": spec.flags,
                                     "host_scalars": spec.scalars, "norms": norms,
                                     "finish": spec.norms},
                 f"fusedopt.algorithms.contract: {spec.name}")
    run.__doc__ = f"One fused pass of ``fusedopt.rules.{spec.name}``."
    return run


# -- algorithms: what users construct ----------------------------------------------

class Hyper(NamedTuple):
    """One hyperparameter of a param group: torch's name and default, and its check
    ``(value, name) -> value`` (names are formatted only on error, see _checks)."""
    name: str
    default: Any
    check: Callable[[Any, Any], Any]
    keyword: bool = False  # keyword-only in the constructor
    annotation: str = ""  # the constructor's annotation, if not the default's type


def _number(low: float = 0.0, high: float = math.inf):
    return lambda x, name: _checks.number(x, name, low, high)


_NUMBER = _checks.number
_FLAG = _checks.flag
_MAXIMIZE = Hyper("maximize", False, _FLAG, keyword=True)


class Algorithm(NamedTuple):
    """An optimizer: ``params`` in constructor order; ``state(h)`` the state arrays
    (name, first value) the checked group ``h`` needs; ``call(run, p, g, s, h, step,
    fresh, grad_scale, seed, out)`` calls ``run``, its kernel's contract function
    (``Spec``), with the slot arrays of state ``s`` (None where off) and the raw
    hyperparameters of ``h`` (one expression: a step pays for every indirection);
    ``validate(h, where)`` checks across hyperparameters. ``scalar_state``: the
    algorithm's per-tensor scalar state besides ``step``, under torch's names
    (NAdam's ``mu_product``), each a number rounded as torch stores it (``kinds``:
    ``fusedopt.scalars.FLOAT32_KINDS`` unless ``s["scalar_kinds"]`` says otherwise);
    ``scalar_init(h, kinds)`` their first values, ``scalar_next(h, t, values,
    kinds)`` their values after step ``t`` (``call`` reads the current ones from
    ``s``)."""
    title: str
    kernel: Spec
    params: tuple[Hyper, ...]
    state: Callable
    call: Callable
    doc: str
    validate: Callable | None = None
    torch_step: bool = True  # torch's state holds a "step" (not SGD's)
    torch_eager: bool = False  # torch creates the state at construction (Adagrad)
    parent: str | None = None  # the class it subclasses (AdamW: Adam), as in torch
    scalar_state: tuple[str, ...] = ()
    scalar_init: Callable | None = None
    scalar_next: Callable | None = None
    #: ``check_param(array, where)``: raises for a parameter the algorithm cannot step
    #: (Muon: float32 or float64 matrices only); None: any
    check_param: Callable | None = None
    #: whether ``call`` takes ``s["stage"]``, a list its writes are appended to (as
    #: one callable) instead of being made: a segment runs every tensor's reads and
    #: allocations first (Adafactor's host stage, LAMB's and Adafactor's norms
    #: passes), then the writes
    staged: bool = False
    #: ``state_shape(name, shape)``: the shape of the state array ``name`` of a
    #: parameter of ``shape``, None where it keeps none (Adafactor's factored
    #: moments); None: every state array has its parameter's shape
    state_shape: Callable | None = None


def state_shapes(algo: "Algorithm", spec, shape: tuple) -> list[tuple[str, Any, tuple]]:
    """``(name, first value, shape)`` of each state array of ``spec`` (the group's,
    ``Algorithm.state``) that a parameter of ``shape`` keeps."""
    if algo.state_shape is None:
        return [(name, init, shape) for name, init in spec]
    return [(name, init, s) for name, init in spec
            if (s := algo.state_shape(name, shape)) is not None]


def constructor(algo: Algorithm, name: str, scope: dict, options: str,
                call: str) -> Callable:
    """An ``__init__(self, params, <hyperparameters>, *, <keyword ones>, <options>)``
    with the algorithm's parameters as real ones (names, defaults, types; written out
    and compiled, as ``collections.namedtuple`` does), whose body is ``call`` with
    ``{hyper}`` standing for the dict of the hyperparameters."""
    def parameter(h: Hyper) -> str:
        return f"{h.name}: {h.annotation or type(h.default).__name__} = {h.default!r}"

    positional = ", ".join(parameter(h) for h in algo.params if not h.keyword)
    keyword = "".join(parameter(h) + ", " for h in algo.params if h.keyword)
    hyper = "dict(" + ", ".join(f"{h.name}={h.name}" for h in algo.params) + ")"
    star = "" if not keyword and options.startswith("**") else "*, "
    source = (f"def __init__(self, params, {positional}, {star}{keyword}{options}) -> None:"
              f"\n    {call.format(hyper=hyper)}\n")
    init = define("__init__", source, scope, f"{name}.__init__")
    init.__qualname__ = f"{algo.title}.__init__"
    return init


def define(name: str, source: str, scope: dict, where: str) -> Callable:
    """The function ``name`` that ``source`` defines, compiled with the globals
    ``scope``: functions written out with real parameters (as ``collections.namedtuple``
    writes its classes); ``where`` names the source in tracebacks."""
    scope = dict(scope)
    exec(compile(source, f"<{where}>", "exec"), scope)
    return scope[name]


def checked(name: str, params: tuple[Hyper, ...]) -> type:
    """The namedtuple of the checked values of ``params``, read by attribute."""
    return namedtuple(name, [h.name for h in params])


def _arguments(name, flags, states, h, param, grad, grad_scale, seed, out):
    return flags, tuple(s is not None for s in states), h, grad_scale


#: per spec, its contract function that launches nothing but returns what a call
#: would compile and pass: ``(flags, present slots, host scalars, grad_scale)``; what
#: a multi-tensor call (one launch over many tensors, ``impl.multi``) is given
#: (not for a spec with a reduction: its scalars differ per tensor, so it runs tensor
#: by tensor)
ARGUMENTS = {spec.name: contract(spec, _arguments) for spec in SPECS
             if spec.norms is None}


def _check_nesterov(h, where) -> None:
    if h.nesterov and (h.momentum <= 0 or h.dampening != 0):
        raise ValueError(f"{_checks._name((where, 'nesterov'))}: Nesterov momentum needs "
                         f"momentum > 0 and dampening == 0, got momentum={h.momentum}, "
                         f"dampening={h.dampening}")


SGD_ALGORITHM = Algorithm(
    "SGD", SGD,
    (Hyper("lr", 1e-3, _NUMBER), Hyper("momentum", 0.0, _NUMBER),
     Hyper("dampening", 0.0, _number(low=-math.inf)), Hyper("weight_decay", 0.0, _NUMBER),
     Hyper("nesterov", False, _FLAG), _MAXIMIZE),
    state=lambda h: (("momentum_buffer", 0.0),) if h.momentum != 0 else (),
    call=lambda run, p, g, s, h, step, fresh, scale, seed, out: run(
        p, g, s["momentum_buffer"] if h.momentum != 0 else None, fresh, h.lr, h.momentum,
        h.dampening, h.weight_decay, h.nesterov, scale, seed, out),
    validate=_check_nesterov, torch_step=False,
    doc=r"""Stochastic gradient descent, as ``torch.optim.SGD``.

    For each parameter :math:`\theta` with gradient :math:`g` (units: lr multiplies the
    gradient; the update has the parameter's units when the gradient is per-unit)::

        g = -g if maximize
        g = g + weight_decay * theta                         if weight_decay != 0
        b = g                           on the first step    if momentum != 0
        b = momentum * b + (1 - dampening) * g   afterwards
        g = g + momentum * b if nesterov else b              if momentum != 0
        theta = theta - lr * g

    Nesterov momentum (Sutskever et al., 2013) needs ``momentum > 0`` and
    ``dampening == 0``. State: ``momentum_buffer`` when ``momentum != 0``.
    Defaults are torch's: ``lr=1e-3``, everything else off.
    """)


def _adam(title: str, weight_decay: float, decoupled: bool | None, doc: str,
          parent: str | None = None) -> Algorithm:
    """Adam, or AdamW: ``decoupled`` fixed (AdamW), or None for torch's
    ``decoupled_weight_decay`` keyword (Adam; True makes it AdamW)."""
    params = (Hyper("lr", 1e-3, _NUMBER), Hyper("betas", (0.9, 0.999), _checks.betas),
              Hyper("eps", 1e-8, _NUMBER), Hyper("weight_decay", weight_decay, _NUMBER),
              Hyper("amsgrad", False, _FLAG), _MAXIMIZE)
    if decoupled is None:
        params += (Hyper("decoupled_weight_decay", False, _FLAG, keyword=True),)
        call = (lambda run, p, g, s, h, step, fresh, scale, seed, out: run(
            p, g, s["exp_avg"], s["exp_avg_sq"], s["max_exp_avg_sq"] if h.amsgrad else None,
            step, h.lr, h.betas[0], h.betas[1], h.eps, h.weight_decay,
            h.decoupled_weight_decay, scale, seed, out))
    else:
        call = (lambda run, p, g, s, h, step, fresh, scale, seed, out: run(
            p, g, s["exp_avg"], s["exp_avg_sq"], s["max_exp_avg_sq"] if h.amsgrad else None,
            step, h.lr, h.betas[0], h.betas[1], h.eps, h.weight_decay, decoupled, scale,
            seed, out))
    return Algorithm(
        title, ADAM, params,
        state=lambda h: ((("exp_avg", 0.0), ("exp_avg_sq", 0.0), ("max_exp_avg_sq", 0.0))
                         if h.amsgrad else (("exp_avg", 0.0), ("exp_avg_sq", 0.0))),
        call=call, doc=doc, parent=parent)


ADAM_ALGORITHM = _adam("Adam", 0.0, None, r"""Adam, as ``torch.optim.Adam``.

    At step :math:`t` (1-based), for each parameter :math:`\theta` with gradient g::

        g = -g if maximize
        g = g + weight_decay * theta          (L2 penalty; decoupled_weight_decay=False)
        theta = theta * (1 - lr * weight_decay)        (decoupled_weight_decay=True)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        v_max = max(v_max, v)                            if amsgrad (then v := v_max)
        theta = theta - lr / (1 - beta1**t) * m / (sqrt(v) / sqrt(1 - beta2**t) + eps)

    lr is in the parameter's units per step (the normalised update m/sqrt(v) is
    unitless). State: ``step``, ``exp_avg`` (m), ``exp_avg_sq`` (v) and, with amsgrad,
    ``max_exp_avg_sq``. Defaults are torch's: ``lr=1e-3, betas=(0.9, 0.999),
    eps=1e-8, weight_decay=0``; ``decoupled_weight_decay=True`` is :class:`AdamW`'s
    update, as in torch.
    """)

ADAMW_ALGORITHM = _adam("AdamW", 1e-2, True, r"""AdamW, as ``torch.optim.AdamW``: Adam whose weight decay shrinks the parameter
    directly instead of entering the gradient (and so the moments)::

        theta = theta * (1 - lr * weight_decay)
        ... then the Adam update of :class:`Adam` with weight_decay = 0.

    Defaults are torch's: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=1e-2``. State as :class:`Adam`.
    """, parent="Adam")

ADAGRAD_ALGORITHM = Algorithm(
    "Adagrad", ADAGRAD,
    (Hyper("lr", 1e-2, _NUMBER), Hyper("lr_decay", 0.0, _NUMBER),
     Hyper("weight_decay", 0.0, _NUMBER), Hyper("initial_accumulator_value", 0.0, _NUMBER),
     Hyper("eps", 1e-10, _NUMBER), _MAXIMIZE),
    state=lambda h: (("sum", h.initial_accumulator_value),),
    call=lambda run, p, g, s, h, step, fresh, scale, seed, out: run(
        p, g, s["sum"], step, h.lr, h.lr_decay, h.eps, h.weight_decay, scale, seed, out),
    torch_eager=True,
    doc=r"""Adagrad, as ``torch.optim.Adagrad``.

    At step :math:`t` (1-based), for each parameter :math:`\theta` with gradient g::

        g = -g if maximize
        g = g + weight_decay * theta
        lr_t = lr / (1 + (t - 1) * lr_decay)
        sum = sum + g**2                 (sum starts at initial_accumulator_value)
        theta = theta - lr_t * g / (sqrt(sum) + eps)

    State: ``step``, ``sum``. Defaults are torch's: ``lr=1e-2, lr_decay=0,
    weight_decay=0, initial_accumulator_value=0, eps=1e-10``.
    """)

RMSPROP_ALGORITHM = Algorithm(
    "RMSprop", RMSPROP,
    (Hyper("lr", 1e-2, _NUMBER), Hyper("alpha", 0.99, _number(high=1.0)),
     Hyper("eps", 1e-8, _NUMBER), Hyper("weight_decay", 0.0, _NUMBER),
     Hyper("momentum", 0.0, _NUMBER), Hyper("centered", False, _FLAG), _MAXIMIZE),
    state=lambda h: ((("square_avg", 0.0),) + ((("grad_avg", 0.0),) if h.centered else ())
                     + ((("momentum_buffer", 0.0),) if h.momentum > 0 else ())),
    call=lambda run, p, g, s, h, step, fresh, scale, seed, out: run(
        p, g, s["square_avg"], s["grad_avg"] if h.centered else None,
        s["momentum_buffer"] if h.momentum > 0 else None, h.lr, h.alpha, h.eps,
        h.weight_decay, h.momentum, scale, seed, out),
    doc=r"""RMSprop, as ``torch.optim.RMSprop``.

    For each parameter :math:`\theta` with gradient g::

        g = -g if maximize
        g = g + weight_decay * theta
        v = alpha * v + (1 - alpha) * g**2
        mu = alpha * mu + (1 - alpha) * g         if centered (then v - mu**2 below)
        u = g / (sqrt(v [- mu**2]) + eps)
        b = momentum * b + u ; u = b              if momentum > 0
        theta = theta - lr * u

    State: ``step``, ``square_avg`` (v), ``grad_avg`` (mu, centered) and
    ``momentum_buffer`` (b, momentum > 0), all starting at zero. Defaults are
    torch's: ``lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0, momentum=0``.
    """)

LION_ALGORITHM = Algorithm(
    "Lion", LION,
    (Hyper("lr", 1e-4, _NUMBER), Hyper("betas", (0.9, 0.99), _checks.betas),
     Hyper("weight_decay", 0.0, _NUMBER), _MAXIMIZE),
    state=lambda h: (("exp_avg", 0.0),),
    call=lambda run, p, g, s, h, step, fresh, scale, seed, out: run(
        p, g, s["exp_avg"], h.lr, h.betas[0], h.betas[1], h.weight_decay, scale, seed,
        out),
    torch_step=False,
    doc=r"""Lion, EvoLved Sign Momentum (Chen et al., 2023, "Symbolic Discovery of
    Optimization Algorithms", Algorithm 2; as optax.lion and lion-pytorch).

    For each parameter :math:`\theta` with gradient g::

        g = -g if maximize
        theta = theta * (1 - lr * weight_decay)          (decoupled, as AdamW)
        theta = theta - lr * sign(beta1 * m + (1 - beta1) * g)
        m = beta2 * m + (1 - beta2) * g

    Every element moves by exactly lr (or 0), so lr is in the parameter's units per
    step and is typically 3-10x smaller than AdamW's (with weight_decay 3-10x larger).
    State: ``step``, ``exp_avg`` (m). Defaults are lion-pytorch's: ``lr=1e-4,
    betas=(0.9, 0.99), weight_decay=0``. torch.optim has no Lion.
    """)

ADAMAX_ALGORITHM = Algorithm(
    "Adamax", ADAMAX,
    (Hyper("lr", 2e-3, _NUMBER), Hyper("betas", (0.9, 0.999), _checks.betas),
     Hyper("eps", 1e-8, _NUMBER), Hyper("weight_decay", 0.0, _NUMBER), _MAXIMIZE),
    state=lambda h: (("exp_avg", 0.0), ("exp_inf", 0.0)),
    call=lambda run, p, g, s, h, step, fresh, scale, seed, out: run(
        p, g, s["exp_avg"], s["exp_inf"], step, h.lr, h.betas[0], h.betas[1], h.eps,
        h.weight_decay, scale, seed, out),
    doc=r"""Adamax, as ``torch.optim.Adamax`` (Kingma & Ba, 2015, section 7.1: Adam
    with the infinity norm).

    At step :math:`t` (1-based), for each parameter :math:`\theta` with gradient g::

        g = -g if maximize
        g = g + weight_decay * theta
        m = beta1 * m + (1 - beta1) * g
        u = max(beta2 * u, |g| + eps)
        theta = theta - lr / (1 - beta1**t) * m / u

    lr is in the parameter's units per step. State: ``step``, ``exp_avg`` (m),
    ``exp_inf`` (u), starting at zero. Defaults are torch's: ``lr=2e-3,
    betas=(0.9, 0.999), eps=1e-8, weight_decay=0``.
    """)

ADADELTA_ALGORITHM = Algorithm(
    "Adadelta", ADADELTA,
    (Hyper("lr", 1.0, _NUMBER), Hyper("rho", 0.9, _number(high=1.0)),
     Hyper("eps", 1e-6, _NUMBER), Hyper("weight_decay", 0.0, _NUMBER), _MAXIMIZE),
    state=lambda h: (("square_avg", 0.0), ("acc_delta", 0.0)),
    call=lambda run, p, g, s, h, step, fresh, scale, seed, out: run(
        p, g, s["square_avg"], s["acc_delta"], h.lr, h.rho, h.eps, h.weight_decay,
        scale, seed, out),
    doc=r"""Adadelta, as ``torch.optim.Adadelta`` (Zeiler, 2012).

    For each parameter :math:`\theta` with gradient g::

        g = -g if maximize
        g = g + weight_decay * theta
        v = rho * v + (1 - rho) * g**2
        d = sqrt(a + eps) / sqrt(v + eps) * g
        a = rho * a + (1 - rho) * d**2
        theta = theta - lr * d

    The update d has the parameter's units by construction; lr scales it (1.0, as in
    the paper, by default). State: ``step``, ``square_avg`` (v), ``acc_delta`` (a),
    starting at zero. Defaults are torch's: ``lr=1.0, rho=0.9, eps=1e-6,
    weight_decay=0``.
    """)

RADAM_ALGORITHM = Algorithm(
    "RAdam", RADAM,
    (Hyper("lr", 1e-3, _NUMBER), Hyper("betas", (0.9, 0.999), _checks.betas),
     Hyper("eps", 1e-8, _NUMBER), Hyper("weight_decay", 0.0, _NUMBER),
     Hyper("decoupled_weight_decay", False, _FLAG), _MAXIMIZE),
    state=lambda h: (("exp_avg", 0.0), ("exp_avg_sq", 0.0)),
    call=lambda run, p, g, s, h, step, fresh, scale, seed, out: run(
        p, g, s["exp_avg"], s["exp_avg_sq"], step, h.lr, h.betas[0], h.betas[1], h.eps,
        h.weight_decay, h.decoupled_weight_decay, scale, seed, out),
    doc=r"""RAdam, as ``torch.optim.RAdam`` (Liu et al., 2020: Adam with its
    adaptive step switched on once the variance of the adaptive learning rate is
    tractable, and rectified).

    At step :math:`t` (1-based), for each parameter :math:`\theta` with gradient g::

        g = -g if maximize
        g = g + weight_decay * theta          (L2 penalty; decoupled_weight_decay=False)
        theta = theta * (1 - lr * weight_decay)        (decoupled_weight_decay=True)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 t beta2**t / (1 - beta2**t)
        if rho_t > 5:
            r = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
            theta = theta - lr * m / (1 - beta1**t) * r * sqrt(1 - beta2**t) / (sqrt(v) + eps)
        else:
            theta = theta - lr * m / (1 - beta1**t)

    lr is in the parameter's units per step. State: ``step``, ``exp_avg`` (m),
    ``exp_avg_sq`` (v), starting at zero. Defaults are torch's: ``lr=1e-3,
    betas=(0.9, 0.999), eps=1e-8, weight_decay=0, decoupled_weight_decay=False``.
    """)

RPROP_ALGORITHM = Algorithm(
    "Rprop", RPROP,
    (Hyper("lr", 1e-2, _NUMBER), Hyper("etas", (0.5, 1.2), _checks.etas),
     Hyper("step_sizes", (1e-6, 50.0), _checks.step_sizes), _MAXIMIZE),
    state=lambda h: (("prev", 0.0), ("step_size", h.lr)),
    call=lambda run, p, g, s, h, step, fresh, scale, seed, out: run(
        p, g, s["prev"], s["step_size"], h.etas[0], h.etas[1], h.step_sizes[0],
        h.step_sizes[1], scale, seed, out),
    doc=r"""Rprop, as ``torch.optim.Rprop`` (Riedmiller & Braun, 1993: resilient
    backpropagation, one step size per element, driven by the gradient's sign only).

    For each parameter :math:`\theta` with gradient g, elementwise::

        g = -g if maximize
        if g * prev > 0:   step_size = step_size * etaplus
        if g * prev < 0:   step_size = step_size * etaminus;  g = 0
        step_size = clamp(step_size, step_size_min, step_size_max)
        theta = theta - sign(g) * step_size
        prev = g

    step_size is in the parameter's units. State: ``step``, ``prev`` (starting at
    zero), ``step_size`` (starting at ``lr``). Defaults are torch's: ``lr=1e-2,
    etas=(0.5, 1.2), step_sizes=(1e-6, 50)``.
    """)

NADAM_ALGORITHM = Algorithm(
    "NAdam", NADAM,
    (Hyper("lr", 2e-3, _NUMBER), Hyper("betas", (0.9, 0.999), _checks.betas),
     Hyper("eps", 1e-8, _NUMBER), Hyper("weight_decay", 0.0, _NUMBER),
     Hyper("momentum_decay", 4e-3, _NUMBER),
     Hyper("decoupled_weight_decay", False, _FLAG), _MAXIMIZE),
    state=lambda h: (("exp_avg", 0.0), ("exp_avg_sq", 0.0)),
    call=lambda run, p, g, s, h, step, fresh, scale, seed, out: run(
        p, g, s["exp_avg"], s["exp_avg_sq"], step, s["mu_product"],
        s.get("scalar_kinds", scalars.FLOAT32_KINDS), h.lr, h.betas[0], h.betas[1],
        h.eps, h.weight_decay, h.momentum_decay, h.decoupled_weight_decay, scale, seed,
        out),
    scalar_state=("mu_product",), scalar_init=lambda h, kinds: (1.0,),
    scalar_next=lambda h, step, values, kinds: (scalars.nadam_mu_product(
        values[0], step, h.betas[0], h.momentum_decay, kinds),),
    doc=r"""NAdam, as ``torch.optim.NAdam`` (Dozat, 2016: Adam with Nesterov
    momentum, and a momentum schedule).

    At step :math:`t` (1-based), for each parameter :math:`\theta` with gradient g::

        g = -g if maximize
        g = g + weight_decay * theta          (L2 penalty; decoupled_weight_decay=False)
        theta = theta * (1 - lr * weight_decay)        (decoupled_weight_decay=True)
        mu_t = beta1 * (1 - 0.5 * 0.96**(t * momentum_decay))
        prod_t = prod_{t-1} * mu_t                          (mu_product, from 1)
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        d = sqrt(v / (1 - beta2**t)) + eps
        theta = theta - lr * (1 - mu_t) / (1 - prod_t) * g / d
                      - lr * mu_{t+1} / (1 - prod_t * mu_{t+1}) * m / d

    lr is in the parameter's units per step. State: ``step``, ``mu_product``
    (a number, rounded to float32 as torch keeps it), ``exp_avg`` (m), ``exp_avg_sq``
    (v). Defaults are torch's: ``lr=2e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0, momentum_decay=4e-3, decoupled_weight_decay=False``.
    """)

ASGD_ALGORITHM = Algorithm(
    "ASGD", ASGD,
    (Hyper("lr", 1e-2, _NUMBER), Hyper("lambd", 1e-4, _NUMBER),
     Hyper("alpha", 0.75, _NUMBER), Hyper("t0", 1e6, _number(low=-math.inf)),
     Hyper("weight_decay", 0.0, _NUMBER), _MAXIMIZE),
    state=lambda h: (("ax", 0.0),),
    call=lambda run, p, g, s, h, step, fresh, scale, seed, out: run(
        p, g, s["ax"], s["eta"], s["mu"], h.lambd, h.weight_decay, scale, seed, out),
    scalar_state=("eta", "mu"), scalar_init=lambda h, kinds: scalars.asgd_first(h.lr,
                                                                                 kinds),
    scalar_next=lambda h, step, values, kinds: scalars.asgd_next(
        step, h.lr, h.lambd, h.alpha, h.t0, kinds),
    doc=r"""Averaged SGD, as ``torch.optim.ASGD`` (Polyak & Juditsky, 1992).

    At step :math:`t` (1-based), for each parameter :math:`\theta` with gradient g,
    with the step size eta and averaging weight mu the step before left::

        g = -g if maximize
        g = g + weight_decay * theta
        theta = theta * (1 - lambd * eta) - eta * g
        ax = theta                   while mu == 1 (the first t0 + 1 steps)
        ax = ax + mu * (theta - ax)  afterwards
        eta = lr / (1 + lambd * lr * t)**alpha
        mu = 1 / max(1, t - t0)

    eta is in the parameter's units per gradient unit; ``ax`` is the averaged
    parameter. State: ``step``, ``eta`` (from lr) and ``mu`` (from 1), numbers kept
    in float32 as torch keeps them, and ``ax``. Defaults are torch's: ``lr=1e-2,
    lambd=1e-4, alpha=0.75, t0=1e6, weight_decay=0``.
    """)

LAMB_ALGORITHM = Algorithm(
    "LAMB", LAMB,
    (Hyper("lr", 1e-3, _NUMBER), Hyper("betas", (0.9, 0.999), _checks.betas),
     Hyper("eps", 1e-6, _NUMBER), Hyper("weight_decay", 0.0, _NUMBER), _MAXIMIZE),
    state=lambda h: (("exp_avg", 0.0), ("exp_avg_sq", 0.0)),
    call=lambda run, p, g, s, h, step, fresh, scale, seed, out: run(
        p, g, s["exp_avg"], s["exp_avg_sq"], step, h.lr, h.betas[0], h.betas[1], h.eps,
        h.weight_decay, scale, seed, out, s.get("stage")),
    staged=True,
    doc=r"""LAMB, layer-wise adaptive moments (You et al., 2020, "Large Batch
    Optimization for Deep Learning: Training BERT in 76 minutes", Algorithm 2; as
    optax.lamb): Adam's direction with decoupled weight decay, rescaled per tensor so
    that each step moves a tensor by ``lr`` times its own norm.

    At step :math:`t` (1-based), for each parameter tensor :math:`\theta` with
    gradient g::

        g = -g if maximize
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g**2
        u = m / (1 - beta1**t) / (sqrt(v / (1 - beta2**t)) + eps) + weight_decay * theta
        ratio = ||theta|| / ||u||     (L2 norms over the tensor; 1 where either is 0
                                       or not finite)
        theta = theta - lr * ratio * u

    lr is relative: a step moves a tensor by about lr times its norm. The norms are
    a read-only pass before the update pass (summed in float64), so a step reads the
    state twice: 44 bytes per float32 element instead of Adam's 28. The ratio is one
    number per tensor, so LAMB steps tensor by tensor (one call per tensor, also in
    a FlatParams segment), not in multi-tensor calls; in ``fusedopt.torch``, of
    contiguous float32, float64, bfloat16 or complex tensors. A NaN or inf in a
    tensor makes its ratio 1: it reaches its own elements, and the others take an
    unscaled step (optax's ratio would spread it over the tensor). State: ``step``,
    ``exp_avg`` (m), ``exp_avg_sq`` (v), starting at zero. Defaults are optax's:
    ``lr=1e-3, betas=(0.9, 0.999), eps=1e-6, weight_decay=0``. torch.optim has no
    LAMB.
    """)

def _coefficients(x, name) -> tuple[float, float, float]:
    if not isinstance(x, (tuple, list)) or len(x) != 3:
        raise TypeError(f"{_checks._name(name)}: expected three numbers (a, b, c), got "
                        f"{x!r}")
    try:
        return tuple(_checks.number(v, "", -math.inf) for v in x)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{_checks._name(name)}: expected three finite numbers, got "
                        f"{tuple(x)!r}") from None


def _ns_steps(x, name) -> int:
    if type(x) is bool or not isinstance(x, int) or not 0 <= x < 100:
        raise ValueError(f"{_checks._name(name)}: expected an int in [0, 100), got {x!r} "
                         "(torch.optim.Muon refuses 100 or more, for computational "
                         "efficiency)")
    return int(x)


def _adjust_lr_fn(x, name) -> str | None:
    if x is not None and x not in ("original", "match_rms_adamw"):
        raise ValueError(f"Adjust learning rate function {x} is not supported "
                         f"({_checks._name(name)}: expected None, 'original' or "
                         "'match_rms_adamw')")
    return x


def _shape_dtype(p, where) -> tuple[tuple, str]:
    """A parameter's shape and dtype's name: a host array's or tensor's, or a CUDA
    array's through its interface (a CuPy array or a ``Foreign`` has no ``dtype``
    torch or NumPy would read)."""
    if _device.is_device_array(p):
        i = _device.info(p, where)
        return i.shape, str(i.dtype)
    return tuple(p.shape), str(p.dtype).removeprefix("torch.")


def _host_stage_param(title: str, p, where) -> None:
    """A parameter an algorithm with a host stage steps: float32 or float64 (the
    stage computes in the parameter's dtype), with elements."""
    shape, dtype = _shape_dtype(p, where)
    if dtype not in ("float32", "float64"):
        raise TypeError(f"{_checks._name(where)}: {title} steps float32 or float64 "
                        f"parameters (its host stage computes in their dtype), got "
                        f"{dtype}")
    if 0 in shape:
        raise ValueError(f"{_checks._name(where)}: {title} steps tensors with elements "
                         f"(its norms and means divide by their count), got shape "
                         f"{shape}")


def _matrix(p, where) -> None:
    shape, _ = _shape_dtype(p, where)
    if len(shape) != 2:
        raise ValueError(
            f"{_checks._name(where)}: Muon only supports 2D parameters (matrices: the "
            f"weights of hidden layers), got shape {shape}; step biases, norms "
            "and embeddings with another optimizer (AdamW), as torch.optim.Muon advises")
    _host_stage_param("Muon", p, where)


MUON_ALGORITHM = Algorithm(
    "Muon", MUON,
    (Hyper("lr", 1e-3, _NUMBER), Hyper("weight_decay", 0.1, _NUMBER),
     Hyper("momentum", 0.95, _NUMBER), Hyper("nesterov", True, _FLAG),
     Hyper("ns_coefficients", (3.4445, -4.775, 2.0315), _coefficients),
     Hyper("eps", 1e-7, _NUMBER), Hyper("ns_steps", 5, _ns_steps),
     Hyper("adjust_lr_fn", None, _adjust_lr_fn, annotation="str | None")),
    state=lambda h: (("momentum_buffer", 0.0),),
    call=lambda run, p, g, s, h, step, fresh, scale, seed, out: run(
        p, g, s["momentum_buffer"], s["shape"], h.lr, h.weight_decay, h.momentum,
        h.nesterov, *h.ns_coefficients, h.eps, h.ns_steps, h.adjust_lr_fn, scale, seed,
        out, s.get("workspace")),
    torch_step=False, check_param=_matrix,
    doc=r"""Muon, MomentUm Orthogonalized by Newton-Schulz (Jordan et al., 2024), as
    ``torch.optim.Muon``: for matrices (the weights of hidden layers), whose momentum
    update is replaced by the nearest (semi-)orthogonal matrix before it is applied.

    For each ``A x B`` parameter :math:`	heta` with gradient g::

        B = momentum * B + (1 - momentum) * g                 (torch: B.lerp_(g, 1 - momentum))
        U = (1 - momentum) * g + momentum * B if nesterov else B
        X = U / max(||U||_F, eps)                  (transposed first if A > B)
        X = a X + (b X X^T + c (X X^T)^2) X        ns_steps times, (a, b, c) = ns_coefficients
        lr_t = lr * sqrt(max(1, A / B))            adjust_lr_fn None or "original"
        lr_t = lr * 0.2 * sqrt(max(A, B))          adjust_lr_fn "match_rms_adamw"
        theta = theta * (1 - lr * weight_decay) - lr_t * X

    X has roughly unit singular values, so lr_t is in the parameter's units per step
    per singular direction. The element-wise parts are two fused passes (the
    momentum, with torch's lerps; the decayed step, SGD's rule), and the
    Newton-Schulz iteration between them runs on BLAS (NumPy's matrix products) in
    the parameter's dtype: float32 or
    float64 parameters, on the numba, cython and numpy backends (not cuda). torch
    runs the iteration in bfloat16; ``fusedopt.torch.Muon`` calls torch's own and
    matches torch.optim.Muon, while ``fusedopt.Muon`` on NumPy arrays is the more
    precise. One call per tensor (the iteration needs its shape). State:
    ``momentum_buffer`` (B), starting at zero. Defaults are torch's: ``lr=1e-3,
    weight_decay=0.1, momentum=0.95, nesterov=True, ns_coefficients=(3.4445, -4.775,
    2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None``.
    """)

def _eps_pair(x, name) -> tuple[float | None, float]:
    if not isinstance(x, (tuple, list)) or len(x) != 2:
        raise TypeError(f"{_checks._name(name)}: expected a pair (eps1 or None, eps2), "
                        f"got {x!r}")
    eps1 = None if x[0] is None else _checks.number(x[0], name)
    return eps1, _checks.number(x[1], name)


def _factored(name: str, shape: tuple) -> tuple | None:
    """Adafactor's state of a parameter of ``shape``: its row and column factors
    over the last two dimensions (torch's keepdim shapes), or for fewer than two
    dimensions its second moment."""
    if len(shape) > 1:
        if name == "row_var":
            return (*shape[:-1], 1)
        if name == "col_var":
            return (*shape[:-2], 1, shape[-1])
        return None
    return shape if name == "variance" else None


ADAFACTOR_ALGORITHM = Algorithm(
    "Adafactor", ADAFACTOR,
    (Hyper("lr", 1e-2, _NUMBER), Hyper("beta2_decay", -0.8, _number(low=-math.inf,
                                                                     high=0.0)),
     Hyper("eps", (None, 1e-3), _eps_pair), Hyper("d", 1.0, _number(low=1.0)),
     Hyper("weight_decay", 0.0, _NUMBER), _MAXIMIZE),
    state=lambda h: (("row_var", 0.0), ("col_var", 0.0), ("variance", 0.0)),
    call=lambda run, p, g, s, h, step, fresh, scale, seed, out: run(
        p, g, s.get("row_var"), s.get("col_var"), s.get("variance"), s["shape"], step,
        h.lr, h.beta2_decay, h.eps[0], h.eps[1], h.d, h.weight_decay, scale, seed, out,
        s.get("stage")),
    staged=True,
    state_shape=_factored,
    check_param=lambda p, where: _host_stage_param("Adafactor", p, where),
    doc=r"""Adafactor, as ``torch.optim.Adafactor`` (Shazeer & Stern, 2018, with
    torch's use of lr and eps1): second moments kept factored, a row and a column
    vector per matrix, so the state costs O(rows + cols) per matrix instead of Adam's
    two full copies.

    At step :math:`t` (1-based), for each parameter :math:`	heta` with gradient g::

        g = -g if maximize
        w = t ** beta2_decay ; rho = min(lr, 1 / sqrt(t))
        alpha = max(eps2, RMS(theta)) * rho
        theta = theta * (1 - lr * weight_decay)
        2+ dims, over the last two (n x m):
            R = R.lerp(mean_j g**2, w) ; C = C.lerp(mean_i g**2, w)
            V = R C / max(mean_i R, eps1)
        fewer: V = V.lerp(g**2, w)
        U = g / sqrt(max(V, eps1**2))
        theta = theta - alpha / max(1, RMS(U) / d) * U

    eps1 None is the parameter dtype's machine epsilon. State: ``step``, and
    ``row_var`` and ``col_var`` (shapes ``(..., n, 1)`` and ``(..., 1, m)``) for
    tensors of 2+ dimensions, ``variance`` for the others. The row and column means
    (one parallel read of the gradient) update the factors on the host, then two
    fused passes (the norms, then the update) make ``V`` element by element from the
    factors: no array of the tensor's size; one call per tensor. float32 and float64
    parameters on every backend, bf16 state (``state_dtype``), over a FlatParams (its
    state in flat buffers of its own layout). Defaults are torch's: ``lr=1e-2,
    beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0``.
    """)

ALGORITHMS = (SGD_ALGORITHM, ADAM_ALGORITHM, ADAMW_ALGORITHM, ADAGRAD_ALGORITHM,
              RMSPROP_ALGORITHM, LION_ALGORITHM, ADAMAX_ALGORITHM, ADADELTA_ALGORITHM,
              RADAM_ALGORITHM, RPROP_ALGORITHM, NADAM_ALGORITHM, ASGD_ALGORITHM,
              LAMB_ALGORITHM, MUON_ALGORITHM, ADAFACTOR_ALGORITHM)


# -- functional steps: one fused pass over one buffer, state passed in ---------------

#: the default of a keyword that has none (the caller must pass it)
REQUIRED = object()


class Functional(NamedTuple):
    """A ``fusedopt.functional.<name>``: its state arguments, in the kernel's slot
    order, each ``(argument name, need)`` with need True (required), None (optional:
    None leaves the slot absent, e.g. ``max_exp_avg_sq`` without amsgrad) or
    ``(predicate, words)`` (required when ``predicate(kw)``, unused otherwise);
    ``params`` its keyword-only arguments (checked); ``args(kw)`` the kernel's raw
    hyperparameters from the checked keywords; ``returns(kw)``, where the algorithm
    keeps scalar state, what the step returns: that state after it."""
    name: str
    kernel: Spec
    slots: tuple[tuple[str, Any], ...]
    params: tuple[Hyper, ...]
    args: Callable
    doc: str
    validate: Callable | None = None
    returns: Callable | None = None
    #: ``check_param(param, where)``, as ``Algorithm.check_param``; None: any
    check_param: Callable | None = None
    #: ``state_shape(name, shape)``, as ``Algorithm.state_shape``: the shape of each
    #: state argument for a parameter of ``shape`` (None: that argument is not kept
    #: for it, and must be None); None: every state argument has the parameter's
    state_shape: Callable | None = None


_STEP = Hyper("step", REQUIRED, _checks.step_count)
_UNIT = _number(high=1.0)


def _beta(x, name) -> float:
    return _checks.number(x, name, 0.0, 1.0, high_open=True)


def _adam_step(name: str, weight_decay: float, decoupled: bool | None) -> Functional:
    flag = () if decoupled is not None else (Hyper("decoupled", False, _FLAG),)
    return Functional(
        name, ADAM, (("exp_avg", True), ("exp_avg_sq", True), ("max_exp_avg_sq", None)),
        (_STEP, Hyper("lr", 1e-3, _NUMBER), Hyper("beta1", 0.9, _beta),
         Hyper("beta2", 0.999, _beta), Hyper("eps", 1e-8, _NUMBER),
         Hyper("weight_decay", weight_decay, _NUMBER), *flag, _MAXIMIZE),
        lambda k: (k.step, k.lr, k.beta1, k.beta2, k.eps, k.weight_decay,
                   k.decoupled if decoupled is None else decoupled),
        f"{'AdamW' if decoupled else 'Adam'} step (see :class:`fusedopt."
        f"{'AdamW' if decoupled else 'Adam'}`); AMSGrad when ``max_exp_avg_sq`` is given"
        + ("" if decoupled else ", AdamW's decoupled decay when ``decoupled``") + ".")


def _check_rprop_step(k, where) -> None:
    _checks.etas((k.etaminus, k.etaplus), "etaminus, etaplus")
    _checks.step_sizes((k.step_size_min, k.step_size_max), "step_size_min, step_size_max")


FUNCTIONALS = (
    Functional(
        "sgd_step", SGD,
        (("momentum_buffer", (lambda k: k.momentum != 0, "momentum != 0")),),
        (Hyper("step", 1, _STEP.check), Hyper("lr", 1e-3, _NUMBER),
         Hyper("momentum", 0.0, _NUMBER), Hyper("dampening", 0.0, _number(low=-math.inf)),
         Hyper("weight_decay", 0.0, _NUMBER), Hyper("nesterov", False, _FLAG), _MAXIMIZE),
        lambda k: (k.step == 1, k.lr, k.momentum, k.dampening, k.weight_decay, k.nesterov),
        "SGD step (see :class:`fusedopt.SGD` for the formula). ``momentum_buffer`` is "
        "needed when ``momentum != 0``; at ``step == 1`` it is set to the gradient.",
        validate=_check_nesterov),
    _adam_step("adam_step", 0.0, None),
    _adam_step("adamw_step", 1e-2, True),
    Functional(
        "adagrad_step", ADAGRAD, (("state_sum", True),),
        (_STEP, Hyper("lr", 1e-2, _NUMBER), Hyper("lr_decay", 0.0, _NUMBER),
         Hyper("weight_decay", 0.0, _NUMBER), Hyper("eps", 1e-10, _NUMBER), _MAXIMIZE),
        lambda k: (k.step, k.lr, k.lr_decay, k.eps, k.weight_decay),
        "Adagrad step (see :class:`fusedopt.Adagrad`)."),
    Functional(
        "rmsprop_step", RMSPROP,
        (("square_avg", True), ("grad_avg", None),
         ("momentum_buffer", (lambda k: k.momentum > 0, "momentum > 0"))),
        (Hyper("lr", 1e-2, _NUMBER), Hyper("alpha", 0.99, _UNIT),
         Hyper("eps", 1e-8, _NUMBER), Hyper("weight_decay", 0.0, _NUMBER),
         Hyper("momentum", 0.0, _NUMBER), _MAXIMIZE),
        lambda k: (k.lr, k.alpha, k.eps, k.weight_decay, k.momentum),
        "RMSprop step (see :class:`fusedopt.RMSprop`); centered when ``grad_avg`` is "
        "given; ``momentum_buffer`` is needed when ``momentum > 0``."),
    Functional(
        "lion_step", LION, (("exp_avg", True),),
        (Hyper("lr", 1e-4, _NUMBER), Hyper("beta1", 0.9, _beta), Hyper("beta2", 0.99, _beta),
         Hyper("weight_decay", 0.0, _NUMBER), _MAXIMIZE),
        lambda k: (k.lr, k.beta1, k.beta2, k.weight_decay),
        "Lion step (see :class:`fusedopt.Lion`)."),
    Functional(
        "adamax_step", ADAMAX, (("exp_avg", True), ("exp_inf", True)),
        (_STEP, Hyper("lr", 2e-3, _NUMBER), Hyper("beta1", 0.9, _beta),
         Hyper("beta2", 0.999, _beta), Hyper("eps", 1e-8, _NUMBER),
         Hyper("weight_decay", 0.0, _NUMBER), _MAXIMIZE),
        lambda k: (k.step, k.lr, k.beta1, k.beta2, k.eps, k.weight_decay),
        "Adamax step (see :class:`fusedopt.Adamax`)."),
    Functional(
        "adadelta_step", ADADELTA, (("square_avg", True), ("acc_delta", True)),
        (Hyper("lr", 1.0, _NUMBER), Hyper("rho", 0.9, _UNIT), Hyper("eps", 1e-6, _NUMBER),
         Hyper("weight_decay", 0.0, _NUMBER), _MAXIMIZE),
        lambda k: (k.lr, k.rho, k.eps, k.weight_decay),
        "Adadelta step (see :class:`fusedopt.Adadelta`)."),
    Functional(
        "radam_step", RADAM, (("exp_avg", True), ("exp_avg_sq", True)),
        (_STEP, Hyper("lr", 1e-3, _NUMBER), Hyper("beta1", 0.9, _beta),
         Hyper("beta2", 0.999, _beta), Hyper("eps", 1e-8, _NUMBER),
         Hyper("weight_decay", 0.0, _NUMBER), Hyper("decoupled", False, _FLAG), _MAXIMIZE),
        lambda k: (k.step, k.lr, k.beta1, k.beta2, k.eps, k.weight_decay, k.decoupled),
        "RAdam step (see :class:`fusedopt.RAdam`); decoupled weight decay when "
        "``decoupled``."),
    Functional(
        "rprop_step", RPROP, (("prev", True), ("step_size", True)),
        (Hyper("etaminus", 0.5, _UNIT), Hyper("etaplus", 1.2, _NUMBER),
         Hyper("step_size_min", 1e-6, _NUMBER), Hyper("step_size_max", 50.0, _NUMBER),
         _MAXIMIZE),
        lambda k: (k.etaminus, k.etaplus, k.step_size_min, k.step_size_max),
        "Rprop step (see :class:`fusedopt.Rprop`); ``step_size`` starts at lr.",
        validate=_check_rprop_step),
    Functional(
        "nadam_step", NADAM, (("exp_avg", True), ("exp_avg_sq", True)),
        (_STEP, Hyper("mu_product", REQUIRED, _NUMBER), Hyper("lr", 2e-3, _NUMBER),
         Hyper("beta1", 0.9, _beta), Hyper("beta2", 0.999, _beta),
         Hyper("eps", 1e-8, _NUMBER), Hyper("weight_decay", 0.0, _NUMBER),
         Hyper("momentum_decay", 4e-3, _NUMBER), Hyper("decoupled", False, _FLAG),
         _MAXIMIZE),
        lambda k: (k.step, k.mu_product, scalars.FLOAT32_KINDS, k.lr, k.beta1, k.beta2,
                   k.eps, k.weight_decay, k.momentum_decay, k.decoupled),
        "NAdam step (see :class:`fusedopt.NAdam`): ``mu_product`` is the product of "
        "the momentum coefficients through the step before (1.0 at step 1); returns "
        "the product through this step (rounded to float32, as torch keeps it), to "
        "pass to the next.",
        returns=lambda k: scalars.nadam_mu_product(k.mu_product, k.step, k.beta1,
                                                   k.momentum_decay)),
    Functional(
        "asgd_step", ASGD, (("ax", True),),
        (_STEP, Hyper("eta", REQUIRED, _NUMBER), Hyper("mu", REQUIRED, _NUMBER),
         Hyper("lr", 1e-2, _NUMBER), Hyper("lambd", 1e-4, _NUMBER),
         Hyper("alpha", 0.75, _NUMBER), Hyper("t0", 1e6, _number(low=-math.inf)),
         Hyper("weight_decay", 0.0, _NUMBER), _MAXIMIZE),
        lambda k: (k.eta, k.mu, k.lambd, k.weight_decay),
        "ASGD step (see :class:`fusedopt.ASGD`): ``eta`` and ``mu`` as the step before "
        "left them (lr and 1.0 at step 1); returns ``(eta, mu)`` for the next "
        "(rounded to float32, as torch keeps them).",
        returns=lambda k: scalars.asgd_next(k.step, k.lr, k.lambd, k.alpha, k.t0)),
    Functional(
        "lamb_step", LAMB, (("exp_avg", True), ("exp_avg_sq", True)),
        (_STEP, Hyper("lr", 1e-3, _NUMBER), Hyper("beta1", 0.9, _beta),
         Hyper("beta2", 0.999, _beta), Hyper("eps", 1e-6, _NUMBER),
         Hyper("weight_decay", 0.0, _NUMBER), _MAXIMIZE),
        lambda k: (k.step, k.lr, k.beta1, k.beta2, k.eps, k.weight_decay),
        "LAMB step (see :class:`fusedopt.LAMB`): the buffer is one tensor, whose norms "
        "give the trust ratio (two passes: its norms, then the update)."),
    Functional(
        "muon_step", MUON, (("momentum_buffer", True),),
        MUON_ALGORITHM.params,
        lambda k, shape: (shape, k.lr, k.weight_decay, k.momentum, k.nesterov,
                          *k.ns_coefficients, k.eps, k.ns_steps, k.adjust_lr_fn),
        "Muon step (see :class:`fusedopt.Muon`): ``param`` is one float32 or float64 "
        "matrix (host array), orthogonalised with its shape.", check_param=_matrix),
    Functional(
        "adafactor_step", ADAFACTOR,
        (("row_var", None), ("col_var", None), ("variance", None)),
        (_STEP, *ADAFACTOR_ALGORITHM.params),
        lambda k, shape: (shape, k.step, k.lr, k.beta2_decay, *k.eps, k.d,
                          k.weight_decay),
        "Adafactor step (see :class:`fusedopt.Adafactor`): a parameter of two or more "
        "dimensions (..., n, m) takes ``row_var`` of shape (..., n, 1) and ``col_var`` "
        "of shape (..., 1, m), any other ``variance`` of its own shape, all in its "
        "dtype and zero before the first step (``step`` 1).",
        check_param=ADAFACTOR_ALGORITHM.check_param, state_shape=_factored),
)


# -- what fusedopt does not provide, and what to use instead ---------------------------

#: torch.optim's optimizers that fusedopt does not provide, each with the reason (None:
#: not yet) and what to use instead: ``from fusedopt(.torch) import <name>`` raises an ImportError
#: that says so (``not_provided``)
NOT_PROVIDED = {
    "LBFGS": (
        "L-BFGS evaluates a closure several times per step and keeps a history of "
        "whole-model vectors for its line search; it is not one element-wise pass",
        "torch.optim.LBFGS for torch models (it works beside fusedopt.torch "
        "optimizers), scipy.optimize.minimize(method='L-BFGS-B') for NumPy arrays"),
    "SparseAdam": (
        "it updates only the rows a sparse gradient touches, and fusedopt's kernels "
        "step dense arrays",
        "torch.optim.SparseAdam for the sparse gradients (nn.Embedding(sparse=True)) "
        "and fusedopt.torch.Adam or AdamW for the dense parameters"),
}


def module_getattr(module: str) -> Callable[[str], Any]:
    """The module ``__getattr__`` of ``module`` (PEP 562): ``from <module> import X``
    with ``X`` a torch.optim optimizer fusedopt does not provide (``NOT_PROVIDED``)
    raises an ImportError that says why and what to use instead; any other missing
    name an AttributeError, as usual."""
    def __getattr__(name: str):
        if name in NOT_PROVIDED:
            why, instead = NOT_PROVIDED[name]
            why = " yet" if why is None else f": {why}"
            raise ImportError(f"{module} does not provide {name}{why}. Use {instead}.",
                              name=module)
        raise AttributeError(f"module {module!r} has no attribute {name!r}")
    return __getattr__
