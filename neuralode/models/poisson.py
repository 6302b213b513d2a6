"""Latent ODE with a Poisson-process likelihood (paper Sec. 5.1, Fig. 7), and a constant-rate baseline.

The latent state sets the event rate, ``lambda(t) = g(z(t))``. The log-likelihood of events ``t_1..t_n`` on
``[0, T]`` is ``sum_i log lambda(t_i) - int_0^T lambda(t) dt``; the integral (the compensator) is solved in the
same ``odeint`` call as ``z`` by augmenting the state with ``Lambda``, ``dLambda/dt = lambda(z)``.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from neuralode.models.latent_ode import LatentDynamics, kl_to_standard_normal
from neuralode.models.odeblock import ODEBlock, SolverSpec
from neuralode.models.regularization import Regularization


class CompensatedDynamics(nn.Module):
    """``d/dt (z, Lambda) = (f(z), lambda(z))``: the compensator integrates alongside the latent state."""

    def __init__(self, dynamics: nn.Module, intensity: nn.Module) -> None:
        super().__init__()
        self.dynamics, self.intensity = dynamics, intensity

    def forward(self, t: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        z, _ = state
        return self.dynamics(t, z), self.intensity(z)


class EventEncoder(nn.Module):
    """A GRU read backwards over (event time, gap to the previous event), both scaled by ``T``, after a final
    token for the end of the window: q(z0) = N(mean, exp(logvar)). The end token gives an empty sequence
    something to read, and tells the encoder how long the quiet stretch after the last event was."""

    def __init__(self, hidden: int, latent_dim: int) -> None:
        super().__init__()
        self.rnn = nn.GRU(2, hidden, batch_first=True)
        self.to_posterior = nn.Linear(hidden, 2 * latent_dim)

    def forward(self, times: torch.Tensor, mask: torch.Tensor, t_end: float) -> tuple[torch.Tensor, torch.Tensor]:
        n = mask.sum(1)
        steps = torch.arange(times.shape[1], device=times.device)
        rev = (n[:, None] - 1 - steps).clamp(min=0)  # the k-th event from the last
        rev_t = times.gather(1, rev)
        prev_t = torch.where(rev > 0, times.gather(1, (rev - 1).clamp(min=0)), torch.zeros_like(rev_t))
        last = torch.where(n > 0, times.gather(1, (n - 1).clamp(min=0)[:, None])[:, 0], torch.zeros_like(n, dtype=times.dtype))
        seq_t = torch.cat([torch.full_like(rev_t[:, :1], t_end), rev_t], dim=1)
        seq_gap = torch.cat([(t_end - last)[:, None], rev_t - prev_t], dim=1)
        inputs = torch.stack([seq_t, seq_gap], dim=-1) / t_end
        packed = pack_padded_sequence(inputs, (n + 1).cpu(), batch_first=True, enforce_sorted=False)
        _, h = self.rnn(packed)
        mean, logvar = self.to_posterior(h[-1]).chunk(2, dim=-1)
        return mean, logvar


class LatentODEPoisson(nn.Module):
    """q(z0) from the events, z(t) = ODESolve(f, z0, t), lambda(t) = softplus(MLP(z(t))); trained on the ELBO."""

    def __init__(self, solver: SolverSpec, *, t_end: float, latent_dim: int = 4, rec_hidden: int = 25,
                 ode_hidden: int = 20, intensity_hidden: int = 20, regularization: Regularization | None = None) -> None:
        super().__init__()
        self.t_end = t_end
        self.encoder = EventEncoder(rec_hidden, latent_dim)
        intensity = nn.Sequential(nn.Linear(latent_dim, intensity_hidden), nn.ELU(),
                                  nn.Linear(intensity_hidden, 1), nn.Softplus())
        # Regularisers act on z, the first part of the state, not on the compensator integrated along.
        self.ode = ODEBlock(CompensatedDynamics(LatentDynamics(latent_dim, ode_hidden), intensity), solver,
                            regularization=regularization)

    @property
    def intensity(self) -> nn.Module:
        return self.ode.func.intensity

    def log_likelihood(self, z0: torch.Tensor, times: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """log p(events | z0) per sequence: [B]. One solve over the union of the batch's event times."""
        grid = torch.unique(torch.cat([times[mask], times.new_tensor([0.0, self.t_end])]))
        z, compensator = self.ode((z0, z0.new_zeros(z0.shape[0], 1)), grid, last_only=False)  # [G, B, .]
        pos = torch.searchsorted(grid, times.contiguous())  # [B, L]
        z_events = torch.gather(z.transpose(0, 1), 1, pos[..., None].expand(-1, -1, z.shape[-1]))
        log_rate = torch.log(self.intensity(z_events)[..., 0].clamp_min(1e-12)) * mask
        return log_rate.sum(1) - compensator[-1, :, 0]

    def loss(self, times: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELBO per sequence (batch mean), one reparameterised sample of z0."""
        mean, logvar = self.encoder(times, mask, self.t_end)
        z0 = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        log_lik = self.log_likelihood(z0, times, mask)
        kl = kl_to_standard_normal(mean, logvar)
        return (kl - log_lik).mean(), {"train_nll": float(-log_lik.detach().mean()), "train_kl": float(kl.detach().mean())}

    @torch.no_grad()
    def negative_elbo(self, times: torch.Tensor, mask: torch.Tensor, samples: int, gen: torch.Generator) -> torch.Tensor:
        """-ELBO per sequence, averaged over ``samples`` draws of z0 from a seeded generator: a bound on the NLL."""
        mean, logvar = self.encoder(times, mask, self.t_end)
        draws = _seeded_draws(mean, logvar, samples, gen)
        log_lik = torch.stack([self.log_likelihood(z0, times, mask) for z0 in draws]).mean(0)
        return kl_to_standard_normal(mean, logvar) - log_lik

    @torch.no_grad()
    def intensity_at(self, times: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor,
                     z0: torch.Tensor | None = None) -> torch.Tensor:
        """lambda on ``grid`` [T] for each sequence, from the posterior mean (or the given ``z0``): [B, T]."""
        if z0 is None:
            z0, _ = self.encoder(times, mask, self.t_end)
        from_zero = float(grid[0]) == 0.0  # z0 lives at t = 0: the solve must start there
        full = grid if from_zero else torch.cat([grid.new_zeros(1), grid])
        z, _ = self.ode((z0, z0.new_zeros(z0.shape[0], 1)), full, last_only=False)
        rate = self.intensity(z)[..., 0].transpose(0, 1)
        return rate if from_zero else rate[:, 1:]

    @torch.no_grad()
    def posterior_samples(self, times: torch.Tensor, mask: torch.Tensor, samples: int,
                          gen: torch.Generator) -> torch.Tensor:
        return _seeded_draws(*self.encoder(times, mask, self.t_end), samples, gen)


def _seeded_draws(mean: torch.Tensor, logvar: torch.Tensor, samples: int, gen: torch.Generator) -> torch.Tensor:
    """``samples`` draws of z0 ~ N(mean, exp(logvar)) from a CPU generator: [samples, B, latent]. Evaluation and
    figures use them, so they see the same draws on every device and every call."""
    return torch.stack([mean + torch.randn(mean.shape, generator=gen).to(mean) * (0.5 * logvar).exp()
                        for _ in range(samples)])


class ConstantRate(nn.Module):
    """The homogeneous baseline: one learned rate for every sequence and time; its NLL is exact."""

    def __init__(self, t_end: float, init_rate: float = 1.0) -> None:
        super().__init__()
        self.t_end = t_end
        self.raw = nn.Parameter(torch.tensor(float(init_rate)).expm1().log())  # softplus^-1

    def rate(self) -> torch.Tensor:
        return nn.functional.softplus(self.raw)

    def nll(self, times: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.rate() * self.t_end - mask.sum(1) * torch.log(self.rate())

    def loss(self, times: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        nll = self.nll(times, mask)
        return nll.mean(), {"train_nll": float(nll.detach().mean())}

    @torch.no_grad()
    def intensity_at(self, times: torch.Tensor, mask: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
        return self.rate().expand(times.shape[0], len(grid)).clone()
