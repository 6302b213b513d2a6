"""An ``nn.Module`` that integrates a dynamics module with the configured solver and counts its work."""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neuralode.models.regularization import Regularization, RegularizedDynamics, rademacher_like
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
    def from_config(cls, solver_cfg: Mapping[str, Any], default_tol: float | None) -> "SolverSpec":
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
        if solver_cfg.get("per_sample"):
            options["per_sample"] = True
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

    ``regularization`` (neuralode/models/regularization.py) acts only while the block trains with gradients
    recorded: the kinetic and Jacobian integrals of each solve are added into ``self.penalties`` (the mean over
    the batch, unweighted), which the trainer takes after each step with :func:`take_penalties`; STEER draws the
    end time of the block's own span (``t`` left out); a caller solving over its own span asks
    :meth:`end_time` for it.
    """

    def __init__(self, func: nn.Module, solver: SolverSpec, t: torch.Tensor | None = None,
                 regularization: Regularization | None = None) -> None:
        super().__init__()
        self.func = func
        self.solver = solver
        self.regularization = regularization or Regularization()
        self.register_buffer("default_t", torch.tensor([0.0, 1.0]) if t is None else t.clone(), persistent=False)
        self.stats = SolveStats()
        self.penalties: dict[str, torch.Tensor] = {}

    def use_solver(self, *, method: str | None = None, rtol: float | None = None, atol: float | None = None,
                   adjoint: bool | None = None, options: Mapping[str, Any] | None = None,
                   adjoint_options: Mapping[str, Any] | None = None) -> None:
        """Solve with these changes to the block's solver from now on; None keeps a setting. For re-solving a
        trained model at another tolerance, method or gradient. ``options`` and ``adjoint_options`` replace the
        current ones whole: a method's options may mean nothing to another."""
        changes: dict[str, Any] = {"method": method, "rtol": rtol, "atol": atol, "adjoint": adjoint}
        if options is not None:
            changes["options"] = dict(options)
        if adjoint_options is not None:
            changes["adjoint_options"] = dict(adjoint_options)
        self.solver = dataclasses.replace(self.solver, **{k: v for k, v in changes.items() if v is not None})

    def regularizing(self) -> bool:
        """Whether this call trains (module in training mode, gradients recorded) with a regulariser on."""
        return self.regularization.active and self.training and torch.is_grad_enabled()

    def end_time(self, nominal: float) -> float:
        """STEER: a draw from U[T - b, T + b] (T = ``nominal``, b = ``regularization.steer``) while training, else
        ``nominal``. The draw comes from torch's global RNG, which the trainer seeds and checkpoints, so a resumed
        run draws the same end times."""
        b = self.regularization.steer
        if b <= 0 or not self.regularizing():
            return nominal
        return nominal + b * (2 * torch.rand(()).item() - 1)

    def forward(self, y0: Any, t: torch.Tensor | None = None, *, last_only: bool = True) -> Any:
        own_span = t is None
        t = self.default_t if t is None else t
        t = t.to(device=_first_tensor(y0).device, dtype=_first_tensor(y0).dtype)
        if own_span and self.regularization.steer > 0 and self.regularizing():
            t = torch.cat([t[:-1], t.new_tensor([self.end_time(float(t[-1]))])])
        if self.regularizing() and self.regularization.integrals:
            ys = self._solve_regularized(y0, t)
        else:
            ys = self._solve(self.func, y0, t, self.solver.options)
        if not last_only:
            return ys
        return tuple(y[-1] for y in ys) if isinstance(ys, tuple) else ys[-1]

    def _solve(self, func: nn.Module, y0: Any, t: torch.Tensor, options: dict[str, Any]) -> Any:
        s = self.solver
        if s.adjoint:
            return odeint_adjoint(func, y0, t, rtol=s.rtol, atol=s.atol, method=s.method, options=options,
                                  adjoint_options=s.backward_options(), stats=self.stats)
        return odeint(func, y0, t, rtol=s.rtol, atol=s.atol, method=s.method, options=options, stats=self.stats)

    def _solve_regularized(self, y0: Any, t: torch.Tensor) -> Any:
        """The solve with the integrals as one more part of the state; records their batch means."""
        integrals = self.regularization.integrals
        is_tuple = isinstance(y0, tuple)
        z0 = _first_tensor(y0)
        probe = rademacher_like(z0) if "jacobian" in integrals else None  # once per solve
        dynamics = RegularizedDynamics(self.func, integrals, is_tuple, probe)
        options = dict(self.solver.options)
        if "norm" in SOLVERS[self.solver.method].valid_options:
            options["norm"] = dynamics.state_norm
        parts = y0 if is_tuple else (y0,)
        ys = self._solve(dynamics, (*parts, z0.new_zeros(z0.shape[0], len(integrals))), t, options)
        for name, value in zip(integrals, ys[-1][-1].mean(0)):
            self.penalties[name] = self.penalties[name] + value if name in self.penalties else value
        return tuple(ys[:-1]) if is_tuple else ys[0]


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


def take_penalties(model: nn.Module) -> tuple[torch.Tensor | None, dict[str, float]]:
    """What the regularisers add to the loss since the last call, over the solves of every ODE block in ``model``:
    the sum of ``regularize.<name>`` x value (None when no regulariser acted), and each one's value, unweighted,
    as ``reg_<name>``. Empties the blocks' records."""
    total: torch.Tensor | None = None
    values: dict[str, float] = {}
    for block in (m for m in model.modules() if isinstance(m, ODEBlock)):
        for name, value in block.penalties.items():
            weighted = getattr(block.regularization, name) * value
            total = weighted if total is None else total + weighted
            values[f"reg_{name}"] = values.get(f"reg_{name}", 0.0) + value.item()
        block.penalties = {}
    return total, values
