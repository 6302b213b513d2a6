"""``odeint_adjoint``: gradients by the continuous adjoint method (Chen et al. 2018, Pontryagin).

The forward solve runs without recording a graph and only the outputs ``ys`` are kept, so memory does
not depend on the number of steps. ``backward`` integrates the augmented state
``[y, a = dL/dy, dL/dtheta]`` from ``t[-1]`` back to ``t[0]``:

    dy/dt = f(t, y),   da/dt = -a^T df/dy,   d(dL/dtheta)/dt = -a^T df/dtheta,

jumping ``a`` by ``dL/dys[i]`` at every output time and restarting ``y`` from the stored ``ys[i]`` so
that the reverse-time error in ``y`` does not accumulate across intervals.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from neuralode.solvers.norms import MixedNorm, Norm
from neuralode.solvers.odeint import Problem, State, counted, integrate
from neuralode.solvers.rk import Counter
from neuralode.solvers.stats import SolveStats


class _Adjoint:
    """What backward needs besides the saved tensors."""

    def __init__(self, func: Callable, forward: Problem, backward: Problem, seminorm: bool,
                 adjoint_norm: Callable | None, n_params: int, stats: SolveStats | None) -> None:
        self.func, self.forward, self.backward, self.stats = func, forward, backward, stats
        sizes = forward.structure.sizes
        if adjoint_norm is not None:
            self.norm: Norm = adjoint_norm
        else:
            # Mixed norm over y's parts, a's parts and the parameter adjoint; the seminorm drops the latter.
            self.norm = MixedNorm([*sizes, *sizes, n_params], use=[True] * (2 * len(sizes)) + [not seminorm])


class _AdjointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Adjoint, y0: torch.Tensor, t: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        counter = Counter()
        prob = spec.forward
        with torch.no_grad():
            ys = prob.solve(counted(spec.func, prob.structure, counter), y0, counter, t=t)
        if spec.stats is not None:
            spec.stats.record(counter.nfe, counter.accepted, counter.rejected, "forward")
        # The parameters themselves (not saved copies): backward differentiates func's graph w.r.t. them.
        ctx.spec, ctx.params = spec, params
        ctx.save_for_backward(t, ys)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys: torch.Tensor):
        spec: _Adjoint = ctx.spec
        t, ys = ctx.saved_tensors
        params = ctx.params
        n_out, n = ys.shape
        p_sizes = [p.numel() for p in params]
        counter = Counter()
        f = counted(spec.func, spec.forward.structure, counter)
        dtype = ys.dtype

        def augmented(s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
            y, a = z[:n], z[n:2 * n]
            with torch.enable_grad():
                y = y.detach().requires_grad_(True)
                fy = f(s, y)
                if fy.requires_grad:
                    vjps = torch.autograd.grad(fy, (y, *params), -a, allow_unused=True)
                else:
                    vjps = (None,) * (1 + len(params))
            parts = [fy.detach()]
            for v, size in zip(vjps, (n, *p_sizes)):
                parts.append(torch.zeros(size, dtype=dtype, device=z.device) if v is None
                             else v.reshape(-1).to(dtype))
            return torch.cat(parts)

        bwd = spec.backward
        t_host = spec.forward.t_host
        need_t = ctx.needs_input_grad[2]
        # Each interval after the first continues with the step size the previous one ended on (unless the
        # user fixed first_step): a fresh estimate per output time would cost an NFE and restart from a
        # tiny step. The first interval estimates its own: starting it with the forward solve's last step
        # saved NFE but measurably loosened the ODE-Net's gradients at tol 1e-3 (docs/benchmarks.md).
        carry = bwd.solver.adaptive and bwd.options.get("first_step") is None
        first_step = None
        with torch.no_grad():
            a = grad_ys[-1].clone()
            a_params = ys.new_zeros(sum(p_sizes))
            grad_t = torch.zeros_like(t) if need_t else None
            for i in range(n_out - 1, 0, -1):
                if need_t:
                    # y(t_i) moves with t_i at speed f(t_i, y_i); nothing else depends on t_i (i > 0).
                    grad_t[i] = grad_ys[i] @ f(t[i], ys[i])
                z = torch.cat([ys[i], a, a_params])
                pair = torch.stack([t[i], t[i - 1]])
                options = {**bwd.options, "first_step": first_step} if carry and first_step else bwd.options
                z = integrate(bwd.solver, augmented, z, pair, [t_host[i], t_host[i - 1]], bwd.rtol, bwd.atol,
                              options, spec.norm, counter)[-1]
                first_step = counter.next_step
                a = z[n:2 * n] + grad_ys[i - 1]
                a_params = z[2 * n:]
            if need_t:
                # Moving t_0 shifts every later output by -Phi f(t_0, y_0); ys[0] = y0 does not move.
                grad_t[0] = -(a - grad_ys[0]) @ f(t[0], ys[0])
        if spec.stats is not None:
            spec.stats.record(counter.nfe, counter.accepted, counter.rejected, "backward")
        grads_p = [g.reshape(p.shape).to(p.dtype) for g, p in zip(a_params.split(p_sizes), params)]
        return (None, a, grad_t, *grads_p)


def inherited_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The forward options a same-method backward solve takes over: all but ``norm``, which is the
    forward state's error norm and means nothing on the augmented adjoint state."""
    return {k: v for k, v in (options or {}).items() if k != "norm"}


