"""A validated solve: the checks of every argument, the flattening of tensor/tuple states into one real vector,
the user's step hooks, and the dispatch to a method (with decreasing time mapped onto increasing time where the
method needs it). The public ``odeint`` and ``odeint_adjoint`` build on it; so does the event search.
"""
from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Union

import torch

from neuralode.solvers.common import Counter, Dynamics, StepCallbacks
from neuralode.solvers.controller import CONTROLLERS
from neuralode.solvers.norms import MixedNorm, Norm, PairModulus, Tolerance
from neuralode.solvers.registry import SOLVERS

State = Union[torch.Tensor, tuple[torch.Tensor, ...]]
# What odeint takes as rtol/atol: a number, a tensor broadcasting against a tensor state, or one such per part of
# a tuple state.
ToleranceArg = Union[float, torch.Tensor, Sequence[Union[float, torch.Tensor]]]
DEFAULT_METHOD = "dopri5"
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


# Half-precision states are refused: error control at any useful tolerance is below their resolution (bf16 dopri5
# on y' = -y ended at 1e6 instead of 0.37), and dynamics evaluated in them would make every error estimate noise.
_LOW_PRECISION = (torch.float16, torch.bfloat16, torch.complex32)
_LOW_PRECISION_HINT = ("; half precision cannot resolve the solver's error control: solve in float32 (y0.float(), "
                       "and the module .float()) and cast the result back")


class StateStructure:
    """How a tensor or tuple of tensors maps to one flat real vector and back.

    The solvers see only real vectors: parts of different dtypes are promoted to one common real dtype
    (as torchdiffeq's ``torch.cat`` does) and cast back to their own dtype on the way out, so ``func``,
    a user norm and the outputs see every part in its original dtype; a complex part travels as its
    (real, imaginary) pairs (``torch.view_as_real``).
    """

    def __init__(self, y0: State, what: str = "y0") -> None:
        self.is_tuple = isinstance(y0, tuple)
        parts = y0 if self.is_tuple else (y0,)
        if self.is_tuple and not parts:
            raise ValueError(f"{what} is an empty tuple; give a tensor or a tuple of tensors")
        for p in parts:
            if not torch.is_tensor(p):
                raise TypeError(f"{what} must be a tensor or a tuple of tensors, got {type(p).__name__}")
            if not (p.is_floating_point() or p.is_complex()) or p.dtype in _LOW_PRECISION:
                raise TypeError(f"{what} must be floating point or complex (float32/float64/complex64/complex128), "
                                f"got {p.dtype}"
                                + (_LOW_PRECISION_HINT if p.dtype in _LOW_PRECISION else ""))
        if len({p.device for p in parts}) > 1:
            raise ValueError(f"all tensors of the tuple {what} must be on one device, got {[str(p.device) for p in parts]}")
        self.shapes = [p.shape for p in parts]
        self.dtypes = [p.dtype for p in parts]
        self.complex = [p.is_complex() for p in parts]
        self.numels = [p.numel() for p in parts]
        self.sizes = [2 * n if c else n for n, c in zip(self.numels, self.complex)]  # lengths in the flat vector
        self.real_dtypes = [p.real.dtype for p in parts]  # .real of a real tensor is itself: no copy
        self.dtype = functools.reduce(torch.promote_types, self.real_dtypes)
        self.device = parts[0].device
        # A single real tensor of the solver's dtype: flattening is a reshape (the hot path of training).
        self.plain = not self.is_tuple and not self.complex[0]
        offsets = [sum(self.sizes[:i]) for i in range(len(self.sizes))]
        complex_segments = [(o, s) for o, s, c in zip(offsets, self.sizes, self.complex) if c and s]
        # Error control measures a complex element by its modulus, as torchdiffeq does (norms.error_scale).
        self.magnitude = PairModulus(complex_segments) if complex_segments else None

    def flatten(self, y: State, what: str = "y") -> torch.Tensor:
        parts = y if isinstance(y, tuple) else (y,)
        if (isinstance(y, tuple) != self.is_tuple or len(parts) != len(self.shapes)
                or any(not torch.is_tensor(p) or p.shape != s for p, s in zip(parts, self.shapes))):
            got = tuple(tuple(p.shape) if torch.is_tensor(p) else type(p).__name__ for p in parts)
            want = tuple(tuple(s) for s in self.shapes)
            raise ValueError(f"{what} has shape(s) {got if self.is_tuple else got[0]} but the state has "
                             f"shape(s) {want if self.is_tuple else want[0]}")
        if self.plain and not y.is_complex():
            return y.reshape(-1)
        flat = []
        for i, (p, is_complex, dtype) in enumerate(zip(parts, self.complex, self.dtypes)):
            if is_complex:
                # A real derivative of a complex part is a complex one with zero imaginary part.
                p = torch.view_as_real(p.resolve_conj() if p.is_complex() else p.to(dtype))
            elif p.is_complex():
                where, part = (f"{what}[{i}]", "that part of the state") if self.is_tuple else (what, "the state")
                raise TypeError(f"{where} is complex ({p.dtype}) but {part} is real ({dtype}); make y0 complex to "
                                "integrate complex dynamics")
            flat.append(p.reshape(-1).to(self.dtype))
        return flat[0] if len(flat) == 1 else torch.cat(flat)

    def unflatten(self, flat: torch.Tensor) -> State:
        """``(N,)`` -> state, or ``(T, N)`` -> state with a leading time axis."""
        lead = tuple(flat.shape[:-1])
        if self.plain:
            return flat.reshape(lead + tuple(self.shapes[0]))
        parts = []
        for seg, shape, dtype, real_dtype, is_complex in zip(flat.split(self.sizes, dim=-1), self.shapes, self.dtypes,
                                                             self.real_dtypes, self.complex):
            if is_complex:
                pairs = seg.to(real_dtype).reshape(lead + tuple(shape) + (2,))
                # torch.complex, not view_as_complex: a segment may start at an odd offset of the flat vector.
                parts.append(torch.complex(pairs[..., 0], pairs[..., 1]))
            else:
                parts.append(seg.reshape(lead + tuple(shape)).to(dtype))
        return tuple(parts) if self.is_tuple else parts[0]

    def default_norm(self) -> Norm:
        return MixedNorm(self.sizes, counts=self.numels, magnitude=self.magnitude)

    def user_norm(self, norm: Callable[[State], torch.Tensor]) -> Norm:
        """The user's norm (on the state's structure, as torchdiffeq calls it) on the flat vector."""
        return UserNorm(norm, self.unflatten, self.magnitude)

    def per_element(self, name: str, value: Any) -> torch.Tensor:
        """A per-element tolerance as a flat ``(N,)`` tensor matching the flat state: broadcast against a tensor
        state; for a tuple state one entry per part (each a number, a tensor broadcasting against that part or,
        as torchdiffeq takes it, a flat tensor of its size). A complex element's tolerance covers both halves."""
        if self.is_tuple:
            if torch.is_tensor(value) and value.ndim != 1:
                raise ValueError(f"{name} for a tuple state must be a number or have one entry per tensor of the "
                                 f"tuple ({len(self.shapes)}), got a tensor of shape {tuple(value.shape)}")
            entries = list(value)
            if len(entries) != len(self.shapes):
                raise ValueError(f"{name} for a tuple state must be a number or have one entry per tensor of the "
                                 f"tuple ({len(self.shapes)}), got {len(entries)}")
            names = [f"{name}[{i}]" for i in range(len(entries))]
        else:
            entries, names = [value], [name]
        flat = []
        for entry, entry_name, shape, numel, is_complex in zip(entries, names, self.shapes, self.numels, self.complex):
            tol = _real_tensor(entry_name, entry).to(device=self.device, dtype=self.dtype)
            if _broadcastable(tol.shape, shape):
                tol = tol.expand(shape).reshape(-1)
            elif not (tol.ndim == 1 and tol.numel() == numel):  # torchdiffeq's flat form
                part = f" tensor {len(flat)} of the tuple" if self.is_tuple else ""
                raise ValueError(f"{entry_name} has shape {tuple(tol.shape)}, which does not broadcast against the "
                                 f"state{part}'s shape {tuple(shape)}")
            flat.append(tol.repeat_interleave(2) if is_complex else tol)
        return flat[0] if len(flat) == 1 else torch.cat(flat)


