"""One implicit Runge-Kutta stepper on a fixed grid, driven by an :class:`ImplicitTableau`.

Each step solves the stage equations ``K_i = f(t0 + c_i h, y0 + h sum_j a_ij K_j)`` by Newton's method with the
exact Jacobian of ``f`` (reverse-mode autograd, all rows at once); diagonally implicit tableaus are solved stage
by stage (``N x N`` systems instead of one ``sN x sN`` system). The first guess of a step extrapolates the
stage derivatives of the steps before it (``s + 1`` points), so one or two iterations usually suffice; after a
step that needed many (a fast transient) the next one starts from ``K = 0`` instead. When ``f`` is opaque to
autograd (``odeint_adjoint``'s augmented dynamics), the Jacobian is taken as 0: the fixed-point iteration.

Gradients: the iterations run detached from the autograd graph, except the last one, whose Newton update
``K = K* - M^{-1} G(K*)`` (``M`` the detached Newton matrix, ``G`` the stage residual built with graph) is applied
with graph. Its value is one more Newton step; its derivative is the implicit-function-theorem derivative
``dK/dp = -(dG/dK)^{-1} dG/dp`` of the stage solution, so backpropagation costs one linear solve per step and
never differentiates through the iterations.

NFE convention: every call of ``f`` counts one. The Jacobian is the batched vector-Jacobian products of the
call that also gives the stage derivative, so it adds no call (backward passes are not NFE, as in torchdiffeq).
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from neuralode.solvers.common import Dynamics, warn_caller
from neuralode.solvers.grid import GRID_OPTIONS, FixedGridMethod, Grid, GridStepper, stage_times
from neuralode.solvers.implicit_tableaus import ImplicitTableau
from neuralode.solvers.problem import Problem

# Newton stops when the update of the stage states is below the first number, relative to 1 + |stage state|
# (torchdiffeq's implicit family stops at these residuals), or when the error left after applying the update,
# predicted from the quadratic convergence, is below the second; the update itself is always applied.
_NEWTON_TOL = {torch.float64: (1e-8, 1e-13), torch.float32: (1e-6, 1e-6)}
_DEFAULT_MAX_ITERS = 100  # torchdiffeq's default
_REMEASURE_AFTER = 8


class ImplicitRK(FixedGridMethod):
    """Fixed steps on the grid of explicit fixed-grid methods (``t``, ``step_size`` or ``grid_constructor``), with
    their ``perturb`` and output interpolation (``interp``: ``linear`` or ``cubic``). ``max_iters``: most Newton
    iterations per step (per stage of a diagonally implicit method); a step that does not converge keeps its last
    iterate and the solve warns, as torchdiffeq does."""

    valid_options = GRID_OPTIONS + ("max_iters",)

    def __init__(self, tableau: ImplicitTableau) -> None:
        self.tableau = tableau
        self.name = tableau.name

    def stepper(self, prob: Problem, f: Dynamics, y0: torch.Tensor, grid: Grid) -> GridStepper:
        if prob.t_host is None:
            raise ValueError(f"method {self.name!r} reads Newton's convergence on the host, so it cannot run inside "
                             "CUDA-graph capture; use an explicit method there")
        return _ImplicitStepper(self, f, y0, prob.options, grid)


class _ImplicitStepper(GridStepper):
    """The steps of an implicit tableau over a grid. The first guess of a step's stage derivatives extrapolates
    those of the steps before it (a step after a hard one starts from ``K = 0``)."""

    def __init__(self, method: ImplicitRK, f: Dynamics, y0: torch.Tensor, options: Mapping[str, Any],
                 grid: Grid) -> None:
        tab = self.tableau = method.tableau
        self.name = method.name
        self.newton = _Newton(f, tab.tensors(y0.dtype, y0.device), int(options.get("max_iters", _DEFAULT_MAX_ITERS)),
                              *_NEWTON_TOL.get(y0.dtype, _NEWTON_TOL[torch.float64]))
        perturb = bool(options.get("perturb", False))
        # The explicit fixed-grid methods' stage times (they use only the tableau's c).
        self.stage_t = stage_times(self.newton.co["c"], tab.c, grid.times[:-1], grid.times[1:], perturb,
                                   grid.direction)
        # Stiffly accurate with an explicit first stage: the last stage derivative is f(t1, y1), the next step's
        # first, unless perturb asks for f on the other side of t1.
        self.reuse_last = tab.explicit_first_stage and tab.stiffly_accurate and not perturb
        self.dts, self.host = grid.dts, grid.host
        self.f_last: torch.Tensor | None = None  # f(t1, y1) when the last stage derivative is it
        # (stage times on the host, stage derivatives) of the steps taken since the last hard one, newest last.
        self.history: list[tuple[list[float], torch.Tensor]] = []
        self.steps = 0

    def __call__(self, n: int, y: torch.Tensor) -> tuple[torch.Tensor, None]:
        tab, newton = self.tableau, self.newton
        self.steps += 1
        stage_times_host = [self.host[n] + ci * (self.host[n + 1] - self.host[n]) for ci in tab.c]
        # Extrapolate only from steps that converged easily (<= 3 iterations): after a fast transient the
        # extrapolated derivatives are wild and Newton can land on a spurious root of the stage equations.
        # Otherwise start from the stage states equal to y (K = 0).
        if newton.step_iterations > 3:
            self.history.clear()
        if self.history:
            guess = _extrapolate(self.history, stage_times_host, tab.stages + 1)
        else:
            guess = y.detach().new_zeros(tab.stages, y.shape[0])
        newton.step_iterations = 0
        k = self._stages(self.stage_t[n], self.dts[n], y, guess, self.f_last)
        self.history = self.history[-1:] + [(stage_times_host, k.detach())]
        self.f_last = k[-1] if self.reuse_last else None
        # No slope: cubic outputs evaluate f at the grid points (the stage derivatives need not hold it).
        return y + self.dts[n] * (newton.co["b"] @ k), None

    def finish(self) -> None:
        if self.newton.failures:
            warn_caller(f"method {self.name!r}: Newton's iteration did not converge within max_iters="
                        f"{self.newton.max_iters} on {self.newton.failures} of {self.steps} steps; the "
                        "solution may be inaccurate (use a smaller step_size or raise options['max_iters'])",
                        RuntimeWarning)

    def _stages(self, times: torch.Tensor, h: torch.Tensor, y: torch.Tensor, guess: torch.Tensor,
                f_first: torch.Tensor | None) -> torch.Tensor:
        """Stage derivatives of one step: stage by stage for a diagonally implicit tableau, else all at once."""
        if self.tableau.diagonally_implicit:
            return self._dirk_step(times, h, y, guess, f_first)
        return self.newton.solve(times, y, self.newton.co["a"], h, guess)

    def _dirk_step(self, times: torch.Tensor, h: torch.Tensor, y: torch.Tensor, guess: torch.Tensor,
                   f_first: torch.Tensor | None) -> torch.Tensor:
        """Stage derivatives of a diagonally implicit step, one stage after another."""
        newton = self.newton
        a = newton.co["a"]
        ks: list[torch.Tensor] = []
        for i, row in enumerate(self.tableau.a):
            base = y if i == 0 else y + h * (a[i, :i] @ torch.stack(ks))
            if row[i] == 0:
                ks.append(f_first if i == 0 and f_first is not None else newton.f(times[i], base))
                continue
            ks.append(newton.solve(times[i:i + 1], base, a[i:i + 1, i:i + 1], h, guess[i:i + 1])[0])
        return torch.stack(ks)


class _Newton:
    """Newton's method for ``K = F(base + h (a (x) I) K)`` on a block of ``m`` stages, ``K`` of shape ``(m, N)``."""

    def __init__(self, f: Dynamics, co: dict[str, torch.Tensor], max_iters: int, tol: float,
                 error_tol: float) -> None:
        self.f, self.co, self.max_iters, self.tol, self.error_tol = f, co, max_iters, tol, error_tol
        self.failures = 0
        self.functional = True  # Jacobians by torch.func, until f turns out to use autograd itself
        self.step_iterations = 0  # most iterations one solve of the current step took
        # Newton's quadratic convergence: the error left by an update is about rate * update^2. The largest rate
        # measured in this solve (from two consecutive iterations near the solution) predicts it, so a good guess
        # can stop after one iteration; the rate is measured again at least every _REMEASURE_AFTER solves.
        self.rate = math.inf
        self.since_measured = 0

    def solve(self, times: torch.Tensor, base: torch.Tensor, a: torch.Tensor, h: torch.Tensor,
              k: torch.Tensor) -> torch.Tensor:
        m, n = k.shape
        k = k.detach()
        h_const = h.detach()
        eye = torch.eye(m * n, dtype=k.dtype, device=k.device)
        previous = math.inf
        for iteration in range(1, self.max_iters + 1):
            self.step_iterations = max(self.step_iterations, iteration)
            stage_states = base + h * (a @ k)
            values, jacobians = zip(*(self._value_and_jacobian(times[i], stage_states[i]) for i in range(m)))
            residual = k - torch.stack(values)
            # Newton matrix dG/dK: block (i, j) = delta_ij I - h a_ij J_i.
            blocks = a[:, :, None, None] * torch.stack(jacobians)[:, None]
            newton_matrix = eye - h_const * blocks.permute(0, 2, 1, 3).reshape(m * n, m * n)
            update = torch.linalg.solve(newton_matrix, -residual.reshape(-1)).reshape(m, n)
            with torch.no_grad():
                size = float((h_const * (a @ update)).abs().max())
                scale = 1.0 + float(stage_states.abs().max())
            if previous <= math.sqrt(self.tol) * scale:
                # Rounding only inflates the measured update (the safe side); the floor guards against an exact 0.
                measured = max(size, torch.finfo(k.dtype).eps * scale) / previous ** 2
                self.rate = measured if math.isinf(self.rate) else max(self.rate, measured)
                self.since_measured = 0
            predicted = (iteration == 1 and self.since_measured < _REMEASURE_AFTER
                         and self.rate * size * size <= self.error_tol * scale)
            if predicted:
                self.since_measured += 1
            if predicted or size <= self.tol * scale or (size >= previous and size <= math.sqrt(self.tol) * scale):
                # Converged (as measured, or as predicted for the update about to be applied), or at the rounding
                # floor (the update stopped shrinking while already tiny).
                return k + update
            if not math.isfinite(size):
                break
            previous = size
            k = (k + update).detach()
        self.failures += 1
        return k + update

    def _value_and_jacobian(self, t: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``f(t, y)`` (with the caller's graph) and its Jacobian ``df/dy`` (detached), from one call of ``f``."""
        rows = torch.eye(y.shape[0], dtype=y.dtype, device=y.device)
        if self.functional:
            try:
                value, pullback = torch.func.vjp(lambda state: self.f(t, state), y)
                return value, torch.vmap(pullback)(rows)[0].detach()
            except RuntimeError as err:  # f itself uses autograd (the adjoint's augmented dynamics)
                if "functorch" not in str(err):
                    raise
                self.functional = False
        keep_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            probe = y.detach().requires_grad_()
            value = self.f(t, probe)
            if not value.requires_grad:
                # f is opaque to autograd (odeint_adjoint's augmented dynamics detach their vector-Jacobian
                # products): with a zero Jacobian, Newton's iteration becomes the fixed-point iteration.
                return value, torch.zeros_like(rows)
            (jacobian,) = torch.autograd.grad(value, probe, rows, retain_graph=keep_graph, is_grads_batched=True,
                                              allow_unused=True, materialize_grads=True)
        if not keep_graph:
            return value.detach(), jacobian
        # The dependence on y, to first order (all the implicit-function derivative needs), rejoins the graph.
        return value + jacobian @ (y - y.detach()), jacobian


def _extrapolate(history: list[tuple[list[float], torch.Tensor]], targets: list[float], points: int) -> torch.Tensor:
    """First guess of a step's stage derivatives at the times ``targets``: the polynomial through the ``points``
    latest distinct (time, stage derivative) pairs of the previous steps (the derivative of the solution to
    ``O(h^points)``)."""
    nodes: list[float] = []
    rows: list[torch.Tensor] = []
    for times, ks in reversed(history):
        for time, k in zip(reversed(times), reversed(ks)):
            if len(nodes) < points and all(time != other for other in nodes):
                nodes.append(time)
                rows.append(k)
    span = max(nodes) - min(nodes) or 1.0  # scaled times keep the products well conditioned
    x = [v / span for v in nodes]
    weights = [[math.prod((target / span - x[m]) / (x[i] - x[m]) for m in range(len(x)) if m != i)
                for i in range(len(x))] for target in targets]
    values = torch.stack(rows)
    return torch.tensor(weights, dtype=values.dtype, device=values.device) @ values
