"""The functional kernels equal the optimizer objects step for step."""

from __future__ import annotations

import numpy as np
import pytest

from fusedopt import (LAMB, SGD, Adafactor, Adagrad, Adam, AdamW, Lion, Muon, RMSprop,
                      functional)


def run_functional(step_fn, make_state, kwargs, backend, steps=5):
    rng = np.random.default_rng(2)
    p = rng.standard_normal((4, 5)).astype(np.float32)
    state = make_state(p)
    for t in range(1, steps + 1):
        step_fn(p, rng.standard_normal(p.shape).astype(np.float32), *state, **kwargs,
                **({"step": t} if "step" in step_fn.__code__.co_varnames else {}),
                backend=backend)
    return p


def run_object(cls, kwargs, backend, steps=5):
    rng = np.random.default_rng(2)
    p = rng.standard_normal((4, 5)).astype(np.float32)
    opt = cls([p], **kwargs, backend=backend)
    for _ in range(steps):
        opt.step([rng.standard_normal(p.shape).astype(np.float32)])
    return p


zeros = np.zeros_like
CASES = [
    (functional.sgd_step, lambda p: [zeros(p)], SGD,
     dict(lr=0.1, momentum=0.9, dampening=0.1), {}),
    (functional.adam_step, lambda p: [zeros(p), zeros(p), zeros(p)], Adam,
     dict(lr=0.01, weight_decay=0.1), dict(amsgrad=True)),
    (functional.adamw_step, lambda p: [zeros(p), zeros(p)], AdamW, dict(lr=0.01), {}),
    (functional.adagrad_step, lambda p: [zeros(p)], Adagrad, dict(lr=0.1, lr_decay=0.1), {}),
    (functional.rmsprop_step, lambda p: [zeros(p), zeros(p), zeros(p)], RMSprop,
     dict(lr=0.01, momentum=0.5), dict(centered=True)),
    (functional.lion_step, lambda p: [zeros(p)], Lion, dict(lr=0.01, weight_decay=0.1),
     {}),
    (functional.lamb_step, lambda p: [zeros(p), zeros(p)], LAMB,
     dict(lr=0.01, weight_decay=0.1), {}),
    (functional.muon_step, lambda p: [zeros(p)], Muon,
     dict(lr=0.02, momentum=0.9, nesterov=False, adjust_lr_fn="match_rms_adamw"), {}),
    (functional.adafactor_step,  # a (4, 5) matrix: its row and column factors
     lambda p: [zeros(p[:, :1]), zeros(p[:1])], Adafactor,
     dict(lr=0.02, weight_decay=0.1, d=1.5), {}),
]


@pytest.mark.parametrize("step_fn,make_state,cls,kwargs,extra", CASES,
                         ids=[c[0].__name__ for c in CASES])
def test_functional_equals_optimizer(step_fn, make_state, cls, kwargs, extra, backend):
    np.testing.assert_array_equal(
        run_functional(step_fn, make_state, kwargs, backend),
        run_object(cls, {**kwargs, **extra}, backend))
