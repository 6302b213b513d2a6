"""task=cnf_match (paper Fig. 4): fit a flow to an unnormalised 2-D target p ∝ exp(-U) by minimising
KL(q || p) = E_{z0~N(0,I)}[log q(x) + U(x)] + log Z, x = flow(z0).

log Z is computed once by quadrature on a grid (cheap in 2-D), so the logged loss and ``kl`` are estimates
of the true KL, not of KL - log Z; the constant does not change the gradients.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from neuralode.data import toy2d
from neuralode.models.odeblock import SolverSpec
from neuralode.tasks.base import StepOutput
from neuralode.tasks.flow2d import Flow2DTask, density_panel, finish_panel

BASE_MESH_HALF_WIDTH = 3.5  # base-space mesh pushed through the flow for the learned-density plot (>99.9% mass)


class CNFMatchTask(Flow2DTask):
    """Density matching: train a flow's samples to follow an unnormalised target potential."""

    data_kind = "potential"

    def __init__(self, cfg: Any, device: torch.device, solver: SolverSpec) -> None:
        super().__init__(cfg, device, solver, "cnf_match", f"one of: {', '.join(toy2d.POTENTIALS)}")
        self.potential = toy2d.potential(cfg.data.name)
        self.log_z = toy2d.log_normaliser(self.potential)
        self.eval_z0 = torch.randn(int(cfg.task.eval_samples), 2, generator=self.held_out).to(device)

    def kl_terms(self, z0: torch.Tensor, exact: bool = False) -> torch.Tensor:
        """Per-sample log q(x) - log p(x) for x = flow(z0)."""
        x, logq = self.model.sample(z0, exact=exact)
        return logq + self.potential(x) + self.log_z

    def train_batches(self, epoch: int) -> Iterator[torch.Tensor]:
        for _ in range(int(self.cfg.task.iters_per_epoch)):
            yield torch.randn(int(self.cfg.task.batch_size), 2, device=self.device)

    def training_step(self, batch: torch.Tensor) -> StepOutput:
        return StepOutput(loss=self.kl_terms(batch).mean(), batch_size=batch.shape[0])

    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        return {"kl": float(self.kl_terms(self.eval_z0, exact=True).mean())}

    @torch.no_grad()
    def save_figures(self, out_dir: Path) -> list[Path]:
        out_dir.mkdir(parents=True, exist_ok=True)
        half, xx, yy, pts = self.plot_grid()
        n = xx.shape[0]
        fig = Figure(figsize=(9.6, 3.4), dpi=100)
        ax_target, ax_learned, ax_samples = fig.subplots(1, 3)
        density_panel(ax_target, xx, yy, torch.exp(-self.potential(pts) - self.log_z), f"target: {self.cfg.data.name}")
        # The learned density is exact at images of base points, so draw it on the pushed-forward base mesh
        # (a flow is a homeomorphism: the mesh stays a valid, non-overlapping quadrilateral mesh).
        _, _, base = toy2d.grid(n, BASE_MESH_HALF_WIDTH)
        x, logq = self.model.sample(base.to(self.device), exact=True)
        x, q = x.cpu().reshape(n, n, 2), logq.exp().cpu().reshape(n, n)
        ax_learned.set_facecolor("#440154")  # viridis at 0: where the mesh does not reach, q is ~0
        ax_learned.pcolormesh(x[..., 0].numpy(), x[..., 1].numpy(), q.numpy(), cmap="viridis", shading="gouraud")
        kl = self.evaluate()["kl"]
        finish_panel(ax_learned, half, f"{self.label()}: KL {kl:.3f}")
        samples, _ = self.model.sample(self.eval_z0, exact=True)
        samples = samples.cpu()
        ax_samples.hist2d(samples[:, 0].numpy(), samples[:, 1].numpy(), bins=60, range=[[-half, half]] * 2,
                          cmap="viridis")
        finish_panel(ax_samples, half, "samples from q")
        fig.tight_layout()
        path = out_dir / "density.png"
        fig.savefig(path)
        return [path]

    def label(self) -> str:
        m = self.cfg.model
        return f"CNF M={m.width}" if m.name == "cnf" else f"planar K={m.flows}"


def build(cfg: Any, device: torch.device, solver: SolverSpec) -> CNFMatchTask:
    return CNFMatchTask(cfg, device, solver)
