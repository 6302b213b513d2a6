"""Synthetic 2-D spirals for the latent ODE experiment (paper Sec. 5.1, Table 2): the data set of task=spiral.

Data (own generator in the spirit of the paper's reference code, same curves and scale):
  * Each spiral is a noise-free curve sampled on a shared grid of ``2 * n_points`` equally spaced times
    ``t_k = k * dt``, dt = 6*pi/999 (1000 points over the 3 turns, the size the reference script declares;
    its generator actually runs with its default of 500 points, twice this step). The first ``n_points``
    grid points are the observed window; the second half exists only for evaluation. (With the 500-point
    step the window and the extrapolation horizon each span 0.6 turns instead of 0.3; in quick-profile
    runs the latent ODE then extrapolated 6-14x worse, docs/results.md.)
  * Archimedean spirals r = a + b*theta, theta = s + t, turning outwards: half counter-clockwise around
    (+5, 0), half clockwise (the mirror image x -> -x, around (-5, 0)). The start s is uniform in
    [0, 6*pi - 2*n_points*dt], so every spiral starts at a different point of the 3-turn curve.
    (The reference's clockwise branch is a hyperbolic spiral r = 50b/theta whose radius explodes to 15 at
    its end; the spirals that extrapolate into that never-observed end then dominate any RMSE, so both
    branches here are Archimedean, on the scale of the reference's counter-clockwise one, radius <= 5.7.)
  * Observations: the noisy value (Gaussian, std ``noise_std``) at ``n_obs`` grid points of the observed
    window drawn without replacement (irregular times, sorted). The draw is fixed per spiral: it is the data set.
  * A test split of spirals is held out (``test_fraction``), balanced in direction like the train split.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from neuralode.data.samples import Samples
from neuralode.errors import ConfigError

TURNS_SPAN = 6 * math.pi
GRID_STEP = TURNS_SPAN / 999  # 1000 points over the 3 turns (see the module docstring)
CENTRE = 5.0


@dataclass
class SpiralSplit(Samples):
    clean: torch.Tensor      # [N, 2P, 2] noise-free curve on the whole grid
    noisy: torch.Tensor      # [N, 2P, 2] curve + observation noise
    obs_idx: torch.Tensor    # [N, n_obs] sorted grid indices in [0, P), drawn without replacement
    clockwise: torch.Tensor  # [N] bool

    def observations(self, rows: torch.Tensor | slice = slice(None)) -> tuple[torch.Tensor, torch.Tensor]:
        idx = self.obs_idx[rows]
        noisy = self.noisy[rows]
        return idx, torch.gather(noisy, 1, idx[..., None].expand(-1, -1, noisy.shape[-1]))


@dataclass
class SpiralData:
    t: torch.Tensor          # [2P] shared time grid
    n_points: int            # P: length of the observed window in grid points
    train: SpiralSplit
    test: SpiralSplit

    @property
    def eval_idx(self) -> torch.Tensor:
        """The evaluation points: every second grid point, P of them, half inside the observed window."""
        return torch.arange(0, 2 * self.n_points, 2, device=self.t.device)

    def to(self, device: torch.device) -> "SpiralData":
        return SpiralData(self.t.to(device), self.n_points, self.train.to(device), self.test.to(device))


def generate_spirals(*, n_spirals: int = 1000, n_points: int = 100, n_obs: int = 100, noise_std: float = 0.3,
                     a: float = 0.0, b: float = 0.3, test_fraction: float = 0.2, seed: int = 0) -> SpiralData:
    """Seeded spiral data set; see the module docstring for the exact construction."""
    if n_spirals < 4 or n_spirals % 2:
        raise ConfigError(f"data.n_spirals must be an even number >= 4 (half clockwise), got {n_spirals}")
    max_points = int(TURNS_SPAN / GRID_STEP) // 2
    if not 2 <= n_points <= max_points:
        raise ConfigError(f"data.n_points must be in [2, {max_points}], got {n_points}")
    if not 1 <= n_obs <= n_points:
        raise ConfigError(f"data.n_obs must be in [1, data.n_points={n_points}] (e.g. 30, 50 or 100), got {n_obs}")
    if noise_std < 0:
        raise ConfigError(f"data.noise_std must be >= 0, got {noise_std}")
    n_test = round(n_spirals * test_fraction / 2) * 2
    if not 0 < test_fraction < 1 or not 2 <= n_test <= n_spirals - 2:
        raise ConfigError(f"data.test_fraction={test_fraction} must leave >= 2 spirals in each split of {n_spirals}")

    gen = torch.Generator().manual_seed(seed)
    t = torch.arange(2 * n_points, dtype=torch.float64) * GRID_STEP
    clockwise = torch.arange(n_spirals) % 2 == 1
    clockwise = clockwise[torch.randperm(n_spirals, generator=gen)]
    start = torch.rand(n_spirals, 1, generator=gen, dtype=torch.float64) * (TURNS_SPAN - float(t[-1]) - GRID_STEP)
    theta = start + t
    radius = a + b * theta
    # Counter-clockwise around (+5, 0); clockwise is its mirror image x -> -x, around (-5, 0).
    sign = torch.where(clockwise[:, None], -1.0, 1.0).double()
    clean = torch.stack([sign * (radius * torch.cos(theta) + CENTRE), radius * torch.sin(theta)], dim=-1)
    noisy = clean + noise_std * torch.randn(clean.shape, generator=gen, dtype=torch.float64)
    # n_obs of the P window points without replacement: the first n_obs of a random permutation, sorted.
    obs_idx = torch.rand(n_spirals, n_points, generator=gen).argsort(dim=1)[:, :n_obs].sort(dim=1).values

    # Split each direction separately so both splits stay half clockwise.
    test_rows = torch.cat([torch.nonzero(clockwise == d).squeeze(1)[: n_test // 2] for d in (False, True)])
    is_test = torch.zeros(n_spirals, dtype=torch.bool)
    is_test[test_rows] = True

    def split(rows: torch.Tensor) -> SpiralSplit:
        return SpiralSplit(clean[rows].float(), noisy[rows].float(), obs_idx[rows], clockwise[rows])

    return SpiralData(t.float(), n_points, split(torch.nonzero(~is_test).squeeze(1)), split(test_rows))
