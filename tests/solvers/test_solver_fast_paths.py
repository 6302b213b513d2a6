"""The solver's performance changes (issue 7) keep results right: adjoint step-size carry across output
times, and both controllers' NFE against torchdiffeq at no loss of accuracy."""
from __future__ import annotations

import pytest
import torch
import torchdiffeq
from torch import nn

from neuralode import SolveStats, odeint, odeint_adjoint


@pytest.fixture(autouse=True)
def _solver_defaults(float64_single_thread):
    yield


class MLP(nn.Module):
    def __init__(self, dim: int = 4, hidden: int = 32, scale: float = 1.0) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, dim))
        with torch.no_grad():
            for p in self.net.parameters():
                p.mul_(scale)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def _grads(func: nn.Module, solve, y0: torch.Tensor, t: torch.Tensor, **kw) -> torch.Tensor:
    func.zero_grad(set_to_none=True)
    y = y0.clone().requires_grad_(True)
    solve(func, y, t, **kw).pow(2).sum().backward()
    return torch.cat([y.grad.reshape(-1)] + [p.grad.reshape(-1) for p in func.parameters()])


def test_adjoint_carries_step_size_across_output_times():
    # Many closely spaced output times: each backward interval fits in one dopri5 step. Restarting the
    # step-size estimate per interval would cost f0 + a probe evaluation + at least one step (>= 8 NFE);
    # carrying the previous interval's step leaves f0 + one step (7 NFE) per interval. Only the first
    # interval estimates its step (one probe evaluation, and it starts small: one extra step).
    torch.manual_seed(0)
    func = MLP(scale=0.5)
    y0 = torch.randn(8, 4)
    t = torch.linspace(0.0, 1.0, 21)
    stats = SolveStats()
    g_adj = _grads(func, odeint_adjoint, y0, t, rtol=1e-7, atol=1e-9, stats=stats)
    g_ref = _grads(func, odeint, y0, t, rtol=1e-11, atol=1e-11)
    torch.testing.assert_close(g_adj, g_ref, rtol=1e-5, atol=1e-6)
    assert stats.nfe_backward <= 7 * (len(t) - 1) + 1 + 6, stats.as_dict()
    assert stats.steps_accepted_backward >= len(t) - 1


def test_user_first_step_for_the_adjoint_is_respected():
    # With adjoint_options first_step fixed, every interval starts from it (no carry): more NFE, same grads.
    torch.manual_seed(1)
    func = MLP(scale=0.5)
    y0 = torch.randn(8, 4)
    t = torch.linspace(0.0, 1.0, 6)
    carried, fixed = SolveStats(), SolveStats()
    g1 = _grads(func, odeint_adjoint, y0, t, rtol=1e-7, atol=1e-9, stats=carried)
    g2 = _grads(func, odeint_adjoint, y0, t, rtol=1e-7, atol=1e-9, stats=fixed,
                adjoint_options=dict(first_step=1e-4))
    torch.testing.assert_close(g1, g2, rtol=1e-5, atol=1e-6)
    assert fixed.nfe_backward > carried.nfe_backward


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
@pytest.mark.parametrize("controller", ["integral", "pi"])
def test_controllers_against_torchdiffeq_work_and_error(tol, controller):
    # Random MLP ODEs (the shape of a neural ODE block), 5 output times, against a tight dopri8 reference.
    # integral (the API's default): torchdiffeq's steps, so its NFE and its errors up to roundoff. pi (the
    # runner's): total NFE within 10% of torchdiffeq's (Hairer's PI coefficients spent ~25% more) and a worst
    # error no larger.
    ours_nfe = theirs_nfe = 0
    ours_err = theirs_err = 0.0
    for seed in range(4):
        torch.manual_seed(seed)
        func = MLP(dim=8, hidden=64, scale=1.5)
        y0 = torch.randn(64, 8)
        t = torch.linspace(0.0, 1.0, 5)
        calls = [0]

        def counted(t, y):
            calls[0] += 1
            return func(t, y)

        stats = SolveStats()
        with torch.no_grad():
            exact = odeint(func, y0, t, rtol=1e-12, atol=1e-12, method="dopri8")
            ours = odeint(func, y0, t, rtol=tol, atol=tol, method="dopri5", options=dict(controller=controller),
                          stats=stats)
            theirs = torchdiffeq.odeint(counted, y0, t, rtol=tol, atol=tol, method="dopri5")
        ours_nfe += stats.nfe_forward
        theirs_nfe += calls[0]
        ours_err = max(ours_err, (ours - exact).abs().max().item())
        theirs_err = max(theirs_err, (theirs - exact).abs().max().item())
    if controller == "integral":
        assert ours_nfe == theirs_nfe and ours_err <= theirs_err * (1 + 1e-6), (ours_nfe, theirs_nfe, ours_err, theirs_err)
    else:
        assert ours_nfe <= 1.1 * theirs_nfe, (ours_nfe, theirs_nfe)
        assert ours_err <= theirs_err, (ours_err, theirs_err)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_fixed_step_solve_replays_in_a_cuda_graph():
    # The GPU fast path for fixed-step solves: capture once, replay with new inputs copied into the
    # static buffers; results equal the eager solve.
    device = torch.device("cuda")
    torch.manual_seed(0)
    func = MLP(dim=8, hidden=64).to(device=device, dtype=torch.float32)
    y_static = torch.randn(128, 8, device=device)
    t = torch.linspace(0.0, 1.0, 11, device=device)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream), torch.no_grad():
        odeint(func, y_static, t, method="rk4")  # warm-up on a side stream, as capture requires
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.no_grad():
        out_static = odeint(func, y_static, t, method="rk4")
    y_new = torch.randn(128, 8, device=device)
    y_static.copy_(y_new)
    graph.replay()
    with torch.no_grad():
        eager = odeint(func, y_new, t, method="rk4")
    torch.testing.assert_close(out_static, eager)
