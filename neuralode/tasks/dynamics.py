"""Learning dynamics from trajectories: the course's closing neural-ODE exercises (the cubic oscillator of
torchdiffeq's ode_demo and the DiffEqFlux course, and Lotka-Volterra), with an RNN and a ResNet-as-Euler baseline.

Data: ``neuralode/data/dynamics.py``; models: ``neuralode/models/dynamics.py``. Training fits the observed
(noisy) values of random windows of ``data.window`` observations (or whole trajectories), each predicted from
its first observation, by mean squared error (``train_loss``). Every model is then scored on the noise-free
truth, predicting from the true initial state:

- ``interp_mse``: at the held-out midpoints inside the training span, from the training initial conditions;
- ``extrap_mse``: on the extrapolation horizon after the training span, never seen in training;
- ``unseen_mse``: over the training span from unseen initial conditions in the same region;
- ``rel_l2_train`` / ``rel_l2_extrap`` / ``rel_l2_unseen``: ||prediction - truth|| / ||truth|| over all points
  and coordinates of the training-span grid, the extrapolation horizon, and the unseen initial conditions;
- ``field_rel_l2`` (node, resnet_euler): ||f_learned - f_true|| / ||f_true|| over the true states of the
  training trajectories in the training span, i.e. over the region the data covered.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from matplotlib.figure import Figure
from omegaconf import DictConfig
from torch import nn

from neuralode.data.dynamics import SYSTEMS, DynamicsData, generate_dynamics, solve_truth
from neuralode.models.dynamics import DynamicsRNN, NeuralODE, ResNetEuler, Scales, VectorField
from neuralode.models.latent_ode import check_cell
from neuralode.models.odeblock import SolverSpec
from neuralode.models.regularization import Regularization, regularization_from_config
from neuralode.tasks.base import StepOutput, check, validated
from neuralode.utils.files import read_jsonl


# The types of the task's config groups. Their defaults and what each key means live once, in the YAML files
# (configs/task/dynamics.yaml, configs/data/<cubic|lotka_volterra>.yaml, configs/model/<name>.yaml).
@dataclass
class DynamicsTaskConfig:
    name: str
    default_tol: float
    lr: float
    lr_schedule: str
    iters_per_epoch: int
    figure_grid: int


@dataclass
class DynamicsDataConfig:
    name: str
    seed: Optional[int]
    t_end: float
    n_points: int
    extrapolate: float
    noise_std: float
    irregular: bool
    n_trajectories: int
    n_test: int
    ic_scale_min: float
    window: int
    batch_size: int


@dataclass
class FieldModelConfig:  # node, resnet_euler
    name: str
    hidden: int
    hidden_layers: int
    cubic_feature: bool


@dataclass
class RNNModelConfig:  # rnn, rnn_dt
    name: str
    hidden: int
    cell: str
    use_dt: bool


MODEL_SCHEMAS: dict[str, type] = {"node": FieldModelConfig, "resnet_euler": FieldModelConfig,
                                  "rnn": RNNModelConfig, "rnn_dt": RNNModelConfig}
LR_SCHEDULES = ("cosine", "constant")


def validate_config(cfg: DictConfig) -> tuple[DynamicsTaskConfig, DynamicsDataConfig, Any]:
    """Typed, range-checked task/data/model sections of the composed config."""
    model_name, data_name = cfg.model.get("name"), cfg.data.get("name")
    check(data_name in SYSTEMS, f"task=dynamics needs data=cubic or data=lotka_volterra, got data={data_name}")
    check(model_name in MODEL_SCHEMAS,
          f"task=dynamics does not support model={model_name}; choose one of: {', '.join(MODEL_SCHEMAS)}")
    task = validated(DynamicsTaskConfig, cfg.task, "task")
    data = validated(DynamicsDataConfig, cfg.data, "data")
    model = validated(MODEL_SCHEMAS[model_name], cfg.model, "model")
    check(task.lr > 0, f"task.lr must be > 0, got {task.lr}")
    check(task.lr_schedule in LR_SCHEDULES,
          f"task.lr_schedule={task.lr_schedule!r} is unknown; use one of: {', '.join(LR_SCHEDULES)}")
    check(task.iters_per_epoch >= 1 and task.figure_grid >= 2,
          f"task.iters_per_epoch must be >= 1 and task.figure_grid >= 2, got {task.iters_per_epoch}, {task.figure_grid}")
    check(data.t_end > 0 and data.extrapolate >= 0 and data.noise_std >= 0,
          f"data.t_end must be > 0, data.extrapolate and data.noise_std >= 0; got {data.t_end}, {data.extrapolate}, "
          f"{data.noise_std}")
    check(data.n_points >= 2, f"data.n_points must be >= 2 (a start and something to predict), got {data.n_points}")
    check(data.n_trajectories >= 1 and data.n_test >= 1 and data.batch_size >= 1,
          f"data.n_trajectories, data.n_test and data.batch_size must be >= 1, got {data.n_trajectories}, "
          f"{data.n_test}, {data.batch_size}")
    check(0 < data.ic_scale_min <= 1, f"data.ic_scale_min must be in (0, 1], got {data.ic_scale_min}")
    check(data.window == 0 or 2 <= data.window <= data.n_points,
          f"data.window={data.window} is invalid; use 0 (whole trajectories) or 2..data.n_points={data.n_points}")
    check(model.hidden >= 1 and getattr(model, "hidden_layers", 1) >= 1,
          f"model.hidden and model.hidden_layers must be >= 1, got {model.hidden}, {getattr(model, 'hidden_layers', 1)}")
    if isinstance(model, RNNModelConfig):
        check_cell(model.cell)
    return task, data, model


def relative_l2(pred: torch.Tensor, truth: torch.Tensor) -> float:
    return float((pred - truth).norm() / truth.norm())


def mse(pred: torch.Tensor, truth: torch.Tensor) -> float:
    return float((pred - truth).pow(2).mean())


class DynamicsTask:
    lr_interval = "step"

    def __init__(self, data: DynamicsData, model: nn.Module, *, model_name: str, task: DynamicsTaskConfig,
                 window: int, batch_size: int, seed: int) -> None:
        self.data, self.model, self.model_name = data, model, model_name
        self.cfg = task
        self.window = window or data.train.times.shape[1]
        self.batch_size, self.seed = batch_size, seed

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``iters_per_epoch`` batches of ``batch_size`` random windows (times [B, W], observed values [B, W, D])."""
        gen = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        train = self.data.train
        n, k = train.times.shape
        for _ in range(self.cfg.iters_per_epoch):
            rows = torch.randint(n, (self.batch_size, 1), generator=gen)
            cols = torch.randint(k - self.window + 1, (self.batch_size, 1), generator=gen) + torch.arange(self.window)
            rows, cols = rows.to(train.times.device), cols.to(train.times.device)
            yield train.times[rows, cols], train.values[rows, cols]

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> StepOutput:
        times, values = batch
        pred = self.model(values[:, 0], times)
        return StepOutput(loss=(pred[:, 1:] - values[:, 1:]).pow(2).mean(), batch_size=times.shape[0])

    def _predict(self, y0: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
        return self.model.predict(y0, times.expand(len(y0), -1))

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        d = self.data
        n = d.n_train_grid
        on_grid = self._predict(d.train.y0, d.grid)
        inside = torch.cat([d.grid[:n], d.midpoints]).sort()
        at_mid = self._predict(d.train.y0, inside.values)[:, inside.indices >= n]
        unseen = self._predict(d.test_y0, d.grid[:n])
        metrics = {"interp_mse": mse(at_mid, d.mid_truth), "unseen_mse": mse(unseen, d.test_truth),
                   "rel_l2_train": relative_l2(on_grid[:, :n], d.grid_truth[:, :n]),
                   "rel_l2_unseen": relative_l2(unseen, d.test_truth)}
        if len(d.grid) > n:
            metrics.update(extrap_mse=mse(on_grid[:, n:], d.grid_truth[:, n:]),
                           rel_l2_extrap=relative_l2(on_grid[:, n:], d.grid_truth[:, n:]))
        if hasattr(self.model, "vector_field"):
            states = torch.cat([d.grid_truth[:, :n], d.mid_truth], 1).reshape(-1, d.grid_truth.shape[-1])
            metrics["field_rel_l2"] = relative_l2(self.model.vector_field(states), d.system.field(states))
        return metrics

    def configure_optimizers(self, epochs: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        opt = torch.optim.Adam(self.model.parameters(), lr=self.cfg.lr)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, partial(self.lr_factor, epochs=epochs))

    def lr_factor(self, completed_steps: int, epochs: int) -> float:
        """LR multiplier for the step after ``completed_steps`` of a run of ``epochs`` epochs."""
        if self.cfg.lr_schedule == "constant":
            return 1.0
        total_steps = epochs * self.cfg.iters_per_epoch
        return 0.5 * (1 + math.cos(math.pi * min(completed_steps, total_steps) / total_steps))

    @torch.no_grad()
    def save_figures(self, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.eval()
        paths = [self._plot_time_series(out_dir / f"dynamics_{self.model_name}_timeseries.png"),
                 self._plot_phase_portrait(out_dir / f"dynamics_{self.model_name}_phase.png")]
        records = read_jsonl(out_dir.parent / "metrics.jsonl")
        if records:
            paths.append(plot_losses(out_dir / f"dynamics_{self.model_name}_losses.png", records, self.title()))
        return paths

    def title(self) -> str:
        sampling = "irregular" if self.data.irregular else "regular"
        return f"{self.data.system.name}, {sampling} sampling: {self.model_name}"

    def _curves(self, y0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Truth on a dense time grid over training and extrapolation span from ``y0`` [n, D], and the model's
        prediction: densely for a continuous-time model, the discrete ones only where they step (the grid).
        Returns (dense times, truth [n, T, D], model times, prediction [n, T', D]) on the CPU."""
        d = self.data
        dense = torch.linspace(0.0, float(d.grid[-1]), 400)
        truth = solve_truth(d.system, y0.cpu(), dense).float()
        model_t = dense.to(d.grid.device) if isinstance(self.model, NeuralODE) else d.grid
        return dense, truth, model_t.cpu(), self._predict(y0, model_t).cpu()

    def _plot_time_series(self, path: Path) -> Path:
        """Each coordinate over time from a training and an unseen initial condition: truth, observations and
        the model, the extrapolation horizon shaded."""
        d = self.data
        t_max = float(d.grid[-1])
        y0 = torch.stack([d.train.y0[0], d.test_y0[0]])
        dense, truth, model_t, pred = self._curves(y0)
        dim = y0.shape[-1]
        fig = Figure(figsize=(11, 2.6 * dim + 0.6))
        axes = fig.subplots(dim, 2, squeeze=False, sharex=True)
        names = coordinate_names(d.system.name)
        for col, title in enumerate(("training initial condition", "unseen initial condition")):
            for i in range(dim):
                ax = axes[i][col]
                if d.t_end < t_max:
                    ax.axvspan(d.t_end, t_max, color="0.93", zorder=0)
                    ax.axvline(d.t_end, color="0.4", ls=":", lw=1)
                ax.plot(dense, truth[col, :, i], color="k", lw=1.6, label="truth")
                if col == 0:
                    ax.plot(d.train.times[0].cpu(), d.train.values[0, :, i].cpu(), "o", color="tab:orange", ms=4,
                            label="training observations")
                marker = "" if isinstance(self.model, NeuralODE) else "."
                ax.plot(model_t, pred[col, :, i], marker=marker, color="tab:blue", lw=1.4, ls="--",
                        label=self.model_name)
                ax.set_ylabel(names[i])
            axes[0][col].set_title(f"{title} y(0) = ({', '.join(f'{v:.2f}' for v in y0[col].tolist())})", fontsize=10)
            axes[-1][col].set_xlabel("t  (shaded: extrapolation, never trained on)")
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="lower center", ncol=len(labels), fontsize=9, frameon=False)
        fig.suptitle(f"{self.title()} - time series", fontsize=12)
        fig.tight_layout(rect=(0, 0.05, 1, 1))
        fig.savefig(path, dpi=100)
        return path

    def _plot_phase_portrait(self, path: Path) -> Path:
        """The true and the learned vector field (stream plots) with the trajectories from the training initial
        conditions, and the field error |f_learned - f_true|; the RNNs, which have no field, show trajectories."""
        d = self.data
        states = d.grid_truth.reshape(-1, d.grid_truth.shape[-1]).cpu()
        low, high = states.min(0).values, states.max(0).values
        margin = 0.1 * (high - low)
        xs, ys = (torch.linspace(float(low[i] - margin[i]), float(high[i] + margin[i]), self.cfg.figure_grid)
                  for i in range(2))
        xx, yy = torch.meshgrid(xs, ys, indexing="xy")
        points = torch.stack([xx, yy], -1).reshape(-1, 2)
        true_field = d.system.field(points).reshape(*xx.shape, 2)
        _, truth, _, pred = self._curves(d.train.y0[:3])
        has_field = hasattr(self.model, "vector_field")
        fig = Figure(figsize=(15 if has_field else 10, 4.8))
        axes = fig.subplots(1, 3 if has_field else 2)
        names = coordinate_names(d.system.name)
        stream(axes[0], xs, ys, true_field, "true vector field")
        for traj in truth:
            axes[0].plot(traj[:, 0], traj[:, 1], color="k", lw=1.2)
        if has_field:
            learned = self.model.vector_field(points.to(d.grid.device)).cpu().reshape(*xx.shape, 2)
            stream(axes[1], xs, ys, learned, f"learned vector field ({self.model_name})")
            error = (learned - true_field).norm(dim=-1)
            mesh = axes[2].pcolormesh(xs, ys, error, cmap="magma", shading="auto")
            fig.colorbar(mesh, ax=axes[2], label="|f_learned - f_true|")
            axes[2].plot(states[:, 0], states[:, 1], ".", color="c", ms=2, label="true states (grid)")
            axes[2].set_title("field error (cyan: where the data is)", fontsize=10)
        else:
            axes[1].set_title(f"{self.model_name}: no vector field, its trajectories", fontsize=10)
        for traj in pred:
            axes[1].plot(traj[:, 0], traj[:, 1], color="tab:blue", lw=1.2, ls="--")
        for ax in axes:
            ax.set_xlabel(names[0])
            ax.set_ylabel(names[1])
            ax.set_xlim(float(xs[0]), float(xs[-1]))
            ax.set_ylim(float(ys[0]), float(ys[-1]))
        fig.suptitle(f"{self.title()} - phase portrait\ntruth (black) and model (dashed blue) from {len(truth)} training "
                     "initial conditions, over the training and extrapolation span", fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        return path


def coordinate_names(system: str) -> tuple[str, str]:
    return ("prey x", "predator y") if system == "lotka_volterra" else ("y1", "y2")


def stream(ax: Any, xs: torch.Tensor, ys: torch.Tensor, field: torch.Tensor, title: str) -> None:
    """Stream plot of ``field`` [Y, X, 2] on the grid ``xs`` x ``ys``, coloured by speed."""
    speed = field.norm(dim=-1).numpy()
    ax.streamplot(xs.numpy(), ys.numpy(), field[..., 0].numpy(), field[..., 1].numpy(), color=np.log1p(speed),
                  cmap="viridis", density=1.1, linewidth=0.8, arrowsize=0.8)
    ax.set_title(title, fontsize=10)


LOSS_CURVES = (("train_loss", "training MSE (noisy observations)"), ("interp_mse", "interpolation MSE"),
               ("extrap_mse", "extrapolation MSE"), ("unseen_mse", "unseen initial conditions MSE"))


def plot_losses(path: Path, records: list[dict[str, Any]], title: str) -> Path:
    """Training and evaluation MSE per epoch (log scale) and the relative L2 errors."""
    fig = Figure(figsize=(11, 4))
    ax_mse, ax_rel = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in records]
    for ax, curves in ((ax_mse, LOSS_CURVES),
                       (ax_rel, [(f"rel_l2_{s}", f"relative L2, {s}") for s in ("train", "extrap", "unseen")]
                        + [("field_rel_l2", "vector field relative L2")])):
        for key, label in curves:
            points = [(e, r[key]) for e, r in zip(epochs, records) if isinstance(r.get(key), (int, float))]
            if points:
                ax.plot(*zip(*points), "o-", ms=3, label=label)
        ax.set_yscale("log")
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    ax_mse.set_ylabel("mean squared error")
    ax_rel.set_ylabel("||prediction - truth|| / ||truth||")
    fig.suptitle(f"{title} - learning curves", fontsize=12)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return path


def build_model(model_cfg: Any, data: DynamicsData, solver: SolverSpec,
                regularization: Regularization | None = None) -> nn.Module:
    scales = Scales.of(data.train.times, data.train.values)
    if isinstance(model_cfg, RNNModelConfig):
        return DynamicsRNN(scales, hidden=model_cfg.hidden, cell=model_cfg.cell, use_dt=model_cfg.use_dt,
                           time_unit=data.dt)
    field = VectorField(scales, hidden=model_cfg.hidden, hidden_layers=model_cfg.hidden_layers,
                        cubic_feature=model_cfg.cubic_feature)
    return NeuralODE(field, solver, regularization) if model_cfg.name == "node" else ResNetEuler(field, data.dt)


def build(cfg: DictConfig, device: torch.device, solver: SolverSpec) -> DynamicsTask:
    task, d, model_cfg = validate_config(cfg)
    regularization = regularization_from_config(
        cfg.get("regularize"), model_cfg.name, has_ode=model_cfg.name == "node",
        no_steer_reason="task=dynamics fits the state at every observation time, so no end time is free")
    data = generate_dynamics(SYSTEMS[d.name], t_end=d.t_end, n_points=d.n_points, extrapolate=d.extrapolate,
                             noise_std=d.noise_std, irregular=d.irregular, n_trajectories=d.n_trajectories,
                             n_test=d.n_test, ic_scale_min=d.ic_scale_min,
                             seed=int(cfg.seed if d.seed is None else d.seed)).to(device)
    model = build_model(model_cfg, data, solver, regularization).to(device)
    return DynamicsTask(data, model, model_name=model_cfg.name, task=task, window=d.window, batch_size=d.batch_size,
                        seed=int(cfg.seed))
