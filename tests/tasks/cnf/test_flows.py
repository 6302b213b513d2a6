"""CNF and planar-flow densities against independent computations of the change of variables."""
from __future__ import annotations

import math

import pytest
import torch

from neuralode.models.cnf import CNF, FlowDynamics, GatedHyperDynamics, PlanarFlow, standard_normal_logprob
from neuralode.models.odeblock import SolverSpec, collect_solve_stats

TIGHT = SolverSpec(method="dopri5", rtol=1e-8, atol=1e-8, adjoint=False)


class LinearDynamics(FlowDynamics):
    """f(z) = A z: the flow map is expm(A t), so log-det = t tr(A) exactly."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(a)

    def velocity_and_trace(self, t: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = z @ self.a.T
        if self.trace == "exact":
            return f, torch.trace(self.a).expand(z.shape[0])
        return f, ((self.noise @ self.a.T) * self.noise).sum(-1)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def gated_cnf(trace: str = "exact", solver: SolverSpec = TIGHT, width: int = 8) -> CNF:
    dyn = GatedHyperDynamics(2, width, 16, trace).double()
    with torch.no_grad():  # larger weights than the default init, so the flow is far from the identity
        for p in dyn.parameters():
            p.mul_(3.0)
    return CNF(dyn, t1=1.0, noise="rademacher", solver=solver)


def test_linear_flow_matches_closed_form() -> None:
    a = torch.tensor([[0.3, -1.2], [0.7, -0.5]], dtype=torch.float64)
    t1 = 1.5
    cnf = CNF(LinearDynamics(a), t1=t1, noise="rademacher", solver=TIGHT)
    x = torch.randn(16, 2, dtype=torch.float64)
    z0 = x @ torch.linalg.matrix_exp(-a * t1).T
    expected = standard_normal_logprob(z0) - t1 * torch.trace(a)
    torch.testing.assert_close(cnf.log_prob(x), expected, rtol=1e-6, atol=1e-6)
    xs, logq = cnf.sample(z0)
    torch.testing.assert_close(xs, x, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(logq, expected, rtol=1e-6, atol=1e-6)
    assert collect_solve_stats(cnf).nfe_forward > 0  # the solve went through the counted ODEBlock


def test_gated_cnf_matches_numerical_jacobian_of_flow_map() -> None:
    cnf = gated_cnf()
    z0 = torch.randn(4, 2, dtype=torch.float64)
    x, logq = cnf.sample(z0)
    # Central differences of the flow map z0 -> x give det(dx/dz0) independently of the trace integral.
    eps = 1e-5
    cols = []
    for i in range(2):
        dz = torch.zeros(2, dtype=torch.float64)
        dz[i] = eps
        cols.append((cnf.sample(z0 + dz)[0] - cnf.sample(z0 - dz)[0]) / (2 * eps))
    jac = torch.stack(cols, dim=-1)
    expected = standard_normal_logprob(z0) - torch.linalg.slogdet(jac).logabsdet
    assert (logq - standard_normal_logprob(z0)).abs().max() > 0.2  # the flow changes the density noticeably
    torch.testing.assert_close(logq, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cnf.log_prob(x), logq, rtol=1e-6, atol=1e-6)


def test_intermediate_time_density_inverts_trajectory() -> None:
    cnf = gated_cnf()
    z0 = torch.randn(5, 2, dtype=torch.float64)
    xs, logps = cnf.trajectory(z0, [0.4, 1.0])
    torch.testing.assert_close(cnf.log_prob(xs[0], t=0.4), logps[0], rtol=1e-6, atol=1e-6)


def test_exact_trace_equals_autograd_jacobian_trace() -> None:
    dyn = GatedHyperDynamics(3, 5, 8, "exact").double()
    z = torch.randn(6, 3, dtype=torch.float64)
    t = torch.tensor(0.3, dtype=torch.float64)
    _, div = dyn.velocity_and_trace(t, z)
    for n in range(z.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: dyn.velocity_and_trace(t, v[None])[0][0], z[n])
        torch.testing.assert_close(div[n], torch.trace(jac))


def test_hutchinson_trace_is_unbiased() -> None:
    dyn = GatedHyperDynamics(2, 6, 8, "hutchinson").double()
    t = torch.tensor(0.5, dtype=torch.float64)
    z = torch.randn(1, 2, dtype=torch.float64).expand(20000, 2)
    dyn.noise = torch.randint(0, 2, z.shape).double() * 2 - 1
    _, est = dyn.velocity_and_trace(t, z)
    dyn.trace, dyn.noise = "exact", None
    _, exact = dyn.velocity_and_trace(t, z[:1])
    stderr = est.std() / math.sqrt(est.numel())
    assert abs(est.mean() - exact[0]) < 4 * stderr + 1e-9
    assert est.std() > 0  # it really is a random estimate, not the exact trace


def test_hutchinson_log_density_is_unbiased_with_noise_fixed_per_solve() -> None:
    cnf = gated_cnf("hutchinson", SolverSpec(method="dopri5", rtol=1e-6, atol=1e-6, adjoint=False))
    x = torch.randn(1, 2, dtype=torch.float64).expand(4000, 2).contiguous()
    est = cnf.log_prob(x)
    exact = cnf.log_prob(x[:1], exact=True)
    assert cnf.dynamics.trace == "hutchinson"  # exact=True does not stick
    assert est.std() > 0
    assert abs(est.mean() - exact[0]) < 4 * est.std() / math.sqrt(est.numel())


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_adjoint_gradient_matches_direct_backprop(trace: str) -> None:
    grads = []
    x = torch.randn(8, 2, dtype=torch.float64)
    for adjoint in (False, True):
        torch.manual_seed(1)
        cnf = gated_cnf(trace, SolverSpec(method="dopri5", rtol=1e-9, atol=1e-9, adjoint=adjoint))
        torch.manual_seed(2)  # same Hutchinson noise in both runs
        cnf.log_prob(x).mean().backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in cnf.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-6)


def test_planar_logdet_matches_autograd_jacobian() -> None:
    flow = PlanarFlow(2, 6).double()
    with torch.no_grad():
        flow.u.copy_(torch.randn(6, 2) * 3)  # large u: the û constraint has to act
        flow.w.copy_(torch.randn(6, 2) * 2)
        flow.b.copy_(torch.randn(6))
    z = torch.randn(5, 2, dtype=torch.float64)
    _, logdet = flow.transform(z)
    for n in range(z.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: flow.transform(v[None])[0][0], z[n])
        torch.testing.assert_close(logdet[n], torch.linalg.slogdet(jac).logabsdet)
        assert torch.det(jac) > 0
    assert ((flow.w * flow.u_hat()).sum(-1) >= -1).all()
    x, logq = flow.sample(z)
    torch.testing.assert_close(logq, standard_normal_logprob(z) - logdet)
    torch.testing.assert_close(flow.log_prob(z), standard_normal_logprob(x) + logdet)


@pytest.mark.parametrize("bad", [{"trace": "bogus"}, {"width": 0}])
def test_bad_model_settings_raise(bad: dict) -> None:
    kwargs = {"dim": 2, "width": 4, "hidden": 4, "trace": "exact"} | bad
    with pytest.raises(ValueError, match="model"):
        GatedHyperDynamics(**kwargs)
