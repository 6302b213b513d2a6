"""Public ``odeint``: input validation, flattening of tensor/tuple states, time direction, statistics.

Call-compatible with ``torchdiffeq.odeint`` (0.2.5) for the shared subset of arguments, plus a
keyword-only ``stats`` the solver adds its work counts into.
"""
from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Union

import torch

from neuralode.solvers.norms import MixedNorm, Norm
from neuralode.solvers.registry import SOLVERS
from neuralode.solvers.rk import Counter, Dynamics
from neuralode.solvers.stats import SolveStats

State = Union[torch.Tensor, tuple[torch.Tensor, ...]]
DEFAULT_METHOD = "dopri5"

# Option -> (check, what a valid value is), for one-line errors on bad values.
_OPTION_CHECKS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "step_size": (lambda v: v > 0 and math.isfinite(v), "a positive finite number"),
    "first_step": (lambda v: v is None or (v > 0 and math.isfinite(v)), "a positive finite number"),
    "safety": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "ifactor": (lambda v: v >= 1, ">= 1"),
    "dfactor": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "min_step": (lambda v: v >= 0, ">= 0"),
    "max_step": (lambda v: v > 0, "> 0"),
    "max_num_steps": (lambda v: int(v) == v and v > 0, "a positive integer"),
}


class StateStructure:
    """How a tensor or tuple of tensors maps to one flat vector (views both ways; cat for tuples)."""

    def __init__(self, y0: State, what: str = "y0") -> None:
        self.is_tuple = isinstance(y0, tuple)
        parts = y0 if self.is_tuple else (y0,)
        if self.is_tuple and not parts:
            raise ValueError(f"{what} is an empty tuple; give a tensor or a tuple of tensors")
        for p in parts:
            if not torch.is_tensor(p):
                raise TypeError(f"{what} must be a tensor or a tuple of tensors, got {type(p).__name__}")
            if not p.is_floating_point():
                raise TypeError(f"{what} must be floating point (float32/float64), got {p.dtype}")
        if len({p.dtype for p in parts}) > 1 or len({p.device for p in parts}) > 1:
            raise ValueError(f"all tensors of the tuple {what} must share one dtype and device, got "
                             f"{[(p.dtype, str(p.device)) for p in parts]}")
        self.shapes = [p.shape for p in parts]
        self.sizes = [p.numel() for p in parts]
        self.dtype, self.device = parts[0].dtype, parts[0].device

    def flatten(self, y: State, what: str = "y") -> torch.Tensor:
        parts = y if isinstance(y, tuple) else (y,)
        if (isinstance(y, tuple) != self.is_tuple or len(parts) != len(self.shapes)
                or any(not torch.is_tensor(p) or p.shape != s for p, s in zip(parts, self.shapes))):
            got = tuple(tuple(p.shape) if torch.is_tensor(p) else type(p).__name__ for p in parts)
            want = tuple(tuple(s) for s in self.shapes)
            raise ValueError(f"{what} has shape(s) {got if self.is_tuple else got[0]} but the state has "
                             f"shape(s) {want if self.is_tuple else want[0]}")
        if not self.is_tuple:
            return y.reshape(-1)
        return torch.cat([p.reshape(-1) for p in parts])

    def unflatten(self, flat: torch.Tensor) -> State:
        """``(N,)`` -> state, or ``(T, N)`` -> state with a leading time axis."""
        if not self.is_tuple:
            return flat.reshape(flat.shape[:-1] + self.shapes[0])
        lead = flat.shape[:-1]
        parts = [p.reshape(tuple(lead) + tuple(s)) for p, s in zip(flat.split(self.sizes, dim=-1), self.shapes)]
        return tuple(parts)

    def default_norm(self) -> Norm:
        return MixedNorm(self.sizes)


