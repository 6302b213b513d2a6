"""The defaults where odeint claims to be a drop-in for torchdiffeq, with the installed torchdiffeq as the oracle:
time held in float64 by the adaptive methods, and ``max_num_steps`` counting the steps of one output interval."""
from __future__ import annotations

import math

import pytest
import torch
import torchdiffeq
from solver_helpers import ADAPTIVE

from neuralode.solvers import MaxNumStepsError, odeint

# tsit5 is not a torchdiffeq 0.2.5 method: there is no oracle for it.
ORACLE_METHODS = [m for m in ADAPTIVE if m != "tsit5"] + ["scipy_solver"]
_U = torch.randn(10, 10, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 0.1
_A = 2 * _U - (_U + _U.T)  # torchdiffeq's own linear test problem
_W = 3.0


def _linear(t, y):
    return y @ _A.to(y.dtype).T


def _oscillating(t, y):
    return torch.stack([y[1], -_W * _W * y[0]])


def _exponential(t, y):
    return 0.5 * y


# name -> (f, y0, exact solution after a time span s (float64), output times)
PROBLEMS = {
    "linear": (_linear, torch.ones(10), lambda s: torch.matrix_exp(_A * s) @ torch.ones(10, dtype=torch.float64),
               (1.0, 3.0)),
    # Far from t = 0, where float32 time cannot resolve the steps.
    "linear_late": (_linear, torch.ones(10), lambda s: torch.matrix_exp(_A * s) @ torch.ones(10, dtype=torch.float64),
                    (100.0, 101.0)),
    "oscillating": (_oscillating, torch.tensor([1.0, 0.0]),
                    lambda s: torch.tensor([math.cos(_W * s), -_W * math.sin(_W * s)], dtype=torch.float64), (1.0, 3.0)),
    "exponential": (_exponential, torch.tensor([1.0, 2.0]),
                    lambda s: torch.tensor([1.0, 2.0], dtype=torch.float64) * math.exp(0.5 * s), (1.0, 3.0)),
}
# Tolerances above the resolution of each dtype: there the error is the method's, not the rounding's (in float32 at
# rtol 1e-5 both libraries' errors are a few ulps of the solution, and which is smaller is luck).
TOLERANCES = {torch.float32: (1e-4, 1e-6), torch.float64: (1e-5, 1e-7)}


def _final_errors(solve, problem: str, dtype: torch.dtype, reverse: bool, method: str) -> float:
    f, y0, exact, (t0, t1) = PROBLEMS[problem]
    t = torch.linspace(t0, t1, 6, dtype=dtype)
    t = t.flip(0) if reverse else t
    rtol, atol = TOLERANCES[dtype]
    ys = solve(f, y0.to(dtype), t, rtol=rtol, atol=atol, method=method)
    return float((ys[-1].double() - exact(float(t[-1] - t[0]))).abs().max())


@pytest.mark.parametrize("method", ORACLE_METHODS)
@pytest.mark.parametrize("reverse", [False, True], ids=["forward", "reverse"])
@pytest.mark.parametrize("problem", list(PROBLEMS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_final_error_is_at_most_1_5x_torchdiffeqs(dtype, problem, reverse, method):
    ours = _final_errors(odeint, problem, dtype, reverse, method)
    theirs = _final_errors(torchdiffeq.odeint, problem, dtype, reverse, method)
    assert ours <= 1.5 * theirs, f"ours {ours:.3g}, torchdiffeq {theirs:.3g}"


def test_float32_time_stays_an_option():
    """options['dtype']=torch.float32 keeps time in a float32 state's dtype: far from t = 0 that loses accuracy
    (the default float64 time is what the test above checks against torchdiffeq)."""
    f, y0, exact, (t0, t1) = PROBLEMS["linear_late"]
    t = torch.linspace(t0, t1, 6, dtype=torch.float32)
    solve = lambda **options: odeint(f, y0, t, rtol=1e-5, atol=1e-7, method="adaptive_heun", options=options)  # noqa: E731
    error = lambda ys: float((ys[-1].double() - exact(t1 - t0)).abs().max())  # noqa: E731
    assert error(solve(dtype=torch.float32)) > 5 * error(solve())


def _rising_frequency(t, y):
    """An oscillator whose frequency grows with t: later output intervals need more steps."""
    return torch.stack([y[1], -(1 + t) ** 2 * y[0]])


def _first_failing_interval(solve, failure: type[Exception], max_num_steps: int) -> int | None:
    """The number of output intervals of the first prefix of t whose solve exceeds max_num_steps (None: none)."""
    t = torch.linspace(0.0, 10.0, 11)
    for end in range(2, len(t) + 1):
        try:
            solve(_rising_frequency, torch.tensor([1.0, 0.0]), t[:end], rtol=1e-6, atol=1e-8,
                  options=dict(max_num_steps=max_num_steps))
        except failure:
            return end - 1
    return None


@pytest.mark.parametrize("max_num_steps", [14, 26, 50])
def test_max_num_steps_stops_at_torchdiffeqs_output_interval(max_num_steps):
    ours = _first_failing_interval(odeint, MaxNumStepsError, max_num_steps)
    theirs = _first_failing_interval(torchdiffeq.odeint, AssertionError, max_num_steps)
    assert ours == theirs and ours is not None and ours > 1


def test_max_num_steps_counts_per_output_interval():
    """The issue's case: 2 steps per interval suffice for 11 output times, as in torchdiffeq; a whole solve takes more."""
    t = torch.linspace(0.0, 10.0, 11)
    ys = odeint(lambda t, y: -0.1 * y, torch.ones(1), t, rtol=1e-3, atol=1e-3, options=dict(max_num_steps=2))
    theirs = torchdiffeq.odeint(lambda t, y: -0.1 * y, torch.ones(1), t, rtol=1e-3, atol=1e-3,
                                options=dict(max_num_steps=2))
    torch.testing.assert_close(ys, theirs)
    with pytest.raises(MaxNumStepsError, match=r"max_steps_per_solve=2 exceeded \(steps in one solve\)") as e:
        odeint(lambda t, y: -0.1 * y, torch.ones(1), t, rtol=1e-3, atol=1e-3, options=dict(max_steps_per_solve=2))
    assert e.value.option == "max_steps_per_solve"
