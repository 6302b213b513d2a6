"""torchdiffeq's step callbacks: ``func.callback_step/_accept_step/_reject_step(t0, y0, dt)`` (and the ``_adjoint``
variants during odeint_adjoint's backward solve), same call points and arguments as torchdiffeq 0.2.5."""
from __future__ import annotations

import warnings

import pytest
import torch
import torchdiffeq
from torch import nn

from neuralode import SolveStats, odeint, odeint_adjoint


class Logged(nn.Module):
    """A tuple-state linear ODE that logs every callback as (name, t0, state, dt)."""

    def __init__(self) -> None:
        super().__init__()
        self.rate = nn.Parameter(torch.tensor([[-0.5, 1.0], [-1.0, -0.3]]))
        self.log: list[tuple] = []

    def forward(self, t: torch.Tensor, y: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        position, scale = y
        return position @ self.rate.T * (1 + 0.1 * t), -0.2 * scale

    def _record(self, name: str, t0: torch.Tensor, y0, dt: torch.Tensor) -> None:
        state = tuple(p.detach().clone() for p in y0) if isinstance(y0, tuple) else y0.detach().clone()
        self.log.append((name, float(t0.detach()), state, float(dt.detach())))

    def callback_step(self, t0, y0, dt):
        self._record("step", t0, y0, dt)

    def callback_accept_step(self, t0, y0, dt):
        self._record("accept", t0, y0, dt)

    def callback_reject_step(self, t0, y0, dt):
        self._record("reject", t0, y0, dt)

    def callback_step_adjoint(self, t0, y0, dt):
        self._record("step_adjoint", t0, y0, dt)

    def callback_accept_step_adjoint(self, t0, y0, dt):
        self._record("accept_adjoint", t0, y0, dt)

    def callback_reject_step_adjoint(self, t0, y0, dt):
        self._record("reject_adjoint", t0, y0, dt)


def _y0() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.tensor([[1.0, 0.5], [0.2, -0.4]]), torch.tensor([2.0])


def _assert_same_log(ours: list[tuple], theirs: list[tuple]) -> None:
    assert [(name, pytest.approx(t0, abs=1e-12), pytest.approx(dt, abs=1e-12)) for name, t0, _, dt in ours] == \
        [(name, t0, dt) for name, t0, _, dt in theirs]
    for (_, _, ours_y, _), (_, _, theirs_y, _) in zip(ours, theirs):
        torch.testing.assert_close(ours_y, theirs_y, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_fixed_step_callbacks_match_torchdiffeq(method: str, sign: float):
    t = sign * torch.linspace(0.0, 1.0, 4)
    ours, theirs = Logged(), Logged()
    theirs.load_state_dict(ours.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # both warn that a fixed-step method calls no accept/reject callbacks
        odeint(ours, _y0(), t, method=method, options=dict(step_size=0.15))
        torchdiffeq.odeint(theirs, _y0(), t, method=method, options=dict(step_size=0.15))
    assert len(ours.log) == 7 and {name for name, *_ in ours.log} == {"step"}
    _assert_same_log(ours.log, theirs.log)


def test_fixed_step_method_warns_about_callbacks_it_never_calls():
    with pytest.warns(UserWarning, match="'rk4' does not call callback_accept_step, callback_reject_step"):
        odeint(Logged(), _y0(), torch.tensor([0.0, 1.0]), method="rk4")


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_adaptive_callbacks_follow_torchdiffeq_protocol(sign: float):
    # Each attempt calls callback_step, then callback_accept_step or callback_reject_step with the same arguments;
    # t0 is the caller's time, dt the (positive) step, y0 the state at t0 in the caller's structure.
    t = sign * torch.tensor([0.0, 0.4, 2.0])
    ours, theirs = Logged(), Logged()
    theirs.load_state_dict(ours.state_dict())
    stats = SolveStats()
    odeint(ours, _y0(), t, rtol=1e-6, atol=1e-8, stats=stats)
    torchdiffeq.odeint(theirs, _y0(), t, rtol=1e-6, atol=1e-8)
    for log in (ours.log, theirs.log):
        steps, outcomes = log[0::2], log[1::2]
        assert len(steps) == len(outcomes) and {name for name, *_ in steps} == {"step"}
        assert {name for name, *_ in outcomes} <= {"accept", "reject"}
        for (_, t0, y0, dt), (_, t0_, y0_, dt_) in zip(steps, outcomes):
            assert (t0, dt) == (t0_, dt_) and dt > 0
            torch.testing.assert_close(y0, y0_)
        accepted = [entry for entry in outcomes if entry[0] == "accept"]
        # The accepted steps tile [t0, t1]: each starts where the previous one ended.
        starts = [t0 for _, t0, _, _ in accepted]
        ends = [t0 + sign * dt for _, t0, _, dt in accepted]
        assert starts[0] == 0.0 and starts[1:] == pytest.approx(ends[:-1], abs=1e-12)
        assert ends[-1] == pytest.approx(float(t[-1]), abs=1e-12) or sign * ends[-1] > sign * float(t[-1])
    # The same first step (same initial step-size rule), and the states at the accepted steps' starts agree.
    _assert_same_log(ours.log[:2], theirs.log[:2])
    outcomes = [name for name, *_ in ours.log[1::2]]
    assert outcomes.count("accept") == stats.steps_accepted_forward
    assert outcomes.count("reject") == stats.steps_rejected_forward
    _, t0, y0, _ = [entry for entry in ours.log if entry[0] == "accept"][-1]
    reference = odeint(lambda s, y: theirs(s, y), _y0(), torch.tensor([0.0, t0]), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(y0, tuple(part[-1].detach() for part in reference), rtol=1e-6, atol=1e-6)


def test_adjoint_callbacks_match_torchdiffeq():
    # The backward solve's callbacks get the augmented state as torchdiffeq's tuple (t, y, dL/dy, *dL/dparams).
    class Linear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rate = nn.Parameter(torch.tensor([[-0.5, 1.0], [-1.0, -0.3]]))
            self.log: list[tuple] = []

        def forward(self, t, y):
            return y @ self.rate.T

        def callback_step_adjoint(self, t0, y0, dt):
            self.log.append((float(t0), float(dt), [tuple(p.shape) for p in y0], y0[1].detach().clone()))

    y0 = torch.tensor([[1.0, 0.5], [0.2, -0.4]], requires_grad=True)
    t = torch.tensor([0.0, 0.5, 1.0])
    ours, theirs = Linear(), Linear()
    stats = SolveStats()
    odeint_adjoint(ours, y0, t, method="rk4", options=dict(step_size=0.1), stats=stats).sum().backward()
    torchdiffeq.odeint_adjoint(theirs, y0, t, method="rk4", options=dict(step_size=0.1)).sum().backward()
    assert len(ours.log) == len(theirs.log) == stats.steps_accepted_backward == 10
    for (t0, dt, shapes, y), (t0_, dt_, shapes_, y_) in zip(ours.log, theirs.log):
        assert (t0, dt, shapes) == (pytest.approx(t0_, abs=1e-12), pytest.approx(dt_, abs=1e-12), shapes_)
        torch.testing.assert_close(y, y_, rtol=1e-10, atol=1e-10)
    assert not ours.log[0][0] < 1.0  # backward starts at t[-1], in the caller's time


def test_adaptive_adjoint_callbacks_are_called_once_per_backward_attempt():
    func = Logged()
    stats = SolveStats()
    position, scale = _y0()
    position.requires_grad_(True)
    out = odeint_adjoint(func, (position, scale), torch.tensor([0.0, 1.0]), rtol=1e-6, atol=1e-8, stats=stats)
    func.log.clear()
    (out[0].sum() + out[1].sum()).backward()
    names = [name for name, *_ in func.log]
    assert names.count("step_adjoint") == stats.steps_accepted_backward + stats.steps_rejected_backward
    assert names.count("accept_adjoint") == stats.steps_accepted_backward
    assert names.count("reject_adjoint") == stats.steps_rejected_backward
    _, t0, state, _ = func.log[0]
    assert t0 == 1.0 and len(state) == 1 + 2 + 2 + 1  # t, the 2 parts of y, of dL/dy, and dL/drate
