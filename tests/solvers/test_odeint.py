"""odeint: accuracy on analytic problems, directions, state shapes, order of convergence, oracles."""
from __future__ import annotations

import importlib
import math

import numpy as np
import pytest
import torch
import torchdiffeq
from scipy.integrate import solve_ivp
from solver_helpers import ADAPTIVE, FIXED, MLPDynamics

from neuralode import SOLVERS, SolveStats, odeint
from neuralode.solvers.names import METHOD_NAMES
from neuralode.solvers.tableaus import TABLEAUS


def _opts(method: str, step: float = 1e-3) -> dict | None:
    return dict(step_size=step) if method in FIXED else None


def _tols(method: str, rtol: float, atol: float) -> tuple[float, float, float]:
    """(rtol, atol, achievable error): low orders need far too many steps at 1e-10, so loosen them."""
    if method == "adaptive_heun":
        return 1e-6, 1e-7, 1e-4
    if method == "fehlberg2":  # its 1st-order estimate understates the 2nd-order solution's error at large steps
        return 1e-8, 1e-10, 1e-5
    if method == "bosh3":
        return 1e-8, 1e-10, 1e-6
    return rtol, atol, 1e-7


def test_registry_has_every_method():
    # Every explicit RK tableau is registered and listed for the tests here; other families have their own.
    assert set(TABLEAUS) == set(ADAPTIVE) | set(FIXED) and set(TABLEAUS) <= set(SOLVERS)
    # A drop-in: every method name torchdiffeq 0.2.5 accepts.
    assert set(importlib.import_module("torchdiffeq._impl.odeint").SOLVERS) <= set(SOLVERS)


def test_the_method_names_are_the_registrys_in_order():
    # The runner lists solver=<name> options from these names before torch is imported.
    assert METHOD_NAMES == tuple(SOLVERS)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_exponential(method):
    t = torch.linspace(0.0, 2.0, 7)
    y0 = torch.tensor([1.0, -2.0, 0.5])
    rtol, atol, err = _tols(method, 1e-9, 1e-11)
    ys = odeint(lambda t, y: -1.5 * y, y0, t, rtol=rtol, atol=atol, method=method)
    exact = y0 * torch.exp(-1.5 * t)[:, None]
    assert ys.shape == (7, 3)
    torch.testing.assert_close(ys, exact, rtol=err, atol=err)


@pytest.mark.parametrize("method", ADAPTIVE + FIXED)
def test_linear_system_matrix_exponential(method):
    a = torch.tensor([[-0.1, 2.0], [-2.0, -0.1]])
    y0 = torch.tensor([1.0, 0.5])
    t = torch.linspace(0.0, 3.0, 11)
    rtol, atol, err = _tols(method, 1e-10, 1e-12)
    ys = odeint(lambda t, y: a @ y, y0, t, rtol=rtol, atol=atol, method=method,
                options=_opts(method, 1e-3 if method != "rk4" else 1e-2))
    exact = torch.stack([torch.linalg.matrix_exp(a * ti) @ y0 for ti in t])
    tol = {"euler": 2e-2, "midpoint": 1e-5, "heun2": 1e-5}.get(method, err)
    torch.testing.assert_close(ys, exact, rtol=tol, atol=tol)


