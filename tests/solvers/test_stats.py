"""Work counters match what actually ran, and the step loops read the device as little as promised."""
from __future__ import annotations

import pytest
import torch
from solver_helpers import ADAPTIVE, FIXED, MLPDynamics
from torch.overrides import TorchFunctionMode

from neuralode import SOLVERS, SolveStats, odeint, odeint_adjoint

# Tensor methods that copy a device value to the host (a CUDA sync when the tensor lives on a GPU).
_HOST_READS = {"item", "tolist", "__float__", "__int__", "__bool__", "__index__", "cpu", "numpy"}


class HostReads(TorchFunctionMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if getattr(func, "__name__", "") in _HOST_READS:
            self.count += 1
        return func(*args, **(kwargs or {}))


def _counting(func):
    calls = [0]

    def f(t, y):
        calls[0] += 1
        return func(t, y)
    return f, calls


@pytest.mark.parametrize("method", ADAPTIVE + FIXED)
def test_nfe_equals_calls_and_steps_add_up(method):
    func = MLPDynamics(dim=3)
    f, calls = _counting(func)
    stats = SolveStats()
    opts = dict(step_size=0.05) if method in FIXED else None
    with torch.no_grad():
        odeint(f, torch.randn(2, 3), torch.linspace(0, 1, 4), rtol=1e-6, atol=1e-6, method=method, options=opts,
               stats=stats)
    assert stats.nfe_forward == calls[0] > 0
    tab = SOLVERS[method].tableau
    if method in FIXED:
        assert stats.steps_accepted_forward == 20 and stats.steps_rejected_forward == 0
        assert calls[0] == 20 * tab.stages
    else:
        attempts = stats.steps_accepted_forward + stats.steps_rejected_forward
        new_per_step = tab.stages - 1  # the first stage is the previous step's last derivative
        # f(t + h, y_new) after each acceptance, unless the last stage is the next step's first
        extra = 0 if tab.fsal or tab.reuse_last_stage else stats.steps_accepted_forward
        assert calls[0] == 2 + attempts * new_per_step + extra  # 2: f(t0, y0) and the first-step probe


def test_stats_accumulate_and_reset():
    stats = SolveStats()
    for _ in range(2):
        odeint(lambda t, y: -y, torch.ones(2), torch.tensor([0.0, 1.0]), method="rk4",
               options=dict(step_size=0.25), stats=stats)
    assert stats.nfe_forward == 32 and stats.steps_accepted_forward == 8
    stats.reset()
    assert all(v == 0 for v in stats.as_dict().values())


def test_adjoint_backward_nfe_equals_calls():
    func = MLPDynamics(dim=2)
    stats = SolveStats()
    calls = [0]
    hook = func.register_forward_hook(lambda *a: calls.__setitem__(0, calls[0] + 1))
    ys = odeint_adjoint(func, torch.randn(3, 2), torch.tensor([0.0, 1.0]), rtol=1e-6, atol=1e-6, stats=stats)
    assert stats.nfe_forward == calls[0]
    ys[-1].sum().backward()
    hook.remove()
    assert stats.nfe_forward + stats.nfe_backward == calls[0]


@pytest.mark.parametrize("method", FIXED)
def test_fixed_step_loop_never_reads_the_device(method):
    func = MLPDynamics(dim=3)
    y0 = torch.randn(2, 3)
    reads = []
    for n in (2, 50):
        with torch.no_grad(), HostReads() as mode:
            odeint(func, y0, torch.linspace(0, 1, n + 1), method=method)
        reads.append(mode.count)
    # Only validating t (its host copy) reads the device; the count does not grow with the steps.
    assert reads[0] == reads[1] <= 2


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "dopri8"])
def test_adaptive_loop_reads_the_device_once_per_step(method):
    func = MLPDynamics(dim=3)
    y0 = torch.randn(2, 3)
    for tol in (1e-4, 1e-8):
        stats = SolveStats()
        with torch.no_grad(), HostReads() as mode:
            odeint(func, y0, torch.linspace(0, 2, 5), rtol=tol, atol=tol, method=method, stats=stats)
        attempts = stats.steps_accepted_forward + stats.steps_rejected_forward
        # One read per attempted step (the error ratio) + t's host copy and the first step size.
        assert mode.count <= attempts + 3, (mode.count, attempts)
