"""The default step control is torchdiffeq's (issue 17): each adaptive method both libraries have needs no more
evaluations than torchdiffeq for the same error. dopri5, adaptive_heun and fehlberg2 take torchdiffeq's very
steps; bosh3 and dopri8 interpolate more accurately between theirs."""
from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq
from solver_helpers import Counting
from torch import nn

from neuralode import SolveStats, odeint
from neuralode.solvers.controller import IntegralController, PIController, make_controller

METHODS = ["dopri5", "adaptive_heun", "fehlberg2", "bosh3", "dopri8"]
SAME_STEPS = {"dopri5", "adaptive_heun", "fehlberg2"}
# rtol = 10^(-j/4) for j = 12 (1e-3) to this (default 36: 1e-9); low orders stop earlier, where NFE grow large.
LAST_J = {"adaptive_heun": 20, "fehlberg2": 24, "bosh3": 28}


@pytest.fixture(autouse=True)
def _solver_defaults(float64_single_thread):
    yield


def _lotka(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([1.5 * y[0] - y[0] * y[1], y[0] * y[1] - 3.0 * y[1]])


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 4)).double()
    return lambda t, y: net(y)  # noqa: E731


PROBLEMS = {
    "lotka": (_lotka, lambda: torch.tensor([1.0, 1.0], dtype=torch.float64), torch.linspace(0.0, 10.0, 11)),
    "mlp": (_mlp(), lambda: torch.randn(3, 4, generator=torch.Generator().manual_seed(0)), torch.linspace(0.0, 2.0, 11)),
}


def _front(runs: list[tuple[int, float]], err: float) -> float:
    """The fewest NFE among ``runs`` (NFE, error) that reached ``err`` (roundoff slack); inf if none did."""
    return min((n for n, e in runs if e <= err * (1 + 1e-6) + 1e-13), default=math.inf)


@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("method", METHODS)
def test_no_more_nfe_than_torchdiffeq_at_equal_error(method, problem):
    # Both libraries on the same tolerance grid; at every error level either reached (inside both ranges), the
    # fewest NFE ours needed for it is no more than torchdiffeq's.
    func, make_y0, t = PROBLEMS[problem]
    y0 = make_y0()
    ours_runs, their_runs = [], []
    with torch.no_grad():
        exact = odeint(func, y0, t, rtol=1e-12, atol=1e-12, method="dopri8")
        for j in range(12, LAST_J.get(method, 36) + 1):
            rtol = 10.0 ** (-j / 4)
            stats = SolveStats()
            ours = odeint(func, y0, t, rtol=rtol, atol=rtol / 100, method=method, stats=stats)
            counting = Counting(func)
            theirs = torchdiffeq.odeint(counting, y0, t, rtol=rtol, atol=rtol / 100, method=method)
            ours_runs.append((stats.nfe_forward, (ours - exact).abs().max().item()))
            their_runs.append((counting.calls, (theirs - exact).abs().max().item()))
            if method in SAME_STEPS:  # the very same steps and outputs
                assert stats.nfe_forward == counting.calls, (rtol, stats.nfe_forward, counting.calls)
                torch.testing.assert_close(ours, theirs, rtol=1e-9, atol=1e-12)
    errors = [e for _, e in ours_runs + their_runs]
    lo = max(min(e for _, e in ours_runs), min(e for _, e in their_runs))
    hi = min(max(e for _, e in ours_runs), max(e for _, e in their_runs))
    for err in (e for e in errors if lo <= e <= hi):
        assert _front(ours_runs, err) <= _front(their_runs, err), (err, ours_runs, their_runs)


def test_integral_controller_is_torchdiffeqs_rule():
    ctrl = IntegralController(error_order=5)
    assert ctrl.next_step(1.0, 0.8, accepted=True) == 1.0  # 0.9 * 0.8**-0.2 < 1: an accepted step keeps its size
    assert math.isclose(ctrl.next_step(1.0, 1e-3, accepted=True), 0.9 * 1e-3 ** -0.2)
    assert ctrl.next_step(1.0, 1e-9, accepted=True) == 10.0  # ifactor
    assert math.isclose(ctrl.next_step(1.0, 2.0, accepted=False), 0.9 * 2.0 ** -0.2)
    assert ctrl.next_step(1.0, 1e9, accepted=False) == 0.2  # dfactor
    assert ctrl.next_step(1.0, math.inf, accepted=False) == 0.2
    assert not ctrl.lands_on_last_output and PIController(5).lands_on_last_output


def test_controller_option_picks_the_controller_and_rejects_unknown_names():
    assert isinstance(make_controller({}, 5), IntegralController)
    assert isinstance(make_controller({"controller": "pi", "safety": 0.8}, 5), PIController)
    assert make_controller({"controller": "pi", "safety": 0.8}, 5).safety == 0.8
    with pytest.raises(ValueError, match=r"options\['controller'\] must be 'integral' or 'pi', got 'PI'"):
        odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 1.0]), options={"controller": "PI"})


def test_integral_steps_past_the_last_output_pi_lands_on_it():
    seen = {}
    for controller in ("integral", "pi"):
        times = []

        def f(t, y):
            times.append(float(t))
            return -y
        ys = odeint(f, torch.ones(1), torch.tensor([0.0, 1.0]), rtol=1e-3, atol=1e-5, options={"controller": controller})
        torch.testing.assert_close(ys[-1], torch.exp(torch.tensor([-1.0])), rtol=1e-3, atol=0)
        seen[controller] = max(times)
    assert seen["integral"] > 1.0 and seen["pi"] == 1.0
