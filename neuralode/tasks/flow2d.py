"""What the two 2-D flow tasks (task=cnf, task=cnf_match) share: the flow from the config, the held-out
generator, Adam, chunked evaluation, the plot grid and the plot panels (matplotlib's object API)."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from neuralode.data import toy2d
from neuralode.errors import ConfigError
from neuralode.models.cnf import CNF, PlanarFlow, build_flow
from neuralode.models.odeblock import SolverSpec
from neuralode.models.regularization import regularization_from_config

HELD_OUT_SEED_OFFSET = 10_007  # held-out draws come from their own generator, never from the training stream


class Flow2DTask:
    """The common part of a 2-D flow task: checks the data kind, builds the flow, seeds the held-out draws."""

    data_kind: str  # "samples" (task=cnf) or "potential" (task=cnf_match)

    def __init__(self, cfg: Any, device: torch.device, solver: SolverSpec, task: str, valid: str) -> None:
        if cfg.data.get("kind") != self.data_kind:
            raise ConfigError(f"task={task} needs a 2-D {self.data_kind} data set ({valid}); "
                              f"data={cfg.data.name} is not one")
        self.cfg, self.device = cfg, device
        is_cnf = cfg.model.name == "cnf"
        regularization = regularization_from_config(cfg.get("regularize"), cfg.model.name, has_ode=is_cnf,
                                                    steer_end=float(cfg.model.t1) if is_cnf else None)
        self.model: CNF | PlanarFlow = build_flow(cfg.model, solver, regularization=regularization).to(device)
        self.held_out = torch.Generator().manual_seed(int(cfg.seed) + HELD_OUT_SEED_OFFSET)

    def configure_optimizers(self, epochs: int) -> tuple[torch.optim.Optimizer, None]:
        """Adam at a constant lr, whatever the run's length ``epochs``."""
        return torch.optim.Adam(self.model.parameters(), lr=float(self.cfg.task.lr),
                                weight_decay=float(self.cfg.task.get("weight_decay", 0.0))), None

    def plot_grid(self) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(half width, xx, yy, points)`` of the plot: task.grid_size squared points over data.plot_range."""
        half = float(self.cfg.data.plot_range)
        return (half, *toy2d.grid(int(self.cfg.task.grid_size), half))


def in_chunks(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, size: int) -> torch.Tensor:
    """Apply fn to rows of x in chunks (bounded memory for grid and test-set evaluations)."""
    return torch.cat([fn(x[i:i + size]) for i in range(0, x.shape[0], size)])


def density_panel(ax, xx: torch.Tensor, yy: torch.Tensor, density: torch.Tensor, title: str) -> None:
    ax.pcolormesh(xx.numpy(), yy.numpy(), density.reshape(xx.shape).numpy(), cmap="viridis", shading="auto")
    finish_panel(ax, float(xx.max()), title)


def finish_panel(ax, half_width: float, title: str) -> None:
    ax.set_xlim(-half_width, half_width)
    ax.set_ylim(-half_width, half_width)
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)


def samples_panel(ax, x: torch.Tensor, half_width: float, title: str) -> None:
    ax.hist2d(x[:, 0].numpy(), x[:, 1].numpy(), bins=80, range=[[-half_width, half_width]] * 2, cmap="viridis")
    finish_panel(ax, half_width, title)
