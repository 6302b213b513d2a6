"""The ODE block's regularisers (neuralode/models/regularization.py): the integrals against closed forms on
y' = Ay, their gradients against finite differences, STEER's end-time distribution, and that evaluation
and unregularised training are untouched."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from neuralode.models.cnf import CNF, GatedHyperDynamics
from neuralode.models.odeblock import ODEBlock, SolverSpec, take_penalties
from neuralode.models.regularization import Regularization, RegularizedDynamics, regularization_from_config
from neuralode.solvers import odeint

T = 1.3
TIGHT = dict(method="dopri5", rtol=1e-10, atol=1e-10)


class Linear(nn.Module):
    """y' = A y for a batch of row vectors y."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y @ self.a.T


class TanhField(nn.Module):
    """A small nonlinear, time-dependent field for the gradient checks."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.w = nn.Parameter(0.5 * torch.randn(dim, dim))
        self.v = nn.Parameter(0.5 * torch.randn(dim, dim))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(y @ self.w.T + t) @ self.v.T


def regularized_block(func: nn.Module, adjoint: bool, **weights: float) -> ODEBlock:
    block = ODEBlock(func, SolverSpec(adjoint=adjoint, **TIGHT), t=torch.tensor([0.0, T]),
                     regularization=Regularization(**weights))
    return block.train()


@pytest.mark.parametrize("adjoint", [True, False])
def test_the_integrals_match_their_closed_forms_on_a_linear_system(float64_single_thread, adjoint: bool):
    """Diagonal A = diag(λ): ∫‖Ay‖²/D dt = Σ_i λ_i y0_i² (e^{2λ_i T} - 1) / (2D) per sample, and ‖A‖²_F T / D
    exactly, since a Rademacher probe's εᵀA has the squared norm Σ λ_i² ε_i² = ‖A‖²_F for a diagonal A."""
    lam = torch.tensor([-1.0, 0.5, -0.3])
    y0 = torch.tensor([[1.0, 2.0, -1.0], [0.5, -0.5, 3.0]])
    block = regularized_block(Linear(torch.diag(lam)), adjoint, kinetic=1.0, jacobian=1.0)
    y1 = block(y0)
    _, values = take_penalties(block)
    dim = lam.numel()
    kinetic = (lam * y0**2 * torch.expm1(2 * lam * T) / 2).sum(1).mean() / dim
    assert values["reg_kinetic"] == pytest.approx(float(kinetic), rel=1e-8)
    assert values["reg_jacobian"] == pytest.approx(float(lam.pow(2).sum()) * T / dim, rel=1e-12)
    # The state itself is solved as without the integrals.
    torch.testing.assert_close(y1, y0 * torch.exp(lam * T), rtol=1e-8, atol=1e-10)


def test_the_frobenius_integrand_is_the_exact_jacobian_for_basis_probes(float64_single_thread):
    """With the D unit vectors as probes (one per sample), Σ_k ‖e_kᵀ A‖² is ‖A‖²_F exactly: the integrand is
    εᵀ ∂f/∂z itself, not an approximation of it."""
    a = torch.tensor([[0.3, -1.2, 0.4], [0.7, 0.1, -0.5], [-0.2, 0.9, -0.8]])
    basis = torch.eye(3)
    dynamics = RegularizedDynamics(Linear(a), ("jacobian",), tuple_state=False, probe=basis)
    _, rates = odeint(dynamics, (torch.ones(3, 3), torch.zeros(3, 1)), torch.tensor([0.0, T]), **TIGHT)
    assert float(rates[-1].detach().sum()) * 3 == pytest.approx(float(a.pow(2).sum()) * T, rel=1e-12)


def test_hutchinsons_mean_converges_to_the_frobenius_norm(float64_single_thread):
    """A non-diagonal A: each of N samples draws its own Rademacher probe, so the batch mean averages N
    estimates of ‖A‖²_F T / D; it lies within 5 standard errors (Var εᵀMε = 2 Σ_{i≠j} M_ij², M = AAᵀ)."""
    torch.manual_seed(0)
    a = torch.tensor([[0.3, -1.2, 0.4], [0.7, 0.1, -0.5], [-0.2, 0.9, -0.8]])
    n, dim = 20_000, 3
    block = regularized_block(Linear(a), adjoint=False, jacobian=1.0)
    block(torch.randn(n, dim))
    _, values = take_penalties(block)
    m = a @ a.T
    exact = float(a.pow(2).sum()) * T / dim
    standard_error = math.sqrt(2 * float(m.pow(2).sum() - m.diag().pow(2).sum()) / n) * T / dim
    assert abs(values["reg_jacobian"] - exact) < 5 * standard_error
    assert standard_error < 0.02 * exact  # the bound is tight enough to mean something


