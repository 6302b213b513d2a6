"""Small dynamics against every peer library: neuralode eager and compiled (``options['compile']``), torchdiffeq,
torchode (eager and TorchScript) and diffrax (XLA), each on the same problem, dopri5, float32, one thread.

On cheap dynamics the solver's own per-step work dominates, which is what these cases measure. Each library solves
the problem as one system (one step size and one error norm over the whole batch; torchode, which solves the
samples of a batch independently, gets the batch flattened into one sample). Every library's result is compared
with a float64 reference (neuralode at rtol = atol = 1e-10), so that equal times can be read at equal errors.
Libraries that are not installed (torchode, diffrax and jax are dev-only oracles: ``pip install -e .[bench]``) are
reported as such. Used by ``scripts/bench.py --cases small_node_forward,small_node_grad,vdp_joint``.

The per-sample cases (``vdp_per_sample``: Van der Pol with mu = 2 for every sample; ``vdp_per_sample_mu``: mu
spread over [0.5, 5]; torchode's paper benchmark) compare solves that give every sample its own steps (neuralode's
``options=dict(per_sample=True)``, torchode as it is meant to be used) with joint solves of the same batch
(neuralode, torchdiffeq), and also report each library's work: steps per sample, calls of the dynamics on the
batch, and evaluations summed over the samples.
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
# The per-sample cases: torchode solves each sample on its own there; neuralode and torchdiffeq solve jointly.
PER_SAMPLE_LIBRARIES = ("neuralode_per_sample", "neuralode", "torchode", "torchode_jit", "torchdiffeq")
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
    # Whether this is a per-sample case: torchode then solves every sample on its own instead of the flattened batch.
    per_sample: bool = False


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

    def __init__(self, mu: float | torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("mu", torch.as_tensor(mu, dtype=torch.float32))  # () or one per sample, (batch,)

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


def _vdp(samples: int = 256, mu_spread: bool = False, per_sample: bool = False) -> PeerProblem:
    """Van der Pol on ``samples`` random initial states in [-2, 2]^2, 200 outputs on [0, 10], rtol = atol = 1e-5;
    mu = 2 for every sample, or (``mu_spread``) evenly spread over [0.5, 5] in random order."""
    torch.manual_seed(0)
    mu = torch.linspace(0.5, 5.0, samples)[torch.randperm(samples)] if mu_spread else torch.tensor(2.0)
    mu_np = mu.numpy()

    def jax_dynamics(params, y):
        import jax

        x, v = y[:, 0], y[:, 1]
        return jax.numpy.stack([v, mu_np * (1 - x * x) * v - x], axis=1)

    y0 = 4 * torch.rand(samples, 2) - 2
    return PeerProblem(VanDerPol(mu), y0, torch.linspace(0.0, 10.0, 200), 1e-5, False, jax_dynamics, (),
                       per_sample)


# Each case takes the number of samples as an optional argument (the tests run tiny batches).
PEER_CASES: dict[str, Callable[..., PeerProblem]] = {
    "small_node_forward": lambda: _small_node(False),
    "small_node_grad": lambda: _small_node(True),
    "vdp_joint": _vdp,
    "vdp_per_sample": lambda samples=256: _vdp(samples, per_sample=True),
    "vdp_per_sample_mu": lambda samples=256: _vdp(samples, mu_spread=True, per_sample=True),
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


def _torchode_solver(p: PeerProblem, jit: bool) -> Callable[[torch.Tensor], tuple[torch.Tensor, dict]]:
    """torchode's solve of ``y0``: the states at ``t`` and torchode's statistics. In a per-sample case every sample
    is one of torchode's samples (its own steps); otherwise the batch is flattened into one sample."""
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

    term = torchode.ODETerm(p.func if p.per_sample else Joint(p.func))
    solver = torchode.AutoDiffAdjoint(torchode.Dopri5(term=term),
                                      torchode.IntegralController(atol=p.tol, rtol=p.tol, term=term))
    if jit:
        solver = torch.jit.script(solver)
    samples = shape[0] if p.per_sample else 1
    t_eval = p.t[None].repeat(samples, 1)

    def solve(y0: torch.Tensor) -> tuple[torch.Tensor, dict]:
        sol = solver.solve(torchode.InitialValueProblem(y0=y0.reshape(samples, -1), t_eval=t_eval))
        return sol.ys.transpose(0, 1).reshape(len(p.t), *shape), sol.stats
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
        elif lib == "neuralode_per_sample":
            runs[lib] = _torch_result(p, lambda func, y0: neuralode.odeint(func, y0, p.t, **kw,
                                                                           options=dict(per_sample=True)))
        elif lib == "neuralode_compiled":
            runs[lib] = _torch_result(p, lambda func, y0: neuralode.odeint(func, y0, p.t, **kw,
                                                                           options=dict(compile=True)))
        elif lib == "torchdiffeq":
            import torchdiffeq

            runs[lib] = _torch_result(p, lambda func, y0: torchdiffeq.odeint(func, y0, p.t, **kw))
        elif lib in ("torchode", "torchode_jit"):
            solve = _torchode_solver(p, jit=lib == "torchode_jit")
            runs[lib] = _torch_result(p, lambda func, y0, solve=solve: solve(y0)[0])
        elif lib == "diffrax":
            runs[lib] = _diffrax_run(p)
    return runs


