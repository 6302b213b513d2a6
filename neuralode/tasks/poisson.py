"""Paper Sec. 5.1, Fig. 7: a latent ODE whose state sets the rate of a Poisson process, on event sequences
with a known intensity (neuralode/data/poisson.py), against a constant-rate baseline.

Metrics: ``test_nll`` (nats per test sequence: the latent ODE's negative ELBO averaged over
``task.eval_samples`` draws of z0, an upper bound on its NLL; the baseline's exact NLL), ``true_nll`` (the
same sequences under the true intensity, for scale) and ``intensity_rmse`` (learned against true rate on a
dense grid over every test sequence, the latent ODE from its posterior mean).
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure
from torch import nn

from neuralode.data.poisson import PoissonData, generate_poisson
from neuralode.errors import ConfigError
from neuralode.models.odeblock import SolverSpec
from neuralode.models.poisson import ConstantRate, LatentODEPoisson
from neuralode.models.regularization import regularization_from_config
from neuralode.tasks.base import StepOutput

MODELS = ("latent_ode_poisson", "poisson_const")


class PoissonTask:
    def __init__(self, data: PoissonData, model: nn.Module, *, model_name: str, lr: float, batch_size: int,
                 eval_samples: int, grid_points: int, n_figure_sequences: int, seed: int) -> None:
        if batch_size < 1 or eval_samples < 1 or grid_points < 2 or n_figure_sequences < 1:
            raise ConfigError(f"task.batch_size, task.eval_samples and task.n_figure_sequences must be >= 1 and "
                              f"task.grid_points >= 2; got {batch_size}, {eval_samples}, {n_figure_sequences}, "
                              f"{grid_points}")
        self.data, self.model, self.model_name = data, model, model_name
        self.lr, self.batch_size, self.eval_samples = lr, min(batch_size, len(data.train)), eval_samples
        self.n_figure_sequences, self.seed = n_figure_sequences, seed
        self.grid = torch.linspace(0.0, data.t_end, grid_points, device=data.test.times.device)
        self.true_test_nll = float(data.true_nll(data.test).mean())

    def train_batches(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = torch.randperm(len(self.data.train), generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        for start in range(0, len(order), self.batch_size):
            rows = self.data.train.rows(order[start:start + self.batch_size].to(self.data.train.times.device))
            yield rows.times, rows.mask

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> StepOutput:
        times, mask = batch
        loss, metrics = self.model.loss(times, mask)
        return StepOutput(loss=loss, batch_size=times.shape[0], metrics=metrics)

    def _eval_generator(self) -> torch.Generator:
        return torch.Generator().manual_seed(self.seed + 1)  # the same draws at every evaluation

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        test = self.data.test
        if isinstance(self.model, LatentODEPoisson):
            nll = self.model.negative_elbo(test.times, test.mask, self.eval_samples, self._eval_generator())
        else:
            nll = self.model.nll(test.times, test.mask)
        learned = self.model.intensity_at(test.times, test.mask, self.grid)
        truth = self.data.true_intensity(test, self.grid)
        return {"test_nll": float(nll.mean()), "true_nll": self.true_test_nll,
                "intensity_rmse": float((learned - truth).pow(2).mean().sqrt())}

    def configure_optimizers(self, epochs: int) -> tuple[torch.optim.Optimizer, None]:
        """Adam at a constant lr, whatever the run's length ``epochs``."""
        return torch.optim.Adam(self.model.parameters(), lr=self.lr), None

    @torch.no_grad()
    def save_figures(self, out_dir: Path) -> list[Path]:
        """Fig. 7: a few test sequences' events (dots), true intensity, and the learned one (for the latent ODE,
        from the posterior mean, with thin lines for three posterior samples)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        self.model.eval()
        rows = torch.arange(min(self.n_figure_sequences, len(self.data.test)), device=self.grid.device)
        test = self.data.test.rows(rows)
        truth = self.data.true_intensity(test, self.grid).cpu()
        learned = self.model.intensity_at(test.times, test.mask, self.grid).cpu()
        samples = []
        if isinstance(self.model, LatentODEPoisson):
            z0s = self.model.posterior_samples(test.times, test.mask, 3, self._eval_generator())
            samples = [self.model.intensity_at(test.times, test.mask, self.grid, z0=z0).cpu() for z0 in z0s]
        grid = self.grid.cpu()
        fig = Figure(figsize=(8, 2.4 * len(rows)))
        axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
        for i, ax in enumerate(axes):
            events = test.times[i][test.mask[i]].cpu()
            for k, sample in enumerate(samples):
                ax.plot(grid, sample[i], color="tab:orange", lw=0.7, alpha=0.6, label="posterior samples" if k == 0 else None)
            ax.plot(grid, truth[i], color="k", lw=1.5, label="true intensity")
            ax.plot(grid, learned[i], color="tab:blue", lw=1.8, label=f"learned ({self.model_name})")
            ax.plot(events, torch.zeros_like(events), "|", color="tab:red", ms=12, mew=1.5, label=f"events ({len(events)})")
            ax.set_ylabel("rate")
            ax.set_ylim(bottom=-0.05 * float(max(truth[i].max(), learned[i].max())))
            ax.legend(fontsize=7, loc="upper right", ncol=2)
        axes[-1].set_xlabel("t")
        fig.suptitle(f"Poisson process: {self.model_name}, {len(rows)} test sequences", fontsize=11)
        fig.tight_layout()
        path = out_dir / f"poisson_{self.model_name}.png"
        fig.savefig(path, dpi=100)
        return [path]


def build(cfg: Any, device: torch.device, solver: SolverSpec) -> PoissonTask:
    d, m, tk = cfg.data, cfg.model, cfg.task
    if d.get("name") != "poisson":
        raise ConfigError(f"task=poisson needs data=poisson (event sequences generated in code), got data={d.get('name')}")
    if m.get("name") not in MODELS:
        raise ConfigError(f"task=poisson does not support model={m.get('name')!r}; choose one of: {', '.join(MODELS)}")
    regularization = regularization_from_config(
        cfg.get("regularize"), str(m.name), has_ode=m.name == "latent_ode_poisson",
        no_steer_reason="task=poisson reads the latent state at every event time and the compensator at T")
    seed = int(cfg.seed if d.get("seed") is None else d.seed)
    data = generate_poisson(int(d.n_sequences), float(d.test_fraction), float(d.t_end),
                            (float(d.weight[0]), float(d.weight[1])), float(d.bias), float(d.omega), seed).to(device)
    if m.name == "poisson_const":
        n_events = float(data.train.mask.sum()) / len(data.train)
        model: nn.Module = ConstantRate(data.t_end, init_rate=max(n_events / data.t_end, 1e-3))
    else:
        model = LatentODEPoisson(solver, t_end=data.t_end, latent_dim=int(m.latent_dim), rec_hidden=int(m.rec_hidden),
                                 ode_hidden=int(m.ode_hidden), intensity_hidden=int(m.intensity_hidden),
                                 regularization=regularization)
    return PoissonTask(data, model.to(device), model_name=str(m.name), lr=float(tk.lr), batch_size=int(tk.batch_size),
                       eval_samples=int(tk.eval_samples), grid_points=int(tk.grid_points),
                       n_figure_sequences=int(tk.n_figure_sequences), seed=int(cfg.seed))
