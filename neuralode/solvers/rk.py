"""One explicit Runge-Kutta stepper driven by a Butcher tableau, in a fixed-grid and an adaptive loop.

Both loops work on a flat state vector ``y`` of shape ``(N,)`` and a dynamics ``f(t, y) -> (N,)`` (the
public API flattens tensors and tuples into that form). The stage derivatives of a step live in one
``(stages, N)`` buffer and every linear combination of them is a single matrix-vector product.

Host synchronisation: the fixed-grid loop never reads a device value, so it can be captured in a CUDA
graph. The adaptive loop reads exactly one scalar per attempted step: the error ratio, which decides
accept/reject; step sizes and times are then tracked on the host.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from neuralode.solvers.controller import PIController, initial_step
from neuralode.solvers.norms import Norm
from neuralode.solvers.tableaus import ButcherTableau

Dynamics = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Finite so that a too-tight tolerance fails with a message instead of running for hours.
# Consecutive rejections for non-finite values before giving up (dfactor**40 is far below any useful h).
_MAX_NONFINITE_REJECTS = 40


class MaxNumStepsError(RuntimeError):
    """The adaptive solver needed more than ``max_num_steps`` steps."""


class NonFiniteError(FloatingPointError):
    """The dynamics produced inf/nan that shrinking the step did not cure."""


@dataclass
class Counter:
    """Host-side work counters of one solve (counting calls costs no device sync)."""

    nfe: int = 0
    accepted: int = 0
    rejected: int = 0
    # The step size the controller proposed last (adaptive solves): a good first step for a solve that
    # continues from here, e.g. the adjoint's next backward interval, instead of a fresh estimate.
    next_step: float | None = None


def _stages(a_rows: list[torch.Tensor], f: Dynamics, stage_t, y: torch.Tensor, h: float | torch.Tensor,
            f0: torch.Tensor) -> torch.Tensor:
    """Stage derivatives ``K`` of one step, shape ``(stages, N)``; ``K[0] = f0 = f(stage_t[0], y)``."""
    k = y.new_empty((len(a_rows) + 1,) + y.shape)
    k[0] = f0
    for i, row in enumerate(a_rows, start=1):
        # One fused y + h * (K[:i]^T a_i) when h is a host number; a device h needs a separate multiply.
        yi = torch.addmv(y, k[:i].T, row, alpha=h) if isinstance(h, float) else y + h * (row @ k[:i])
        k[i] = f(stage_t[i], yi)
    return k


class FixedGridRK:
    """Fixed step on the grid ``t`` or, with ``options=dict(step_size=h)``, on a uniform grid from ``t[0]``
    to ``t[-1]`` (the last step shortened), outputs linearly interpolated as in torchdiffeq."""

    adaptive = False
    increasing_time_only = False
    valid_options = ("step_size",)

    def __init__(self, tableau: ButcherTableau) -> None:
        self.tableau = tableau
        self.name = tableau.name

    def solve(self, f: Dynamics, y0: torch.Tensor, t: torch.Tensor, t_host: list[float] | None, *,
              rtol: float, atol: float, norm: Norm, options: Mapping[str, Any], counter: Counter,
              time_sign: float = 1.0) -> torch.Tensor:
        tab = self.tableau
        co = tab.tensors(y0.dtype, y0.device)
        step_size = options.get("step_size")
        if step_size is None:
            grid, grid_host = t, None
        else:
            if t_host is None:
                raise ValueError("options['step_size'] needs the output times on the host; it cannot be used "
                                 "while capturing a CUDA graph (omit step_size to step on the grid t)")
            span = t_host[-1] - t_host[0]
            n = max(1, math.ceil(abs(span) / step_size))
            sign = 1.0 if span >= 0 else -1.0
            grid_host = [t_host[0] + sign * step_size * k for k in range(n)] + [t_host[-1]]
            steps = torch.arange(n, dtype=y0.dtype, device=y0.device) * (sign * step_size)
            grid = torch.cat([t[:1] + steps, t[-1:]])
        dts = grid[1:] - grid[:-1]
        # All stage times at once: the loop below only indexes device tensors, never reads them.
        stage_t = grid[:-1, None] + dts[:, None] * co["c"]
        states = [y0]
        y = y0
        for k in range(dts.shape[0]):
            dt = dts[k]
            kk = _stages(co["a_rows"], f, stage_t[k], y, dt, f(stage_t[k, 0], y))
            y = y + dt * (co["b"] @ kk)
            states.append(y)
        counter.accepted += dts.shape[0]
        ys = torch.stack(states)
        if grid_host is None:
            return ys
        # Linear interpolation of the grid states at the requested times (indices found on the host).
        last = len(grid_host) - 2
        idx = [min(last, max(0, _bracket(grid_host, tj))) for tj in t_host]
        idx_t = torch.tensor(idx, device=y0.device)
        w = ((t - grid[idx_t]) / dts[idx_t]).unsqueeze(-1)
        return ys[idx_t] + w * (ys[idx_t + 1] - ys[idx_t])


def _bracket(grid: list[float], x: float) -> int:
    """Index k of the grid interval [grid[k], grid[k+1]] holding x (grid monotone either way)."""
    sign = 1.0 if grid[-1] >= grid[0] else -1.0
    lo, hi = 0, len(grid) - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if sign * (grid[mid] - x) <= 0:
            lo = mid
        else:
            hi = mid
    return lo


class AdaptiveRK:
    """Embedded RK pair with a PI step-size controller and dense output at the requested times.

    ``t`` must be increasing here (odeint maps decreasing time onto increasing time).
    """

    adaptive = True
    increasing_time_only = True
    valid_options = ("first_step", "safety", "ifactor", "dfactor", "min_step", "max_step",
                     "max_num_steps", "norm")

    def __init__(self, tableau: ButcherTableau) -> None:
        self.tableau = tableau
        self.name = tableau.name

    def solve(self, f: Dynamics, y0: torch.Tensor, t: torch.Tensor, t_host: list[float], *,
              rtol: float, atol: float, norm: Norm, options: Mapping[str, Any], counter: Counter,
              time_sign: float = 1.0) -> torch.Tensor:
        tab = self.tableau
        co = tab.tensors(y0.dtype, y0.device)
        n_out = len(t_host)
        blocks = [y0[None]]
        if n_out == 1:
            return blocks[0]
        ctrl = PIController(tab.error_order, float(options.get("safety", 0.9)), float(options.get("ifactor", 10.0)),
                            float(options.get("dfactor", 0.2)), float(options.get("min_step", 0.0)),
                            float(options.get("max_step", math.inf)))
        # No cap unless asked (torchdiffeq has none either); the training runner sets one (RUNNER_MAX_NUM_STEPS).
        max_steps = options.get("max_num_steps") or math.inf
        user_t = lambda s: time_sign * s  # noqa: E731  (times in messages are the caller's times)

        tn, tn_host, y = t[0], t_host[0], y0
        f0 = f(tn, y)
        if options.get("first_step") is not None:
            h = float(options["first_step"])
        else:
            with torch.no_grad():
                h = float(initial_step(f, tn.detach(), y.detach(), f0.detach(), tab.error_order, rtol, atol, norm))
            if not math.isfinite(h):
                if not bool(torch.isfinite(f0).all()):
                    raise NonFiniteError(f"the ODE function returned non-finite values at t={user_t(tn_host):.6g} "
                                         "(initial state); check the dynamics and y0")
                # Only the probe step beyond t0 overflowed: start small and let rejection shrink further.
                h = 1e-3 * (t_host[-1] - t_host[0])
        h = min(ctrl.max_step, max(ctrl.min_step, h))

        land = tab.interpolation == "land"
        next_out, attempts, bad = 1, 0, 0
        while next_out < n_out:
            target = next_out if land else n_out - 1
            remaining = t_host[target] - tn_host
            attempts += 1
            if attempts > max_steps:
                raise MaxNumStepsError(
                    f"max_num_steps={max_steps} exceeded: method {tab.name!r} reached t={user_t(tn_host):.6g} of "
                    f"[{user_t(t_host[0]):.6g}, {user_t(t_host[-1]):.6g}]; loosen rtol/atol, raise "
                    "options['max_num_steps'], or use a fixed-step method (e.g. method='rk4', "
                    "options=dict(step_size=...))")
            # Stretch by up to 1% rather than leave a sliver of a step (as Hairer's codes do).
            lands = 1.01 * h >= remaining
            if lands:
                # Differentiable in the target time, so gradients w.r.t. t reach outputs we land on.
                h_step, h_dev, t_new, t_new_host = remaining, t[target] - tn, t[target], t_host[target]
            else:
                # Two steps are needed to land either way: make them equal rather than a full step and a
                # sliver. The full step is the one likeliest to be rejected (6 wasted NFE on the ODE-Net).
                h_step = h_dev = remaining / 2 if remaining < 2 * h else h
                t_new, t_new_host = tn + h_step, tn_host + h_step
                if t_new_host == tn_host:
                    raise NonFiniteError(f"step size underflow at t={user_t(tn_host):.6g} (h={h:.3g}); "
                                         "the problem may be stiff or the dynamics non-finite")
            # All stage times in one kernel (not one per stage): on a GPU the launches add up.
            k = _stages(co["a_rows"], f, tn + co["c"] * h_dev, y, h_dev, f0)
            comb = co["b_and_error"] @ k  # (2 or 3, N): solution and error combinations in one product
            y1 = y + h_dev * comb[0]
            with torch.no_grad():  # step control is not differentiated
                scale = torch.maximum(y.abs(), y1.abs()).mul_(rtol).add_(atol)
                err = norm(comb[1].mul(h_dev).div_(scale))
                if comb.shape[0] == 3:  # DOP853: e^2 / sqrt(e^2 + 0.01 e3^2)
                    err3 = norm(comb[2].mul(h_dev).div_(scale))
                    err = err * err / torch.sqrt(err * err + 0.01 * err3 * err3).clamp_min(torch.finfo(err.dtype).tiny)
                ratio = float(err)  # the one host sync of this step
            # A step already at min_step is taken whatever its error, as torchdiffeq does: rejecting it again
            # could only repeat it.
            accepted = ratio <= 1.0 or (ctrl.min_step > 0 and h_step <= ctrl.min_step and math.isfinite(ratio))
            h_next = ctrl.next_step(h_step, ratio, accepted)
            if not accepted:
                counter.rejected += 1
                bad = bad + 1 if not math.isfinite(ratio) else 0
                if bad > _MAX_NONFINITE_REJECTS:
                    raise NonFiniteError(
                        f"the ODE function returned non-finite values near t={user_t(tn_host):.6g} and shrinking "
                        f"the step to {h_step:.3g} did not help; check the dynamics for overflow")
                h = h_next
                continue
            counter.accepted += 1
            bad = 0
            f1 = k[-1] if tab.fsal else f(t_new, y1)
            if land:
                if lands:
                    blocks.append(y1[None])
                    next_out += 1
            else:
                j = next_out
                while j < n_out and t_host[j] < t_new_host:
                    j += 1
                if j > next_out:
                    blocks.append(self._interpolate(co, t[next_out:j], tn, h_dev, y, y1, f0, f1, k))
                if lands:  # the final output time itself: take the step's end point exactly
                    blocks.append(y1[None])
                    j = n_out
                next_out = j
            # Keep the proposed step after a step shortened to land on a time: landing says nothing bad.
            h = max(h_next, h) if lands else h_next
            tn, tn_host, y, f0 = t_new, t_new_host, y1, f1
        counter.next_step = h
        return torch.cat(blocks)

    def _interpolate(self, co: dict, t_out: torch.Tensor, t0: torch.Tensor, h: float | torch.Tensor,
                     y0: torch.Tensor, y1: torch.Tensor, f0: torch.Tensor, f1: torch.Tensor,
                     k: torch.Tensor) -> torch.Tensor:
        """States at ``t_out`` (inside the step just taken), shape ``(len(t_out), N)``."""
        theta = (t_out - t0) / h
        if self.tableau.interpolation == "polynomial":
            dense = co["dense"]  # (stages, degree): b_i(theta) = sum_j dense[i, j] theta^(j+1)
            powers = torch.stack([theta ** (j + 1) for j in range(dense.shape[1])])  # (degree, m)
            return y0 + h * (dense @ powers).T @ k
        # Cubic Hermite through (y0, f0) and (y1, f1).
        t2, t3 = theta * theta, theta * theta * theta
        coef = torch.stack([3 * t2 - 2 * t3, (t3 - 2 * t2 + theta) * h, (t3 - t2) * h], dim=1)  # (m, 3)
        return y0 + coef @ torch.stack([y1 - y0, f0, f1])
