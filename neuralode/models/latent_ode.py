"""Latent ODE for irregularly sampled time series (paper Sec. 5, Fig. 6): RNN encoder -> z0 -> ODE -> decoder."""
from __future__ import annotations

import math

import torch
from torch import nn

from neuralode.errors import ConfigError
from neuralode.models.odeblock import ODEBlock, SolverSpec
from neuralode.models.regularization import Regularization


def gaussian_log_prob(x: torch.Tensor, mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """Elementwise log N(x; mean, exp(logvar))."""
    return -0.5 * (math.log(2 * math.pi) + logvar + (x - mean) ** 2 / logvar.exp())


def kl_to_standard_normal(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) summed over the last dimension; always >= 0."""
    return 0.5 * (logvar.exp() + mean**2 - 1.0 - logvar).sum(-1)


class LatentDynamics(nn.Module):
    """dz/dt = f(z): a time-invariant MLP, as in the paper's spiral experiment."""

    def __init__(self, latent_dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(latent_dim, hidden), nn.ELU(),
            nn.Linear(hidden, hidden), nn.ELU(),
            nn.Linear(hidden, latent_dim),
        )

    def forward(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.net(z)


RNN_CELLS: dict[str, type[nn.Module]] = {"gru": nn.GRUCell, "rnn": nn.RNNCell}
RNN_LAYERS: dict[str, type[nn.Module]] = {"gru": nn.GRU, "rnn": nn.RNN}


def check_cell(kind: str) -> None:
    """``gru`` (gated; learns much faster here) or ``rnn`` (plain tanh, the reference's)."""
    if kind not in RNN_CELLS:
        raise ConfigError(f"model.cell={kind!r} is unknown; use one of: {', '.join(RNN_CELLS)}")


def make_cell(kind: str, inputs: int, hidden: int) -> nn.Module:
    check_cell(kind)
    return RNN_CELLS[kind](inputs, hidden)


class RecognitionRNN(nn.Module):
    """Reads (observation, time gap) pairs backwards in time and emits q(z0) = N(mean, exp(logvar))."""

    def __init__(self, obs_dim: int, hidden: int, latent_dim: int, cell: str = "gru") -> None:
        super().__init__()
        check_cell(cell)
        self.rnn = RNN_LAYERS[cell](obs_dim + 1, hidden, batch_first=True)  # fused loop: no per-step Python
        self.to_posterior = nn.Linear(hidden, 2 * latent_dim)

    def forward(self, x: torch.Tensor, gaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: [B, n, obs_dim]; gaps: [B, n], gap i = t_i - t_{i-1} (t_{-1} = time of z0)."""
        # Backwards, so the last update (the first observation, carrying its gap to t0) sits closest to z0.
        # Every trajectory has the same number of observations, so a flip needs no padding.
        inputs = torch.cat([x, gaps[..., None]], dim=-1).flip(1)
        _, h = self.rnn(inputs)
        mean, logvar = self.to_posterior(h[-1]).chunk(2, dim=-1)
        return mean, logvar


class LatentODE(nn.Module):
    """Generative model z0 ~ N(0, I), z(t) = ODESolve(f, z0, t), x(t) ~ N(decoder(z(t)), obs_std^2).

    All trajectories share one time grid ``t`` and the inputs name points on it by index, so a batch
    decodes with a single solve over the union of the indices it needs (z0 lives at ``t[0]``).
    """

    def __init__(self, solver: SolverSpec, *, obs_dim: int = 2, latent_dim: int = 4, rec_hidden: int = 25,
                 ode_hidden: int = 20, dec_hidden: int = 20, obs_std: float = 0.3, time_unit: float = 1.0,
                 cell: str = "gru", regularization: Regularization | None = None) -> None:
        super().__init__()
        if obs_std <= 0:
            raise ConfigError(f"model.obs_std must be > 0, got {obs_std}")
        self.encoder = RecognitionRNN(obs_dim, rec_hidden, latent_dim, cell)
        self.ode = ODEBlock(LatentDynamics(latent_dim, ode_hidden), solver, regularization=regularization)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, dec_hidden), nn.ReLU(), nn.Linear(dec_hidden, obs_dim))
        self.obs_logvar = 2 * math.log(obs_std)
        self.time_unit = time_unit  # gaps enter the encoder in grid steps, so they are O(1) like its other inputs

    def encode(self, t: torch.Tensor, obs_idx: torch.Tensor, obs_x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        obs_t = t[obs_idx]
        gaps = torch.diff(obs_t, dim=1, prepend=torch.full_like(obs_t[:, :1], float(t[0])))
        return self.encoder(obs_x, gaps / self.time_unit)

    def decode(self, z0: torch.Tensor, t: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """Decoded means at grid indices ``idx`` ([B, n] per trajectory, or [n] shared): [B, n, obs_dim]."""
        grid = torch.unique(idx)  # sorted, so the solve sees increasing times
        if grid[0] != 0:
            grid = torch.cat([grid.new_zeros(1), grid])
        zs = self.ode(z0, t[grid], last_only=False).transpose(0, 1)  # [B, len(grid), latent]
        pos = torch.searchsorted(grid, idx.contiguous())
        if pos.dim() == 1:
            pos = pos.expand(z0.shape[0], -1)
        z = torch.gather(zs, 1, pos[..., None].expand(-1, -1, zs.shape[-1]))
        return self.decoder(z)

    def loss(self, t: torch.Tensor, obs_idx: torch.Tensor, obs_x: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """Negative ELBO per trajectory (batch mean), with one reparameterised sample of z0."""
        mean, logvar = self.encode(t, obs_idx, obs_x)
        z0 = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        x_mean = self.decode(z0, t, obs_idx)
        log_px = gaussian_log_prob(obs_x, x_mean, torch.full_like(x_mean, self.obs_logvar)).sum((1, 2))
        kl = kl_to_standard_normal(mean, logvar)
        loss = (kl - log_px).mean()
        return loss, {"train_nll": float(-log_px.detach().mean()), "train_kl": float(kl.detach().mean())}

    @torch.no_grad()
    def predict(self, t: torch.Tensor, obs_idx: torch.Tensor, obs_x: torch.Tensor, query_idx: torch.Tensor) -> torch.Tensor:
        """Predicted means at the shared grid indices ``query_idx`` from the posterior mean of z0: [B, Q, obs_dim]."""
        mean, _ = self.encode(t, obs_idx, obs_x)
        return self.decode(mean, t, query_idx)
