"""Property tests: random hyperparameters and shapes, every backend against the
float64 NumPy oracle; the serial and parallel loops agree bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cases import ALGORITHMS
from conftest import relative_error

unit = st.floats(0.0, 0.999)
positive = st.floats(1e-6, 1.0)
HYPER = {
    "sgd": st.fixed_dictionaries({
        "lr": positive, "momentum": unit, "dampening": unit,
        "weight_decay": st.floats(0.0, 1.0), "nesterov": st.booleans(),
        "maximize": st.booleans()}),
    "adam": st.fixed_dictionaries({
        "lr": positive, "betas": st.tuples(unit, unit), "eps": st.floats(1e-8, 1e-1),
        "weight_decay": st.floats(0.0, 1.0), "amsgrad": st.booleans(),
        "maximize": st.booleans()}),
    "adamw": st.fixed_dictionaries({
        "lr": positive, "betas": st.tuples(unit, unit), "eps": st.floats(1e-8, 1e-1),
        "weight_decay": st.floats(0.0, 1.0), "amsgrad": st.booleans(),
        "maximize": st.booleans()}),
    "adagrad": st.fixed_dictionaries({
        "lr": positive, "lr_decay": st.floats(0.0, 1.0), "eps": st.floats(1e-10, 1e-1),
        "weight_decay": st.floats(0.0, 1.0),
        "initial_accumulator_value": st.floats(0.0, 1.0), "maximize": st.booleans()}),
    "rmsprop": st.fixed_dictionaries({
        "lr": positive, "alpha": st.floats(0.5, 0.999), "eps": st.floats(1e-8, 1e-1),
        "weight_decay": st.floats(0.0, 1.0), "momentum": unit,
        "centered": st.booleans(), "maximize": st.booleans()}),
    "lion": st.fixed_dictionaries({
        "lr": positive, "betas": st.tuples(unit, unit),
        "weight_decay": st.floats(0.0, 1.0), "maximize": st.booleans()}),
    "adamax": st.fixed_dictionaries({
        "lr": positive, "betas": st.tuples(unit, unit), "eps": st.floats(1e-8, 1e-1),
        "weight_decay": st.floats(0.0, 1.0), "maximize": st.booleans()}),
    "radam": st.fixed_dictionaries({
        "lr": positive, "betas": st.tuples(unit, unit), "eps": st.floats(1e-8, 1e-1),
        "weight_decay": st.floats(0.0, 1.0), "decoupled_weight_decay": st.booleans(),
        "maximize": st.booleans()}),
    "rprop": st.fixed_dictionaries({
        "lr": positive, "etas": st.tuples(st.floats(0.1, 0.9), st.floats(1.1, 2.0)),
        "step_sizes": st.tuples(st.floats(0.0, 1e-3), st.floats(1e-2, 10.0)),
        "maximize": st.booleans()}),
    "nadam": st.fixed_dictionaries({
        "lr": positive, "betas": st.tuples(unit, unit), "eps": st.floats(1e-8, 1e-1),
        "weight_decay": st.floats(0.0, 1.0), "momentum_decay": st.floats(0.0, 0.1),
        "decoupled_weight_decay": st.booleans(), "maximize": st.booleans()}),
    "asgd": st.fixed_dictionaries({
        "lr": positive, "lambd": st.floats(0.0, 0.1), "alpha": st.floats(0.0, 1.0),
        "t0": st.floats(0.0, 10.0), "weight_decay": st.floats(0.0, 1.0),
        "maximize": st.booleans()}),
    "lamb": st.fixed_dictionaries({
        "lr": positive, "betas": st.tuples(unit, unit), "eps": st.floats(1e-8, 1e-1),
        "weight_decay": st.floats(0.0, 1.0), "maximize": st.booleans()}),
    "adadelta": st.fixed_dictionaries({
        "lr": positive, "rho": unit, "eps": st.floats(1e-8, 1e-1),
        "weight_decay": st.floats(0.0, 1.0), "maximize": st.booleans()}),
}
shapes = st.lists(st.integers(1, 40), min_size=1, max_size=3).map(tuple)

# Random data makes ill-conditioned elements: g + wd * p cancelling to ~eps, where the
# update depends on the last bit of that sum, which a fused multiply-add rounds once
# and the oracle twice (found by hypothesis: 3e-10 after one RMSprop step). A wrong
# formula errs by 1e-7 or far more; the torch parity matrix keeps the contract's 1e-10.
PROPERTY_TOL = 1e-8


def train(cls, kwargs, backend, params, grads):
    opt = cls(params, **kwargs, backend=backend)
    for g in grads:
        opt.step([g])
    return opt


@pytest.mark.parametrize("name", list(ALGORITHMS))
@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data(), shape=shapes, steps=st.integers(1, 6), seed=st.integers(0, 2**32 - 1))
def test_backend_matches_float64_oracle(name, backend, data, shape, steps, seed):
    cls = ALGORITHMS[name][0]
    kwargs = data.draw(HYPER[name])
    if kwargs.get("nesterov"):  # Nesterov needs momentum > 0 and no dampening
        kwargs.update(dampening=0.0, momentum=max(kwargs["momentum"], 0.5))
    rng = np.random.default_rng(seed)
    start = rng.standard_normal(shape)
    grads = [rng.standard_normal(shape) for _ in range(steps)]
    ours_p, ref_p = start.copy(), start.copy()
    ours = train(cls, kwargs, backend, [ours_p], grads)
    ref = train(cls, kwargs, "numpy", [ref_p], grads)
    assert relative_error(ours_p, ref_p) <= PROPERTY_TOL
    for key, value in ref.state[0].items():
        if isinstance(value, np.ndarray):
            assert relative_error(ours.state[0][key], value) <= PROPERTY_TOL, key


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_serial_and_parallel_loops_are_bit_identical(name, dtype, monkeypatch):
    """Thread count and loop split never change a result: 100,003 elements (not a
    multiple of any vector width) through the serial loop and the prange loop."""
    from fusedopt.backends import policy
    cls, _, options = ALGORITHMS[name]
    kwargs = options[-1]
    rng = np.random.default_rng(7)
    start = rng.standard_normal(100_003).astype(dtype)
    grads = [rng.standard_normal(100_003).astype(dtype) for _ in range(3)]
    results = []
    for threshold in (1 << 62, 0):
        monkeypatch.setattr(policy, "PARALLEL_MIN_SIZE", threshold)
        p = start.copy()
        train(cls, kwargs, "numba", [p], grads)
        results.append(p)
    np.testing.assert_array_equal(results[0], results[1])
