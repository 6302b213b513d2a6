"""Event sequences from a Poisson process whose intensity a hidden dynamical system drives (paper Sec. 5.1).

Each sequence has a hidden 2-D point circling the origin, ``x(t) = r (cos(w t + p), sin(w t + p))``, with its
radius ``r``, phase ``p`` and direction (the sign of ``w``) drawn per sequence, and emits events at the rate
``lambda(t) = softplus(a . x(t) + b)``. Event times on ``[0, t_end]`` are drawn exactly by thinning: candidates
from a homogeneous process at the bound ``softplus(|a| r + b)``, each kept with probability ``lambda / bound``.
Everything is seeded, so a data set is a function of its config.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from neuralode.data.samples import Samples
from neuralode.errors import ConfigError


@dataclass
class PoissonSplit(Samples):
    """Padded event times ``times`` [N, L] with ``mask`` [N, L] (True for real events, left-aligned, sorted);
    the hidden parameters ``radius``, ``phase``, ``omega`` [N] give the true intensity anywhere."""

    times: torch.Tensor
    mask: torch.Tensor
    radius: torch.Tensor
    phase: torch.Tensor
    omega: torch.Tensor


@dataclass
class PoissonData:
    train: PoissonSplit
    test: PoissonSplit
    t_end: float
    weight: tuple[float, float]  # a
    bias: float                  # b

    def true_intensity(self, split: PoissonSplit, t: torch.Tensor) -> torch.Tensor:
        """lambda at times ``t`` ([T], shared, or [N, T]) for every sequence of ``split``: [N, T]."""
        angle = split.omega[:, None] * t + split.phase[:, None]
        drive = split.radius[:, None] * (self.weight[0] * torch.cos(angle) + self.weight[1] * torch.sin(angle))
        return F.softplus(drive + self.bias)

    def true_nll(self, split: PoissonSplit, grid_points: int = 2001) -> torch.Tensor:
        """Negative log-likelihood of each sequence under the true intensity, in nats: [N]. The compensator is
        integrated with the trapezoid rule on a fine grid (the intensity is smooth)."""
        grid = torch.linspace(0.0, self.t_end, grid_points, device=split.times.device)
        compensator = torch.trapezoid(self.true_intensity(split, grid), grid, dim=1)
        log_rate = torch.log(self.true_intensity(split, split.times)) * split.mask
        return compensator - log_rate.sum(1)

    def to(self, device: torch.device) -> "PoissonData":
        return PoissonData(self.train.to(device), self.test.to(device), self.t_end, self.weight, self.bias)


def _sample_split(n: int, t_end: float, weight: tuple[float, float], bias: float, omega: float,
                  gen: torch.Generator) -> PoissonSplit:
    radius = 1.0 + 2.0 * torch.rand(n, generator=gen)
    phase = 2 * math.pi * torch.rand(n, generator=gen)
    direction = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    omegas = direction * omega
    norm_a = math.hypot(*weight)
    sequences = []
    for i in range(n):
        bound = F.softplus(torch.tensor(norm_a * float(radius[i]) + bias)).item()
        count = int(torch.poisson(torch.tensor(bound * t_end), generator=gen))
        candidates = torch.sort(torch.rand(count, generator=gen) * t_end).values
        angle = omegas[i] * candidates + phase[i]
        rate = F.softplus(radius[i] * (weight[0] * torch.cos(angle) + weight[1] * torch.sin(angle)) + bias)
        keep = torch.rand(count, generator=gen) * bound < rate
        sequences.append(candidates[keep])
    length = max(1, max(len(s) for s in sequences))
    times = torch.zeros(n, length)
    mask = torch.zeros(n, length, dtype=torch.bool)
    for i, s in enumerate(sequences):
        times[i, :len(s)], mask[i, :len(s)] = s, True
    return PoissonSplit(times, mask, radius, phase, omegas)


def generate_poisson(n_sequences: int, test_fraction: float, t_end: float, weight: tuple[float, float],
                     bias: float, omega: float, seed: int) -> PoissonData:
    """Train and test event sequences (drawn independently, seeded)."""
    if n_sequences < 2 or not 0 < test_fraction < 1 or t_end <= 0 or omega <= 0:
        raise ConfigError(f"data: need n_sequences >= 2, 0 < test_fraction < 1, t_end > 0 and omega > 0; got "
                          f"{n_sequences}, {test_fraction}, {t_end}, {omega}")
    gen = torch.Generator().manual_seed(seed)
    n_test = max(1, round(n_sequences * test_fraction))
    train = _sample_split(n_sequences - n_test, t_end, weight, bias, omega, gen)
    test = _sample_split(n_test, t_end, weight, bias, omega, gen)
    return PoissonData(train, test, t_end, weight, bias)
