"""What each algorithm is to the compiled backends, declared once.

A ``Spec`` names an algorithm (its rule is ``fusedopt.rules.<name>``, the per-element
math, mirrored by ``kernels/rules.pxd``), its state slots in the rule's order, and its raw hyperparameters in the order of the
backend contract (``impl.<name>(param, grad, *slots, *hyper, grad_scale, seed=0,
out=None)``, a slot None when its option is off); ``scalars`` turns the raw
hyperparameters into the per-step host scalars the rule takes (``fusedopt.scalars``,
float64 on the host), and ``flags`` into the boolean options compiled into the
kernel. ``contract`` builds a backend's function from a spec and the backend's one
generic launcher, so a backend holds no code per algorithm.

The NumPy reference backend does not use this module: it is written from the
textbook formulas, independently.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

from . import scalars


class Spec(NamedTuple):
    name: str
    slots: tuple[str, ...]
    hyper: tuple[str, ...]
    scalars: Callable[..., tuple[float, ...]]
    flags: Callable[..., tuple[bool, ...]]  # (slots, *hyper) -> options


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
    "adagrad", ("state_sum",),
    ("step", "lr", "lr_decay", "eps", "weight_decay"),
    scalars.adagrad,
    lambda s, step, lr, lr_decay, eps, wd: (wd != 0.0,))

RMSPROP = Spec(
    "rmsprop", ("square_avg", "grad_avg", "momentum_buffer"),
    ("lr", "alpha", "eps", "weight_decay", "momentum"),
    scalars.rmsprop,
    lambda s, lr, alpha, eps, wd, momentum: (
        wd != 0.0, s[1] is not None, s[2] is not None))

SPECS = (SGD, ADAM, ADAGRAD, RMSPROP)


def contract(spec: Spec, launch: Callable) -> Callable:
    """The backend contract's ``<name>(param, grad, *slots, *hyper, grad_scale,
    seed=0, out=None)`` for ``spec`` (with those parameter names), running
    ``launch(name, flags, slots, scalars, param, grad, grad_scale, seed, out)``.
    Written out and compiled as the named function, as ``collections.namedtuple``
    does: a generic ``*args`` wrapper costs ~0.5 us more per call."""
    slots, hyper = ", ".join(spec.slots), ", ".join(spec.hyper)
    source = (
        f"def {spec.name}(param, grad, {slots}, {hyper}, grad_scale, seed=0, out=None):\n"
        f"    states = ({slots},)\n"
        f"    launch({spec.name!r}, flags(states, {hyper}), states, host_scalars({hyper}),\n"
        "           param, grad, grad_scale, seed, out)\n")
    scope = {"launch": launch, "flags": spec.flags,
             "host_scalars": spec.scalars}
    exec(compile(source, f"<fusedopt.algorithms.contract: {spec.name}>", "exec"), scope)
    run = scope[spec.name]
    run.__doc__ = f"One fused pass of ``fusedopt.rules.{spec.name}``."
    return run
