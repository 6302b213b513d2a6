"""RNN baselines of the paper's spiral experiment (Table 2): one-step-ahead Gaussian predictors.

Both walk a per-trajectory timeline of grid points in time order. At each timeline point the cell reads
the previous point's value -- the observation if that point was observed, otherwise the model's own
predicted mean (autoregressive) -- and emits a Gaussian for the current point. ``rnn_dt`` also reads the
time gap to the current point; plain ``rnn`` has no notion of time beyond the step count. The same walk
serves training (NLL at observed points) and prediction (means at query points, recorded before the
observation at that point, if any, is read), so the baselines are evaluated exactly as they are trained.
"""
from __future__ import annotations

import torch
from torch import nn

from neuralode.models.latent_ode import gaussian_log_prob, make_cell


class SpiralRNN(nn.Module):
    def __init__(self, *, obs_dim: int = 2, hidden: int = 25, use_dt: bool = False, time_unit: float = 1.0,
                 cell: str = "gru") -> None:
        super().__init__()
        self.hidden = hidden
        self.use_dt = use_dt
        self.time_unit = time_unit  # gaps enter in grid steps, so they are O(1) like the observations
        self.cell = make_cell(cell, obs_dim + int(use_dt), hidden)  # same cell kind as the latent ODE encoder
        self.head = nn.Linear(hidden, 2 * obs_dim)

    def rollout(self, t: torch.Tensor, obs_mask: torch.Tensor, x: torch.Tensor,
                step_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Walk grid points 0..K-1 where ``step_mask`` [B, K] is set; ``x`` [B, K, D] holds the observed
        values where ``obs_mask`` [B, K] is set. Returns predicted mean and log-variance [B, K, D]
        (zero where ``step_mask`` is unset)."""
        batch, steps, dim = x.shape
        h = x.new_zeros(batch, self.hidden)
        prev = x.new_zeros(batch, dim)
        last_t = x.new_full((batch,), float(t[0]))
        means, logvars = [], []
        for k in range(steps):
            active = step_mask[:, k, None]
            inp = prev if not self.use_dt else torch.cat([prev, ((t[k] - last_t) / self.time_unit)[:, None]], -1)
            h_new = self.cell(inp, h)
            mean, logvar = self.head(h_new).chunk(2, dim=-1)
            logvar = logvar.clamp(-10.0, 10.0)  # keeps the NLL finite early in training
            h = torch.where(active, h_new, h)
            prev = torch.where(active, torch.where(obs_mask[:, k, None], x[:, k], mean), prev)
            last_t = torch.where(active[:, 0], t[k], last_t)
            means.append(mean * active)
            logvars.append(logvar * active)
        return torch.stack(means, 1), torch.stack(logvars, 1)

    def loss(self, t: torch.Tensor, obs_idx: torch.Tensor, obs_x: torch.Tensor,
             extra_steps: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Gaussian NLL of the observations per trajectory (batch mean). ``extra_steps`` [K] marks grid points
        the walk also visits without an observation (the evaluation points inside the observed window)."""
        steps = int(obs_idx.max()) + 1
        obs_mask, x = _scatter(obs_idx, obs_x, steps)
        step_mask = obs_mask if extra_steps is None else obs_mask | extra_steps[:steps]
        mean, logvar = self.rollout(t, obs_mask, x, step_mask)
        nll = -(gaussian_log_prob(x, mean, logvar) * obs_mask[..., None]).sum((1, 2))
        return nll.mean(), {"train_nll": float(nll.detach().mean())}

    @torch.no_grad()
    def predict(self, t: torch.Tensor, obs_idx: torch.Tensor, obs_x: torch.Tensor, query_idx: torch.Tensor) -> torch.Tensor:
        """Predicted means at the shared grid indices ``query_idx``: [B, Q, D]."""
        steps = int(max(int(query_idx.max()), int(obs_idx.max()))) + 1
        obs_mask, x = _scatter(obs_idx, obs_x, steps)
        step_mask = obs_mask.clone()
        step_mask[:, query_idx] = True
        mean, _ = self.rollout(t, obs_mask, x, step_mask)
        return mean[:, query_idx]


def _scatter(obs_idx: torch.Tensor, obs_x: torch.Tensor, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Dense [B, steps] mask and [B, steps, D] values from per-trajectory index lists."""
    batch, _, dim = obs_x.shape
    mask = torch.zeros(batch, steps, dtype=torch.bool, device=obs_x.device)
    mask.scatter_(1, obs_idx, True)
    x = obs_x.new_zeros(batch, steps, dim)
    x.scatter_(1, obs_idx[..., None].expand(-1, -1, dim), obs_x)
    return mask, x