def odeint_adjoint(func: Callable[[torch.Tensor, State], State], y0: State, t: torch.Tensor, rtol: float = 1e-7,
                   atol: float = 1e-9, method: str | None = None, options: Mapping[str, Any] | None = None,
                   adjoint_rtol: float | None = None, adjoint_atol: float | None = None,
                   adjoint_method: str | None = None, adjoint_options: Mapping[str, Any] | None = None,
                   adjoint_params: Sequence[torch.Tensor] | None = None, *,
                   stats: SolveStats | None = None) -> State:
    """Like :func:`~neuralode.solvers.odeint.odeint`, with gradients from the continuous adjoint.

    Gradients reach ``y0``, ``t`` and ``adjoint_params`` (default: ``func.parameters()``, so ``func`` must
    be an ``nn.Module`` unless they are given). The backward solve uses ``adjoint_rtol``/``adjoint_atol``/
    ``adjoint_method`` (default: the forward ones) and ``adjoint_options`` (default: the forward options
    without ``norm``); ``adjoint_options=dict(norm="seminorm")`` leaves the parameter adjoints out of the
    error norm. Backward NFE and steps are added into ``stats`` during ``backward()``.
    """
    if adjoint_params is None:
        if not isinstance(func, nn.Module):
            raise ValueError("odeint_adjoint: func is not an nn.Module, so its parameters are unknown; pass "
                             "adjoint_params=(...) (an empty tuple if there are none)")
        adjoint_params = tuple(func.parameters())
    params = tuple(p for p in adjoint_params if torch.is_tensor(p) and p.requires_grad)
    fwd = Problem.build(y0, t, rtol, atol, method, options)
    if fwd.t_host is None:
        raise ValueError("odeint_adjoint cannot run inside CUDA-graph capture (its backward solve is adaptive "
                         "in general); capture odeint with a fixed-step method instead")
    method = fwd.solver.name
    adj_method = method if adjoint_method is None else adjoint_method
    if adjoint_options is None:
        adjoint_options = inherited_options(options) if adj_method == method else {}
    adjoint_options = dict(adjoint_options)
    adj_norm = adjoint_options.pop("norm", None)
    if adj_norm not in (None, "seminorm") and not callable(adj_norm):
        raise ValueError(f"adjoint_options['norm'] must be 'seminorm' or a callable on the flat augmented "
                         f"state, got {adj_norm!r}")
    bwd = Problem.build(y0, fwd.t, rtol if adjoint_rtol is None else adjoint_rtol,
                        atol if adjoint_atol is None else adjoint_atol, adj_method, adjoint_options,
                        what="adjoint_", like=fwd)
    spec = _Adjoint(func, fwd, bwd, adj_norm == "seminorm", adj_norm if callable(adj_norm) else None,
                    sum(p.numel() for p in params), stats)
    ys = _AdjointFunction.apply(spec, fwd.structure.flatten(y0, what="y0"), fwd.t, *params)
    return fwd.structure.unflatten(ys)
