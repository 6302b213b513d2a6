"""``scipy_solver``: the solve runs on the host in one of SciPy's ``solve_ivp`` methods, as torchdiffeq's method
of that name (``options=dict(solver='LSODA' | 'RK45' | 'RK23' | 'DOP853' | 'Radau' | 'BDF')``, default LSODA).

SciPy integrates in float64 NumPy arrays; ``f`` is called on the state's dtype and device (no autograd graph),
its result copied back to the host, and the outputs are returned on the state's dtype and device. Nothing is
differentiable through plain ``odeint`` (as in torchdiffeq: the result carries no gradient, and a warning says
so when one was wanted); ``odeint_adjoint`` gives gradients, its backward solve running on SciPy too.

The step loop is ``solve_ivp``'s (the same solver object, the same dense output at the requested times), driven
here so that it can count steps: ``Counter.accepted`` is the number of steps SciPy took (for LSODA its internal
steps, for the Runge-Kutta and implicit methods their accepted steps); SciPy does not report rejected steps, so
``Counter.rejected`` stays 0. ``Counter.nfe`` counts every call of ``f``, including those SciPy spends on
finite-difference Jacobians. The output at ``t[0]`` is ``y0`` itself (``solve_ivp`` evaluates its dense output there).

LSODA starts non-stiff (Adams, no Jacobian) and switches to BDF with a finite-difference Jacobian if it finds
the problem stiff. Its full Jacobian needs ``N`` evaluations of ``f`` and an ``N x N`` workspace that SciPy
allocates up front, impossible for an ODE-Net's batch (N ~ 50k: 20 GB); above ``_DENSE_JACOBIAN_MAX_N``
unknowns LSODA is given a diagonal (banded, width 0) Jacobian instead: one extra ``f`` per Jacobian and O(N)
memory. That changes nothing while LSODA stays non-stiff; a stiff phase then runs with an approximate Newton
matrix (still error-controlled, possibly more steps).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from neuralode.solvers.common import Counter, Dynamics, StepBudget, StepCallbacks, warn_caller
from neuralode.solvers.events import EventWatch
from neuralode.solvers.norms import Tolerance
from neuralode.solvers.problem import Method, Problem

DEFAULT_SOLVER = "LSODA"
SCIPY_SOLVERS = ("LSODA", "RK45", "RK23", "DOP853", "Radau", "BDF")
# 4096^2 float64 = 128 MiB of LSODA workspace; beyond that its Jacobian is kept diagonal (see the module doc).
_DENSE_JACOBIAN_MAX_N = 4096


def _scipy_integrate():
    try:
        import scipy.integrate
    except ImportError:
        raise ImportError("method='scipy_solver' needs SciPy, which is not installed; install it with "
                          "pip install neuralode[scipy]") from None
    return scipy.integrate


def _host_tolerance(tol: Tolerance) -> float | np.ndarray:
    return tol.detach().to("cpu", torch.float64).numpy() if torch.is_tensor(tol) else tol


class ScipySolver(Method):
    name = "scipy_solver"
    adaptive = True
    increasing_time_only = True
    valid_options = ("solver", "min_step", "max_step", "max_num_steps", "max_steps_per_solve")
    backpropagates = False  # NumPy steps: gradients only through odeint_adjoint

    def solve(self, prob: Problem, f: Dynamics, y0: torch.Tensor, counter: Counter, *,
              callbacks: StepCallbacks | None = None, event: EventWatch | None = None,
              land: bool = False) -> torch.Tensor:
        scipy_integrate = _scipy_integrate()
        t_host, options, time_sign = prob.t_host, prob.options, prob.time_sign
        method = options.get("solver", DEFAULT_SOLVER)
        if method not in SCIPY_SOLVERS:
            raise ValueError(f"options['solver'] of method 'scipy_solver' must be one of {', '.join(SCIPY_SOLVERS)}, "
                             f"got {method!r}")
        n = y0.numel()
        settings: dict[str, Any] = {"rtol": _host_tolerance(prob.rtol), "atol": _host_tolerance(prob.atol)}
        if options.get("max_step") is not None:
            settings["max_step"] = float(options["max_step"])
        if options.get("min_step") is not None:  # LSODA's only: SciPy warns that others ignore it
            settings["min_step"] = float(options["min_step"])
        if method == "LSODA" and n > _DENSE_JACOBIAN_MAX_N:
            settings.update(lband=0, uband=0)

        dtype, device = y0.dtype, y0.device
        # The first call runs with autograd as the caller has it: whether its result carries a gradient tells
        # whether the caller wanted one (then warned below); the others build no graph.
        probe = [torch.is_grad_enabled()]
        lost_gradient = [False]

        def fun(s: float, y: np.ndarray) -> np.ndarray:
            with torch.set_grad_enabled(probe[0]):
                out = f(torch.tensor(s, dtype=dtype, device=device), torch.tensor(y, dtype=dtype, device=device))
            if probe[0]:
                probe[0], lost_gradient[0] = False, out.requires_grad
            return out.detach().to("cpu", torch.float64).numpy()

        y0_host = y0.detach().to("cpu", torch.float64).numpy()
        solver = getattr(scipy_integrate, method)(fun, t_host[0], y0_host, t_host[-1], **settings)
        out = np.empty((len(t_host), n))
        out[0] = y0_host
        done, steps = 1, 0
        budget = StepBudget(options, lambda: f"scipy_solver ({method}) reached t={time_sign * solver.t:.6g} of "
                                             f"[{time_sign * t_host[0]:.6g}, {time_sign * t_host[-1]:.6g}]")
        while done < len(t_host):
            budget.spend()
            message = solver.step()
            if solver.status == "failed":
                raise RuntimeError(f"scipy_solver ({method}) failed at t={time_sign * solver.t:.6g}: {message}")
            steps += 1
            reached = done
            while reached < len(t_host) and t_host[reached] <= solver.t:
                reached += 1
            if reached > done:
                budget.output_reached()
                out[done:reached] = solver.dense_output()(np.asarray(t_host[done:reached])).T
                done = reached
        counter.accepted += steps
        if lost_gradient[0]:
            warn_caller("method 'scipy_solver' integrates in NumPy, so odeint's result carries no gradient; use "
                        "odeint_adjoint for gradients")
        return torch.from_numpy(out).to(device=device, dtype=dtype)