def check_tolerance(name: str, value: Any) -> float:
    if torch.is_tensor(value):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a scalar, got a tensor of shape {tuple(value.shape)}")
        value = value.item()
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(value).__name__}") from None
    if not value >= 0 or not math.isfinite(value):
        raise ValueError(f"{name} must be a finite number >= 0, got {value}")
    return value


def resolve_method(method: str | None, what: str = "method"):
    method = DEFAULT_METHOD if method is None else method
    if method not in SOLVERS:
        raise ValueError(f"unknown {what} {method!r}; valid methods: {', '.join(SOLVERS)}")
    return SOLVERS[method]


def check_options(solver, options: Mapping[str, Any] | None, what: str = "options", strict: bool = False) -> dict[str, Any]:
    """The options a method takes, with their values checked. An unknown key is dropped with a warning, as
    torchdiffeq does (code written for it keeps running); ``strict`` (the runner's config) refuses it."""
    if options is None:
        return {}
    if not isinstance(options, Mapping):
        raise TypeError(f"{what} must be a dict, got {type(options).__name__}")
    name = solver.name
    known = {}
    for key, value in options.items():
        if key not in solver.valid_options:
            message = f"{what}: {key!r} is not an option of method {name!r}; valid: {', '.join(solver.valid_options)}"
            if strict:
                raise ValueError(message)
            warnings.warn(message + " (ignored)", stacklevel=4)
            continue
        known[key] = value
        if key in _OPTION_CHECKS:
            ok, want = _OPTION_CHECKS[key]
            try:
                good = ok(value)
            except TypeError:
                good = False
            if not good:
                raise ValueError(f"{what}[{key!r}] must be {want}, got {value!r}")
    return known


