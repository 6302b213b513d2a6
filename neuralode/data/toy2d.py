"""2-D toy densities: samplers for maximum-likelihood fits (Fig. 5) and unnormalised target
potentials for density matching (Fig. 4).

Samplers take ``(n, generator)`` and return an ``(n, 2)`` float tensor; potentials map ``(..., 2)`` to
the energy ``U(z)`` with target density ``p(z) ∝ exp(-U(z))``.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Optional

import torch

from neuralode.errors import ConfigError

Sampler = Callable[[int, Optional[torch.Generator]], torch.Tensor]
Potential = Callable[[torch.Tensor], torch.Tensor]


def _randn(n: int, g: torch.Generator | None, *shape: int) -> torch.Tensor:
    return torch.randn(n, *shape, generator=g)


def _rand(n: int, g: torch.Generator | None, *shape: int) -> torch.Tensor:
    return torch.rand(n, *shape, generator=g)


def two_circles(n: int, g: torch.Generator | None, noise: float = 0.06, factor: float = 0.5) -> torch.Tensor:
    """Two concentric noisy circles (radii 1 and ``factor``), half the points on each: the paper's Fig. 5 data."""
    n_out = n // 2
    angle = 2 * math.pi * _rand(n, g)
    radius = torch.ones(n)
    radius[n_out:] = factor
    x = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    return x + noise * _randn(n, g, 2)


def two_moons(n: int, g: torch.Generator | None, noise: float = 0.1) -> torch.Tensor:
    """Two interleaved half circles, scaled by 2 and centred so the data sits around the origin."""
    n_upper = n // 2
    angle = math.pi * _rand(n, g)
    upper = torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    lower = torch.stack([1 - torch.cos(angle), 0.5 - torch.sin(angle)], dim=1)
    x = torch.cat([upper[:n_upper], lower[n_upper:]], dim=0) + noise * _randn(n, g, 2)
    return 2 * x - torch.tensor([1.0, 0.5])


def eight_gaussians(n: int, g: torch.Generator | None, scale: float = 4.0, std: float = 0.5) -> torch.Tensor:
    """Eight Gaussians evenly spaced on a circle of radius ``scale``, rescaled by 1/sqrt(2)."""
    k = torch.randint(0, 8, (n,), generator=g)
    angle = k.float() * (2 * math.pi / 8)
    centres = scale * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1)
    return (centres + std * _randn(n, g, 2)) / math.sqrt(2)


def pinwheel(n: int, g: torch.Generator | None, arms: int = 5, radial_std: float = 0.3, tangential_std: float = 0.1,
             rate: float = 0.25) -> torch.Tensor:
    """Gaussian blobs stretched along x and rotated by an angle growing with their radius."""
    k = torch.randint(0, arms, (n,), generator=g)
    feats = _randn(n, g, 2) * torch.tensor([radial_std, tangential_std]) + torch.tensor([1.0, 0.0])
    angle = k.float() * (2 * math.pi / arms) + rate * torch.exp(feats[:, 0])
    c, s = torch.cos(angle), torch.sin(angle)
    rotated = torch.stack([c * feats[:, 0] - s * feats[:, 1], s * feats[:, 0] + c * feats[:, 1]], dim=1)
    return 2 * rotated


def checkerboard(n: int, g: torch.Generator | None) -> torch.Tensor:
    """Uniform on the black squares of a 4x4 checkerboard over [-4, 4]^2."""
    x1 = 4 * _rand(n, g) - 2
    x2 = _rand(n, g) - 2 * torch.randint(0, 2, (n,), generator=g).float() + torch.floor(x1) % 2
    return 2 * torch.stack([x1, x2], dim=1)


def two_spirals(n: int, g: torch.Generator | None, noise: float = 0.5) -> torch.Tensor:
    """Two interleaved spiral arms (points denser near the centre)."""
    r = torch.sqrt(_rand(n, g)) * 3 * math.pi
    x = torch.stack([-torch.cos(r) * r, torch.sin(r) * r], dim=1)
    sign = torch.where(_rand(n, g) < 0.5, -1.0, 1.0)[:, None]
    return (sign * (x + noise * _rand(n, g, 2))) / 3 + 0.1 * _randn(n, g, 2)


def rings(n: int, g: torch.Generator | None, count: int = 4, noise: float = 0.08) -> torch.Tensor:
    """``count`` concentric noisy rings of radius 1..count, equally many points on each, scaled into [-4, 4]^2."""
    k = torch.randint(1, count + 1, (n,), generator=g).float()
    angle = 2 * math.pi * _rand(n, g)
    x = k[:, None] * torch.stack([torch.cos(angle), torch.sin(angle)], dim=1) + noise * _randn(n, g, 2)
    return x * (3.5 / count)


