"""Continuous normalizing flow (paper Sec. 4) and the planar normalizing flow baseline (Rezende & Mohamed 2015).

CNF: dz/dt = f(z, t) with d log p(z(t))/dt = -tr(df/dz) (instantaneous change of variables), the state
``(z, log p)`` solved together by one :class:`ODEBlock`. ``f`` is the paper's gated width-M layer:
f(z, t) = (1/M) Σ_m σ(g_m(t)) u_m(t) tanh(w_m(t)·z + b_m(t)), with (w, u, b, g) produced by a small
hypernetwork of t. Its Jacobian is (1/M) Σ_m σ(g_m) u_m w_mᵀ tanh'(·), so both the exact trace and
Hutchinson's eᵀ(df/dz)e have closed forms that cost one extra (N, M) product — no autograd in the
dynamics, which keeps the adjoint's vector-Jacobian products first-order. So does the Jacobian regulariser's
εᵀ(df/dz) = (1/M) Σ_m (ε·u_m) tanh'(·) w_m (neuralode/models/regularization.py).
"""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from neuralode.errors import ConfigError
from neuralode.models.odeblock import ODEBlock, SolverSpec
from neuralode.models.regularization import Regularization

TRACES = ("exact", "hutchinson")
NOISES = ("rademacher", "gaussian")


def standard_normal_logprob(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) summed over the last dimension."""
    return -0.5 * (z.pow(2).sum(-1) + z.shape[-1] * math.log(2 * math.pi))


class HyperNetwork(nn.Module):
    """t -> (W, U, B) of the width-M layer, U already multiplied by its sigmoid gate."""

    def __init__(self, dim: int, width: int, hidden: int) -> None:
        super().__init__()
        self.dim, self.width = dim, width
        self.net = nn.Sequential(
            nn.Linear(1, hidden), nn.Tanh(),
            nn.Linear(hidden, hidden), nn.Tanh(),
            nn.Linear(hidden, 2 * width * dim + 2 * width),
        )

    def forward(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        params = self.net(t.reshape(1, 1)).reshape(-1)
        d, m = self.dim, self.width
        w = params[: m * d].reshape(m, d)
        u = params[m * d: 2 * m * d].reshape(m, d)
        b = params[2 * m * d: 2 * m * d + m]
        gate = torch.sigmoid(params[2 * m * d + m:])
        return w, u * gate[:, None], b


class FlowDynamics(nn.Module):
    """Right-hand side of the augmented ODE on ``(z, log p)`` for a velocity field f(z, t).

    Subclasses give f and its divergence. Solver time ``s`` always runs forward from 0; ``reverse_from = τ``
    integrates the flow backwards from flow time τ (t = τ - s, dz/ds = -f), so no solver needs a decreasing
    time grid.
    """

    def __init__(self) -> None:
        super().__init__()
        self.trace = "exact"
        self.reverse_from: float | None = None
        self.noise: torch.Tensor | None = None  # Hutchinson probe, fixed for one whole solve (forward and adjoint)

    def velocity_and_trace(self, t: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """f(z, t) and its divergence per sample: exact, or eᵀ(df/dz)e with e = ``self.noise``."""
        raise NotImplementedError

    def velocity_trace_and_probe_vjp(self, t: torch.Tensor, z: torch.Tensor, probe: torch.Tensor
                                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``velocity_and_trace`` and ``probeᵀ (df/dz)`` per sample, from the same evaluation."""
        raise NotImplementedError

    def forward(self, s: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        z, _ = state
        if self.reverse_from is None:
            f, div = self.velocity_and_trace(s, z)
            return f, -div
        f, div = self.velocity_and_trace(self.reverse_from - s, z)
        return -f, div  # the divergence of -f is -div, so d log p/ds = +div

    def derivative_and_probe_vjp(self, s: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor], probe: torch.Tensor
                                 ) -> tuple[tuple[torch.Tensor, torch.Tensor], torch.Tensor]:
        """``forward(s, state)`` and ``probeᵀ ∂(dz/ds)/∂z`` in closed form, for the Jacobian regulariser."""
        z, _ = state
        if self.reverse_from is None:
            f, div, vjp = self.velocity_trace_and_probe_vjp(s, z, probe)
            return (f, -div), vjp
        f, div, vjp = self.velocity_trace_and_probe_vjp(self.reverse_from - s, z, probe)
        return (-f, div), -vjp


