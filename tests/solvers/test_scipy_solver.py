"""method='scipy_solver': SciPy's solve_ivp methods behind odeint, with torchdiffeq's scipy_solver as oracle."""
from __future__ import annotations

import sys

import pytest
import scipy.integrate
import torch
import torchdiffeq
from solver_helpers import Counting, MLPDynamics

from neuralode import SolveStats, odeint, odeint_adjoint
from neuralode.solvers import MaxNumStepsError

# torchdiffeq passes min_step to every SciPy method, and all but LSODA warn about it.
pytestmark = pytest.mark.filterwarnings("ignore:The following arguments have no effect:UserWarning")



def _problem():
    return Counting(MLPDynamics(dim=3, hidden=8)), torch.tensor([0.3, -0.2, 0.5]), torch.linspace(0.0, 2.0, 6)


@pytest.mark.parametrize("solver", ["LSODA", "RK45", "DOP853", "BDF"])
def test_matches_torchdiffeq_with_no_more_nfe(solver):
    func, y0, t = _problem()
    with torch.no_grad():
        expected = torchdiffeq.odeint(func, y0, t, rtol=1e-8, atol=1e-10, method="scipy_solver",
                                      options=dict(solver=solver))
        oracle_nfe, func.calls = func.calls, 0
        stats = SolveStats()
        ys = odeint(func, y0, t, rtol=1e-8, atol=1e-10, method="scipy_solver", options=dict(solver=solver),
                    stats=stats)
    torch.testing.assert_close(ys, expected, rtol=1e-12, atol=1e-14)
    assert stats.nfe_forward == func.calls <= oracle_nfe


def test_default_solver_is_lsoda():
    func, y0, t = _problem()
    with torch.no_grad():
        torch.testing.assert_close(odeint(func, y0, t, method="scipy_solver"),
                                   odeint(func, y0, t, method="scipy_solver", options=dict(solver="LSODA")))


@pytest.mark.parametrize("solver", ["LSODA", "RK45"])
def test_steps_are_scipys_steps(solver):
    func, y0, t = _problem()
    stats = SolveStats()
    with torch.no_grad():
        odeint(func, y0, t[[0, -1]], rtol=1e-6, atol=1e-8, method="scipy_solver", options=dict(solver=solver),
               stats=stats)
        reference = scipy.integrate.solve_ivp(lambda s, y: func(torch.tensor(s), torch.from_numpy(y)).numpy(),
                                              (0.0, 2.0), y0.numpy(), method=solver, rtol=1e-6, atol=1e-8)
    assert stats.steps_accepted_forward == len(reference.t) - 1
    assert stats.nfe_forward == reference.nfev


def test_float32_and_decreasing_time_match_torchdiffeq():
    func = MLPDynamics(dim=3, hidden=8).float()
    y0, t = torch.tensor([0.3, -0.2, 0.5], dtype=torch.float32), torch.linspace(2.0, -1.0, 5)
    with torch.no_grad():
        expected = torchdiffeq.odeint(func, y0, t, method="scipy_solver", options=dict(solver="RK45"))
        ys = odeint(func, y0, t, method="scipy_solver", options=dict(solver="RK45"))
    assert ys.dtype == expected.dtype == torch.float32
    torch.testing.assert_close(ys, expected, rtol=0, atol=0)


def test_tuple_state():
    t = torch.linspace(0.0, 3.0, 4)
    x, v = odeint(lambda t, s: (s[1], -s[0]), (torch.tensor([1.0]), torch.tensor([0.0])), t, rtol=1e-10,
                  atol=1e-12, method="scipy_solver")
    torch.testing.assert_close(x[:, 0], torch.cos(t), rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(v[:, 0], -torch.sin(t), rtol=1e-7, atol=1e-8)


def test_plain_odeint_carries_no_gradient_and_says_so():
    func, y0, t = _problem()
    with pytest.warns(UserWarning, match="odeint_adjoint"):
        ys = odeint(func, y0, t, method="scipy_solver")
    assert not ys.requires_grad


@pytest.mark.parametrize("solver", ["LSODA", "RK45"])
def test_adjoint_gradients_match_backprop_through_dopri5(solver):
    func = MLPDynamics(dim=2, hidden=8)
    t = torch.linspace(0.0, 1.5, 4, requires_grad=True)
    grads = []
    # The oracle runs tighter: backprop through an adaptive grid differentiates t only approximately.
    for solve, method, options, tol in ((odeint_adjoint, "scipy_solver", dict(solver=solver), 1e-10),
                                        (odeint, "dopri5", None, 1e-12)):
        y0 = torch.tensor([0.4, -0.3], requires_grad=True)
        loss = solve(func, y0, t, rtol=tol, atol=tol * 1e-2, method=method, options=options).pow(2).sum()
        grads.append(torch.autograd.grad(loss, (y0, t, *func.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-7, atol=1e-9)


def test_large_stiff_state_does_not_build_a_dense_jacobian():
    # LSODA turns stiff on y' = lam y + sin t; with 5000 unknowns a full finite-difference Jacobian would cost
    # 5000 calls of f each time, a diagonal one costs 1.
    lam = -torch.logspace(0.0, 3.0, 5000)
    y0, t = torch.ones(5000), torch.tensor([0.0, 1.0])
    stats = SolveStats()
    ys = odeint(lambda t, y: lam * y + torch.sin(t), y0, t, rtol=1e-6, atol=1e-8, method="scipy_solver", stats=stats)
    particular = lambda s: -(lam * torch.sin(s) + torch.cos(s)) / (1 + lam ** 2)  # noqa: E731
    exact = particular(t[1]) + (y0 - particular(t[0])) * torch.exp(lam)
    torch.testing.assert_close(ys[-1], exact, rtol=1e-4, atol=1e-6)
    assert stats.nfe_forward < 5000


def test_max_num_steps():
    func, y0, t = _problem()
    with pytest.raises(MaxNumStepsError, match="max_num_steps=3"), torch.no_grad():
        odeint(func, y0, t, rtol=1e-10, atol=1e-12, method="scipy_solver", options=dict(max_num_steps=3))


def test_unknown_scipy_solver():
    func, y0, t = _problem()
    with pytest.raises(ValueError, match="options\\['solver'\\].*LSODA"):
        odeint(func, y0, t, method="scipy_solver", options=dict(solver="lsoda"))


def test_missing_scipy_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "scipy", None)
    monkeypatch.setitem(sys.modules, "scipy.integrate", None)
    func, y0, t = _problem()
    with pytest.raises(ImportError, match=r"pip install neuralode\[scipy\]"):
        odeint(func, y0, t, method="scipy_solver")
