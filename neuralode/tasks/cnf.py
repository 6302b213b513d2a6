"""task=cnf (paper Fig. 5): fit a 2-D density to samples by maximum likelihood with a CNF or a planar flow.

Data are drawn fresh from the sampler each iteration (an "epoch" is ``task.iters_per_epoch`` iterations);
``test_nll`` is the mean negative log-likelihood (nats per sample) of a fixed held-out sample.
With ``model=planar`` the layers map data -> base so the likelihood is exact (see ``PlanarFlow``); that flow
cannot be sampled in closed form, so its run draws no sample snapshots.
"""
from __future__ import annotations

from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from neuralode.data import toy2d
from neuralode.models.cnf import CNF
from neuralode.models.odeblock import SolverSpec
from neuralode.tasks.base import StepOutput
from neuralode.tasks.flow2d import Flow2DTask, density_panel, finish_panel, in_chunks, samples_panel


class CNFTask(Flow2DTask):
    """Maximum likelihood on samples from a 2-D toy distribution."""

    data_kind = "samples"

    def __init__(self, cfg: Any, device: torch.device, solver: SolverSpec) -> None:
        super().__init__(cfg, device, solver, "cnf", f"one of: {', '.join(toy2d.SAMPLERS)}")
        self.sampler = partial(toy2d.sampler(cfg.data.name), **dict(cfg.data.get("params") or {}))
        self.test_x = self.sampler(int(cfg.task.test_size), self.held_out).to(device)
        self.base_snapshot = torch.randn(int(cfg.task.snapshot_samples), 2, generator=self.held_out).to(device)

    def train_batches(self, epoch: int) -> Iterator[torch.Tensor]:
        for _ in range(int(self.cfg.task.iters_per_epoch)):
            yield self.sampler(int(self.cfg.task.batch_size), None).to(self.device)

    def training_step(self, batch: torch.Tensor) -> StepOutput:
        loss = -self.model.log_prob(batch).mean()
        return StepOutput(loss=loss, batch_size=batch.shape[0])

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        # Exact trace for the metric even when training uses Hutchinson: in 2-D it is cheap and noise-free.
        logp = in_chunks(partial(self.model.log_prob, exact=True), self.test_x, int(self.cfg.task.eval_chunk))
        return {"test_nll": float(-logp.mean())}

    @torch.no_grad()
    def save_figures(self, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        half, xx, yy, pts = self.plot_grid()
        pts = pts.to(self.device)
        chunk = int(self.cfg.task.eval_chunk)
        paths = [out_dir / "density.png"]
        fig = Figure(figsize=(6.4, 3.4), dpi=100)
        ax1, ax2 = fig.subplots(1, 2)
        samples_panel(ax1, self.test_x.cpu(), half, f"data: {self.cfg.data.name}")
        logp = in_chunks(partial(self.model.log_prob, exact=True), pts, chunk).cpu()
        nll = self.evaluate()["test_nll"]
        density_panel(ax2, xx, yy, logp.exp(), f"{self.cfg.model.name}: test NLL {nll:.3f}")
        fig.tight_layout()
        fig.savefig(paths[0])
        if isinstance(self.model, CNF):
            paths.append(self._snapshots(out_dir / "snapshots.png", xx, yy, pts, chunk))
        return paths

    def _snapshots(self, path: Path, xx: torch.Tensor, yy: torch.Tensor, pts: torch.Tensor, chunk: int) -> Path:
        """Fig. 5's rows: the density p_t and base samples pushed to t at 5/20/40/60/80/100% of the flow time."""
        fractions = [float(f) for f in self.cfg.task.snapshot_fractions]
        xs, _ = self.model.trajectory(self.base_snapshot, fractions, exact=True)
        half = float(self.cfg.data.plot_range)
        fig = Figure(figsize=(1.8 * len(fractions), 3.8), dpi=100)
        axes = fig.subplots(2, len(fractions), squeeze=False)
        colour = self.base_snapshot[:, 0].cpu().numpy()  # base coordinate, to follow points through the flow
        for j, frac in enumerate(fractions):
            t = frac * self.model.t1
            logp = in_chunks(partial(self.model.log_prob, t=t, exact=True), pts, chunk).cpu()
            density_panel(axes[0, j], xx, yy, logp.exp(), f"density, {frac:.0%} of T")
            axes[1, j].scatter(xs[j, :, 0].cpu().numpy(), xs[j, :, 1].cpu().numpy(), s=1, alpha=0.6,
                               c=colour, cmap="coolwarm")
            finish_panel(axes[1, j], half, f"samples, {frac:.0%} of T")
        fig.tight_layout()
        fig.savefig(path)
        return path


def build(cfg: Any, device: torch.device, solver: SolverSpec) -> CNFTask:
    return CNFTask(cfg, device, solver)
