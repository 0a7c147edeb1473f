"""The table the tests cross with backends and dtypes: every algorithm with the
options torch.optim has, as ``(fusedopt class, torch.optim class name, kwargs)``.
An algorithm torch.optim lacks has None for its twin: it is held to its NumPy oracle
(test_oracle.py) and left out of the tables compared with torch (``TORCH_*``)."""

from __future__ import annotations

import fusedopt

ALGORITHMS = {
    "sgd": (fusedopt.SGD, "SGD", [
        dict(lr=0.05),
        dict(lr=0.05, momentum=0.9),
        dict(lr=0.05, momentum=0.9, dampening=0.3),
        dict(lr=0.05, momentum=0.9, nesterov=True),
        dict(lr=0.05, weight_decay=0.1),
        dict(lr=0.05, momentum=0.9, weight_decay=0.1, nesterov=True, maximize=True),
        dict(lr=0.05, momentum=0.5, dampening=0.5, weight_decay=0.01, maximize=True),
    ]),
    "adam": (fusedopt.Adam, "Adam", [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, amsgrad=True),
        dict(lr=0.01, maximize=True),
        dict(lr=0.01, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.05, amsgrad=True,
             maximize=True),
    ]),
    "adamw": (fusedopt.AdamW, "AdamW", [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.0),
        dict(lr=0.01, amsgrad=True),
        dict(lr=0.01, betas=(0.8, 0.99), weight_decay=0.1, amsgrad=True, maximize=True),
    ]),
    "adagrad": (fusedopt.Adagrad, "Adagrad", [
        dict(lr=0.05),
        dict(lr=0.05, lr_decay=0.1),
        dict(lr=0.05, weight_decay=0.1),
        dict(lr=0.05, initial_accumulator_value=0.5),
        dict(lr=0.05, eps=1e-3, maximize=True),
        dict(lr=0.05, lr_decay=0.01, weight_decay=0.05, initial_accumulator_value=0.1,
             maximize=True),
    ]),
    "rmsprop": (fusedopt.RMSprop, "RMSprop", [
        dict(lr=0.01),
        dict(lr=0.01, centered=True),
        dict(lr=0.01, momentum=0.9),
        dict(lr=0.01, centered=True, momentum=0.9),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, alpha=0.9, eps=1e-3, maximize=True),
        dict(lr=0.01, alpha=0.95, weight_decay=0.05, momentum=0.5, centered=True,
             maximize=True),
    ]),
    "adamax": (fusedopt.Adamax, "Adamax", [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, betas=(0.8, 0.99), eps=1e-3, weight_decay=0.05, maximize=True),
    ]),
    "adadelta": (fusedopt.Adadelta, "Adadelta", [
        dict(lr=0.5),
        dict(lr=0.5, weight_decay=0.1),
        dict(lr=0.5, rho=0.8, eps=1e-4, weight_decay=0.05, maximize=True),
    ]),
    "radam": (fusedopt.RAdam, "RAdam", [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        dict(lr=0.01, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.05, maximize=True),
    ]),
    "rprop": (fusedopt.Rprop, "Rprop", [
        dict(lr=0.01),
        dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.2)),
        dict(lr=0.01, maximize=True),
    ]),
    "nadam": (fusedopt.NAdam, "NAdam", [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True),
        dict(lr=0.01, betas=(0.8, 0.9), eps=1e-3, momentum_decay=0.01, weight_decay=0.05,
             maximize=True),
    ]),
    "asgd": (fusedopt.ASGD, "ASGD", [
        dict(lr=0.05),
        dict(lr=0.05, weight_decay=0.1),
        dict(lr=0.05, lambd=1e-2, alpha=0.5, t0=3, weight_decay=0.05, maximize=True),
    ]),
    "lion": (fusedopt.Lion, None, [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, betas=(0.8, 0.9), maximize=True),
        dict(lr=0.01, betas=(0.95, 0.98), weight_decay=0.05, maximize=True),
    ]),
    "lamb": (fusedopt.LAMB, None, [
        dict(lr=0.01),
        dict(lr=0.01, weight_decay=0.1),
        dict(lr=0.01, betas=(0.8, 0.9), eps=1e-3, weight_decay=0.05, maximize=True),
    ]),
}

CASES = [(name, kwargs) for name, (_, _, options) in ALGORITHMS.items()
         for kwargs in options]
#: the algorithms with a torch.optim twin, and their cases
TORCH_ALGORITHMS = {name: a for name, a in ALGORITHMS.items() if a[1] is not None}
TORCH_CASES = [case for case in CASES if case[0] in TORCH_ALGORITHMS]


def case_id(case) -> str:
    name, kwargs = case
    return name + "-" + ("-".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults")
