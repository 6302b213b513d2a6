"""The trajectory generators of task=dynamics against SciPy's solution, and how they sample."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

from neuralode.data.dynamics import SYSTEMS, generate_dynamics


def small(system: str, **overrides):
    args = dict(t_end=1.5 if system == "cubic" else 5.0, n_points=9, extrapolate=1.0, noise_std=0.0, irregular=True,
                n_trajectories=3, n_test=4, ic_scale_min=0.5, seed=0)
    return generate_dynamics(SYSTEMS[system], **{**args, **overrides})


def scipy_solution(system: str, y0: torch.Tensor, times: torch.Tensor) -> np.ndarray:
    field = SYSTEMS[system].field
    sol = solve_ivp(lambda t, y: field(torch.from_numpy(y)).numpy(), (0.0, float(times.max())), y0.double().numpy(),
                    method="DOP853", t_eval=times.double().numpy(), rtol=1e-12, atol=1e-12)
    return sol.y.T


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_every_state_is_scipys_solution(system: str):
    data = small(system)
    for i in range(len(data.train)):
        expected = scipy_solution(system, data.train.y0[i], data.train.times[i])
        np.testing.assert_allclose(data.train.clean[i].numpy(), expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(data.grid_truth[i].numpy(), scipy_solution(system, data.train.y0[i], data.grid),
                                   rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(data.mid_truth[i].numpy(),
                                   scipy_solution(system, data.train.y0[i], data.midpoints), rtol=1e-5, atol=1e-5)
    for i in range(len(data.test_y0)):
        np.testing.assert_allclose(data.test_truth[i].numpy(),
                                   scipy_solution(system, data.test_y0[i], data.grid[:data.n_train_grid]),
                                   rtol=1e-5, atol=1e-5)


def test_the_course_setting_starts_from_the_systems_initial_condition():
    data = small("cubic", irregular=False, n_points=16, n_trajectories=1)
    assert data.train.y0.tolist() == [[2.0, 0.0]]
    assert torch.allclose(data.train.times[0], torch.linspace(0, 1.5, 16))
    assert data.n_train_grid == 16 and len(data.grid) == 31 and float(data.grid[-1]) == pytest.approx(3.0)
    # The midpoints lie strictly between the observed times.
    assert not bool(torch.isin(data.midpoints, data.train.times[0]).any()) and len(data.midpoints) == 15


def test_irregular_times_are_sorted_per_trajectory_and_start_at_zero():
    data = small("lotka_volterra", n_points=20)
    times = data.train.times
    assert bool((times[:, 0] == 0).all()) and bool((times.diff(dim=1) >= 0).all()) and float(times.max()) <= 5.0
    assert not torch.equal(times[0], times[1])


def test_noise_has_the_asked_std_and_the_data_is_a_function_of_the_seed():
    data = small("cubic", n_points=400, n_trajectories=10, noise_std=0.1)
    noise = data.train.values - data.train.clean
    assert float(noise.std()) == pytest.approx(0.1, rel=0.05)
    same, other = small("cubic", seed=0), small("cubic", seed=1)
    assert torch.equal(same.train.times, small("cubic", seed=0).train.times)
    assert not torch.equal(same.test_y0, other.test_y0)


@pytest.mark.parametrize("system", sorted(SYSTEMS))
def test_unseen_initial_conditions_lie_inside_the_reference_orbit(system: str):
    """They are drawn between the equilibrium and the orbit from y(0): no farther out than that orbit."""
    data = small(system, n_points=50, n_test=64)
    center = torch.tensor(SYSTEMS[system].center)
    orbit_radius = (data.grid_truth[0, :data.n_train_grid] - center).norm(dim=1).max()
    assert float((data.test_y0 - center).norm(dim=1).max()) <= float(orbit_radius) + 1e-5
    assert float((data.test_y0 - center).norm(dim=1).min()) > 0


def test_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="n_points >= 2"):
        small("cubic", n_points=1)
    with pytest.raises(ValueError, match="ic_scale_min must be in"):
        small("cubic", ic_scale_min=0.0)