@pytest.mark.parametrize("adjoint", [True, False])
def test_gradients_match_finite_differences(float64_single_thread, adjoint: bool):
    """gradcheck of a loss on y(T) plus both penalties, w.r.t. y0 and the field's weights, in float64; the probe is
    redrawn from the same seed at every call. Fixed RK4 steps: an adaptive solver's step count jumps under the
    finite differences' perturbations, and each jump moves the loss by up to the tolerance. Backpropagation
    differentiates those steps exactly; the adjoint solves the continuous adjoint, O(h^4) away from them."""
    torch.manual_seed(1)
    func = TanhField(2)
    block = ODEBlock(func, SolverSpec(method="rk4", adjoint=adjoint, options={"step_size": 0.1}),
                     t=torch.tensor([0.0, T]), regularization=Regularization(kinetic=0.7, jacobian=0.3)).train()
    y0 = torch.randn(3, 2, requires_grad=True)

    def loss(y0: torch.Tensor, w: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        torch.manual_seed(2)
        y1 = block(y0)
        penalty, _ = take_penalties(block)
        return y1.pow(2).sum() + penalty

    assert torch.autograd.gradcheck(loss, (y0, func.w, func.v), eps=1e-6, atol=1e-6, rtol=1e-5)


def test_the_penalty_gradient_agrees_between_the_adjoint_and_direct_backprop(float64_single_thread):
    """Both ways differentiate the same integrals (same probe) through a tuple state whose second part rides along."""

    class WithIntegral(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.field = TanhField(2)

        def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, ...]:
            z, _ = state
            return self.field(t, z), z.pow(2).sum(1, keepdim=True)

    torch.manual_seed(3)
    func = WithIntegral()
    z0 = torch.randn(4, 2)
    grads = []
    for adjoint in (True, False):
        block = regularized_block(func, adjoint, kinetic=1.0, jacobian=1.0)
        torch.manual_seed(4)
        z1, extra = block((z0, torch.zeros(4, 1)))
        penalty, _ = take_penalties(block)
        grads.append(torch.autograd.grad(z1.sum() + extra.sum() + penalty, list(func.parameters())))
    for adjoint_grad, direct_grad in zip(*grads):
        torch.testing.assert_close(adjoint_grad, direct_grad, rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("reverse_from", [None, 0.8])
def test_the_cnf_gives_the_probe_product_in_closed_form(float64_single_thread, reverse_from: float | None):
    """The CNF's εᵀ∂(dz/ds)/∂z (no autograd in its dynamics) is what autograd gives, forwards and reversed."""
    torch.manual_seed(5)
    dynamics = GatedHyperDynamics(2, width=8, hidden=16, trace="exact")
    dynamics.reverse_from = reverse_from
    z, probe, s = torch.randn(6, 2, requires_grad=True), torch.randn(6, 2), torch.tensor(0.3)
    (velocity, div), probe_vjp = dynamics.derivative_and_probe_vjp(s, (z, torch.zeros(6)), probe)
    expected_velocity, expected_div = dynamics(s, (z, torch.zeros(6)))
    (autograd_vjp,) = torch.autograd.grad(expected_velocity, z, probe)
    torch.testing.assert_close(velocity, expected_velocity)
    torch.testing.assert_close(div, expected_div)
    torch.testing.assert_close(probe_vjp, autograd_vjp)


def test_steer_draws_the_end_time_uniformly_and_only_in_training():
    """End times are uniform on [T - b, T + b] (Kolmogorov-Smirnov distance below its 1 % critical value); a solve
    over the block's own span [0, 1] of dy/dt = 1 from y = 0 ends at the drawn time, y(t1) = t1; in evaluation
    and without gradients, at the nominal T = 1."""

    class Clock(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rate = nn.Parameter(torch.ones(()))

        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.rate.expand_as(y)

    b, n = 0.25, 4000
    block = ODEBlock(Clock(), SolverSpec(method="dopri5", rtol=1e-6, atol=1e-6, adjoint=False),
                     regularization=Regularization(steer=b)).train()
    torch.manual_seed(6)
    ends = torch.tensor([block.end_time(1.0) for _ in range(n)], dtype=torch.float64).sort().values
    assert float(ends.min()) >= 1 - b and float(ends.max()) <= 1 + b
    cdf = (ends - (1 - b)) / (2 * b)
    steps = torch.arange(1, n + 1, dtype=torch.float64) / n
    assert float(torch.maximum(steps - cdf, cdf - (steps - 1 / n)).max()) < 1.63 / math.sqrt(n)

    def solve_ends() -> list[float]:
        return [float(block(torch.zeros(1, 1)).detach()[0, 0]) for _ in range(5)]

    torch.manual_seed(7)
    drawn = [block.end_time(1.0) for _ in range(5)]
    torch.manual_seed(7)
    assert solve_ends() == pytest.approx(drawn, abs=1e-6)
    with torch.no_grad():
        assert solve_ends() == pytest.approx([1.0] * 5, abs=1e-6)
    block.eval()
    assert solve_ends() == pytest.approx([1.0] * 5, abs=1e-6) and block.end_time(1.0) == 1.0


def test_a_cnf_under_steer_puts_the_data_at_the_drawn_time():
    """log_prob integrates from the data at the drawn t1 back to the base at 0 (the flow's own time runs
    t1 -> 0); in evaluation from the nominal t1."""
    torch.manual_seed(7)
    cnf = CNF(GatedHyperDynamics(2, 4, 8, "exact"), t1=1.0, noise="rademacher",
              solver=SolverSpec(method="dopri5", rtol=1e-3, atol=1e-3), regularization=Regularization(steer=0.5))
    drawn = []
    for _ in range(5):
        cnf.log_prob(torch.randn(5, 2)).sum().backward()
        drawn.append(cnf.dynamics.reverse_from)
    assert all(0.5 <= t <= 1.5 for t in drawn) and len(set(drawn)) == len(drawn)
    cnf.eval()
    with torch.no_grad():
        cnf.log_prob(torch.randn(5, 2))
    assert cnf.dynamics.reverse_from == 1.0


def test_evaluation_and_an_unregularised_block_solve_exactly_as_before():
    """Regularisers off, or the block in evaluation: the very solve (values, NFE, gradients) of a plain odeint call;
    nothing is recorded and no random number is drawn."""
    torch.manual_seed(8)
    func = TanhField(3)
    y0 = torch.randn(5, 3)
    spec = SolverSpec(method="dopri5", rtol=1e-4, atol=1e-4, adjoint=False)
    plain = odeint(func, y0, torch.tensor([0.0, 1.0]), rtol=1e-4, atol=1e-4, method="dopri5")[-1]
    (plain_grad,) = torch.autograd.grad(plain.sum(), func.w)
    for block in (ODEBlock(func, spec).train(),
                  ODEBlock(func, spec, regularization=Regularization(kinetic=1.0, jacobian=1.0, steer=0.5)).eval()):
        rng = torch.get_rng_state()
        y1 = block(y0)
        (grad,) = torch.autograd.grad(y1.sum(), func.w)
        assert torch.equal(y1, plain) and torch.equal(grad, plain_grad)
        assert torch.equal(torch.get_rng_state(), rng) and take_penalties(block) == (None, {})


def test_the_integrals_leave_the_step_size_to_the_state():
    """The forward solve's error norm ignores the integrals: a regularised solve takes the unregularised solve's
    steps (its NFE), and returns the same state."""
    torch.manual_seed(9)
    func = TanhField(3)
    y0 = torch.randn(5, 3)
    spec = SolverSpec(method="dopri5", rtol=1e-6, atol=1e-6, adjoint=False)
    plain, regularized = ODEBlock(func, spec).train(), ODEBlock(func, spec, regularization=Regularization(kinetic=1.0))
    y_plain, y_regularized = plain(y0), regularized.train()(y0)
    assert regularized.stats.nfe_forward == plain.stats.nfe_forward
    torch.testing.assert_close(y_regularized, y_plain)


@pytest.mark.parametrize(("settings", "kwargs", "message"), [
    ({"kinetic": 0.1}, {"has_ode": False}, "regularize.kinetic regularises an ODE block's dynamics, and model=m has none"),
    ({"steer": 0.5}, {"has_ode": True, "no_steer_reason": "it reads every time"},
     "regularize.steer=0.5 samples the end time of a solve, and it reads every time; use regularize.steer=0"),
    ({"steer": 1.0}, {"has_ode": True, "steer_end": 1.0},
     "regularize.steer=1 is invalid for model=m: its solves end at T=1, and t1 ~ U[T - b, T + b] must stay after "
     "t0 = 0; use a b below 1, e.g. regularize.steer=0.5"),
])
def test_a_regulariser_that_cannot_apply_is_refused_in_one_line(settings: dict, kwargs: dict, message: str):
    with pytest.raises(ValueError) as err:
        regularization_from_config(settings, "m", **kwargs)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert regularization_from_config({}, "m", has_ode=False) == Regularization()
