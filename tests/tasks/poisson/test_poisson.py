"""Poisson-process task (paper Sec. 5.1): exact thinning, the augmented compensator, both models, the CLI."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from neuralode.config import solver_defaults
from neuralode.data.poisson import generate_poisson
from neuralode.models.odeblock import SolverSpec
from neuralode.models.poisson import ConstantRate, LatentODEPoisson

REPO = Path(__file__).resolve().parents[3]


def small_data(n: int = 400, seed: int = 0):
    return generate_poisson(n, 0.25, 10.0, (1.5, 0.5), 0.0, 1.0, seed)


def test_thinning_draws_as_many_events_as_the_intensity_integrates_to():
    data = small_data(2000)
    grid = torch.linspace(0, data.t_end, 2001)
    expected = torch.trapezoid(data.true_intensity(data.train, grid), grid, dim=1).sum()
    observed = data.train.mask.sum()
    # A sum of Poisson counts: its standard deviation is sqrt(expected).
    assert abs(float(observed - expected)) < 4 * math.sqrt(float(expected))
    times = data.train.times[data.train.mask]
    assert float(times.min()) >= 0 and float(times.max()) <= data.t_end
    # Sorted within each sequence, padding only after the events.
    assert bool((data.train.times.diff(dim=1)[data.train.mask[:, 1:]] >= 0).all())
    assert bool((data.train.mask.long().diff(dim=1) <= 0).all())


def test_data_is_a_function_of_its_seed():
    a, b, c = small_data(seed=3), small_data(seed=3), small_data(seed=4)
    assert torch.equal(a.test.times, b.test.times) and not torch.equal(a.test.times, c.test.times)


def test_the_true_nll_is_lower_than_the_best_constant_rate():
    data = small_data()
    const = ConstantRate(data.t_end, init_rate=float(data.test.mask.sum()) / len(data.test) / data.t_end)
    assert float(data.true_nll(data.test).mean()) < float(const.nll(data.test.times, data.test.mask).mean().detach())


def test_the_compensator_is_the_integral_of_the_intensity(float64_single_thread):
    """Lambda(T) from the augmented solve equals the quadrature of lambda(z(t)) over [0, T]."""
    torch.manual_seed(0)
    model = LatentODEPoisson(SolverSpec.from_config(solver_defaults("dopri5"), 1e-8), t_end=5.0).double()
    z0 = torch.randn(3, 4)
    grid = torch.linspace(0, 5.0, 4001)
    z, compensator = model.ode((z0, torch.zeros(3, 1)), grid, last_only=False)
    rate = model.intensity(z)[..., 0]
    assert torch.allclose(compensator[-1, :, 0], torch.trapezoid(rate, grid, dim=0), rtol=1e-6)


def test_the_latent_model_trains_on_the_elbo_and_counts_its_solves():
    torch.manual_seed(0)
    data = small_data(40)
    model = LatentODEPoisson(SolverSpec.from_config({**solver_defaults("dopri5"), "adjoint": False}, 1e-4),
                             t_end=data.t_end)
    loss, metrics = model.loss(data.train.times, data.train.mask)
    loss.backward()
    assert math.isfinite(loss.item()) and metrics["train_kl"] >= 0
    assert all(p.grad is not None for p in model.parameters())
    assert model.ode.stats.nfe_forward > 0
    bound = model.negative_elbo(data.test.times, data.test.mask, 2, torch.Generator().manual_seed(0))
    assert bound.shape == (len(data.test),)
    rate = model.intensity_at(data.test.times, data.test.mask, torch.linspace(0.5, data.t_end, 7))
    assert rate.shape == (len(data.test), 7) and bool((rate > 0).all())


@pytest.mark.smoke
@pytest.mark.parametrize("model", ["latent_ode_poisson", "poisson_const"])
def test_train_smoke(tmp_path: Path, model: str) -> None:
    # The latent ODE also trains with both regularisers of its dynamics (neuralode/models/regularization.py).
    regularize = ["regularize.kinetic=0.01", "regularize.jacobian=0.01"] if model == "latent_ode_poisson" else []
    cmd = [sys.executable, "-m", "neuralode", "train", "task=poisson", f"model={model}", "profile=smoke",
           "trainer.progress=false", "device=cpu", *regularize, f"hydra.run.dir={tmp_path}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MPLBACKEND": "Agg"}
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    (record,) = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    for key in ("test_nll", "true_nll", "intensity_rmse"):
        assert math.isfinite(record[key]), key
    assert (record["nfe_forward"] > 0) == (model == "latent_ode_poisson")
    assert all((key in record) == bool(regularize) for key in ("reg_kinetic", "reg_jacobian"))
    assert (tmp_path / "figures" / f"poisson_{model}.png").stat().st_size > 0
