"""Paper Sec. 5.1, Table 2, Figs. 6 and 8: latent ODE vs RNN baselines on noisy, irregularly sampled spirals.

Data: ``neuralode/data/spiral.py`` (noisy, irregularly sampled observations of 2-D spirals).

Metric: ``test_rmse`` is the root mean squared error per coordinate between the predicted means and the
noise-free spiral at the 100 (``n_points``) evaluation points -- every second grid point over both halves,
i.e. interpolation inside the observed window and extrapolation beyond it, conditioned on the test spiral's
``n_obs`` observations. Points up to the spiral's first observation are left out for every model: the RNNs
predict causally and have nothing to go on there (for n_obs=100 that is the single point t=0).
``test_rmse_interp`` / ``test_rmse_extrap`` split it by half.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import matplotlib
import torch
from matplotlib.figure import Figure
from torch import nn

from neuralode.data.spiral import GRID_STEP, SpiralData, generate_spirals
from neuralode.errors import ConfigError
from neuralode.models.latent_ode import LatentODE
from neuralode.models.odeblock import SolverSpec
from neuralode.models.regularization import Regularization, regularization_from_config
from neuralode.models.rnn import SpiralRNN
from neuralode.tasks.base import StepOutput


def rmse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> float:
    """Root mean squared error per coordinate over the points (``[N, P]``) where ``mask`` is set."""
    return float(((pred - target) ** 2).mean(-1)[mask].mean().sqrt())


MODELS = ("latent_ode", "rnn", "rnn_dt")
LR_SCHEDULES = ("exponential", "cosine")


def build_model(model_cfg: Any, solver: SolverSpec, regularization: Regularization | None = None) -> nn.Module:
    name = model_cfg.name
    if name == "latent_ode":
        return LatentODE(solver, latent_dim=int(model_cfg.latent_dim), rec_hidden=int(model_cfg.rec_hidden),
                         ode_hidden=int(model_cfg.ode_hidden), dec_hidden=int(model_cfg.dec_hidden),
                         obs_std=float(model_cfg.obs_std), time_unit=GRID_STEP, cell=str(model_cfg.cell),
                         regularization=regularization)
    if name in ("rnn", "rnn_dt"):
        return SpiralRNN(hidden=int(model_cfg.hidden), use_dt=bool(model_cfg.use_dt), time_unit=GRID_STEP,
                         cell=str(model_cfg.cell))
    raise ConfigError(f"task=spiral does not support model={name!r}; choose one of: {', '.join(MODELS)}")


class SpiralTask:
    """Trains one of latent_ode / rnn / rnn_dt on the spiral data; an "epoch" is ``iters_per_epoch`` minibatches."""

    def __init__(self, data: SpiralData, model: nn.Module, *, model_name: str, lr: float, batch_size: int,
                 iters_per_epoch: int, lr_decay: float, n_figure_spirals: int, seed: int,
                 lr_schedule: str = "exponential", lr_hold: float = 0.0, lr_cycles: int = 1) -> None:
        if batch_size < 1 or iters_per_epoch < 1:
            raise ConfigError(f"task.batch_size and task.iters_per_epoch must be >= 1, got {batch_size}, {iters_per_epoch}")
        if not 0 < lr_decay <= 1:
            raise ConfigError(f"task.lr_decay must be in (0, 1] (per-epoch LR factor), got {lr_decay}")
        if lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"task.lr_schedule must be one of: {', '.join(LR_SCHEDULES)}; got {lr_schedule!r}")
        if not 0 <= lr_hold < 1:
            raise ConfigError(f"task.lr_hold is the fraction of each lr cycle at the initial lr, in [0, 1); got {lr_hold}")
        self.data = data
        self.model = model
        self.model_name = model_name
        self.lr = lr
        self.lr_decay = lr_decay
        self.lr_schedule = lr_schedule
        self.lr_hold = lr_hold
        self.lr_cycles = lr_cycles
        self.batch_size = min(batch_size, len(data.train))
        self.iters_per_epoch = iters_per_epoch
        self.n_figure_spirals = n_figure_spirals
        self.seed = seed
        eval_mask = torch.zeros(2 * data.n_points, dtype=torch.bool, device=data.t.device)
        eval_mask[data.eval_idx] = True
        # The RNNs visit the evaluation points inside the window during training too (see models/rnn.py).
        self._loss_kwargs = {"extra_steps": eval_mask} if isinstance(model, SpiralRNN) else {}

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self.data.train)
        for _ in range(self.iters_per_epoch):
            rows = torch.randperm(n, generator=gen)[: self.batch_size].to(self.data.t.device)
            yield self.data.train.observations(rows)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> StepOutput:
        obs_idx, obs_x = batch
        loss, metrics = self.model.loss(self.data.t, obs_idx, obs_x, **self._loss_kwargs)
        return StepOutput(loss=loss, batch_size=obs_idx.shape[0], metrics=metrics)

    @torch.no_grad()
    def predict_test(self) -> torch.Tensor:
        """Predicted means at the evaluation points for every test spiral: [N_test, P, 2]."""
        was_training = self.model.training
        self.model.eval()
        obs_idx, obs_x = self.data.test.observations()
        pred = self.model.predict(self.data.t, obs_idx, obs_x, self.data.eval_idx)
        self.model.train(was_training)
        return pred

    def scored_mask(self) -> torch.Tensor:
        """[N_test, P]: the evaluation points after each test spiral's first observation. A causal model
        (the RNNs) has nothing to predict from before it, so every model is scored only after it."""
        return self.data.eval_idx[None, :] > self.data.test.obs_idx[:, :1]

    def evaluate(self) -> dict[str, float]:
        pred = self.predict_test()
        truth = self.data.test.clean[:, self.data.eval_idx]
        scored = self.scored_mask()
        half = pred.shape[1] // 2
        return {
            "test_rmse": rmse(pred, truth, scored),
            "test_rmse_interp": rmse(pred[:, :half], truth[:, :half], scored[:, :half]),
            "test_rmse_extrap": rmse(pred[:, half:], truth[:, half:], scored[:, half:]),
        }

    def configure_optimizers(self, epochs: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        if self.lr_cycles < 1 or epochs % self.lr_cycles:
            raise ConfigError(f"task.lr_cycles must be >= 1 and divide trainer.epochs={epochs}; got {self.lr_cycles}")
        opt = torch.optim.Adam(self.model.parameters(), lr=self.lr)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, partial(self.lr_factor, epochs=epochs))

    def lr_factor(self, completed_epochs: int, epochs: int) -> float:
        """LR multiplier for the epoch after ``completed_epochs`` of a run of ``epochs`` epochs. Within each of the
        ``lr_cycles`` equal cycles (warm restarts): held at 1 for the first ``lr_hold`` of the cycle's epochs, then
        x``lr_decay`` per epoch (exponential) or half a cosine down to 0 at the cycle's end (cosine)."""
        cycle_epochs = epochs // self.lr_cycles
        hold_epochs = round(self.lr_hold * cycle_epochs)
        k = completed_epochs % cycle_epochs - hold_epochs
        if k <= 0:
            return 1.0
        if self.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * k / (cycle_epochs - hold_epochs)))
        return self.lr_decay**k

    def save_figures(self, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        pred = self.predict_test().cpu()
        test = self.data.test
        # A few test spirals of each direction, so both kinds of curve are shown.
        per_dir = max(1, self.n_figure_spirals // 2)
        rows = torch.cat([torch.nonzero(test.clockwise.cpu() == d).squeeze(1)[:per_dir] for d in (False, True)])
        n_obs = test.obs_idx.shape[1]
        path = out_dir / f"spiral_{self.model_name}_n{n_obs}.png"
        plot_predictions(path, data=self.data, rows=rows, pred=pred, scored=self.scored_mask().cpu(),
                         model_name=self.model_name)
        if not isinstance(self.model, LatentODE):
            return [path]
        return [path, self._plot_latent_trajectories(out_dir / f"latent_trajectories_n{n_obs}.png"),
                self._plot_latent_interpolation(out_dir / f"latent_interpolation_n{n_obs}.png", int(rows[0]))]

    @torch.no_grad()
    def _test_posterior_means(self) -> torch.Tensor:
        self.model.eval()
        obs_idx, obs_x = self.data.test.observations()
        z0, _ = self.model.encode(self.data.t, obs_idx, obs_x)
        return z0

    def _plot_latent_trajectories(self, path: Path) -> Path:
        """Fig. 8(c): every test spiral's latent trajectory z(t) (from its posterior mean z0, over the observed
        window and the extrapolation), projected on the first two principal components of all of them and
        coloured by the spiral's direction."""
        with torch.no_grad():
            zs = self.model.ode(self._test_posterior_means(), self.data.t, last_only=False).transpose(0, 1).cpu()
        flat = zs.reshape(-1, zs.shape[-1])
        _, _, v = torch.pca_lowrank(flat, q=2, center=True)
        proj = ((zs - flat.mean(0)) @ v[:, :2]).numpy()  # [N, T, 2]
        clockwise = self.data.test.clockwise.cpu().numpy()
        fig = Figure(figsize=(5.6, 5))
        ax = fig.subplots()
        for label, mask, color in (("counter-clockwise", ~clockwise, "tab:blue"), ("clockwise", clockwise, "tab:red")):
            for i, p in enumerate(proj[mask]):
                ax.plot(p[:, 0], p[:, 1], color=color, lw=0.6, alpha=0.5, label=label if i == 0 else None)
            ax.scatter(proj[mask][:, 0, 0], proj[mask][:, 0, 1], s=6, color=color, zorder=3)
        ax.set_xlabel("latent PC 1")
        ax.set_ylabel("latent PC 2")
        ax.legend(fontsize=8)
        ax.set_title(f"latent trajectories of {len(proj)} test spirals (dots: z(t0))", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return path

    def _plot_latent_interpolation(self, path: Path, row: int, steps: int = 7) -> Path:
        """Fig. 9: one test spiral's posterior mean z0 with one latent dimension swept over its range among the
        test spirals (the others fixed), each decoded into a data-space trajectory: what each dimension means."""
        z_all = self._test_posterior_means()
        z0 = z_all[row]
        latent = z_all.shape[1]
        grid_idx = torch.arange(len(self.data.t), device=z0.device)
        fig = Figure(figsize=(3.6 * latent, 3.8))
        axes = fig.subplots(1, latent, squeeze=False)[0]
        cmap = matplotlib.colormaps["viridis"]
        for d, ax in enumerate(axes):
            values = torch.linspace(float(z_all[:, d].min()), float(z_all[:, d].max()), steps, device=z0.device)
            z = z0.repeat(steps, 1)
            z[:, d] = values
            with torch.no_grad():
                x = self.model.decode(z, self.data.t, grid_idx).cpu().numpy()  # [steps, T, 2]
            for k in range(steps):
                ax.plot(x[k, :, 0], x[k, :, 1], color=cmap(k / max(1, steps - 1)), lw=1.2)
                ax.plot(x[k, 0, 0], x[k, 0, 1], "o", color=cmap(k / max(1, steps - 1)), ms=3)
            ax.set_title(f"z{d + 1} from {float(values[0]):.2f} to {float(values[-1]):.2f}", fontsize=9)
            ax.set_aspect("equal", adjustable="datalim")
        fig.suptitle(f"decoded trajectories as one latent dimension of test spiral {row}'s z0 varies "
                     "(purple to yellow; dots: start)", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return path


def plot_predictions(path: Path, *, data: SpiralData, rows: torch.Tensor, pred: torch.Tensor, scored: torch.Tensor,
                     model_name: str) -> None:
    """Figs. 6/8 style panels: noise-free spiral, the observations the model saw, and its prediction
    inside the observed window (reconstruction) and beyond it (extrapolation)."""
    test = data.test
    half = data.n_points // 2
    fig = Figure(figsize=(4.2 * len(rows), 4.4))
    axes = fig.subplots(1, len(rows), squeeze=False)
    for ax, r in zip(axes[0], rows.tolist()):
        clean = test.clean[r].cpu()
        _, obs_x = test.observations(torch.tensor([r], device=test.obs_idx.device))
        obs_x = obs_x[0].cpu()
        p = pred[r]
        first = int(scored[r].nonzero()[0])  # plot (and score) from the first point after an observation
        ax.plot(clean[:, 0], clean[:, 1], color="0.6", lw=1.5, label="truth")
        ax.scatter(obs_x[:, 0], obs_x[:, 1], s=10, color="k", zorder=3, label=f"observed ({obs_x.shape[0]})")
        ax.plot(p[first:half + 1, 0], p[first:half + 1, 1], color="tab:blue", lw=2, label="prediction (observed window)")
        ax.plot(p[half:, 0], p[half:, 1], color="tab:red", lw=2, ls="--", label="extrapolation")
        ax.plot(clean[0, 0], clean[0, 1], "o", color="tab:green", ms=6, label="start")
        direction = "clockwise" if bool(test.clockwise[r]) else "counter-clockwise"
        ax.set_title(f"test spiral {r} ({direction})\nRMSE {rmse(p, clean[data.eval_idx.cpu()], scored[r]):.3f}",
                     fontsize=10)
        ax.set_aspect("equal", adjustable="datalim")
        ax.set_xlabel("x")
        ax.set_ylabel("y")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
    fig.suptitle(f"spiral: {model_name}, n_obs={test.obs_idx.shape[1]}, "
                 f"test RMSE {rmse(pred, test.clean[:, data.eval_idx].cpu(), scored):.4f}", fontsize=12)
    fig.tight_layout(rect=(0, 0.07, 1, 1))  # leave the bottom strip to the legend
    fig.savefig(path, dpi=110)


def build(cfg: Any, device: torch.device, solver: SolverSpec) -> SpiralTask:
    d = cfg.data
    if d.get("name") != "spiral":
        raise ConfigError(f"task=spiral needs data=spiral (spirals generated in code), got data={d.get('name')}")
    regularization = regularization_from_config(
        cfg.get("regularize"), str(cfg.model.name), has_ode=cfg.model.name == "latent_ode",
        no_steer_reason="task=spiral reads the latent state at every observation time, so no end time is free")
    seed = int(cfg.seed if d.get("seed") is None else d.seed)
    data = generate_spirals(n_spirals=int(d.n_spirals), n_points=int(d.n_points), n_obs=int(d.n_obs),
                            noise_std=float(d.noise_std), a=float(d.a), b=float(d.b),
                            test_fraction=float(d.test_fraction), seed=seed).to(device)
    model = build_model(cfg.model, solver, regularization).to(device)
    tk = cfg.task
    return SpiralTask(data, model, model_name=str(cfg.model.name), lr=float(tk.lr), batch_size=int(tk.batch_size),
                      iters_per_epoch=int(tk.iters_per_epoch), lr_decay=float(tk.lr_decay),
                      n_figure_spirals=int(tk.n_figure_spirals), seed=int(cfg.seed),
                      lr_schedule=str(tk.lr_schedule), lr_hold=float(tk.lr_hold), lr_cycles=int(tk.lr_cycles))
