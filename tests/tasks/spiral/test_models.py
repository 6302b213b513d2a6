"""Latent ODE and RNN baselines: shapes, ELBO terms, NFE bookkeeping, and that the RNN never peeks."""
from __future__ import annotations

import math

import pytest
import torch

from neuralode.data.spiral import GRID_STEP, generate_spirals
from neuralode.models.latent_ode import LatentODE, kl_to_standard_normal
from neuralode.models.odeblock import SolverSpec, collect_solve_stats
from neuralode.models.rnn import SpiralRNN
from neuralode.tasks.spiral import SpiralTask


@pytest.fixture(scope="module")
def data():
    return generate_spirals(n_spirals=20, n_obs=30, seed=0)


def latent_ode(cell: str = "gru") -> LatentODE:
    torch.manual_seed(0)
    return LatentODE(SolverSpec("dopri5", 1e-4, 1e-4, adjoint=False), time_unit=GRID_STEP, cell=cell)


@pytest.mark.parametrize("cell", ["gru", "rnn"])
def test_latent_ode_shapes_elbo_and_nfe(data, cell: str) -> None:
    model = latent_ode(cell)
    idx, x = data.train.observations(torch.arange(5))
    mean, logvar = model.encode(data.t, idx, x)
    assert mean.shape == logvar.shape == (5, 4)
    loss, metrics = model.loss(data.t, idx, x)
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert metrics["train_kl"] >= 0 and math.isfinite(metrics["train_nll"])
    assert collect_solve_stats(model).nfe_forward > 0
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    pred = model.predict(data.t, idx, x, data.eval_idx)
    assert pred.shape == (5, 100, 2) and torch.isfinite(pred).all()


def test_decode_shared_and_per_row_indices_agree(data) -> None:
    model = latent_ode()
    z0 = torch.randn(3, 4)
    query = torch.tensor([3, 10, 50])
    shared = model.decode(z0, data.t, query)
    per_row = model.decode(z0, data.t, query.expand(3, -1))
    assert torch.allclose(shared, per_row, atol=1e-5)


def test_kl_is_nonnegative_and_zero_at_prior() -> None:
    mean, logvar = torch.randn(100, 4), torch.randn(100, 4)
    assert torch.all(kl_to_standard_normal(mean, logvar) >= 0)
    assert torch.allclose(kl_to_standard_normal(torch.zeros(2, 4), torch.zeros(2, 4)), torch.zeros(2))


@pytest.mark.parametrize("use_dt", [False, True])
def test_rnn_shapes_and_loss(data, use_dt: bool) -> None:
    torch.manual_seed(0)
    model = SpiralRNN(use_dt=use_dt, time_unit=GRID_STEP)
    idx, x = data.train.observations(torch.arange(4))
    extra = torch.zeros(200, dtype=torch.bool)
    extra[data.eval_idx] = True
    loss, metrics = model.loss(data.t, idx, x, extra_steps=extra)
    assert loss.ndim == 0 and math.isfinite(loss.item()) and metrics["train_nll"] == pytest.approx(loss.item())
    loss.backward()
    pred = model.predict(data.t, idx, x, data.eval_idx)
    assert pred.shape == (4, 100, 2) and torch.isfinite(pred).all()


def test_rnn_prediction_uses_only_the_past(data) -> None:
    # Changing an observation must not change the predictions at or before its time.
    torch.manual_seed(0)
    model = SpiralRNN(use_dt=True, time_unit=GRID_STEP)
    idx, x = data.test.observations(torch.arange(2))
    k = 10
    changed = x.clone()
    changed[:, k] += 5.0
    before = model.predict(data.t, idx, x, data.eval_idx)
    after = model.predict(data.t, idx, changed, data.eval_idx)
    upto = int((data.eval_idx <= idx[:, k].min()).sum())
    assert torch.equal(before[:, :upto], after[:, :upto])
    assert not torch.equal(before, after)