def check_times(t: Any, dtype: torch.dtype, device: torch.device) -> tuple[torch.Tensor, list[float] | None]:
    """Validate ``t`` and return it on the state's dtype/device plus its host copy.

    The host copy costs one sync; while a CUDA graph is being captured that is impossible, so it is
    skipped (``None``), which only fixed-step methods on the grid ``t`` accept.
    """
    if not torch.is_tensor(t):
        raise TypeError(f"t must be a 1-D tensor of output times, got {type(t).__name__}")
    if t.ndim != 1 or t.numel() == 0:
        raise ValueError(f"t must be a non-empty 1-D tensor of output times, got shape {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise TypeError(f"t must be real, got {t.dtype}")
    t = t.to(device=device, dtype=dtype)
    if t.is_cuda and torch.cuda.is_current_stream_capturing():
        return t, None
    t_host = t.detach().cpu().tolist()
    if not all(math.isfinite(x) for x in t_host):
        raise ValueError(f"t must be finite, got {t_host}")
    if len(t_host) > 1:
        up = t_host[1] > t_host[0]
        for i in range(1, len(t_host)):
            if (t_host[i] > t_host[i - 1]) != up or t_host[i] == t_host[i - 1]:
                raise ValueError(f"t must be strictly increasing or strictly decreasing; got t[{i - 1}]="
                                 f"{t_host[i - 1]:.6g}, t[{i}]={t_host[i]:.6g}")
    return t, t_host


def counted(func: Callable, structure: StateStructure, counter: Counter) -> Dynamics:
    """``func`` on flat vectors, counting calls on the host."""
    def f(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        counter.nfe += 1
        return structure.flatten(func(t, structure.unflatten(y)), what="func(t, y)")
    return f


@dataclass
class Problem:
    """A validated solve: everything but the initial value and the dynamics' parameters."""

    solver: Any
    structure: StateStructure
    t: torch.Tensor
    t_host: list[float] | None
    rtol: float
    atol: float
    options: dict[str, Any]
    norm: Norm

    @classmethod
    def build(cls, y0: State, t: Any, rtol: Any, atol: Any, method: str | None,
              options: Mapping[str, Any] | None, what: str = "", like: "Problem | None" = None) -> "Problem":
        """Validate everything; ``like``: a problem on the same ``y0`` and ``t`` whose checks to reuse."""
        solver = resolve_method(method, what=what + "method")
        rtol = check_tolerance(what + "rtol", rtol)
        atol = check_tolerance(what + "atol", atol)
        if solver.adaptive and rtol == 0 and atol == 0:
            raise ValueError(f"{what}rtol and {what}atol cannot both be 0 for the adaptive method "
                             f"{solver.name!r}")
        structure = StateStructure(y0) if like is None else like.structure
        opts = check_options(solver, options, what=what + "options")
        t, t_host = check_times(t, structure.dtype, structure.device) if like is None else (like.t, like.t_host)
        if t_host is None and (solver.adaptive or "step_size" in opts):
            raise ValueError("only fixed-step methods on the grid t (no step_size) can run inside CUDA-graph "
                             f"capture; got method {solver.name!r}")
        norm = opts.pop("norm", None)
        if norm is None:
            norm = structure.default_norm()
        elif callable(norm):
            user_norm = norm
            norm = lambda x: user_norm(structure.unflatten(x))  # noqa: E731
        else:
            raise ValueError(f"{what}options['norm'] must be a callable, got {norm!r}")
        return cls(solver, structure, t, t_host, rtol, atol, opts, norm)

    def solve(self, f: Dynamics, y0: torch.Tensor, counter: Counter, t: torch.Tensor | None = None) -> torch.Tensor:
        """Integrate the flat dynamics ``f`` from the flat ``y0`` over ``t`` (default: the problem's times;
        another tensor holds the same values, e.g. one that requires grad); returns ``(len(t), N)``."""
        t = self.t if t is None else t
        return integrate(self.solver, f, y0, t, self.t_host, self.rtol, self.atol, self.options, self.norm, counter)


def integrate(solver, f: Dynamics, y0: torch.Tensor, t: torch.Tensor, t_host: list[float] | None,
              rtol: float, atol: float, options: dict[str, Any], norm: Norm, counter: Counter) -> torch.Tensor:
    if t_host is not None and len(t_host) == 1:
        return y0[None]
    if solver.increasing_time_only and t_host[-1] < t_host[0]:
        # Decreasing time: solve ds/dy = -f(-s, y) on s = -t, which increases.
        return solver.solve(lambda s, y: -f(-s, y), y0, -t, [-x for x in t_host], rtol=rtol, atol=atol,
                            norm=norm, options=options, counter=counter, time_sign=-1.0)
    return solver.solve(f, y0, t, t_host, rtol=rtol, atol=atol, norm=norm, options=options, counter=counter)


def odeint(func: Callable[[torch.Tensor, State], State], y0: State, t: torch.Tensor, rtol: float = 1e-7,
           atol: float = 1e-9, method: str | None = None, options: Mapping[str, Any] | None = None, *,
           stats: SolveStats | None = None) -> State:
    """Solve ``dy/dt = func(t, y)``, ``y(t[0]) = y0``; returns the states at ``t``, shape ``(len(t), *y0.shape)``
    (a tuple of such for a tuple ``y0``). Gradients flow by backpropagation through the solver's steps.

    ``method``: one of :data:`SOLVERS` (default ``dopri5``). ``options``: fixed-step methods take
    ``step_size`` (default: step on the grid ``t``); adaptive ones ``first_step``, ``safety``, ``ifactor``,
    ``dfactor``, ``min_step``, ``max_step``, ``max_num_steps`` (default: no cap, as torchdiffeq; the
    training runner sets 10000) and ``norm`` (a callable on the state); an unknown key is ignored with a warning.
    ``stats``: NFE and accepted/rejected steps are added into it.
    """
    prob = Problem.build(y0, t, rtol, atol, method, options)
    counter = Counter()
    ys = prob.solve(counted(func, prob.structure, counter), prob.structure.flatten(y0, what="y0"), counter)
    if stats is not None:
        stats.record(counter.nfe, counter.accepted, counter.rejected, "forward")
    return prob.structure.unflatten(ys)
