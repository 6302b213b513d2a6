"""Terminal events (torchdiffeq 0.2.5's ``event_fn`` and ``odeint_event``): event time and state, gradients through
the event time, reverse time, several event functions, against closed forms and torchdiffeq."""
from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq
from torch import nn

from neuralode import SolveStats, odeint, odeint_adjoint, odeint_event

TOL = dict(rtol=1e-10, atol=1e-10)


class Decay(nn.Module):
    """y' = -k y: from y0 the level c is reached at tau = log(y0 / c) / k."""

    def __init__(self, k: float = 1.3) -> None:
        super().__init__()
        self.k = nn.Parameter(torch.tensor(k))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -self.k * y


def below_half(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return y[0] - 0.5


def _event_and_grads(interfaces, y0_value: float, reverse_time: bool = False, **kwargs):
    """event_t, final state and d(event_t + final state)/d(y0, k) from ``odeint_event`` through ``interfaces``."""
    func = Decay()
    y0 = torch.tensor([y0_value, 1.0], requires_grad=True)
    odeint_fn, event_fn_solver = interfaces
    event_t, solution = event_fn_solver(func, y0, torch.tensor(0.0), event_fn=below_half, reverse_time=reverse_time,
                                        odeint_interface=odeint_fn, **kwargs)
    d_y0, d_k = torch.autograd.grad(event_t + solution[-1].sum(), (y0, func.k))
    return event_t.detach(), solution.detach(), d_y0, d_k


OURS = (odeint, odeint_event)
OURS_ADJOINT = (odeint_adjoint, odeint_event)
THEIRS = (torchdiffeq.odeint, torchdiffeq.odeint_event)
THEIRS_ADJOINT = (torchdiffeq.odeint_adjoint, torchdiffeq.odeint_event)


@pytest.mark.parametrize("interfaces", [OURS, OURS_ADJOINT], ids=["odeint", "odeint_adjoint"])
@pytest.mark.parametrize("method, options", [("dopri5", None), ("tsit5", None), ("dopri8", None),
                                             ("rk4", dict(step_size=0.05))])
def test_event_time_and_gradients_match_closed_form_and_torchdiffeq(interfaces, method: str, options):
    k, y0 = 1.3, 2.0
    tau = math.log(y0 / 0.5) / k
    ours = _event_and_grads(interfaces, y0, method=method, options=options, **TOL)
    event_t, solution, d_y0, d_k = ours
    # Closed form: tau, y(tau) = (0.5, e^{-k tau}); d tau/d y0 = 1/(k y0), d tau/dk = -tau/k, plus the state's terms.
    second = math.exp(-k * tau)
    expected_d_y0 = [1 / (k * y0) + (-k * second) / (k * y0), second]
    expected_d_k = -tau / k + (-k * second) * (-tau / k) - tau * second
    oracle = THEIRS if interfaces is OURS else THEIRS_ADJOINT
    if method == "rk4":  # a fixed step: bisection of a linear interpolant, torchdiffeq's exact algorithm
        theirs = _event_and_grads(oracle, y0, method=method, options=options, **TOL)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-8)
        return
    assert abs(float(event_t) - tau) < 1e-8
    torch.testing.assert_close(solution[-1], torch.tensor([0.5, second]), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(d_y0, torch.tensor(expected_d_y0), rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(d_k, torch.tensor(expected_d_k), rtol=1e-6, atol=1e-7)
    if method == "dopri5":
        theirs = _event_and_grads(oracle, y0, method=method, **TOL)
        for a, b in zip(ours, theirs):
            torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("interfaces", [OURS, OURS_ADJOINT], ids=["odeint", "odeint_adjoint"])
def test_reverse_time_event_matches_torchdiffeq(interfaces):
    # Backwards in time the decay grows: from 0.2 at t0 = 0 the level 0.5 lies at tau = -log(2.5) / k.
    ours = _event_and_grads(interfaces, 0.2, reverse_time=True, **TOL)
    theirs = _event_and_grads(THEIRS, 0.2, reverse_time=True, **TOL)
    assert abs(float(ours[0]) + math.log(2.5) / 1.3) < 1e-8
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-8)


def test_first_of_several_event_functions_triggers():
    def levels(t, y):  # y[0] reaches 0.9 first, then 0.5; t reaches 3 last
        return torch.stack([y[0] - 0.5, 3.0 - t, y[0] - 0.9])

    y0 = torch.tensor([1.0, 1.0])
    ours = odeint(Decay(), y0, torch.tensor([0.0, 1.0]), event_fn=levels, **TOL)
    theirs = torchdiffeq.odeint(Decay(), y0, torch.tensor([0.0, 1.0]), event_fn=levels, **TOL)
    assert abs(float(ours[0]) - math.log(1 / 0.9) / 1.3) < 1e-8
    torch.testing.assert_close(ours[0], theirs[0].to(ours[0]), rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(ours[1], theirs[1], rtol=1e-8, atol=1e-8)


class Ball(nn.Module):
    """Free fall of a tuple state (height, velocity) under gravity g."""

    def __init__(self, g: float = 9.81) -> None:
        super().__init__()
        self.g = nn.Parameter(torch.tensor(g))

    def forward(self, t, state):
        height, velocity = state
        return velocity, -self.g * torch.ones_like(velocity)


@pytest.mark.parametrize("interface", [odeint, odeint_adjoint])
def test_bouncing_ball_hits_the_ground_with_the_right_sensitivities(interface):
    ball = Ball()
    h0 = torch.tensor([2.0], requires_grad=True)
    v0 = torch.tensor([0.0])
    event_t, (height, velocity) = odeint_event(ball, (h0, v0), torch.tensor(0.0), event_fn=lambda t, s: s[0],
                                               odeint_interface=interface, **TOL)
    g = 9.81
    tau = math.sqrt(2 * 2.0 / g)
    assert abs(event_t.item() - tau) < 1e-8 and abs(height[-1].item()) < 1e-8
    assert abs(velocity[-1].item() + g * tau) < 1e-7
    d_h0, d_g = torch.autograd.grad(event_t, (h0, ball.g))
    assert abs(float(d_h0) - 1 / math.sqrt(2 * g * 2.0)) < 1e-7  # tau = sqrt(2 h0 / g)
    assert abs(float(d_g) + tau / (2 * g)) < 1e-7


def test_event_solve_returns_times_on_the_user_side_and_counts_work():
    stats = SolveStats()
    event_t, ys = odeint(Decay(), torch.tensor([2.0, 1.0]), torch.tensor([1.0, 0.0]), event_fn=lambda t, y: t - 0.25,
                         stats=stats, **TOL)
    assert abs(float(event_t) - 0.25) < 1e-9 and ys.shape == (2, 2)
    assert stats.nfe_forward > 0 and stats.steps_accepted_forward > 0
    # An event function already at zero ends the solve at t0.
    event_t, ys = odeint(Decay(), torch.tensor([0.5, 1.0]), torch.tensor([0.0, 1.0]), event_fn=below_half)
    assert float(event_t) == 0.0 and torch.equal(ys[0], ys[1])


@pytest.mark.parametrize("method, interp, tol", [("radauIIA5", "cubic", 1e-6), ("gl4", "cubic", 1e-6),
                                                  ("sdirk2", "cubic", 5e-4), ("trbdf2", "linear", 2e-3)])
def test_implicit_fixed_step_methods_find_events(method: str, interp: str, tol: float):
    """The implicit family steps through the same fixed-step event search: event time and its gradient."""
    k, y0 = 1.3, 2.0
    tau = math.log(y0 / 0.5) / k
    event_t, solution, d_y0, d_k = _event_and_grads(OURS, y0, method=method,
                                                    options=dict(step_size=0.05, interp=interp), **TOL)
    assert abs(float(event_t) - tau) < tol
    assert abs(float(solution[-1][0]) - 0.5) < tol
    second = math.exp(-k * tau)
    torch.testing.assert_close(d_y0, torch.tensor([1 / (k * y0) - second / y0, second]), rtol=0, atol=50 * tol)


@pytest.mark.parametrize("t, method, options, message", [
    (torch.tensor([0.0, 0.5, 1.0]), "dopri5", None, "t must hold 2 times"),
    (torch.tensor([0.0, 1.0]), "rk4", None, "needs options\\['step_size'\\]"),
])
def test_bad_event_solves_fail_in_one_line(t, method, options, message):
    with pytest.raises(ValueError, match=message) as info:
        odeint(Decay(), torch.tensor([2.0, 1.0]), t, method=method, options=options, event_fn=below_half)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("interface", [odeint, odeint_adjoint])
def test_gradient_reaches_the_start_time(interface):
    # An autonomous system: starting later by dt0 moves the event by dt0, and the state there not at all.
    t0 = torch.tensor(0.3, requires_grad=True)
    event_t, solution = odeint_event(Decay(), torch.tensor([2.0, 1.0]), t0, event_fn=below_half,
                                     odeint_interface=interface, **TOL)
    (d_t0,) = torch.autograd.grad(event_t + solution[-1].sum(), t0)
    assert abs(float(d_t0) - 1.0) < 1e-8