class UserNorm:
    """A user's norm, called on the flat vector with it in the user's structure (``to_user``); it carries the
    ``magnitude`` of complex parts for :func:`~neuralode.solvers.norms.error_scale` as the built-in norms do."""

    def __init__(self, norm: Callable[[Any], torch.Tensor], to_user: Callable[[torch.Tensor], Any],
                 magnitude: PairModulus | None) -> None:
        self.norm, self.to_user, self.magnitude = norm, to_user, magnitude

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.to_user(x))


def _broadcastable(shape: torch.Size, target: torch.Size) -> bool:
    try:
        return torch.broadcast_shapes(shape, target) == target
    except RuntimeError:
        return False


def _real_tensor(name: str, value: Any) -> torch.Tensor:
    if torch.is_tensor(value):
        if value.requires_grad:
            raise ValueError(f"{name} must not require grad (step control is not differentiated); pass {name}.detach()")
        if value.is_complex() or value.dtype == torch.bool:
            raise TypeError(f"{name} must be real, got {value.dtype}")
        return value
    try:
        return torch.as_tensor(value, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a number or a tensor of numbers, got {type(value).__name__}") from None


def check_tolerance(name: str, value: Any, structure: StateStructure | None = None) -> Tolerance:
    """A scalar tolerance as a host float; a per-element one (needs ``structure``) as a flat ``(N,)`` tensor on
    the state's device, checked here once (one sync per solve) so that the step loop never reads it back."""
    scalar = value
    is_tuple = structure is not None and structure.is_tuple
    if torch.is_tensor(value) and (value.ndim == 0 or (value.numel() == 1 and not is_tuple)):
        scalar = _real_tensor(name, value).item()
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


def check_not_both_zero(what: str, solver, rtol: Tolerance, atol: Tolerance) -> None:
    """An adaptive method divides the error by ``atol + rtol * |y|``: it must not vanish anywhere."""
    if not solver.adaptive or not (torch.is_tensor(rtol) or torch.is_tensor(atol) or rtol == atol == 0):
        return
    zero = torch.as_tensor(rtol == 0) & torch.as_tensor(atol == 0)
    if bool(zero.any()):
        where = f" (at flat index {int(zero.nonzero()[0])})" if zero.ndim else ""
        raise ValueError(f"{what}rtol and {what}atol cannot both be 0{where} for the adaptive method {solver.name!r}")


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


@dataclass
class Problem:
    """A validated solve: everything but the initial value and the dynamics' parameters."""

    solver: Any
    structure: StateStructure
    t: torch.Tensor
    t_host: list[float] | None
    rtol: Tolerance
    atol: Tolerance
    options: dict[str, Any]
    norm: Norm

    @classmethod
    def build(cls, y0: State, t: Any, rtol: Any, atol: Any, method: str | None,
              options: Mapping[str, Any] | None, what: str = "", like: "Problem | None" = None) -> "Problem":
        """Validate everything; ``like``: a problem on the same ``y0`` and ``t`` whose checks to reuse."""
        solver = resolve_method(method, what=what + "method")
        structure = StateStructure(y0) if like is None else like.structure
        rtol = check_tolerance(what + "rtol", rtol, structure)
        atol = check_tolerance(what + "atol", atol, structure)
        check_not_both_zero(what, solver, rtol, atol)
        opts = check_options(solver, options, what=what + "options")
        # Adaptive methods hold time in float64 unless options['dtype'] says otherwise, as torchdiffeq does: a step
        # is taken in the state's dtype, but the times it adds up to are not rounded to it.
        time_dtype = solver.default_time_dtype
        if "dtype" in opts:
            time_dtype = opts["dtype"] = _time_dtype(opts["dtype"])
        time_dtype = torch.promote_types(time_dtype or structure.dtype, structure.dtype)
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
        return cls(solver, structure, t, t_host, rtol, atol, opts, norm)

    def solve(self, f: Dynamics, y0: torch.Tensor, counter: Counter, t: torch.Tensor | None = None,
              callbacks: StepCallbacks | None = None) -> torch.Tensor:
        """Integrate the flat dynamics ``f`` from the flat ``y0`` over ``t`` (default: the problem's times;
        another tensor holds the same values, e.g. one that requires grad); returns ``(len(t), N)``."""
        t = self.t if t is None else t
        return integrate(self.solver, f, y0, t, self.t_host, self.rtol, self.atol, self.options, self.norm, counter,
                         callbacks)


def supported_callbacks(solver, callbacks: StepCallbacks | None, names: tuple[str, str, str] = CALLBACK_NAMES
                        ) -> StepCallbacks | None:
    """The hooks ``solver`` calls; the others are dropped with a warning, as torchdiffeq does."""
    if callbacks is None:
        return None
    valid = solver.valid_callbacks
    given = {name: hook for name, hook in zip(CALLBACK_NAMES, (callbacks.step, callbacks.accept, callbacks.reject))
             if hook is not None}
    dropped = [shown for name, shown in zip(CALLBACK_NAMES, names) if name in given and name not in valid]
    if dropped:
        warnings.warn(f"method {solver.name!r} does not call {', '.join(dropped)} (ignored)", stacklevel=4)
    kept = [given.get(name) if name in valid else None for name in CALLBACK_NAMES]
    return StepCallbacks(*kept) if any(h is not None for h in kept) else None


def integrate(solver, f: Dynamics, y0: torch.Tensor, t: torch.Tensor, t_host: list[float] | None,
              rtol: Tolerance, atol: Tolerance, options: dict[str, Any], norm: Norm, counter: Counter,
              callbacks: StepCallbacks | None = None, land: bool = False) -> torch.Tensor:
    """``land``: end on ``t[-1]`` exactly, where a method would otherwise step past it and interpolate back."""
    if t_host is not None and len(t_host) == 1:
        return y0[None]
    # Hooks and ``land`` are passed only when given: methods without them need not take the keyword.
    hooks: dict[str, Any] = {} if callbacks is None else {"callbacks": callbacks}
    if land and solver.can_overshoot:
        hooks["land"] = True
    if solver.increasing_time_only and t_host[-1] < t_host[0]:
        # Decreasing time: solve ds/dy = -f(-s, y) on s = -t, which increases.
        if callbacks is not None:
            hooks["callbacks"] = callbacks.reversed()
        return solver.solve(lambda s, y: -f(-s, y), y0, -t, [-x for x in t_host], rtol=rtol, atol=atol,
                            norm=norm, options=options, counter=counter, time_sign=-1.0, **hooks)
    return solver.solve(f, y0, t, t_host, rtol=rtol, atol=atol, norm=norm, options=options, counter=counter, **hooks)


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