@pytest.mark.parametrize("method", ADAPTIVE)
def test_time_dependent_scalar(method):
    # dy/dt = -2 t y  =>  y = y0 exp(-t^2)
    t = torch.linspace(0.0, 2.0, 9)
    rtol, atol, err = _tols(method, 1e-10, 1e-12)
    ys = odeint(lambda t, y: -2 * t * y, torch.tensor([3.0]), t, rtol=rtol, atol=atol, method=method)
    torch.testing.assert_close(ys[:, 0], 3.0 * torch.exp(-t ** 2), rtol=err, atol=err)


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "dopri8", "rk4"])
def test_reverse_time(method):
    t = torch.linspace(2.0, -1.0, 6)  # decreasing, crossing 0
    y0 = torch.tensor([0.7])
    ys = odeint(lambda t, y: torch.cos(t) * y, y0, t, rtol=1e-10, atol=1e-12, method=method,
                options=_opts(method, 1e-2))
    exact = 0.7 * torch.exp(torch.sin(t) - math.sin(2.0))
    torch.testing.assert_close(ys[:, 0], exact, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_tuple_and_zero_dim_states(method):
    # Harmonic oscillator as a tuple of two 0-dim tensors, plus a batched 2-D companion.
    t = torch.linspace(0.0, 3.0, 5)
    x, v = odeint(lambda t, s: (s[1], -s[0]), (torch.tensor(1.0), torch.tensor(0.0)), t, rtol=1e-10,
                  atol=1e-12, method=method, options=_opts(method, 1e-2))
    assert x.shape == (5,) and v.shape == (5,)
    torch.testing.assert_close(x, torch.cos(t), rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(v, -torch.sin(t), rtol=1e-7, atol=1e-8)
    a, b = odeint(lambda t, s: (-s[0], 2 * s[0].sum(-1)), (torch.ones(2, 3), torch.zeros(2)), t, method=method,
                  options=_opts(method, 1e-2))
    assert a.shape == (5, 2, 3) and b.shape == (5, 2)


def test_zero_dim_tensor_state():
    ys = odeint(lambda t, y: -y, torch.tensor(2.0), torch.tensor([0.0, 1.0]))
    assert ys.shape == (2,)
    assert ys[-1].item() == pytest.approx(2 * math.exp(-1), rel=1e-7)


def test_single_output_time_returns_y0():
    y0 = torch.randn(3)
    ys = odeint(lambda t, y: -y, y0, torch.tensor([0.5]))
    assert ys.shape == (1, 3) and torch.equal(ys[0], y0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("method", ["dopri5", "rk4"])
def test_dtype_is_preserved(dtype, method):
    y0 = torch.ones(4, dtype=dtype)
    ys = odeint(lambda t, y: -y, y0, torch.linspace(0, 1, 3, dtype=dtype), rtol=1e-5, atol=1e-6,
                method=method, options=_opts(method, 0.05))
    assert ys.dtype == dtype
    assert abs(ys[-1, 0].item() - math.exp(-1)) < 1e-5


def _error_at(method: str, h: float) -> float:
    """Error of y' = y cos t (y = exp(sin t)) on [0, 2] with a constant step h."""
    t = torch.tensor([0.0, 2.0])
    f = lambda t, y: torch.cos(t) * y  # noqa: E731
    if method in FIXED:
        ys = odeint(f, torch.tensor([1.0]), t, method=method, options=dict(step_size=h))
    else:
        # Huge tolerance + ifactor 1: every step is accepted and none grows, so h stays constant.
        ys = odeint(f, torch.tensor([1.0]), t, rtol=1e3, atol=1e3, method=method,
                    options=dict(first_step=h, ifactor=1.0))
    return abs(ys[-1, 0].item() - math.exp(math.sin(2.0)))


@pytest.mark.parametrize("method", ADAPTIVE + FIXED)
def test_empirical_order_of_convergence(method):
    order = SOLVERS[method].tableau.order
    hs = [0.5, 0.25, 0.125] if order >= 8 else [0.1, 0.05, 0.025]
    errs = [_error_at(method, h) for h in hs]
    slope = np.polyfit(np.log(hs), np.log(errs), 1)[0]
    # Tsit5's leading error terms are tuned to be tiny, so it looks better than 5 at these step sizes.
    assert order - 0.3 < slope < order + 0.6, (slope, errs)


def test_constant_step_reaches_end_exactly():
    stats = SolveStats()
    odeint(lambda t, y: -y, torch.ones(1), torch.tensor([0.0, 2.0]), rtol=1e3, atol=1e3,
           options=dict(first_step=0.1, ifactor=1.0), stats=stats)
    assert stats.steps_accepted_forward == 20


def test_matches_scipy_solve_ivp():
    # Lotka-Volterra at tight tolerance against scipy's DOP853.
    def lv(t, y):
        return [1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]]
    t_eval = np.linspace(0.0, 5.0, 11)
    ref = solve_ivp(lv, (0.0, 5.0), [1.0, 1.0], method="DOP853", t_eval=t_eval, rtol=1e-13, atol=1e-13).y.T
    f = lambda t, y: torch.stack([1.5 * y[0] - y[0] * y[1], -3.0 * y[1] + y[0] * y[1]])  # noqa: E731
    for method in ["dopri5", "tsit5", "dopri8"]:
        ys = odeint(f, torch.tensor([1.0, 1.0]), torch.from_numpy(t_eval), rtol=1e-10, atol=1e-12, method=method)
        np.testing.assert_allclose(ys.numpy(), ref, rtol=1e-8, atol=1e-9, err_msg=method)


@pytest.mark.parametrize("method", ["euler", "midpoint", "rk4"])
@pytest.mark.parametrize("step_size", [None, 0.03])
def test_fixed_grid_matches_torchdiffeq_exactly(method, step_size):
    func = MLPDynamics(dim=3)
    y0 = torch.randn(4, 3)
    t = torch.linspace(0.0, 1.0, 6)
    opts = None if step_size is None else dict(step_size=step_size)
    with torch.no_grad():
        ours = odeint(func, y0, t, method=method, options=opts)
        ref = torchdiffeq.odeint(func, y0, t, method=method, options=opts)
    torch.testing.assert_close(ours, ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("method", ["adaptive_heun", "fehlberg2", "bosh3", "dopri5", "dopri8"])
def test_adaptive_agrees_with_torchdiffeq(method):
    # Same problem, same tolerance: our error is no worse than torchdiffeq's (against a tight reference)
    # at no more than a comparable number of function evaluations.
    func = MLPDynamics(dim=3)
    y0 = torch.randn(4, 3)
    t = torch.linspace(0.0, 2.0, 5)
    tol = 1e-6 if method in ("adaptive_heun", "fehlberg2") else 1e-8
    stats, calls = SolveStats(), [0]

    def counted(t, y):
        calls[0] += 1
        return func(t, y)

    with torch.no_grad():
        exact = odeint(func, y0, t, rtol=1e-13, atol=1e-13, method="dopri8")
        ours = odeint(func, y0, t, rtol=tol, atol=tol, method=method, stats=stats)
        ref = torchdiffeq.odeint(counted, y0, t, rtol=tol, atol=tol, method=method)
    err_ours, err_ref = (ours - exact).abs().max().item(), (ref - exact).abs().max().item()
    assert err_ours <= 3 * err_ref + 10 * tol, (err_ours, err_ref)
    # Similar work for the same accuracy target.
    assert stats.nfe_forward <= 1.3 * calls[0], (stats.nfe_forward, calls[0])


@pytest.mark.parametrize("method", ["dopri5", "tsit5", "bosh3", "adaptive_heun", "fehlberg2", "dopri8"])
def test_dense_output_between_steps(method):
    # 201 output times but far fewer steps: outputs come from interpolation, still within tolerance.
    t = torch.linspace(0.0, 4.0, 201)
    stats = SolveStats()
    rtol, atol, err = _tols(method, 1e-9, 1e-11)
    ys = odeint(lambda t, y: torch.cos(t) * y, torch.tensor([1.0]), t, rtol=rtol, atol=atol, method=method,
                stats=stats)
    if method in ("dopri5", "tsit5", "dopri8"):
        assert stats.steps_accepted_forward < 150
    torch.testing.assert_close(ys[:, 0], torch.exp(torch.sin(t)), rtol=10 * err, atol=10 * err)


def test_float32_state_with_float64_times():
    ys = odeint(lambda t, y: -y, torch.ones(3, dtype=torch.float32), torch.tensor([0.0, 0.5, 1.0]), rtol=1e-5,
                atol=1e-6)
    assert ys.dtype == torch.float32
    assert abs(ys[-1, 0].item() - math.exp(-1)) < 1e-5
