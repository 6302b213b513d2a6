"""The checks of a solve's arguments (each bad value one line saying what would be right), the validated
:class:`~neuralode.solvers.problem.Problem` built from them, and the user's ``func`` and step hooks adapted to the
flat state the methods integrate."""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Union

import torch

from neuralode.solvers.common import Counter, Dynamics, StepCallbacks, warn_caller
from neuralode.solvers.controller import CONTROLLERS
from neuralode.solvers.norms import Tolerance
from neuralode.solvers.problem import Method, Problem
from neuralode.solvers.structure import State, StateStructure, real_tensor

# What odeint takes as rtol/atol: a number, a tensor broadcasting against a tensor state, or one such per part of
# a tuple state.
ToleranceArg = Union[float, torch.Tensor, Sequence[Union[float, torch.Tensor]]]
# The step hooks torchdiffeq calls on func when it defines them (``..._adjoint`` during odeint_adjoint's backward).
CALLBACK_NAMES = ("callback_step", "callback_accept_step", "callback_reject_step")

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
    "max_steps_per_solve": (lambda v: int(v) == v and v > 0, "a positive integer"),
    "max_iters": (lambda v: int(v) == v and v > 0, "a positive integer"),
    "grid_constructor": (callable, "a callable (func, y0, t) -> 1-D tensor of step times"),
    "interp": (lambda v: isinstance(v, str) and v in ("linear", "cubic"), "'linear' or 'cubic'"),
    "perturb": (lambda v: isinstance(v, bool), "True or False"),
    "step_t": (lambda v: _finite_times(v), "a 1-D tensor or sequence of finite times"),
    "jump_t": (lambda v: _finite_times(v), "a 1-D tensor or sequence of finite times"),
    "dtype": (lambda v: _time_dtype(v) is not None, "torch.float32 or torch.float64 (or its name)"),
    "controller": (lambda v: isinstance(v, str) and v in CONTROLLERS, " or ".join(map(repr, CONTROLLERS))),
    "compile": (lambda v: isinstance(v, bool), "True or False"),
}


# Time dtypes by the names a config can give (options['dtype']='float64' from the command line).
_TIME_DTYPES = {"float32": torch.float32, "float64": torch.float64}


def _time_dtype(value: Any) -> torch.dtype | None:
    """``options['dtype']`` as a torch dtype: ``torch.float32``/``torch.float64`` or their names; else None."""
    if isinstance(value, str):
        return _TIME_DTYPES.get(value)
    return value if value in _TIME_DTYPES.values() else None


def _finite_times(times: Any) -> bool:
    if torch.is_tensor(times):
        return times.ndim <= 1 and not times.is_complex() and bool(torch.isfinite(times).all())
    return all(math.isfinite(float(v)) for v in times)


def check_tolerance(name: str, value: Any, structure: StateStructure | None = None) -> Tolerance:
    """A scalar tolerance as a host float; a per-element one (needs ``structure``) as a flat ``(N,)`` tensor on
    the state's device, checked here once (one sync per solve) so that the step loop never reads it back."""
    scalar = value
    is_tuple = structure is not None and structure.is_tuple
    if torch.is_tensor(value) and (value.ndim == 0 or (value.numel() == 1 and not is_tuple)):
        scalar = real_tensor(name, value).item()
    elif isinstance(value, (tuple, list)) or torch.is_tensor(value):
        if structure is None:
            raise ValueError(f"{name} must be a number, got {type(value).__name__}")
        tol = structure.per_element(name, value)
        bad = ~(torch.isfinite(tol) & (tol >= 0))
        if bool(bad.any()):
            raise ValueError(f"{name} must be finite and >= 0 everywhere, got {float(tol[bad][0])} at flat "
                             f"index {int(bad.nonzero()[0])}")
        return tol
    try:
        scalar = float(scalar)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a number, got {type(scalar).__name__}") from None
    if not scalar >= 0 or not math.isfinite(scalar):
        raise ValueError(f"{name} must be a finite number >= 0, got {scalar}")
    return scalar


def check_not_both_zero(what: str, solver: Method, rtol: Tolerance, atol: Tolerance) -> None:
    """An adaptive method divides the error by ``atol + rtol * |y|``: it must not vanish anywhere."""
    if not solver.adaptive or not (torch.is_tensor(rtol) or torch.is_tensor(atol) or rtol == atol == 0):
        return
    zero = torch.as_tensor(rtol == 0) & torch.as_tensor(atol == 0)
    if bool(zero.any()):
        where = f" (at flat index {int(zero.nonzero()[0])})" if zero.ndim else ""
        raise ValueError(f"{what}rtol and {what}atol cannot both be 0{where} for the adaptive method {solver.name!r}")


