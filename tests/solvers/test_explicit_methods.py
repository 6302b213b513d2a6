"""Explicit methods against torchdiffeq: heun2/heun3 on a fixed grid, fehlberg2 and adaptive_heun (whose last
stage starts the next step), and dopri8's dense output at many output times. "No more work at equal error":
our NFE is compared with torchdiffeq's at the loosest tolerance at which its error is no larger than ours."""
from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torchdiffeq
from scipy.integrate import solve_ivp
from solver_helpers import MLPDynamics

from neuralode import SOLVERS, SolveStats, odeint


def _counted(func: Callable) -> tuple[Callable, list[int]]:
    calls = [0]

    def f(t, y):
        calls[0] += 1
        return func(t, y)
    return f, calls


def _decay(n_out: int):
    """y' = -y, y(0) = 1 on [0, 1] (the problem of the task's numbers), n_out output times."""
    t = torch.linspace(0.0, 1.0, n_out)
    return (lambda t, y: -y), torch.ones(1), t, torch.exp(-t)[:, None]


def _lotka(n_out: int):
    """Lotka-Volterra on [0, 10] against scipy's DOP853 at 1e-13."""
    t = np.linspace(0.0, 10.0, n_out)
    ref = solve_ivp(lambda t, y: [1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]], (0.0, 10.0), [1.0, 1.0],
                    method="DOP853", t_eval=t, rtol=1e-13, atol=1e-13).y.T
    f = lambda t, y: torch.stack([1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]])  # noqa: E731
    return f, torch.tensor([1.0, 1.0]), torch.from_numpy(t), torch.from_numpy(ref)


def _mlp():
    func = MLPDynamics(dim=3)
    y0, t = torch.randn(4, 3), torch.linspace(0.0, 2.0, 5)
    with torch.no_grad():
        exact = odeint(func, y0, t, rtol=1e-13, atol=1e-13, method="dopri8")
    return func, y0, t, exact


def _ours(func, y0, t, exact, method, rtol, atol) -> tuple[float, SolveStats]:
    stats = SolveStats()
    with torch.no_grad():
        ys = odeint(func, y0, t, rtol=rtol, atol=atol, method=method, stats=stats)
    return (ys - exact).abs().max().item(), stats


def _torchdiffeq_nfe_at_error(func, y0, t, exact, method, rtol, atol, target: float, tightest: float) -> int:
    """torchdiffeq's NFE at the loosest tolerance ``tol * 10**(-k/4)`` (10x looser down to ``tightest`` x) at
    which its error is <= ``target``; if none reaches it, its NFE at the tightest one (a lower bound)."""
    nfe = 0
    for k in range(-4, round(-4 * math.log10(tightest)) + 1):
        scale = 10 ** (-k / 4)
        f, calls = _counted(func)
        with torch.no_grad():
            ys = torchdiffeq.odeint(f, y0, t, rtol=rtol * scale, atol=atol * scale, method=method)
        nfe = calls[0]
        if (ys - exact).abs().max().item() <= target:
            break
    return nfe


@pytest.mark.parametrize("method", ["heun2", "heun3"])
@pytest.mark.parametrize("step_size", [None, 0.03])
def test_fixed_heun_matches_torchdiffeq(method, step_size):
    func = MLPDynamics(dim=3)
    y0, t = torch.randn(4, 3), torch.linspace(0.0, 1.0, 6)
    opts = None if step_size is None else dict(step_size=step_size)
    stats = SolveStats()
    f, calls = _counted(func)
    with torch.no_grad():
        ours = odeint(func, y0, t, method=method, options=opts, stats=stats)
        ref = torchdiffeq.odeint(f, y0, t, method=method, options=opts)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)
    assert stats.nfe_forward == calls[0] == stats.steps_accepted_forward * SOLVERS[method].tableau.stages


@pytest.mark.parametrize("problem", ["decay", "mlp"])
@pytest.mark.parametrize("method", ["adaptive_heun", "fehlberg2"])
def test_reused_last_stage_vs_torchdiffeq(method, problem):
    func, y0, t, exact = _decay(2) if problem == "decay" else _mlp()
    rtol, atol = (1e-7, 1e-9) if problem == "decay" else (1e-6, 1e-6)
    err, stats = _ours(func, y0, t, exact, method, rtol, atol)
    # The last stage starts the next step: stages - 1 evaluations per attempt, + f(t0, y0) and the first-step probe.
    attempts = stats.steps_accepted_forward + stats.steps_rejected_forward
    assert stats.nfe_forward == 2 + attempts * (SOLVERS[method].tableau.stages - 1)
    # torchdiffeq's steps and its interpolant: its NFE and its error (fronts: test_torchdiffeq_steps.py).
    f, calls = _counted(func)
    with torch.no_grad():
        theirs = torchdiffeq.odeint(f, y0, t, rtol=rtol, atol=atol, method=method)
    assert stats.nfe_forward == calls[0]
    assert err == pytest.approx((theirs - exact).abs().max().item(), rel=1e-6)


@pytest.mark.parametrize("problem", ["decay", "lotka"])
def test_dopri8_dense_output_vs_torchdiffeq(problem):
    # 11 output times: dense output, so the work is that of the solve to the last time alone (no step is
    # shortened to land on an output), and torchdiffeq needs more work for the same error.
    func, y0, t, exact = _decay(11) if problem == "decay" else _lotka(11)
    rtol, atol = 1e-7, 1e-9
    err, stats = _ours(func, y0, t, exact, "dopri8", rtol, atol)
    _, end_only = _ours(func, y0, t[[0, -1]], exact[[0, -1]], "dopri8", rtol, atol)
    assert stats.nfe_forward == end_only.nfe_forward
    assert err <= 10 * rtol * exact.abs().max().item()
    assert stats.nfe_forward <= _torchdiffeq_nfe_at_error(func, y0, t, exact, "dopri8", rtol, atol, err, 1e-6)


def test_dopri8_dense_output_is_sixth_order():
    # Outputs mid-step with a constant step h: the interpolation error shrinks like h^7 (local), so halving h
    # divides it by ~2^7 where the 8th-order steps' own error is far smaller.
    f = lambda t, y: torch.cos(t) * y  # noqa: E731
    errs = []
    for h in (0.4, 0.2):
        t = torch.tensor([0.0, 0.5 * h, 2.0])  # the first output in the middle of the first step
        ys = odeint(f, torch.tensor([1.0]), t, rtol=1e3, atol=1e3, method="dopri8", options=dict(first_step=h, ifactor=1.0))
        errs.append(abs(ys[1, 0].item() - math.exp(math.sin(0.5 * h))))
    assert 2 ** 6 < errs[0] / errs[1] < 2 ** 8.5, errs
