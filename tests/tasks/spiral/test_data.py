"""The spiral data generator: shapes, balance, determinism, observation draws, evaluation window."""
from __future__ import annotations

import pytest
import torch

from neuralode.data.spiral import GRID_STEP, generate_spirals


@pytest.fixture(scope="module")
def data():
    return generate_spirals(n_spirals=200, n_points=100, n_obs=30, noise_std=0.3, seed=3)


def test_shapes_and_split(data) -> None:
    assert data.t.shape == (200,)
    assert torch.allclose(torch.diff(data.t), torch.full((199,), GRID_STEP), atol=1e-6)  # equally spaced
    assert len(data.train) == 160 and len(data.test) == 40
    for split in (data.train, data.test):
        assert split.clean.shape == split.noisy.shape == (len(split), 200, 2)
        assert split.obs_idx.shape == (len(split), 30)


def test_half_clockwise_in_each_split(data) -> None:
    for split in (data.train, data.test):
        assert int(split.clockwise.sum()) == len(split) // 2


def test_directions_turn_the_right_way(data) -> None:
    # The sign of the cross product of successive steps (around the spiral's centre) gives the turning sense.
    for split in (data.train, data.test):
        centre = torch.where(split.clockwise, -5.0, 5.0)
        rel = split.clean - torch.stack([centre, torch.zeros_like(centre)], -1)[:, None]
        cross = rel[:, :-1, 0] * rel[:, 1:, 1] - rel[:, :-1, 1] * rel[:, 1:, 0]
        assert torch.all((cross < 0) == split.clockwise[:, None])


def test_different_start_points(data) -> None:
    starts = data.train.clean[:, 0]
    assert torch.cdist(starts, starts).add(torch.eye(len(starts)) * 1e3).min() > 1e-4


def test_seeded_determinism() -> None:
    a = generate_spirals(n_spirals=20, n_obs=50, seed=1)
    b = generate_spirals(n_spirals=20, n_obs=50, seed=1)
    c = generate_spirals(n_spirals=20, n_obs=50, seed=2)
    assert torch.equal(a.train.noisy, b.train.noisy) and torch.equal(a.test.obs_idx, b.test.obs_idx)
    assert not torch.equal(a.train.noisy, c.train.noisy)


def test_observations_without_replacement_sorted_in_window(data) -> None:
    idx = data.train.obs_idx
    assert torch.all(torch.diff(idx, dim=1) > 0)  # strictly increasing: sorted and no repeats
    assert int(idx.min()) >= 0 and int(idx.max()) < data.n_points
    assert len(set(map(tuple, idx.tolist()))) > 1  # irregular: spirals get different times


def test_noise_level(data) -> None:
    residual = data.train.noisy - data.train.clean
    assert abs(float(residual.std()) - 0.3) < 0.01


def test_eval_points_extend_beyond_the_window(data) -> None:
    eval_t = data.t[data.eval_idx]
    window_end = data.t[data.n_points - 1]
    assert len(eval_t) == 100
    assert int((eval_t <= window_end).sum()) == 50 and int((eval_t > window_end).sum()) == 50


@pytest.mark.parametrize(("kwargs", "key"), [
    ({"n_obs": 101}, "data.n_obs"), ({"n_obs": 0}, "data.n_obs"), ({"n_spirals": 7}, "data.n_spirals"),
    ({"noise_std": -1.0}, "data.noise_std"), ({"test_fraction": 1.0}, "data.test_fraction"),
    ({"n_points": 600}, "data.n_points"),
])
def test_bad_values_name_the_key(kwargs: dict, key: str) -> None:
    with pytest.raises(ValueError, match=key):
        generate_spirals(n_spirals=kwargs.pop("n_spirals", 20), **kwargs)