def check_options(solver: Method, options: Mapping[str, Any] | None, what: str = "options",
                  strict: bool = False) -> dict[str, Any]:
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
            warn_caller(message + " (ignored)")
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
    if known.get("min_step", 0) > known.get("max_step", math.inf):
        raise ValueError(f"{what}: min_step={known['min_step']} is above max_step={known['max_step']}; "
                         "min_step must be <= max_step")
    if "step_size" in known and "grid_constructor" in known:
        raise ValueError(f"{what}: give either 'step_size' or 'grid_constructor', not both")
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
        if not torch.compiler.is_compiling():  # a compiled step (solvers.compiled) counts the calls it makes
            counter.nfe += 1
        return structure.flatten(func(t, structure.unflatten(y)), what="func(t, y)")
    return f



def solve_time_dtype(solver: Method, opts: dict[str, Any], state_dtype: torch.dtype) -> torch.dtype:
    """The dtype a solve holds time in; ``opts['dtype']`` (checked) becomes a torch dtype in place. Adaptive methods
    hold time in float64 unless options['dtype'] says otherwise, as torchdiffeq does: a step is taken in the
    state's dtype, but the times it adds up to are not rounded to it."""
    time_dtype = solver.default_time_dtype
    if "dtype" in opts:
        time_dtype = opts["dtype"] = _time_dtype(opts["dtype"])
    return torch.promote_types(time_dtype or state_dtype, state_dtype)


def build_problem(y0: State, t: Any, rtol: Any, atol: Any, solver: Method, options: Mapping[str, Any] | None,
                  what: str = "", like: Problem | None = None) -> Problem:
    """Validate everything; ``like``: a problem on the same ``y0`` and ``t`` whose checks to reuse."""
    structure = StateStructure(y0) if like is None else like.structure
    rtol = check_tolerance(what + "rtol", rtol, structure)
    atol = check_tolerance(what + "atol", atol, structure)
    check_not_both_zero(what, solver, rtol, atol)
    opts = check_options(solver, options, what=what + "options")
    time_dtype = solve_time_dtype(solver, opts, structure.dtype)
    t, t_host = check_times(t, time_dtype, structure.device) if like is None else (like.t.to(time_dtype), like.t_host)
    if t_host is None and (solver.adaptive or "step_size" in opts or "grid_constructor" in opts):
        raise ValueError("only fixed-step methods on the grid t (no step_size or grid_constructor) can run "
                         f"inside CUDA-graph capture; got method {solver.name!r}")
    norm = opts.pop("norm", None)
    if norm is None:
        norm = structure.default_norm()
    elif callable(norm):
        norm = structure.user_norm(norm)
    else:
        raise ValueError(f"{what}options['norm'] must be a callable, got {norm!r}")
    return Problem(solver, structure, t, t_host, rtol, atol, opts, norm)


def supported_callbacks(solver: Method, callbacks: StepCallbacks | None, names: tuple[str, str, str] = CALLBACK_NAMES
                        ) -> StepCallbacks | None:
    """The hooks ``solver`` calls; the others are dropped with a warning, as torchdiffeq does."""
    if callbacks is None:
        return None
    valid = solver.valid_callbacks
    given = {name: hook for name, hook in zip(CALLBACK_NAMES, (callbacks.step, callbacks.accept, callbacks.reject))
             if hook is not None}
    dropped = [shown for name, shown in zip(CALLBACK_NAMES, names) if name in given and name not in valid]
    if dropped:
        warn_caller(f"method {solver.name!r} does not call {', '.join(dropped)} (ignored)")
    kept = [given.get(name) if name in valid else None for name in CALLBACK_NAMES]
    return StepCallbacks(*kept) if any(h is not None for h in kept) else None



def step_callbacks(func: Callable, to_user: Callable[[torch.Tensor], Any], suffix: str = "") -> StepCallbacks | None:
    """``func``'s ``callback_step``/``callback_accept_step``/``callback_reject_step`` (each name + ``suffix``),
    called with the state in the user's structure (``to_user`` of the flat state); ``None`` if it has none."""
    hooks = [getattr(func, name + suffix, None) for name in CALLBACK_NAMES]
    for name, hook in zip(CALLBACK_NAMES, hooks):
        if hook is not None and not callable(hook):
            raise TypeError(f"func.{name + suffix} must be callable (t0, y0, dt), got {type(hook).__name__}")
    if all(hook is None for hook in hooks):
        return None
    wrap = lambda hook: None if hook is None else (lambda t0, y, dt: hook(t0, to_user(y), dt))  # noqa: E731
    return StepCallbacks(*(wrap(hook) for hook in hooks))