SAMPLERS: dict[str, Sampler] = {
    "two_circles": two_circles,
    "two_moons": two_moons,
    "8gaussians": eight_gaussians,
    "pinwheel": pinwheel,
    "checkerboard": checkerboard,
    "2spirals": two_spirals,
    "rings": rings,
}


# Target potentials from Rezende & Mohamed (2015), "Variational inference with normalizing flows", Table 1.
def _w1(z1: torch.Tensor) -> torch.Tensor:
    return torch.sin(2 * math.pi * z1 / 4)


def _w2(z1: torch.Tensor) -> torch.Tensor:
    return 3 * torch.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)


def _w3(z1: torch.Tensor) -> torch.Tensor:
    return 3 * torch.sigmoid((z1 - 1) / 0.3)


def _wall(z1: torch.Tensor, edge: float = 4.0, width: float = 0.2) -> torch.Tensor:
    """Soft wall beyond |z1| = edge: the wave potentials are flat along z1 and otherwise unnormalisable;
    inside [-edge, edge] (the plotted box) it is exactly zero."""
    return 0.5 * (torch.relu(z1.abs() - edge) / width) ** 2


def ring_modes(z: torch.Tensor) -> torch.Tensor:
    """U1: a ring of radius 2 with two modes at z1 = ±2."""
    z1 = z[..., 0]
    ring = 0.5 * ((z.norm(dim=-1) - 2) / 0.4) ** 2
    modes = torch.logsumexp(torch.stack([-0.5 * ((z1 - 2) / 0.6) ** 2, -0.5 * ((z1 + 2) / 0.6) ** 2]), dim=0)
    return ring - modes


def wave(z: torch.Tensor) -> torch.Tensor:
    """U2: a sine-shaped ridge."""
    z1, z2 = z[..., 0], z[..., 1]
    return 0.5 * ((z2 - _w1(z1)) / 0.4) ** 2 + _wall(z1)


def split_wave(z: torch.Tensor) -> torch.Tensor:
    """U3: the sine ridge split in two by a Gaussian bump."""
    z1, z2 = z[..., 0], z[..., 1]
    a = -0.5 * ((z2 - _w1(z1)) / 0.35) ** 2
    b = -0.5 * ((z2 - _w1(z1) + _w2(z1)) / 0.35) ** 2
    return -torch.logsumexp(torch.stack([a, b]), dim=0) + _wall(z1)


def step_wave(z: torch.Tensor) -> torch.Tensor:
    """U4: the sine ridge split in two by a sigmoid step."""
    z1, z2 = z[..., 0], z[..., 1]
    a = -0.5 * ((z2 - _w1(z1)) / 0.4) ** 2
    b = -0.5 * ((z2 - _w1(z1) + _w3(z1)) / 0.35) ** 2
    return -torch.logsumexp(torch.stack([a, b]), dim=0) + _wall(z1)


POTENTIALS: dict[str, Potential] = {
    "ring_modes": ring_modes,
    "wave": wave,
    "split_wave": split_wave,
    "step_wave": step_wave,
}


def sampler(name: str) -> Sampler:
    if name not in SAMPLERS:
        raise ConfigError(f"unknown 2-D data set {name!r}; choose one of: {', '.join(SAMPLERS)}")
    return SAMPLERS[name]


def potential(name: str) -> Potential:
    if name not in POTENTIALS:
        raise ConfigError(f"unknown 2-D target potential {name!r}; choose one of: {', '.join(POTENTIALS)}")
    return POTENTIALS[name]


def grid(n: int, half_width: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """An ``n x n`` grid over ``[-half_width, half_width]^2``: (xx, yy, points of shape (n*n, 2))."""
    axis = torch.linspace(-half_width, half_width, n)
    xx, yy = torch.meshgrid(axis, axis, indexing="xy")
    return xx, yy, torch.stack([xx.reshape(-1), yy.reshape(-1)], dim=1)


def log_normaliser(u: Potential, half_width: float = 6.0, n: int = 1201) -> float:
    """log ∫ exp(-U) by the midpoint rule on a fine grid: turns E_q[log q + U] into the true KL(q || p).
    The box must hold essentially all of p's mass (true for the potentials above within ±6)."""
    _, _, pts = grid(n, half_width)
    cell = (2 * half_width / (n - 1)) ** 2
    with torch.no_grad():
        return float(torch.logsumexp(-u(pts.double()), dim=0) + math.log(cell))
