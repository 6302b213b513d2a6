"""torchdiffeq 0.2.5's solver options, against torchdiffeq itself: fixed-grid ``grid_constructor``, ``interp``,
``perturb``; adaptive ``step_t``, ``jump_t``, ``dtype``; and one-line errors for bad values."""
from __future__ import annotations

import pytest
import torch
import torchdiffeq
from solver_helpers import FIXED

from neuralode import SolveStats, odeint

Y0 = torch.tensor([1.0, 0.0], dtype=torch.float64)  # module level: before the float64 fixture


def oscillator(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([y[1], -y[0]]) + 0.1 * t


def uneven_grid(func, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A non-uniform grid from t[0] to t[-1] (either direction), built from t as torchdiffeq passes it."""
    fractions = torch.tensor([0.0, 0.05, 0.125, 0.35, 0.5, 0.75, 1.0], dtype=t.dtype)
    return t[0] + (t[-1] - t[0]) * fractions


class Recorder:
    """Dynamics with a jump at t = 0.5 that records the times it is evaluated at."""

    def __init__(self) -> None:
        self.times: list[float] = []

    def __call__(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        self.times.append(float(t))
        return torch.where(t < 0.5, 1.0, -1.0) * y


@pytest.mark.parametrize("method", FIXED)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_grid_constructor_matches_torchdiffeq(method: str, sign: float):
    t = sign * torch.linspace(0.0, 2.0, 9)
    ours = odeint(oscillator, Y0, t, method=method, options=dict(grid_constructor=uneven_grid))
    theirs = torchdiffeq.odeint(oscillator, Y0, t, method=method, options=dict(grid_constructor=uneven_grid))
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", FIXED)
@pytest.mark.parametrize("interp", ["linear", "cubic"])
def test_interp_matches_torchdiffeq_with_no_more_evaluations(method: str, interp: str):
    t = torch.linspace(0.0, 2.0, 7)  # output times fall between the grid points
    stats = SolveStats()
    ours = odeint(oscillator, Y0, t, method=method, options=dict(step_size=0.15, interp=interp), stats=stats)
    calls = []
    theirs = torchdiffeq.odeint(lambda s, y: calls.append(s) or oscillator(s, y), Y0, t, method=method,
                                options=dict(step_size=0.15, interp=interp))
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    assert stats.nfe_forward <= len(calls)


def test_cubic_interpolation_is_more_accurate_than_linear():
    t = torch.linspace(0.0, 2.0, 7)
    exact = odeint(oscillator, Y0, t, rtol=1e-12, atol=1e-12)
    errors = {interp: (odeint(oscillator, Y0, t, method="rk4", options=dict(step_size=0.2, interp=interp)) - exact)
              .abs().max() for interp in ("linear", "cubic")}
    assert errors["cubic"] < errors["linear"] / 10


@pytest.mark.parametrize("method", FIXED)
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_perturb_evaluates_the_same_times_as_torchdiffeq(method: str, sign: float):
    # The dynamics jump at t = 0.5, a grid point: perturb moves the evaluations at grid points by one ulp into
    # the step, so each step sees the dynamics of its own side of the jump.
    t = sign * torch.tensor([0.0, 0.25, 0.5, 1.0])
    ours, theirs = Recorder(), Recorder()
    jump = lambda rec: (lambda s, y: rec(sign * s, y))  # noqa: E731  (the jump at the grid point either way)
    y_ours = odeint(jump(ours), Y0, t, method=method, options=dict(perturb=True))
    y_theirs = torchdiffeq.odeint(jump(theirs), Y0, t, method=method, options=dict(perturb=True))
    assert ours.times == theirs.times
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-13, atol=1e-13)
    plain = Recorder()
    odeint(jump(plain), Y0, t, method=method)
    assert 0.5 in plain.times and 0.5 not in ours.times


def _step_starts(method: str, t: torch.Tensor, options: dict, func=oscillator) -> list[float]:
    class Func(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.starts: list[float] = []

        def forward(self, s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return func(s, y)

        def callback_accept_step(self, t0: torch.Tensor, y0: torch.Tensor, dt: torch.Tensor) -> None:
            self.starts.append(float(t0))

    recorder = Func()
    odeint(recorder, Y0, t, method=method, options=options)
    return recorder.starts


@pytest.mark.parametrize("method", ["dopri5", "bosh3", "dopri8"])
@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_step_t_times_are_stepped_onto(method: str, sign: float):
    t = sign * torch.tensor([0.0, 2.0])
    step_t = sign * torch.tensor([0.3, 1.1, 5.0])  # 5.0 lies beyond the solve: ignored
    starts = _step_starts(method, t, dict(step_t=step_t))
    assert sign * 0.3 in starts and sign * 1.1 in starts
    exact = odeint(oscillator, Y0, t, rtol=1e-13, atol=1e-13)
    ours = odeint(oscillator, Y0, t, method=method, options=dict(step_t=step_t))
    theirs = torchdiffeq.odeint(oscillator, Y0, t, method=method, options=dict(step_t=step_t))
    # torchdiffeq's bosh3 and dopri8 miss these tolerances by ~100x; the solution must be as good as theirs.
    assert (ours - exact).abs().max() <= max(1e-6, (theirs - exact).abs().max())


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_jump_t_resolves_a_discontinuity_like_torchdiffeq(sign: float):
    t = sign * torch.tensor([0.0, 1.0])
    ours, theirs, blind = Recorder(), Recorder(), Recorder()
    jump = lambda rec: (lambda s, y: rec(sign * s, y))  # noqa: E731
    stats, blind_stats = SolveStats(), SolveStats()
    options = dict(jump_t=torch.tensor([sign * 0.5]))
    y_ours = odeint(jump(ours), Y0, t, rtol=1e-8, atol=1e-10, options=options, stats=stats)
    y_theirs = torchdiffeq.odeint(jump(theirs), Y0, t, rtol=1e-8, atol=1e-10, options=options)
    odeint(jump(blind), Y0, t, rtol=1e-8, atol=1e-10, stats=blind_stats)
    exact = Y0 * torch.exp(torch.tensor(0.5 - 0.5))  # grows e^0.5, then decays e^-0.5
    torch.testing.assert_close(y_ours[-1], exact, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(y_ours, y_theirs, rtol=1e-8, atol=1e-8)
    # f is evaluated on both sides of the jump (one ulp away), never on it, and no step is wasted on it.
    assert torch.nextafter(torch.tensor(0.5), torch.tensor(1.0)).item() in ours.times
    assert torch.nextafter(torch.tensor(0.5), torch.tensor(0.0)).item() in ours.times
    assert stats.steps_rejected_forward == 0 < blind_stats.steps_rejected_forward
    assert stats.nfe_forward == len(theirs.times)  # the default controller takes torchdiffeq's steps


def test_time_is_float64_by_default_for_a_float32_state():
    # Far from t = 0 a float32 time loses the step sizes; float64 time (the default, as torchdiffeq's, or
    # dtype=float64) keeps them, dtype=float32 keeps time in the state's dtype, and f always sees float32 times.
    seen: set[torch.dtype] = set()

    def drifting(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        seen.add(s.dtype)
        return torch.stack([y[1], -y[0]]) * (1 + 1e-4 * s)

    y0 = torch.tensor([1.0, 0.5], dtype=torch.float32)
    t = torch.tensor([1e4, 1e4 + 2.0])
    exact = odeint(drifting, y0.double(), t, rtol=1e-10, atol=1e-12)
    seen.clear()
    wide = odeint(drifting, y0, t, rtol=1e-6, atol=1e-7, options=dict(dtype=torch.float64))
    assert seen == {torch.float32} and wide.dtype == torch.float32
    assert torch.equal(odeint(drifting, y0, t, rtol=1e-6, atol=1e-7), wide)
    assert torch.equal(odeint(drifting, y0, t, rtol=1e-6, atol=1e-7, options=dict(dtype="float64")), wide)
    narrow = odeint(drifting, y0, t, rtol=1e-6, atol=1e-7, options=dict(dtype=torch.float32))
    theirs = torchdiffeq.odeint(drifting, y0, t, rtol=1e-6, atol=1e-7)  # float64 time by default
    wide_error = (wide.double() - exact).abs().max()
    assert wide_error < 1e-5
    assert wide_error < (narrow.double() - exact).abs().max() / 10
    assert wide_error < 2 * (theirs.double() - exact).abs().max()


@pytest.mark.parametrize("method, options, message", [
    ("rk4", dict(interp="quadratic"), "'interp'.* must be 'linear' or 'cubic'"),
    ("rk4", dict(perturb="yes"), "'perturb'.* must be True or False"),
    ("rk4", dict(grid_constructor=3), "'grid_constructor'.* must be a callable"),
    ("rk4", dict(step_size=0.1, grid_constructor=uneven_grid), "either 'step_size' or 'grid_constructor'"),
    ("rk4", dict(grid_constructor=lambda f, y0, t: torch.tensor([0.0, 0.5])), "from t\\[0\\]=0 to t\\[-1\\]=1"),
    ("rk4", dict(grid_constructor=lambda f, y0, t: torch.tensor([0.0, 0.7, 0.5, 1.0])), "strictly monotone"),
    ("dopri5", dict(step_t=[0.2, float("nan")]), "'step_t'.* must be a 1-D tensor or sequence of finite times"),
    ("dopri5", dict(step_t=[0.2], jump_t=torch.tensor([0.2], dtype=torch.float64)), "must not repeat a time"),
    ("dopri5", dict(dtype=torch.int32), "'dtype'.* must be torch.float32 or torch.float64"),
    ("dopri5", dict(dtype="double"), "'dtype'.* must be torch.float32 or torch.float64"),
])
def test_bad_option_values_fail_in_one_line(method: str, options: dict, message: str):
    with pytest.raises(ValueError, match=message) as info:
        odeint(oscillator, Y0, torch.tensor([0.0, 1.0]), method=method, options=options)
    assert "\n" not in str(info.value)
