"""2-D toy samplers and target potentials."""
from __future__ import annotations

import math

import pytest
import torch

from neuralode.data import toy2d


@pytest.mark.parametrize("name", list(toy2d.SAMPLERS))
def test_samplers_are_seeded_finite_and_bounded(name: str) -> None:
    draw = lambda: toy2d.sampler(name)(1000, torch.Generator().manual_seed(3))  # noqa: E731
    x = draw()
    assert x.shape == (1000, 2) and torch.isfinite(x).all()
    assert x.abs().max() < 6  # the plots and the N(0, I) base cover roughly [-4, 4]^2
    assert x.std(0).min() > 0.2
    torch.testing.assert_close(draw(), x)


def test_two_circles_radii() -> None:
    r = toy2d.two_circles(4000, torch.Generator().manual_seed(0), noise=0.0).norm(dim=1)
    assert torch.isclose(r, torch.tensor(1.0)).sum() == 2000 and torch.isclose(r, torch.tensor(0.5)).sum() == 2000


@pytest.mark.parametrize("name", list(toy2d.POTENTIALS))
def test_potentials_finite_and_normalisable(name: str) -> None:
    u = toy2d.potential(name)
    _, _, pts = toy2d.grid(101, 8.0)
    assert torch.isfinite(u(pts)).all()
    log_z = toy2d.log_normaliser(u)
    assert math.isfinite(log_z)
    # All the mass sits inside the quadrature box: a wider box gives the same normaliser.
    assert abs(toy2d.log_normaliser(u, half_width=8.0, n=1601) - log_z) < 1e-3


def test_ring_potential_minimum_on_ring() -> None:
    u = toy2d.ring_modes(torch.tensor([[2.0, 0.0], [0.0, 0.0], [0.0, 2.0]]))
    assert u[0] < u[2] < u[1]


def test_unknown_names_raise() -> None:
    with pytest.raises(ValueError, match="two_moons"):
        toy2d.sampler("moons")
    with pytest.raises(ValueError, match="ring_modes"):
        toy2d.potential("u1")
