"""``odeint_adjoint``: gradients by the continuous adjoint method (Chen et al. 2018, Pontryagin).

The forward solve runs without recording a graph and only the outputs ``ys`` are kept, so memory does
not depend on the number of steps. ``backward`` integrates the augmented state
``[y, a = dL/dy, dL/dtheta]`` from ``t[-1]`` back to ``t[0]``:

    dy/dt = f(t, y),   da/dt = -a^T df/dy,   d(dL/dtheta)/dt = -a^T df/dtheta,

jumping ``a`` by ``dL/dys[i]`` at every output time and restarting ``y`` from the stored ``ys[i]`` so
that the reverse-time error in ``y`` does not accumulate across intervals.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from neuralode.solvers.arguments import (
    CALLBACK_NAMES,
    ToleranceArg,
    build_problem,
    check_tolerance,
    counted,
    step_callbacks,
    supported_callbacks,
)
from neuralode.solvers.common import Counter
from neuralode.solvers.norms import MixedNorm, Norm, PairModulus
from neuralode.solvers.per_sample import split_per_sample
from neuralode.solvers.per_sample_adjoint import odeint_adjoint_per_sample
from neuralode.solvers.problem import Problem
from neuralode.solvers.registry import resolve_method
from neuralode.solvers.stats import SolveStats
from neuralode.solvers.structure import State, UserNorm


class _Adjoint:
    """What backward needs besides the saved tensors."""

    def __init__(self, func: Callable, forward: Problem, backward: Problem, seminorm: bool,
                 adjoint_norm: Callable | None, params: tuple[torch.Tensor, ...], stats: SolveStats | None,
                 event_fn: Callable | None = None) -> None:
        self.func, self.forward, self.backward, self.stats = func, forward, backward, stats
        self.event_fn = event_fn
        # The event time of the last forward solve (event mode): odeint_adjoint returns it.
        self.event_t: torch.Tensor | None = None
        structure = forward.structure
        self.callbacks = supported_callbacks(forward.solver, step_callbacks(func, structure.unflatten))
        # torchdiffeq calls func.callback_*_adjoint during the backward solve, with the augmented state as the tuple
        # (t, *y, *dL/dy, *dL/dparams) its adjoint norm gets.
        self.adjoint_callbacks = supported_callbacks(
            backward.solver, step_callbacks(func, augmented_as_user(structure, params), suffix="_adjoint"),
            names=tuple(name + "_adjoint" for name in CALLBACK_NAMES))
        sizes = structure.sizes
        magnitude = _augmented_modulus(structure, params)
        if adjoint_norm is not None:
            # Called as torchdiffeq calls it: with the tuple (t, *y, *a, *dL/dtheta), y and a split into the parts
            # of a tuple state, each shaped (and typed) like its part or parameter. torchdiffeq's t entry is its
            # integrated time adjoint; here dL/dt comes in closed form at the output times, so it is a zero scalar.
            self.norm: Norm = UserNorm(adjoint_norm, augmented_as_user(structure, params), magnitude)
        else:
            # Mixed norm over y's parts, a's parts and the parameter adjoint; the seminorm drops the latter.
            n_params = sum(p.numel() for p in params)
            self.norm = MixedNorm([*sizes, *sizes, sum(_flat_size(p) for p in params)],
                                  use=[True] * (2 * len(sizes)) + [not seminorm],
                                  counts=[*structure.numels, *structure.numels, n_params], magnitude=magnitude)


def _augmented_modulus(structure, params: tuple[torch.Tensor, ...]) -> PairModulus | None:
    """Error control on ``[y, a, dL/dtheta]`` measures complex elements (of y, a and complex parameters' adjoints)
    by their modulus, as the forward solve does."""
    n = sum(structure.sizes)
    state = structure.magnitude.complex_segments if structure.magnitude is not None else []
    segments = [*state, *((n + offset, length) for offset, length in state)]
    offset = 2 * n
    for p in params:
        if p.is_complex():
            segments.append((offset, _flat_size(p)))
        offset += _flat_size(p)
    return PairModulus(segments) if segments else None


def _flat_size(p: torch.Tensor) -> int:
    """Length of a parameter's adjoint in the flat real augmented state (a complex one as real pairs)."""
    return 2 * p.numel() if p.is_complex() else p.numel()


def _param_to_flat(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    return (torch.view_as_real(v.resolve_conj()) if v.is_complex() else v).reshape(-1).to(dtype)


def _param_from_flat(flat: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The inverse of :func:`_param_to_flat`, shaped and typed like ``p``."""
    if p.is_complex():
        pairs = flat.to(p.real.dtype).reshape(*p.shape, 2)
        return torch.complex(pairs[..., 0], pairs[..., 1])
    return flat.reshape(p.shape).to(p.dtype)


def augmented_as_user(structure, params: tuple[torch.Tensor, ...]) -> Callable[[torch.Tensor], tuple]:
    """The flat augmented state ``[y, a, dL/dtheta]`` as torchdiffeq's tuple ``(t, *y, *a, *dL/dtheta)``, ``y`` and
    ``a`` split into the parts of a tuple state, each shaped (and typed) like its part or parameter; the ``t`` entry
    (torchdiffeq's integrated time adjoint, here computed in closed form at the output times) is a zero scalar."""
    n = sum(structure.sizes)
    p_sizes = [_flat_size(p) for p in params]

    def as_user(z: torch.Tensor) -> tuple:
        y, a = structure.unflatten(z[:n]), structure.unflatten(z[n:2 * n])
        parts = (*y, *a) if structure.is_tuple else (y, a)
        adj_params = [_param_from_flat(g, p) for g, p in zip(z[2 * n:].split(p_sizes), params)]
        return (z.new_zeros(()), *parts, *adj_params)
    return as_user


def module_parameters(module: nn.Module) -> list[torch.Tensor]:
    """The tensors of ``module`` that gradients should reach. Inside ``nn.DataParallel`` a replica's ``_parameters``
    are empty: replicate() stores the (non-leaf) parameter copies as plain attributes, so there, as torchdiffeq
    does, every tensor attribute that requires grad is collected from the module and its submodules."""
    if not getattr(module, "_is_replica", False):
        return list(module.parameters())
    found: dict[int, torch.Tensor] = {}
    for sub in module.modules():
        for value in vars(sub).values():
            if torch.is_tensor(value) and value.requires_grad:
                found.setdefault(id(value), value)
    return list(found.values())


class _AdjointFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, spec: _Adjoint, y0: torch.Tensor, t: torch.Tensor, *params: torch.Tensor) -> torch.Tensor:
        counter = Counter()
        prob = spec.forward
        ctx.t_host = prob.t_host
        with torch.no_grad():
            f = counted(spec.func, prob.structure, counter)
            if spec.event_fn is None:
                ys = prob.replace(t=t).solve(f, y0, counter, spec.callbacks)
            else:
                # Backward then runs over [t0, event_t], the event time held fixed (as torchdiffeq).
                spec.event_t, ys = prob.solve_until_event(f, spec.event_fn, y0, counter, spec.callbacks)
                t = torch.stack([t[0], spec.event_t.to(t.dtype)])
                ctx.t_host = [prob.t_host[0], float(spec.event_t)]
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
        p_sizes = [_flat_size(p) for p in params]
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
                parts.append(torch.zeros(size, dtype=dtype, device=z.device) if v is None else _param_to_flat(v, dtype))
            return torch.cat(parts)

        bwd = spec.backward
        t_host = ctx.t_host
        need_t = ctx.needs_input_grad[2]
        # Each interval after the first continues with the step size the previous one ended on (unless the
        # user fixed first_step): a fresh estimate per output time would cost an NFE and restart from a
        # tiny step. The first interval estimates its own: starting it with the forward solve's last step
        # saved NFE but measurably loosened the ODE-Net's gradients at tol 1e-3 (docs/benchmarks.md). Each
        # interval lands on its end, where the next starts (a step past it would be thrown away).
        carry = bwd.solver.adaptive and bwd.options.get("first_step") is None
        first_step = None
        with torch.no_grad():
            a = grad_ys[-1].clone()
            a_params = ys.new_zeros(sum(p_sizes))
            grad_t = torch.zeros_like(t) if need_t else None
            for i in range(n_out - 1, 0, -1):
                if need_t:
                    # y(t_i) moves with t_i at speed f(t_i, y_i); nothing else depends on t_i (i > 0).
                    grad_t[i] = grad_ys[i] @ f(t[i].to(dtype), ys[i])
                z = torch.cat([ys[i], a, a_params])
                pair = torch.stack([t[i], t[i - 1]]).to(bwd.t.dtype)  # the backward method's time dtype
                options = {**bwd.options, "first_step": first_step} if carry and first_step else bwd.options
                interval = bwd.replace(t=pair, t_host=[t_host[i], t_host[i - 1]], options=options, norm=spec.norm)
                z = interval.solve(augmented, z, counter, spec.adjoint_callbacks, land=True)[-1]
                first_step = counter.next_step
                a = z[n:2 * n] + grad_ys[i - 1]
                a_params = z[2 * n:]
            if need_t:
                # Moving t_0 shifts every later output by -Phi f(t_0, y_0); ys[0] = y0 does not move.
                grad_t[0] = -(a - grad_ys[0]) @ f(t[0].to(dtype), ys[0])
                if spec.event_fn is not None:  # t[1] only gave the direction (the event time gets no gradient)
                    grad_t[1] = 0
        if spec.stats is not None:
            spec.stats.record(counter.nfe, counter.accepted, counter.rejected, "backward")
        grads_p = [_param_from_flat(g, p) for g, p in zip(a_params.split(p_sizes), params)]
        return (None, a, grad_t, *grads_p)


def inherited_options(options: Mapping[str, Any] | None) -> dict[str, Any]:
    """The forward options a same-method backward solve takes over: all but ``norm``, which is the
    forward state's error norm and means nothing on the augmented adjoint state."""
    return {k: v for k, v in (options or {}).items() if k != "norm"}


def odeint_adjoint(func: Callable[[torch.Tensor, State], State], y0: State, t: torch.Tensor, rtol: ToleranceArg = 1e-7,
                   atol: ToleranceArg = 1e-9, method: str | None = None, options: Mapping[str, Any] | None = None,
                   adjoint_rtol: float | None = None, adjoint_atol: float | None = None,
                   adjoint_method: str | None = None, adjoint_options: Mapping[str, Any] | None = None,
                   adjoint_params: Iterable[torch.Tensor] | None = None, *,
                   event_fn: Callable[[torch.Tensor, State], torch.Tensor] | None = None,
                   stats: SolveStats | None = None) -> State | tuple[torch.Tensor, State]:
    """Like :func:`~neuralode.solvers.odeint.odeint`, with gradients from the continuous adjoint.

    Gradients reach ``y0``, ``t`` and ``adjoint_params`` (default: ``func``'s parameters, also inside
    ``nn.DataParallel``, so ``func`` must be an ``nn.Module`` unless they are given; those that do not require grad
    are left out, and a tensor given twice counts once). The backward solve uses ``adjoint_rtol``/``adjoint_atol``
    (numbers; default: the forward ones, which must then be numbers too) and ``adjoint_method`` (default: the
    forward one) and ``adjoint_options`` (default: the forward options without ``norm``);
    ``adjoint_options=dict(norm="seminorm")`` leaves the parameter adjoints out of the error norm, and a callable
    ``norm`` gets torchdiffeq's tuple ``(t, *y, *dL/dy, *dL/dparams)``. Backward NFE and steps are added into
    ``stats`` during ``backward()``. ``func.callback_step_adjoint`` (and ``_accept_``/``_reject_``) are called
    during the backward solve with that tuple as the state. ``event_fn``: as in ``odeint``; gradients then flow
    over ``[t0, event_t]`` with the event time held fixed (``odeint_event`` adds its dependence).
    ``options['per_sample']=True``: see :mod:`neuralode.solvers.per_sample_adjoint`.
    """
    params, all_given = _integrated_params(func, adjoint_params)
    options, per_sample = split_per_sample(options)
    if per_sample:
        adjoint = dict(adjoint_rtol=adjoint_rtol, adjoint_atol=adjoint_atol, adjoint_method=adjoint_method,
                       adjoint_options=adjoint_options)
        return odeint_adjoint_per_sample(func, y0, t, rtol, atol, method, options, adjoint, params, stats, event_fn)
    fwd = build_problem(y0, t, rtol, atol, resolve_method(method), options)
    # The backward state [y, dL/dy, dL/dparams] is not shaped like y0: its tolerances are numbers.
    for name, adjoint_tol, tol in (("rtol", adjoint_rtol, fwd.rtol), ("atol", adjoint_atol, fwd.atol)):
        if adjoint_tol is None and torch.is_tensor(tol):
            raise ValueError(f"odeint_adjoint: a per-element {name} does not carry over to the backward solve's "
                             f"augmented state; pass adjoint_{name} as a number")
        if adjoint_tol is not None:
            check_tolerance(f"adjoint_{name}", adjoint_tol)
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
        raise ValueError(f"adjoint_options['norm'] must be 'seminorm' or a callable on the tuple (t, *y, *dL/dy, "
                         f"*dL/dparams), got {adj_norm!r}")
    if callable(adj_norm) and not all_given:
        warnings.warn("odeint_adjoint: adjoint_params that do not require grad (or repeat) are left out of the backward "
                      "solve, so the adjoint norm does not see them", stacklevel=2)
    bwd = build_problem(y0, fwd.t, rtol if adjoint_rtol is None else adjoint_rtol,
                        atol if adjoint_atol is None else adjoint_atol, resolve_method(adj_method, "adjoint_method"),
                        adjoint_options, what="adjoint_", like=fwd)
    spec = _Adjoint(func, fwd, bwd, adj_norm == "seminorm", adj_norm if callable(adj_norm) else None, params, stats,
                    event_fn)
    ys = _AdjointFunction.apply(spec, fwd.structure.flatten(y0, what="y0"), fwd.t, *params)
    if event_fn is None:
        return fwd.structure.unflatten(ys)
    return spec.event_t.to(t.dtype), fwd.structure.unflatten(ys)


def _integrated_params(func: Callable, adjoint_params: Iterable[torch.Tensor] | None
                       ) -> tuple[tuple[torch.Tensor, ...], bool]:
    """The tensors whose adjoints the backward solve integrates (``adjoint_params``, default ``func``'s parameters),
    and whether that is every one given."""
    if adjoint_params is None:
        if not isinstance(func, nn.Module):
            raise ValueError("odeint_adjoint: func is not an nn.Module, so its parameters are unknown; pass "
                             "adjoint_params=(...) (an empty tuple if there are none)")
        adjoint_params = module_parameters(func)
    adjoint_params = tuple(adjoint_params)  # may be a generator
    for i, p in enumerate(adjoint_params):
        if not torch.is_tensor(p):
            raise TypeError(f"adjoint_params must hold tensors, got {type(p).__name__} at index {i}")
    # Unlike torchdiffeq, a tensor given twice is integrated once: its gradient is then that of direct backprop
    # (torchdiffeq returns it once per occurrence, so autograd adds it up twice).
    params = tuple({id(p): p for p in adjoint_params if p.requires_grad}.values())
    return params, len(params) == len(adjoint_params)
