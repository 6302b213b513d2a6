"""Small dynamics against every peer library: neuralode eager and compiled (``options['compile']``), torchdiffeq,
torchode (eager and TorchScript) and diffrax (XLA), each on the same problem, dopri5, float32, one thread.

On cheap dynamics the solver's own per-step work dominates, which is what these cases measure. Each library solves
the problem as one system (one step size and one error norm over the whole batch; torchode, which solves the
samples of a batch independently, gets the batch flattened into one sample). Every library's result is compared
with a float64 reference (neuralode at rtol = atol = 1e-10), so that equal times can be read at equal errors.
Libraries that are not installed (torchode, diffrax and jax are dev-only oracles: ``pip install -e .[bench]``) are
reported as such. Used by ``scripts/bench.py --cases small_node_forward,small_node_grad,vdp_joint``.
"""
from __future__ import annotations

import copy
import importlib.util
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

import neuralode
from neuralode.solvers import compiled

LIBRARIES = ("neuralode", "neuralode_compiled", "torchdiffeq", "torchode", "torchode_jit", "diffrax")
# What each library needs besides torch.
_NEEDS = {"torchdiffeq": ("torchdiffeq",), "torchode": ("torchode",), "torchode_jit": ("torchode",),
          "diffrax": ("diffrax", "jax")}


@dataclass
class PeerProblem:
    """One problem: the torch dynamics module, the initial state and output times, the tolerance, and whether the
    result is the gradient of ``loss = mean(y(t_end)^2)`` w.r.t. the dynamics' parameters (else the states at
    ``t``)."""

    func: nn.Module
    y0: torch.Tensor
    t: torch.Tensor
    tol: float
    grad: bool
    # The same dynamics in jax: (params, y) -> dy/dt, and its parameters as numpy arrays.
    jax_dynamics: Callable
    jax_params: tuple[np.ndarray, ...]


class SmallNODE(nn.Module):
    """diffrax's small neural ODE benchmark network: Linear(4, 32), softplus, Linear(32, 4), tanh."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = nn.Linear(4, 32)
        self.outer = nn.Linear(32, 4)

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.outer(nn.functional.softplus(self.inner(y))))


class VanDerPol(nn.Module):
    """x'' = mu (1 - x^2) x' - x on a batch of (x, x') pairs, shape (batch, 2)."""

    def __init__(self, mu: float) -> None:
        super().__init__()
        self.mu = mu

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, v = y[:, 0], y[:, 1]
        return torch.stack([v, self.mu * (1 - x * x) * v - x], dim=1)


def _small_node(grad: bool) -> PeerProblem:
    torch.manual_seed(0)
    func = SmallNODE()

    def jax_dynamics(params, y):
        import jax

        w1, b1, w2, b2 = params
        return jax.numpy.tanh(jax.nn.softplus(y @ w1.T + b1) @ w2.T + b2)

    params = tuple(p.detach().numpy().copy() for p in (func.inner.weight, func.inner.bias, func.outer.weight,
                                                        func.outer.bias))
    return PeerProblem(func, torch.randn(64, 4), torch.tensor([0.0, 100.0]), 1e-6, grad, jax_dynamics, params)


def _vdp() -> PeerProblem:
    torch.manual_seed(0)
    mu = 2.0

    def jax_dynamics(params, y):
        import jax

        x, v = y[:, 0], y[:, 1]
        return jax.numpy.stack([v, mu * (1 - x * x) * v - x], axis=1)

    y0 = 4 * torch.rand(256, 2) - 2
    return PeerProblem(VanDerPol(mu), y0, torch.linspace(0.0, 10.0, 200), 1e-5, False, jax_dynamics, ())


PEER_CASES: dict[str, Callable[[], PeerProblem]] = {
    "small_node_forward": lambda: _small_node(False),
    "small_node_grad": lambda: _small_node(True),
    "vdp_joint": _vdp,
}


def installed(library: str) -> bool:
    return all(importlib.util.find_spec(m) is not None for m in _NEEDS.get(library, ()))


def _torch_result(p: PeerProblem, solve: Callable[[nn.Module, torch.Tensor], torch.Tensor]) -> Callable[[], np.ndarray]:
    """A run of a torch library: the states at ``t`` (no grad) or the loss's gradient w.r.t. the parameters."""
    params = list(p.func.parameters())

    def run() -> np.ndarray:
        if not p.grad:
            with torch.no_grad():
                return solve(p.func, p.y0).numpy()
        ys = solve(p.func, p.y0)
        grads = torch.autograd.grad(ys[-1].pow(2).mean(), params)
        return torch.cat([g.reshape(-1) for g in grads]).numpy()
    return run


def _torchode_solver(p: PeerProblem, jit: bool) -> Callable[[nn.Module, torch.Tensor], torch.Tensor]:
    import torchode

    shape = p.y0.shape

    class Joint(nn.Module):
        """The batch as one sample of torchode's (samples, features) state: one step size, one norm."""

        def __init__(self, func: nn.Module) -> None:
            super().__init__()
            self.func = func
            self.shape = list(shape)  # an attribute, not a closure: TorchScript compiles this method

        def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return self.func(t, y.reshape(self.shape)).reshape(1, -1)

    term = torchode.ODETerm(Joint(p.func))
    solver = torchode.AutoDiffAdjoint(torchode.Dopri5(term=term),
                                      torchode.IntegralController(atol=p.tol, rtol=p.tol, term=term))
    if jit:
        solver = torch.jit.script(solver)
    t_eval = p.t[None]

    def solve(func: nn.Module, y0: torch.Tensor) -> torch.Tensor:
        sol = solver.solve(torchode.InitialValueProblem(y0=y0.reshape(1, -1), t_eval=t_eval))
        return sol.ys[0].reshape(len(p.t), *shape)
    return solve