def reference(p: PeerProblem) -> np.ndarray:
    """The float64 answer: neuralode at rtol = atol = 1e-10 on float64 copies of the dynamics and state."""
    ref = PeerProblem(copy.deepcopy(p.func).double(), p.y0.double(), p.t.double(), 1e-10, p.grad, p.jax_dynamics, p.jax_params)
    return _torch_result(ref, lambda func, y0: neuralode.odeint(func, y0, ref.t, rtol=1e-10, atol=1e-10,
                                                                method="dopri5"))()


class _CallCounter:
    """Counts the calls of a module (each on the whole batch) through a forward pre-hook, while in a ``with``."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.calls = 0

    def _count(self, module: nn.Module, args: tuple) -> None:
        self.calls += 1

    def __enter__(self) -> _CallCounter:
        self.handle = self.module.register_forward_pre_hook(self._count)
        return self

    def __exit__(self, *exc: object) -> None:
        self.handle.remove()


def work(p: PeerProblem, lib: str) -> dict:
    """One untimed solve's work: accepted steps per sample (mean and max), calls of the dynamics on the batch, and
    evaluations summed over the samples (a joint solve evaluates every sample at every call; a per-sample one counts
    a sample's calls while it still advanced). None where the library does not say."""
    samples = p.y0.shape[0]
    kw = dict(rtol=p.tol, atol=p.tol, method="dopri5")
    with torch.no_grad():
        if lib in ("neuralode", "neuralode_per_sample"):
            stats = neuralode.SolveStats()
            neuralode.odeint(p.func, p.y0, p.t, **kw, stats=stats,
                             options=dict(per_sample=True) if lib == "neuralode_per_sample" else None)
            counts = stats.per_sample_forward
            steps = counts.accepted.double() if counts is not None else torch.full((samples,), float(
                stats.steps_accepted_forward), dtype=torch.float64)
            sample_evals = int(counts.nfe.sum()) if counts is not None else stats.nfe_forward * samples
            return _work_row(steps, stats.nfe_forward, sample_evals)
        if lib == "torchdiffeq":
            import torchdiffeq

            with _CallCounter(p.func) as counter:
                torchdiffeq.odeint(p.func, p.y0, p.t, **kw)
            return _work_row(None, counter.calls, counter.calls * samples)
        if lib in ("torchode", "torchode_jit"):
            _, stats = _torchode_solver(p, jit=lib == "torchode_jit")(p.y0)
            calls = int(stats["n_f_evals"].max())  # torchode counts every call for every sample
            steps = stats["n_accepted"].double().expand(samples) if not p.per_sample else stats["n_accepted"].double()
            return _work_row(steps, calls, None if p.per_sample else calls * samples)
    raise ValueError(f"no work count for library {lib!r}")


def _work_row(steps: torch.Tensor | None, calls: int, sample_evals: int | None) -> dict:
    return {"steps_mean": None if steps is None else round(float(steps.mean()), 1),
            "steps_max": None if steps is None else int(steps.max()), "calls": calls, "sample_evals": sample_evals}


def run_peer_case(name: str, warmup: int, repeats: int, libraries: tuple[str, ...] | None = None,
                  samples: int | None = None) -> dict:
    """Interleaved timing (the order rotates every round) of every installed library on one case: median ms,
    relative error against the float64 reference, and the first call's extra time (tracing and compiling); in a
    per-sample case also each library's :func:`work`. ``libraries`` defaults to the case's kind (LIBRARIES or
    PER_SAMPLE_LIBRARIES); ``samples`` changes the batch of a Van der Pol case."""
    p = PEER_CASES[name]() if samples is None else PEER_CASES[name](samples)
    libraries = libraries or (PER_SAMPLE_LIBRARIES if p.per_sample else LIBRARIES)
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
    row: dict = {"case": name, "tol": p.tol, "samples": p.y0.shape[0], "per_sample": p.per_sample}
    for lib in libraries:
        if lib not in runs:
            row[lib] = "not installed"
            continue
        median = statistics.median(times[lib])
        err = float(np.max(np.abs(results[lib].astype(np.float64) - exact)) / np.max(np.abs(exact)))
        row[lib] = {"ms": round(median, 3), "rel_err": float(f"{err:.3g}"),
                    "first_call_extra_s": round((first_ms[lib] - median) / 1e3, 2)}
        if p.per_sample:
            row[lib].update(work(p, lib))
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


def work_table(rows: list[dict]) -> str:
    """A markdown table of the per-sample cases: one line per case and library with its time, error and work."""
    lines = ["| case | library | ms per solve | err | steps per sample (mean / max) | calls on the batch | "
             "evaluations summed over samples |", "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        for lib in PER_SAMPLE_LIBRARIES:
            v = row.get(lib, "not run")
            if isinstance(v, str):
                lines.append(f"| {row['case']} | {lib} | {v} | | | | |")
                continue
            steps = "n/a" if v["steps_mean"] is None else f"{v['steps_mean']:.1f} / {v['steps_max']}"
            evals = "n/a" if v["sample_evals"] is None else str(v["sample_evals"])
            lines.append(f"| {row['case']} | {lib} | {v['ms']:.1f} | {v['rel_err']:.1e} | {steps} | {v['calls']} | "
                         f"{evals} |")
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
    joint = [row for row in rows if not row["per_sample"]]
    if joint:
        print(table(joint), file=sys.stderr, flush=True)
    if len(joint) < len(rows):
        print(work_table([row for row in rows if row not in joint]), file=sys.stderr, flush=True)