def test_task_step_and_evaluate(data) -> None:
    task = SpiralTask(data, latent_ode(), model_name="latent_ode", lr=0.01, batch_size=8, iters_per_epoch=2,
                      lr_decay=0.9, n_figure_spirals=2, seed=0)
    batches = list(task.train_batches(1))
    assert len(batches) == 2 and batches[0][0].shape == (8, 30)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(batches, task.train_batches(1)))  # seeded per epoch
    out = task.training_step(batches[0])
    assert out.batch_size == 8 and {"train_nll", "train_kl"} <= set(out.metrics)
    metrics = task.evaluate()
    assert {"test_rmse", "test_rmse_interp", "test_rmse_extrap"} <= set(metrics)
    assert all(math.isfinite(v) and v > 0 for v in metrics.values())
    opt, sched = task.configure_optimizers(1)
    assert isinstance(opt, torch.optim.Adam) and sched is not None


def test_cosine_schedule_anneals_towards_zero_over_the_run(data) -> None:
    task = SpiralTask(data, latent_ode(), model_name="latent_ode", lr=0.01, batch_size=8, iters_per_epoch=1,
                      lr_decay=1.0, n_figure_spirals=2, seed=0, lr_schedule="cosine")
    opt, sched = task.configure_optimizers(4)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.01, 0.00854, 0.005, 0.00146], abs=1e-5)  # halfway: half the lr


def test_lr_cycles_repeat_the_schedule_and_the_first_cycle_is_a_shorter_run(data) -> None:
    def factors(epochs: int, cycles: int) -> list[float]:
        task = SpiralTask(data, latent_ode(), model_name="latent_ode", lr=0.01, batch_size=8, iters_per_epoch=1,
                          lr_decay=1.0, n_figure_spirals=2, seed=0, lr_schedule="cosine", lr_hold=0.5,
                          lr_cycles=cycles)
        _, schedule = task.configure_optimizers(epochs)
        return [schedule.lr_lambdas[0](k) for k in range(epochs)]

    assert factors(8, 2) == pytest.approx([1, 1, 1, 0.5] * 2, abs=1e-12)
    assert factors(8, 2)[:4] == factors(4, 1)
    with pytest.raises(ValueError, match="task.lr_cycles must be >= 1 and divide trainer.epochs=8; got 3"):
        factors(8, 3)


@pytest.mark.parametrize(("schedule", "decay", "expected"), [("cosine", 1.0, [1, 1, 1, 0.5]),
                                                              ("exponential", 0.5, [1, 1, 1, 0.5])])
def test_lr_hold_keeps_the_initial_lr_for_its_fraction_of_the_epochs(data, schedule, decay, expected) -> None:
    task = SpiralTask(data, latent_ode(), model_name="latent_ode", lr=0.01, batch_size=8, iters_per_epoch=1,
                      lr_decay=decay, n_figure_spirals=2, seed=0, lr_schedule=schedule, lr_hold=0.5)
    assert [task.lr_factor(k, epochs=4) for k in range(4)] == pytest.approx(expected, abs=1e-12)


def test_unknown_lr_schedule_is_one_clear_error(data) -> None:
    with pytest.raises(ValueError, match="task.lr_schedule must be one of: exponential, cosine"):
        SpiralTask(data, latent_ode(), model_name="latent_ode", lr=0.01, batch_size=8, iters_per_epoch=1,
                   lr_decay=1.0, n_figure_spirals=2, seed=0, lr_schedule="step")


def test_unknown_cell_is_one_clear_error() -> None:
    with pytest.raises(ValueError, match="model.cell"):
        SpiralRNN(cell="lstm")


def test_scoring_starts_after_the_first_observation() -> None:
    data = generate_spirals(n_spirals=20, n_obs=100, seed=0)
    task = SpiralTask(data, SpiralRNN(time_unit=GRID_STEP), model_name="rnn", lr=0.01, batch_size=4,
                      iters_per_epoch=1, lr_decay=1.0, n_figure_spirals=2, seed=0)
    scored = task.scored_mask()
    assert scored.shape == (4, 100) and not scored[:, 0].any() and scored[:, 1:].all()  # all points observed
