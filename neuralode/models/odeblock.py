"""An ``nn.Module`` that integrates a dynamics module with the configured solver and counts its work."""
from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuralode.solvers import SOLVERS, SolveStats, odeint, odeint_adjoint
from neuralode.solvers.adjoint import inherited_options

log = logging.getLogger(__name__)

# The runner's solver policy for the adaptive methods, where it departs from the public odeint's torchdiffeq
# defaults; it keeps the numerics every run so far was trained with, so that runs stay comparable. The config's
# solver.options override each entry.
# - A step cap over each whole solve (the public odeint has none; its max_num_steps counts per output interval):
#   dynamics a bad learning rate blew up end in one clear line instead of an epoch that never finishes.
RUNNER_MAX_STEPS_PER_SOLVE = 10_000
# - The PI controller: it took fewer evaluations than the public API's torchdiffeq-compatible default on the
#   ODE-Net adjoint step and the spiral latent ODE (docs/benchmarks.md, section 5).
RUNNER_CONTROLLER = "pi"
# - Time in the state's dtype (float32 promotes to it) rather than odeint's default float64.
RUNNER_TIME_DTYPE = "float32"
RUNNER_OPTIONS = {"max_steps_per_solve": RUNNER_MAX_STEPS_PER_SOLVE, "controller": RUNNER_CONTROLLER,
                  "dtype": RUNNER_TIME_DTYPE}


@dataclass
class SolverSpec:
    """What to integrate with: the resolved form of the ``solver`` config group."""

    method: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    adjoint: bool = True
    options: dict[str, Any] = field(default_factory=dict)
    adjoint_options: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_config(cls, solver_cfg: Mapping[str, Any], default_tol: float) -> "SolverSpec":
        """Resolve ``tol``/``rtol``/``atol``: ``tol`` (or the task's default) sets both, each may override.
        The adaptive methods get the runner's policy (``RUNNER_OPTIONS``, each where the method takes it) unless
        the options set it."""
        tol = solver_cfg.get("tol")
        tol = default_tol if tol is None else tol
        rtol = solver_cfg.get("rtol")
        atol = solver_cfg.get("atol")
        method = solver_cfg["method"]
        options = dict(solver_cfg.get("options") or {})
        if solver_cfg.get("compile"):
            options["compile"] = True
        valid = SOLVERS[method].valid_options if method in SOLVERS else ()
        for key, value in RUNNER_OPTIONS.items():
            if key in valid:
                options.setdefault(key, value)
        adjoint = bool(solver_cfg.get("adjoint", True))
        if not adjoint and method in SOLVERS and not SOLVERS[method].backpropagates:
            # e.g. solver=lsoda in a task that backpropagates through the solver: the adjoint is its only gradient.
            log.info("solver.method=%s cannot backpropagate through its steps: using the adjoint", method)
            adjoint = True
        return cls(
            method=method,
            rtol=float(tol if rtol is None else rtol),
            atol=float(tol if atol is None else atol),
            adjoint=adjoint,
            options=options,
            adjoint_options=dict(solver_cfg.get("adjoint_options") or {}),
        )

    def backward_options(self) -> dict[str, Any] | None:
        """The adjoint solve's options: the forward ones (less ``norm``) updated by ``adjoint_options``.

        odeint_adjoint drops the forward options once any adjoint option is given (torchdiffeq's rule);
        from a config, ``solver.adjoint_options.norm=seminorm`` should not also lose ``max_steps_per_solve``.
        """
        if not self.adjoint_options:
            return None
        return {**inherited_options(self.options), **self.adjoint_options}


class ODEBlock(nn.Module):
    """Solve ``dy/dt = func(t, y)`` from ``t[0]`` and return the states at ``t`` (or only the last).

    Every solve records its NFE and step counts in ``self.stats``; the trainer reads and resets them
    through :func:`collect_solve_stats` and :func:`reset_solve_stats`.
    """

    def __init__(self, func: nn.Module, solver: SolverSpec, t: torch.Tensor | None = None) -> None:
        super().__init__()
        self.func = func
        self.solver = solver
        self.register_buffer("default_t", torch.tensor([0.0, 1.0]) if t is None else t.clone(), persistent=False)
        self.stats = SolveStats()

    def forward(self, y0: Any, t: torch.Tensor | None = None, *, last_only: bool = True) -> Any:
        t = self.default_t if t is None else t
        t = t.to(device=_first_tensor(y0).device, dtype=_first_tensor(y0).dtype)
        s = self.solver
        if s.adjoint:
            ys = odeint_adjoint(self.func, y0, t, rtol=s.rtol, atol=s.atol, method=s.method, options=s.options,
                                adjoint_options=s.backward_options(), stats=self.stats)
        else:
            ys = odeint(self.func, y0, t, rtol=s.rtol, atol=s.atol, method=s.method, options=s.options,
                        stats=self.stats)
        if not last_only:
            return ys
        return tuple(y[-1] for y in ys) if isinstance(ys, tuple) else ys[-1]


def _first_tensor(y: Any) -> torch.Tensor:
    return y[0] if isinstance(y, tuple) else y


def solve_stats_of(model: nn.Module) -> list[SolveStats]:
    return [m.stats for m in model.modules() if isinstance(m, ODEBlock)]


def reset_solve_stats(model: nn.Module) -> None:
    for s in solve_stats_of(model):
        s.reset()


def collect_solve_stats(model: nn.Module) -> SolveStats:
    """Sum of the stats of every ODE block in ``model`` since their last reset."""
    total = SolveStats()
    for s in solve_stats_of(model):
        total.add(s)
    return total
