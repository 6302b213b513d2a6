"""The implicit Runge-Kutta family: tableau invariants, convergence order, stiff accuracy, gradients, NFE.

torchdiffeq 0.2.5 (the released oracle) has no implicit Runge-Kutta method (they exist only on its unreleased
master), so solutions are checked against scipy's and torchdiffeq's tightly solved references, and NFE against
torchdiffeq's fixed-grid method of the same order.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
import torch
import torchdiffeq
from scipy.integrate import solve_ivp
from test_tableaus import _order_defects

from neuralode.solvers import SolveStats, odeint, odeint_adjoint
from neuralode.solvers.implicit_tableaus import IMPLICIT_TABLEAUS

METHODS = list(IMPLICIT_TABLEAUS)
DIAGONALLY_IMPLICIT = {"implicit_euler", "implicit_midpoint", "trapezoid", "sdirk2", "trbdf2"}
# Stiffly accurate and L-stable: damp the stiff components in one step, whatever h.
L_STABLE = ["implicit_euler", "radauIIA3", "radauIIA5", "sdirk2", "trbdf2"]
ORDER = {name: tab.order for name, tab in IMPLICIT_TABLEAUS.items()}


def forced_pendulum(t, y):
    return torch.stack([y[1], -torch.sin(y[0]) + 0.3 * torch.cos(t)])


def forced_pendulum_np(t, y):
    return [y[1], -np.sin(y[0]) + 0.3 * np.cos(t)]


PENDULUM_Y0, PENDULUM_T = [1.0, 0.0], 2.0


@pytest.fixture(scope="module")
def pendulum_end():
    return solve_ivp(forced_pendulum_np, (0, PENDULUM_T), PENDULUM_Y0, method="DOP853", rtol=1e-13, atol=1e-14).y[:, -1]


def pendulum_error(method: str, steps: int, end: np.ndarray, stats: SolveStats | None = None) -> float:
    y = odeint(forced_pendulum, torch.tensor(PENDULUM_Y0), torch.tensor([0.0, PENDULUM_T]), method=method,
               options=dict(step_size=PENDULUM_T / steps), stats=stats)
    return float(np.abs(y[-1].numpy() - end).max())


@pytest.mark.parametrize("name", METHODS)
def test_tableau_invariants(name):
    tab = IMPLICIT_TABLEAUS[name]
    a = np.array(tab.a)
    assert a.shape == (tab.stages, tab.stages) and len(tab.b) == tab.stages
    np.testing.assert_allclose(a.sum(axis=1), tab.c, atol=1e-14)
    assert sum(tab.b) == pytest.approx(1.0, abs=1e-14)
    assert tab.diagonally_implicit == (name in DIAGONALLY_IMPLICIT)
    assert tab.stiffly_accurate == (name in L_STABLE or name == "trapezoid")


@pytest.mark.parametrize("name", METHODS)
def test_order_conditions(name):
    tab = IMPLICIT_TABLEAUS[name]
    a, b = np.array(tab.a), np.array(tab.b)
    assert max(_order_defects(b, a, tab.order)) < 1e-12
    assert max(_order_defects(b, a, tab.order + 1)) > 1e-6  # the declared order is not understated


def test_a_bad_tableau_is_refused():
    with pytest.raises(ValueError, match="row 0 of a sums to"):
        type(IMPLICIT_TABLEAUS["gl4"])("bad", 1, (0.5,), ((0.25,),), (1.0,))


@pytest.mark.parametrize("name", METHODS)
def test_convergence_order(name, pendulum_end):
    # Coarse grids for the high orders, so the finest error stays far above Newton's tolerance (~1e-12).
    steps = (4, 8) if ORDER[name] >= 5 else (8, 16, 32)
    errors = [pendulum_error(name, n, pendulum_end) for n in steps]
    observed = [math.log2(e0 / e1) for e0, e1 in zip(errors, errors[1:])]
    assert all(abs(p - ORDER[name]) < 0.3 for p in observed), (errors, observed)


@pytest.mark.parametrize("name", METHODS)
def test_agrees_with_torchdiffeq_reference_at_outputs(name):
    # Outputs on and between grid points; the reference is torchdiffeq's dopri5 at tight tolerances.
    t = torch.tensor([0.0, 0.5, 0.73, 1.0, 1.61, 2.0])
    y0 = torch.tensor(PENDULUM_Y0)
    ref = torchdiffeq.odeint(forced_pendulum, y0, t, method="dopri5", rtol=1e-12, atol=1e-12)
    h = 0.05
    ys = odeint(forced_pendulum, y0, t, method=name, options=dict(step_size=h))
    # Method error ~ h^p, plus linear interpolation's ~h^2 between grid points.
    assert (ys - ref).abs().max() < 10 * h ** min(ORDER[name], 2)
    grid_points = [0, 1, 3, 5]
    assert (ys[grid_points] - ref[grid_points]).abs().max() < 10 * h ** ORDER[name]


def test_outputs_between_grid_points_are_interpolated_like_explicit_methods():
    t = torch.tensor([0.0, 0.33, 0.8])
    y0 = torch.tensor(PENDULUM_Y0)
    on_grid = odeint(forced_pendulum, y0, torch.tensor([0.0, 0.2, 0.4, 0.6, 0.8]), method="gl4")
    for interp in ("linear", "cubic"):
        ys = odeint(forced_pendulum, y0, t, method="gl4", options=dict(step_size=0.2, interp=interp))
        theta = (0.33 - 0.2) / 0.2
        linear = on_grid[1] + theta * (on_grid[2] - on_grid[1])
        if interp == "linear":
            torch.testing.assert_close(ys[1], linear)
        else:  # cubic Hermite uses f at the two grid points
            f1, f2 = forced_pendulum(torch.tensor(0.2), on_grid[1]), forced_pendulum(torch.tensor(0.4), on_grid[2])
            t2, t3 = theta ** 2, theta ** 3
            hermite = (on_grid[1] + (3 * t2 - 2 * t3) * (on_grid[2] - on_grid[1])
                       + 0.2 * ((t3 - 2 * t2 + theta) * f1 + (t3 - t2) * f2))
            torch.testing.assert_close(ys[1], hermite)
        torch.testing.assert_close(ys[2], on_grid[4])


MU = 1000.0


def van_der_pol(t, y):
    return torch.stack([y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]])


def van_der_pol_np(t, y):
    return [y[1], MU * (1 - y[0] ** 2) * y[1] - y[0]]


def robertson(t, y):
    return torch.stack([-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2,
                        3e7 * y[1] ** 2])


def robertson_np(t, y):
    return [-0.04 * y[0] + 1e4 * y[1] * y[2], 0.04 * y[0] - 1e4 * y[1] * y[2] - 3e7 * y[1] ** 2, 3e7 * y[1] ** 2]


def stiff_errors(method, func, func_np, y0, end, step):
    t = np.linspace(0, end, 6)
    ref = solve_ivp(func_np, (0, end), y0, method="Radau", rtol=1e-12, atol=1e-14, t_eval=t).y.T
    ys = odeint(func, torch.tensor(y0), torch.tensor(t), method=method, options=dict(step_size=step))
    return float(np.abs(ys.numpy() - ref).max())


def explicit_blows_up(func, y0, end, step):
    with torch.no_grad():
        ys = torchdiffeq.odeint(func, torch.tensor(y0), torch.tensor([0.0, end]), method="rk4",
                                options=dict(step_size=step))
    return not bool(torch.isfinite(ys[-1]).all()) or float(ys[-1].abs().max()) > 1e3


@pytest.mark.parametrize("name", METHODS)
def test_stiff_van_der_pol(name):
    # mu = 1000 on the slow manifold: |df/dy| ~ 3000, so rk4 with h = 0.1 (stable only for h < ~1e-3) overflows.
    assert explicit_blows_up(van_der_pol, [2.0, 0.0], 1.0, 0.1)
    error = stiff_errors(name, van_der_pol, van_der_pol_np, [2.0, 0.0], 1.0, 0.1)
    # L-stable methods damp the stiff component; merely A-stable ones keep an O(1/mu) oscillating error.
    assert error < (1e-6 if name in L_STABLE else 1e-3)


@pytest.mark.parametrize("name", L_STABLE)
def test_stiff_robertson(name):
    assert explicit_blows_up(robertson, [1.0, 0.0, 0.0], 10.0, 0.5)
    error = stiff_errors(name, robertson, robertson_np, [1.0, 0.0, 0.0], 10.0, 0.5)
    assert error < {1: 1e-2, 2: 1e-3, 3: 1e-5, 5: 1e-7}[ORDER[name]]


@pytest.mark.parametrize("name", METHODS)
def test_gradcheck(name):
    def solve(y0, weight, t_end):
        t = torch.stack([torch.zeros(()), 0.5 * t_end, t_end])
        return odeint(lambda t, y: torch.tanh(weight @ y) + 0.1 * t * y, y0, t, method=name,
                      options=dict(step_size=0.2))

    y0 = torch.tensor([0.5, -0.3], requires_grad=True)
    weight = torch.tensor([[-1.0, 2.0], [-3.0, 0.5]], requires_grad=True)
    # 0.9 is not a multiple of the step: a tiny perturbation must not change the number of steps.
    t_end = torch.tensor(0.9, requires_grad=True)
    assert torch.autograd.gradcheck(solve, (y0, weight, t_end))


def test_no_graph_under_no_grad():
    weight = torch.tensor([[-1.0, 2.0], [-3.0, 0.5]], requires_grad=True)
    with torch.no_grad():
        ys = odeint(lambda t, y: torch.tanh(weight @ y), torch.tensor([0.5, -0.3]), torch.linspace(0, 1, 3),
                    method="radauIIA5")
    assert not ys.requires_grad


# torchdiffeq 0.2.5's fixed-grid method of the same order (rk4 for the orders above 4 too).
SAME_ORDER_ORACLE = {1: "euler", 2: "midpoint", 3: "heun3", 4: "rk4", 5: "rk4", 6: "rk4"}


@pytest.mark.parametrize("name", METHODS)
def test_nfe_at_equal_error_vs_torchdiffeq(name, pendulum_end):
    target = 1e-2 if ORDER[name] == 1 else 1e-5

    def nfe_to_reach(error_and_nfe):
        for steps in (2 ** k for k in range(1, 12)):
            error, nfe = error_and_nfe(steps)
            if error <= target:
                return nfe
        raise AssertionError(f"{target} not reached")

    def ours(steps):
        stats = SolveStats()
        return pendulum_error(name, steps, pendulum_end, stats), stats.nfe_forward

    def theirs(steps):
        calls = []
        y = torchdiffeq.odeint(lambda t, y: calls.append(1) or forced_pendulum(t, y), torch.tensor(PENDULUM_Y0),
                               torch.tensor([0.0, PENDULUM_T]), method=SAME_ORDER_ORACLE[ORDER[name]],
                               options=dict(step_size=PENDULUM_T / steps))
        return float(np.abs(y[-1].numpy() - pendulum_end).max()), len(calls)

    # Implicit Euler's one stage has only a linear extrapolation to start from: most steps need a second
    # Newton iteration to reach Newton's 1e-13 tolerance, against explicit Euler's single evaluation.
    factor = 2 if name == "implicit_euler" else 1
    assert nfe_to_reach(ours) <= factor * nfe_to_reach(theirs)


def test_nfe_counts_every_call_of_func():
    calls = []
    stats = SolveStats()
    odeint(lambda t, y: calls.append(1) or forced_pendulum(t, y), torch.tensor(PENDULUM_Y0), torch.linspace(0, 1, 5),
           method="radauIIA5", stats=stats)
    assert stats.nfe_forward == len(calls) > 0


def test_decreasing_time_retraces_a_symmetric_method():
    # Gauss-Legendre is symmetric: stepping back on the same grid undoes the forward steps.
    t = torch.linspace(0, 1, 11)
    forward = odeint(forced_pendulum, torch.tensor(PENDULUM_Y0), t, method="gl6")
    back = odeint(forced_pendulum, forward[-1], t.flip(0), method="gl6")
    torch.testing.assert_close(back[-1], torch.tensor(PENDULUM_Y0), atol=1e-10, rtol=0)


def test_options():
    y0, t = torch.tensor([2.0, 0.0]), torch.tensor([0.0, 1.0])
    with pytest.raises(ValueError, match="max_iters"):
        odeint(van_der_pol, y0, t, method="radauIIA3", options=dict(max_iters=0))
    with pytest.warns(UserWarning, match="'tol' is not an option"):
        odeint(forced_pendulum, y0, t, method="gl4", options=dict(tol=1e-3))
    with pytest.warns(RuntimeWarning, match="did not converge within max_iters=1"):
        odeint(van_der_pol, y0, t, method="radauIIA3", options=dict(step_size=0.1, max_iters=1))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        odeint(van_der_pol, y0, t, method="radauIIA3", options=dict(step_size=0.1, max_iters=100))



@pytest.mark.parametrize("solve", [odeint, odeint_adjoint], ids=["odeint", "odeint_adjoint"])
def test_warnings_point_at_the_callers_line(solve):
    class Linear(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(torch.tensor([[-1.0, 2.0], [-3.0, 0.5]]))

        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.weight @ y

    func = Linear()
    with pytest.warns(RuntimeWarning, match="did not converge") as record:
        solve(func, torch.ones(2), torch.tensor([0.0, 1.0]), method="radauIIA3",  # the line warned about
              options=dict(step_size=0.5, max_iters=1))
    assert record[0].filename == __file__, record[0].filename
    assert "the line warned about" in open(__file__).read().splitlines()[record[0].lineno - 1]

def test_odeint_adjoint_matches_backpropagation():
    # The adjoint's augmented dynamics are opaque to autograd: their stages fall back to fixed-point iteration.
    weight = torch.nn.Parameter(torch.tensor([[-1.0, 2.0], [-3.0, 0.5]]))
    grads = []
    for solve, extra in ((odeint_adjoint, dict(adjoint_params=(weight,))), (odeint, {})):
        ys = solve(lambda t, y: torch.tanh(weight @ y), torch.tensor([0.5, -0.3]), torch.linspace(0, 1, 3),
                   method="radauIIA5", options=dict(step_size=0.05), **extra)
        (grad,) = torch.autograd.grad(ys.sum(), weight)
        grads.append(grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=0)


def test_grid_constructor_perturb_and_step_callback():
    y0 = torch.tensor(PENDULUM_Y0)
    on_grid = odeint(forced_pendulum, y0, torch.linspace(0, 1, 5), method="trbdf2")

    class Pendulum(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.steps = []

        def forward(self, t, y):
            return forced_pendulum(t, y)

        def callback_step(self, t0, y, dt):
            self.steps.append(float(dt))

    func = Pendulum()
    constructed = odeint(func, y0, torch.tensor([0.0, 1.0]), method="trbdf2",
                         options=dict(grid_constructor=lambda f, y0, t: torch.linspace(0, 1, 5), perturb=True))
    assert func.steps == pytest.approx([0.25] * 4)
    # perturb moves the end-point evaluations by one ulp only (and f is continuous here).
    torch.testing.assert_close(constructed[-1], on_grid[-1], atol=1e-12, rtol=0)
