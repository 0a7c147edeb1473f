"""Schedules give torch.optim.lr_scheduler's lr sequences, and never recompile."""

from __future__ import annotations

import numpy as np
import pytest

import fusedopt
from fusedopt import schedules

torch = pytest.importorskip("torch")
lrs = torch.optim.lr_scheduler


def torch_opt(lr=0.1):
    p = torch.nn.Parameter(torch.zeros(3))
    return torch.optim.SGD([{"params": [p]}, {"params": [torch.nn.Parameter(
        torch.zeros(2))], "lr": lr / 4}], lr=lr)


def ours_opt(lr=0.1):
    return fusedopt.SGD([{"params": [np.zeros(3)]},
                         {"params": [np.zeros(2)], "lr": lr / 4}], lr=lr)


def sequences(make_ours, make_theirs, steps=40):
    o, t = ours_opt(), torch_opt()
    ours, theirs = make_ours(o), make_theirs(t)
    a, b = [ours.get_last_lr()], [theirs.get_last_lr()]
    for _ in range(steps):
        t.step()
        ours.step()
        theirs.step()
        a.append(ours.get_last_lr())
        b.append(theirs.get_last_lr())
    return np.array(a), np.array(b)


CASES = {
    "step": (lambda o: schedules.StepDecay(o, step_size=7, gamma=0.5),
             lambda t: lrs.StepLR(t, step_size=7, gamma=0.5)),
    "exponential": (lambda o: schedules.ExponentialDecay(o, gamma=0.9),
                    lambda t: lrs.ExponentialLR(t, gamma=0.9)),
    "cosine": (lambda o: schedules.CosineAnnealing(o, total_steps=30, eta_min=0.001),
               lambda t: lrs.CosineAnnealingLR(t, T_max=30, eta_min=0.001)),
    "warmup": (lambda o: schedules.LinearWarmup(o, start_factor=0.1, total_steps=8),
               lambda t: lrs.LinearLR(t, start_factor=0.1, total_iters=8)),
    "warmup-then-cosine": (
        lambda o: schedules.WarmupThen(
            schedules.LinearWarmup(o, start_factor=0.1, total_steps=5),
            schedules.CosineAnnealing(o, total_steps=30)),
        lambda t: lrs.SequentialLR(t, [lrs.LinearLR(t, start_factor=0.1, total_iters=5),
                                       lrs.CosineAnnealingLR(t, T_max=30)],
                                   milestones=[5])),
}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", list(CASES))
def test_same_lr_sequence_as_torch(name):
    ours, theirs = sequences(*CASES[name])
    np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-15)


def test_a_new_lr_every_step_never_recompiles():
    pytest.importorskip("numba")
    from fusedopt.backends import numba_cpu
    p = np.zeros(100, np.float32)
    opt = fusedopt.SGD([p], lr=0.1, momentum=0.9, backend="numba")
    sched = schedules.WarmupThen(schedules.LinearWarmup(opt, total_steps=5),
                                 schedules.CosineAnnealing(opt, total_steps=50))
    opt.step([np.ones_like(p)])
    def compiled():
        return {key: len(k.signatures) for key, k in numba_cpu.KERNELS.items()}
    before = compiled()
    seen = set()
    for _ in range(60):
        sched.step()
        seen.add(opt.param_groups[0]["lr"])
        opt.step([np.ones_like(p)])
    assert len(seen) > 50
    assert compiled() == before


def test_bad_arguments_are_named():
    opt = ours_opt()
    with pytest.raises(ValueError, match="step_size: expected an int >= 1"):
        schedules.StepDecay(opt, step_size=0)
    with pytest.raises(ValueError, match="gamma: expected a finite number"):
        schedules.ExponentialDecay(opt, gamma=float("nan"))
    with pytest.raises(TypeError, match="optimizer: expected an object with param_groups"):
        schedules.CosineAnnealing(object(), total_steps=3)