def _diffrax_run(p: PeerProblem) -> Callable[[], np.ndarray]:
    import diffrax
    import jax
    import jax.numpy as jnp

    term = diffrax.ODETerm(lambda t, y, params: p.jax_dynamics(params, y))
    t = np.asarray(p.t.numpy())
    saveat = diffrax.SaveAt(ts=jnp.asarray(t))
    controller = diffrax.PIDController(rtol=p.tol, atol=p.tol)
    y0 = jnp.asarray(p.y0.numpy())
    params = tuple(jnp.asarray(a) for a in p.jax_params)

    def solve(params):
        return diffrax.diffeqsolve(term, diffrax.Dopri5(), t[0], t[-1], None, y0, args=params, saveat=saveat,
                                   stepsize_controller=controller, max_steps=100_000).ys

    if p.grad:
        loss = lambda params: jnp.mean(solve(params)[-1] ** 2)  # noqa: E731
        fn = jax.jit(lambda params: jnp.concatenate([g.reshape(-1) for g in jax.grad(loss)(params)]))
    else:
        fn = jax.jit(solve)
    return lambda: np.asarray(fn(params).block_until_ready())


def make_runs(p: PeerProblem, libraries: tuple[str, ...]) -> dict[str, Callable[[], np.ndarray]]:
    """The timed unit of every installed library."""
    import_ok = {lib: installed(lib) for lib in libraries}
    kw = dict(rtol=p.tol, atol=p.tol, method="dopri5")
    runs: dict[str, Callable[[], np.ndarray]] = {}
    for lib in libraries:
        if not import_ok[lib]:
            continue
        if lib == "neuralode":
            runs[lib] = _torch_result(p, lambda func, y0: neuralode.odeint(func, y0, p.t, **kw))
        elif lib == "neuralode_compiled":
            runs[lib] = _torch_result(p, lambda func, y0: neuralode.odeint(func, y0, p.t, **kw,
                                                                           options=dict(compile=True)))
        elif lib == "torchdiffeq":
            import torchdiffeq

            runs[lib] = _torch_result(p, lambda func, y0: torchdiffeq.odeint(func, y0, p.t, **kw))
        elif lib in ("torchode", "torchode_jit"):
            runs[lib] = _torch_result(p, _torchode_solver(p, jit=lib == "torchode_jit"))
        elif lib == "diffrax":
            runs[lib] = _diffrax_run(p)
    return runs


def reference(p: PeerProblem) -> np.ndarray:
    """The float64 answer: neuralode at rtol = atol = 1e-10 on float64 copies of the dynamics and state."""
    ref = PeerProblem(copy.deepcopy(p.func).double(), p.y0.double(), p.t.double(), 1e-10, p.grad, p.jax_dynamics, p.jax_params)
    return _torch_result(ref, lambda func, y0: neuralode.odeint(func, y0, ref.t, rtol=1e-10, atol=1e-10,
                                                                method="dopri5"))()


def run_peer_case(name: str, warmup: int, repeats: int, libraries: tuple[str, ...] = LIBRARIES) -> dict:
    """Interleaved timing (the order rotates every round) of every installed library on one case: median ms,
    relative error against the float64 reference, and the first call's extra time (tracing and compiling)."""
    p = PEER_CASES[name]()
    runs = make_runs(p, libraries)
    exact = reference(p)
    order = list(runs)
    first_ms: dict[str, float] = {}
    times: dict[str, list[float]] = {lib: [] for lib in order}
    results: dict[str, np.ndarray] = {}
    for r in range(warmup + repeats):
        shift = r % len(order)
        for lib in order[shift:] + order[:shift]:
            start = time.perf_counter()
            results[lib] = runs[lib]()
            ms = (time.perf_counter() - start) * 1e3
            if r == 0:
                first_ms[lib] = ms
            if r >= warmup:
                times[lib].append(ms)
    row: dict = {"case": name, "tol": p.tol}
    for lib in libraries:
        if lib not in runs:
            row[lib] = "not installed"
            continue
        median = statistics.median(times[lib])
        err = float(np.max(np.abs(results[lib].astype(np.float64) - exact)) / np.max(np.abs(exact)))
        row[lib] = {"ms": round(median, 3), "rel_err": float(f"{err:.3g}"),
                    "first_call_extra_s": round((first_ms[lib] - median) / 1e3, 2)}
    row["compile_s"] = {k: round(v, 1) for k, v in compiled.compile_times().items()}
    return row


def table(rows: list[dict], libraries: tuple[str, ...] = LIBRARIES) -> str:
    """A markdown table: median ms (relative error) per case and library, and the ratio to diffrax's time."""
    lines = ["| case | " + " | ".join(libraries) + " |", "|---|" + "---:|" * len(libraries)]
    for row in rows:
        base = row.get("diffrax")
        cells = []
        for lib in libraries:
            v = row[lib]
            if isinstance(v, str):
                cells.append(v)
                continue
            ratio = f", {v['ms'] / base['ms']:.1f}x diffrax" if isinstance(base, dict) and lib != "diffrax" else ""
            cells.append(f"{v['ms']:.2f} ms (err {v['rel_err']:.1e}{ratio})")
        lines.append(f"| {row['case']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def one_thread_for_jax() -> None:
    """XLA's CPU client runs on one thread, as torch does here; must be set before jax is imported."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "intra_op_parallelism_threads" not in flags:
        os.environ["XLA_FLAGS"] = (flags + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()


def main_peers(names: list[str], warmup: int, repeats: int) -> None:
    one_thread_for_jax()
    rows = []
    for name in names:
        row = run_peer_case(name, warmup, repeats)
        print(json.dumps(row), flush=True)
        rows.append(row)
    print(table(rows), file=sys.stderr, flush=True)