class GatedHyperDynamics(FlowDynamics):
    """The paper's CNF dynamics: (1/M) Σ_m σ(g_m(t)) u_m(t) tanh(w_m(t)·z + b_m(t)), weights from a hypernetwork."""

    def __init__(self, dim: int, width: int, hidden: int, trace: str) -> None:
        super().__init__()
        if trace not in TRACES:
            raise ConfigError(f"model.trace={trace!r} is not supported; choose one of: {', '.join(TRACES)}")
        if width < 1:
            raise ConfigError(f"model.width must be >= 1 (got {width})")
        self.hyper = HyperNetwork(dim, width, hidden)
        self.trace = trace

    def velocity_and_trace(self, t: torch.Tensor, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f, div, _ = self._evaluate(t, z, None)
        return f, div

    def velocity_trace_and_probe_vjp(self, t: torch.Tensor, z: torch.Tensor, probe: torch.Tensor
                                     ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return self._evaluate(t, z, probe)

    def _evaluate(self, t: torch.Tensor, z: torch.Tensor, probe: torch.Tensor | None
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """f, its divergence, and (given a probe ε) εᵀ df/dz = (1/M) Σ_m (ε·u_m) tanh'(·) w_m."""
        w, u, b = self.hyper(t)
        m = w.shape[0]
        h = torch.tanh(z @ w.T + b)  # (N, M)
        dh = 1 - h * h
        f = h @ u / m
        vjp = None if probe is None else ((probe @ u.T) * dh) @ w / m
        if self.trace == "exact":
            div = dh @ (u * w).sum(-1) / m
        else:
            e = self.noise
            if e is None:
                raise RuntimeError("Hutchinson trace needs CNF to draw its noise before the solve")
            div = ((e @ u.T) * (e @ w.T) * dh).sum(-1) / m
        return f, div, vjp


class CNF(nn.Module):
    """A CNF with a standard normal base at t = 0 and the data at t = ``t1``."""

    def __init__(self, dynamics: FlowDynamics, t1: float, noise: str, solver: SolverSpec,
                 regularization: Regularization | None = None) -> None:
        super().__init__()
        if noise not in NOISES:
            raise ConfigError(f"model.noise={noise!r} is not supported; choose one of: {', '.join(NOISES)}")
        if t1 <= 0:
            raise ConfigError(f"model.t1 must be > 0 (got {t1})")
        self.t1, self.noise_kind = float(t1), noise
        self.dynamics = dynamics
        self.block = ODEBlock(dynamics, solver, regularization=regularization)

    def _prepare(self, z: torch.Tensor, reverse_from: float | None, exact: bool) -> str:
        """Set direction and Hutchinson noise for the next solve; returns the trace mode to restore."""
        d = self.dynamics
        previous = d.trace
        d.reverse_from = reverse_from
        if exact:
            d.trace = "exact"
        if d.trace == "hutchinson":
            if self.noise_kind == "rademacher":
                d.noise = torch.randint(0, 2, z.shape, device=z.device).to(z.dtype) * 2 - 1
            else:
                d.noise = torch.randn_like(z)
        return previous

    def _solve(self, z: torch.Tensor, logp: torch.Tensor, times: torch.Tensor, reverse_from: float | None,
               exact: bool) -> tuple[torch.Tensor, torch.Tensor]:
        previous = self._prepare(z, reverse_from, exact)
        try:
            return self.block((z, logp), times, last_only=False)
        finally:
            # Restored only after the solve; the adjoint pass re-reads noise/direction during backward, and
            # nothing solves again between a training step's forward and backward.
            self.dynamics.trace = previous

    def log_prob(self, x: torch.Tensor, t: float | None = None, exact: bool = False) -> torch.Tensor:
        """log p_t(x) of the flow at time t (default t1): integrate x back to the base at t = 0.

        In training with STEER the data sit at a drawn t1 instead (the base stays at t = 0)."""
        tau = self.block.end_time(self.t1) if t is None else float(t)
        times = torch.tensor([0.0, tau], dtype=x.dtype, device=x.device)
        zs, deltas = self._solve(x, torch.zeros(x.shape[0], dtype=x.dtype, device=x.device), times, tau, exact)
        return standard_normal_logprob(zs[-1]) - deltas[-1]

    def sample(self, z0: torch.Tensor, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """Push base points z0 to t1 (in training with STEER, to a drawn t1): returns (x, log q(x))."""
        times = torch.tensor([0.0, self.block.end_time(self.t1)], dtype=z0.dtype, device=z0.device)
        zs, logps = self._solve(z0, standard_normal_logprob(z0), times, None, exact)
        return zs[-1], logps[-1]

    def trajectory(self, z0: torch.Tensor, fractions: list[float], exact: bool = False
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """States and log densities of base points z0 at the given fractions of the flow time (increasing)."""
        times = torch.tensor([0.0] + [f * self.t1 for f in fractions], dtype=z0.dtype, device=z0.device)
        zs, logps = self._solve(z0, standard_normal_logprob(z0), times, None, exact)
        return zs[1:], logps[1:]


class PlanarFlow(nn.Module):
    """K planar layers f(z) = z + û h(wᵀz + b), h = tanh, with û chosen so wᵀû ≥ -1 (each layer invertible).

    The inverse has no closed form, so a planar flow gives exact densities in one direction only: the task picks
    it. ``sample`` reads the layers as base -> data (density matching: q(x) = N(z0) / |det|), ``log_prob`` reads
    them as data -> base (maximum likelihood: p(x) = N(f(x)) |det|).
    """

    def __init__(self, dim: int, flows: int) -> None:
        super().__init__()
        if flows < 1:
            raise ConfigError(f"model.flows must be >= 1 (got {flows})")
        self.dim = dim
        w = torch.randn(flows, dim) / math.sqrt(dim)
        # Start near the identity: with wᵀu = log(e - 1), m(wᵀu) = 0 so û is u's small part orthogonal to w and
        # every layer is a volume-preserving shear (wᵀu ≈ 0 would give wᵀû ≈ -0.31: each layer would shrink
        # volume by up to 31%, and K = 64 layers would start with a log-det near -24).
        u = 0.01 * torch.randn(flows, dim) + math.log(math.e - 1) * w / w.pow(2).sum(-1, keepdim=True)
        self.u = nn.Parameter(u)
        self.w = nn.Parameter(w)
        self.b = nn.Parameter(torch.zeros(flows))

    def u_hat(self) -> torch.Tensor:
        """û = u + (m(wᵀu) - wᵀu) w/|w|², m(a) = -1 + softplus(a): guarantees wᵀû > -1."""
        wu = (self.w * self.u).sum(-1, keepdim=True)
        m = -1 + nn.functional.softplus(wu)
        return self.u + (m - wu) * self.w / self.w.pow(2).sum(-1, keepdim=True)

    def transform(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Apply all K layers; returns (f(z), log|det df/dz|)."""
        u_hat = self.u_hat()
        logdet = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
        for k in range(self.w.shape[0]):
            h = torch.tanh(z @ self.w[k] + self.b[k])
            # det(I + û ψᵀ) = 1 + ψᵀû with ψ = h'(·) w; positive by the û constraint, abs guards rounding.
            logdet = logdet + torch.log((1 + (1 - h * h) * (self.w[k] @ u_hat[k])).abs() + 1e-12)
            z = z + h[:, None] * u_hat[k]
        return z, logdet

    # ``exact`` only mirrors CNF's signature: a planar flow's log-determinant is always exact.
    def sample(self, z0: torch.Tensor, exact: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        x, logdet = self.transform(z0)
        return x, standard_normal_logprob(z0) - logdet

    def log_prob(self, x: torch.Tensor, exact: bool = False) -> torch.Tensor:
        z, logdet = self.transform(x)
        return standard_normal_logprob(z) + logdet


def build_flow(model_cfg: Any, solver: SolverSpec, dim: int = 2,
               regularization: Regularization | None = None) -> CNF | PlanarFlow:
    """Build ``model=cnf`` or ``model=planar`` from its config group."""
    name = model_cfg.name
    if name == "cnf":
        dynamics = GatedHyperDynamics(dim, int(model_cfg.width), int(model_cfg.hyper_hidden), str(model_cfg.trace))
        return CNF(dynamics, float(model_cfg.t1), str(model_cfg.get("noise", "rademacher")), solver, regularization)
    if name == "planar":
        return PlanarFlow(dim, int(model_cfg.flows))
    raise ConfigError(f"the 2-D flow tasks need model=cnf or model=planar (got model={name})")
