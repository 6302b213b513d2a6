"""``odeint_adjoint(..., options=dict(per_sample=True))``: the continuous adjoint of a per-sample solve.

The backward solve is one per-sample solve of the batch per output interval (not one solve per sample): each
sample's augmented state ``[y_b, a_b = dL/dy_b, g_b]`` steps on its own from its own output time to the previous
one. ``g_b`` integrates the sample's own contribution ``-a_b^T df_b/dtheta`` to the parameter gradient (its steps
are its own, so the contributions cannot be summed before they are integrated); the samples' ``g_b`` are summed at
the end. That is a ``B x P`` accumulator (``P`` the number of parameters), and each evaluation computes the ``B``
per-sample parameter products at once (``autograd.grad(..., is_grads_batched=True)``, with a ``(B, B, M)``
cotangent): fine for the small models per-sample solves are meant for, costly for large ones.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch.autograd.function import once_differentiable

from neuralode.solvers.arguments import ToleranceArg, check_tolerance
from neuralode.solvers.common import Counter
from neuralode.solvers.errors import UnsupportedError
from neuralode.solvers.per_sample import (
    SampleDynamics,
    SampleProblem,
    build_sample_problem,
    check_method,
    orientation,
    row_rms,
    solve_per_sample,
    split_per_sample,
)
from neuralode.solvers.registry import resolve_method
from neuralode.solvers.stats import SampleCounts, SolveStats


class RowMixedNorm:
    """Per sample (row of ``(B, N)``): the max over the segments ``sizes`` of their RMS norms, the segments with
    ``use`` False left out (the seminorm drops the parameter adjoint); ``(B, 1)``."""

    def __init__(self, sizes: list[int], use: list[bool]) -> None:
        self.sizes, self.use = sizes, use

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        parts = [row_rms(seg) for seg, kept in zip(x.split(self.sizes, dim=1), self.use) if kept and seg.shape[1]]
        return torch.stack(parts).amax(0)


class _Backward:
    """What the backward solve needs: the user's dynamics, the parameters, the backward problem's settings."""

    def __init__(self, func: Callable, shape: torch.Size, params: tuple[torch.Tensor, ...], forward: SampleProblem,
                 backward: SampleProblem, stats: SolveStats | None) -> None:
        self.func, self.shape, self.params, self.forward, self.backward, self.stats = (func, shape, params, forward,
                                                                                        backward, stats)
        self.p_sizes = [p.numel() for p in params]

    def record(self, counter: Counter, counts: SampleCounts | None, phase: str) -> None:
        if self.stats is not None:
            self.stats.record(counter.nfe, counter.accepted, counter.rejected, phase, counts)

    def solve_forward(self, y0: torch.Tensor) -> torch.Tensor:
        """The per-sample solve without a graph: the states ``(T, B, M)``."""
        counter = Counter()
        with torch.no_grad():
            ys, counts = solve_per_sample(self.forward, SampleDynamics(self.func, self.shape, self.forward.sign, counter),
                                          y0, counter)
        self.record(counter, counts, "forward")
        return ys

    def solve_backward(self, t: torch.Tensor, ys: torch.Tensor, grad_ys: torch.Tensor, need_t: bool
                       ) -> tuple[torch.Tensor, torch.Tensor | None, list[torch.Tensor]]:
        """The gradients w.r.t. ``y0`` (``(B, M)``), ``t`` (its shape; None unless ``need_t``) and the parameters,
        integrating back over each output interval in turn, every sample in one solve."""
        times = t.to(self.forward.t.dtype).expand(self.forward.t.shape).T  # (T, B): the caller's, in time's dtype
        m = ys.shape[2]
        counter, counts = Counter(), None
        # As in the joint adjoint: each interval after the first starts every sample on the step it ended with.
        carry = self.backward.options.get("first_step") is None
        with torch.no_grad():
            a, g = grad_ys[-1].clone(), ys.new_zeros(ys.shape[1], sum(self.p_sizes))
            grad_t = torch.zeros_like(times) if need_t else None
            for i in range(len(times) - 1, 0, -1):
                if need_t:  # y(t_i) moves with t_i at speed f(t_i, y_i); nothing else depends on t_i (i > 0)
                    grad_t[i] = (grad_ys[i] * self.flat_func(times[i], ys[i])).sum(1)
                pair = torch.stack([times[i], times[i - 1]], dim=1)
                s, sign = orientation(pair, pair.tolist())
                f = SampleDynamics(self.augmented, (ys.shape[1], 2 * m + g.shape[1]), sign, counter)
                interval_prob = self.backward.replace(t=s, sign=sign, first_step=counter.next_step if carry else None)
                z, interval = solve_per_sample(interval_prob, f, torch.cat([ys[i], a, g], dim=1), counter, land=True)
                counts = interval if counts is None else counts + interval
                a, g = z[-1, :, m:2 * m] + grad_ys[i - 1], z[-1, :, 2 * m:]
            if need_t:  # moving t_0 shifts every later output by -Phi f(t_0, y_0)
                grad_t[0] = -((a - grad_ys[0]) * self.flat_func(times[0], ys[0])).sum(1)
                grad_t = grad_t.T.to(t.dtype) if t.ndim == 2 else grad_t.sum(1).to(t.dtype)
        self.record(counter, counts, "backward")
        grads_p = [part.sum(0).reshape(p.shape) for part, p in zip(g.split(self.p_sizes, dim=1), self.params)]
        return a, grad_t, grads_p

    def flat_func(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The user's ``func`` at the times ``t`` (``(B,)``) on the ``(B, M)`` state."""
        return self.func(t.to(y.dtype), y.reshape(self.shape)).reshape(y.shape)

    def augmented(self, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """``[f, -a^T df/dy, -a^T df/dtheta]`` per sample at the caller's times ``t``; ``z`` is ``(B, 2M + P)``."""
        m = (z.shape[1] - sum(self.p_sizes)) // 2
        y, a = z[:, :m], z[:, m:2 * m]
        with torch.enable_grad():
            y = y.detach().requires_grad_(True)
            fy = self.func(t, y.reshape(self.shape)).reshape(y.shape)
            if not fy.requires_grad:
                return torch.cat([fy, torch.zeros_like(z[:, m:])], dim=1)
            (vjp_y,) = torch.autograd.grad(fy, y, -a, retain_graph=bool(self.params), allow_unused=True)
            parts = [fy.detach(), torch.zeros_like(a) if vjp_y is None else vjp_y]
            if self.params:
                # Sample b's cotangent is -a_b on its own row and zero elsewhere: B products in one batched pass.
                one_hot = torch.eye(len(a), dtype=a.dtype, device=a.device)[:, :, None]
                grads = torch.autograd.grad(fy, self.params, -one_hot * a, is_grads_batched=True, allow_unused=True)
                parts += [torch.zeros(len(a), n, dtype=a.dtype, device=a.device) if g is None else g.reshape(len(a), -1)
                          for g, n in zip(grads, self.p_sizes)]
        return torch.cat(parts, dim=1)


class _PerSampleAdjoint(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Backward, y0: torch.Tensor, t: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        ctx.spec = spec
        ys = spec.solve_forward(y0)
        ctx.save_for_backward(t, ys)
        return ys

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_ys: torch.Tensor):
        t, ys = ctx.saved_tensors
        grad_y0, grad_t, grads_p = ctx.spec.solve_backward(t, ys, grad_ys, ctx.needs_input_grad[2])
        return (None, grad_y0, grad_t, *grads_p)


def odeint_adjoint_per_sample(func: Callable, y0: torch.Tensor, t: torch.Tensor, rtol: ToleranceArg,
                              atol: ToleranceArg, method: str | None, options: Mapping[str, Any] | None,
                              adjoint: Mapping[str, Any], params: tuple[torch.Tensor, ...],
                              stats: SolveStats | None, event_fn: Callable | None = None) -> torch.Tensor:
    """The per-sample solve of :func:`~neuralode.solvers.adjoint.odeint_adjoint` (``options`` without
    ``per_sample``); ``adjoint``: its ``adjoint_rtol``, ``adjoint_atol``, ``adjoint_method`` and
    ``adjoint_options`` (None where not given); an ``event_fn`` is refused."""
    forward_method = resolve_method(method)
    check_method(forward_method, options, event_fn, adaptive_only=True)
    prob = build_sample_problem(y0, t, rtol, atol, forward_method, options)
    adj_method = resolve_method(adjoint["adjoint_method"] or forward_method.name, "adjoint_method")
    adj_options = adjoint["adjoint_options"]
    if adj_options is None:
        adj_options = {k: v for k, v in (options or {}).items() if k != "norm"} if adj_method is forward_method else {}
    adj_options, _ = split_per_sample(adj_options)
    adj_options = dict(adj_options)
    norm = adj_options.pop("norm", None)
    if norm not in (None, "seminorm"):
        raise UnsupportedError(f"with per_sample=True, adjoint_options['norm'] must be 'seminorm' or left out, got "
                               f"{norm!r}")
    check_method(adj_method, adj_options, None, adaptive_only=True)
    tols = []
    for name, forward_tol in (("rtol", prob.rtol), ("atol", prob.atol)):
        given = adjoint[f"adjoint_{name}"]
        if given is None and torch.is_tensor(forward_tol):
            raise ValueError(f"odeint_adjoint: a per-element {name} does not carry over to the backward solve's "
                             f"augmented state; pass adjoint_{name} as a number")
        tols.append(check_tolerance(f"adjoint_{name}", forward_tol if given is None else given))
    backward = build_sample_problem(y0, t, *tols, adj_method, adj_options)
    m = y0[0].numel()
    p_total = sum(p.numel() for p in params)
    backward.norm = RowMixedNorm([m, m, p_total], [True, True, norm != "seminorm"])
    if any(p.is_complex() for p in params):
        raise UnsupportedError("with per_sample=True, odeint_adjoint supports real parameters only")
    spec = _Backward(func, y0.shape, params, prob, backward, stats)
    ys = _PerSampleAdjoint.apply(spec, y0.reshape(y0.shape[0], -1), t, *params)
    return ys.reshape(ys.shape[:1] + y0.shape)
