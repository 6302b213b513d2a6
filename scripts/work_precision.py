"""Work against precision: NFE and error of neuralode against torchdiffeq 0.2.5, for every method both have.

Float64, no gradients, one process. Each problem has an exact or tight reference at its outputs. The error of
a solve is the max abs error over all outputs and components; its work (NFE) is the number of calls of the
dynamics, counted by the same wrapper for both libraries. Adaptive methods run at a few tolerances
(``atol = rtol / 100``), fixed-grid methods at a few ``options={"step_size": h}``; each row then asks what
torchdiffeq needs to reach ours' error: starting at ours' tolerance, its tolerance is tightened on a 10^(1/4)
grid (step sizes: ``0.1 / m`` for integers ``m`` about 10^(1/4) apart, so every step divides the output
spacing) up to a limit, and the first run with an error <= ours' (0.1% slack for roundoff) gives its NFE;
">N (never)" when no run within the limits gets there (N: the most NFE tried). Rows where ours' error is not
finite (an unstable step size) are not compared.
``scipy_solver`` is left out: it runs the same SciPy code in both libraries.

    python scripts/work_precision.py [--quick] [--json] [--methods dopri5,rk4,...] [--problems decay,lotka,mlp]
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torchdiffeq
from scipy.integrate import solve_ivp
from torch import nn
from torchdiffeq._impl.odeint import SOLVERS as TD_SOLVERS

import neuralode

DTYPE = torch.float64
SLACK = 1.001  # torchdiffeq "reaches" ours' error at err_theirs <= SLACK * err_ours (same steps differ by roundoff)
REF_TOL = 1e-13  # rtol = atol of the SciPy DOP853 reference
STEP_BASE = 0.1  # fixed-grid steps are STEP_BASE / m: they divide every problem's output spacing
LOW_ORDER = {"fehlberg2", "adaptive_heun"}  # adaptive methods whose tight tolerances take too long
METHODS = sorted((set(TD_SOLVERS) & set(neuralode.SOLVERS)) - {"scipy_solver"})

Func = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class Problem:
    name: str
    desc: str
    func: Func
    y0: torch.Tensor
    t: torch.Tensor
    ref: torch.Tensor  # states at t, shape (len(t), *y0.shape)


@dataclass
class Plan:
    """What to run: ours' knobs per method kind, and how far torchdiffeq's search may go."""

    adaptive_k: tuple[int, ...]  # rtol = 10^(-k/4)
    low_order_k: tuple[int, ...]
    fixed_m: tuple[int, ...]  # step_size = STEP_BASE / m
    tighter: int  # search: at most this many quarter-decades tighter than ours
    nfe_cap_factor: int  # ... or once torchdiffeq needs more than this many times ours' NFE (at least 2000)
    nfe_cap_abs: int  # ... and never past this many NFE


FULL = Plan(adaptive_k=(12, 20, 28, 36), low_order_k=(12, 16, 20, 24), fixed_m=(1, 4, 16),
            tighter=12, nfe_cap_factor=10, nfe_cap_abs=100_000)
QUICK = Plan(adaptive_k=(12, 20), low_order_k=(12, 16), fixed_m=(1, 4),
             tighter=6, nfe_cap_factor=4, nfe_cap_abs=20_000)


def scipy_reference(func: Func, y0: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """DOP853 at rtol = atol = REF_TOL, evaluated at ``t``."""
    def f(s: float, y: np.ndarray) -> np.ndarray:
        return func(torch.tensor(s, dtype=DTYPE), torch.from_numpy(y).reshape(y0.shape)).reshape(-1).numpy()

    with torch.no_grad():
        sol = solve_ivp(f, (float(t[0]), float(t[-1])), y0.reshape(-1).numpy(), method="DOP853",
                        t_eval=t.numpy(), rtol=REF_TOL, atol=REF_TOL)
    assert sol.success, sol.message
    return torch.from_numpy(sol.y.T.copy()).reshape(len(t), *y0.shape)


def make_problems() -> dict[str, Problem]:
    probs: list[Problem] = []
    t = torch.linspace(0, 1, 11, dtype=DTYPE)
    y0 = torch.tensor([1.0], dtype=DTYPE)
    probs.append(Problem("decay", "y' = -y, y(0) = 1 on [0, 1], 11 outputs; exact reference", lambda s, y: -y, y0, t,
                         torch.exp(-t)[:, None] * y0))

    def lotka(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x, p = y[0], y[1]
        return torch.stack([1.5 * x - x * p, x * p - 3.0 * p])

    t = torch.linspace(0, 10, 11, dtype=DTYPE)
    y0 = torch.tensor([1.0, 1.0], dtype=DTYPE)
    probs.append(Problem("lotka", "Lotka-Volterra x' = 1.5x - xy, y' = xy - 3y, (1, 1) on [0, 10], 11 outputs; "
                         "SciPy DOP853 reference", lotka, y0, t, scipy_reference(lotka, y0, t)))

    gen = torch.Generator().manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 4)).to(DTYPE)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=DTYPE) / math.sqrt(p.shape[-1]))
    net.requires_grad_(False)
    t = torch.linspace(0, 2, 11, dtype=DTYPE)
    y0 = torch.randn(3, 4, generator=gen, dtype=DTYPE)
    mlp: Func = lambda s, y: net(y)  # noqa: E731
    probs.append(Problem("mlp", "neural ODE y' = MLP(y) (4-32-4 tanh, seed 0), batch 3 x 4 on [0, 2], 11 outputs; "
                         "SciPy DOP853 reference", mlp, y0, t, scipy_reference(mlp, y0, t)))
    return {p.name: p for p in probs}


class OverCap(Exception):
    """A solve went past its NFE cap."""


class Result(NamedTuple):
    nfe: int
    err: float  # max abs error at the outputs; nan when the solver failed
    failure: str | None = None  # the solver's exception, if it raised one


def solve(lib: str, prob: Problem, method: str, rtol: float, atol: float, options: dict | None = None,
          max_nfe: int | None = None) -> Result:
    """One solve; raises OverCap past ``max_nfe`` calls, returns any other solver error as a failed Result."""
    calls = 0

    def f(s: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        nonlocal calls
        calls += 1
        if max_nfe is not None and calls > max_nfe:
            raise OverCap
        return prob.func(s, y)

    odeint = neuralode.odeint if lib == "ours" else torchdiffeq.odeint
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # e.g. implicit_adams' non-converged corrector (both libraries warn alike)
        try:
            y = odeint(f, prob.y0, prob.t, rtol=rtol, atol=atol, method=method, options=options)
        except OverCap:
            raise
        except Exception as e:  # e.g. torchdiffeq's "underflow in dt" assertion
            return Result(calls, math.nan, f"{type(e).__name__}: {e}")
    return Result(calls, (y - prob.ref).abs().max().item())


def is_adaptive(method: str) -> bool:
    return neuralode.SOLVERS[method].adaptive


def knob_args(method: str, knob: int) -> tuple[float, float, dict | None, str]:
    """(rtol, atol, options, label) for knob ``k`` (adaptive: rtol = 10^(-k/4)) or ``m`` (fixed: h = 0.1 / m)."""
    if is_adaptive(method):
        rtol = 10.0 ** (-knob / 4)
        return rtol, rtol / 100, None, f"rtol={rtol:.2g}"
    return 1e-7, 1e-9, {"step_size": STEP_BASE / knob}, f"h={STEP_BASE / knob:.3g}"


def search_knobs(method: str, knob: int, plan: Plan) -> list[int]:
    """torchdiffeq's knobs to try for ours' ``knob``, from ours' on, loose to tight."""
    if is_adaptive(method):
        return list(range(knob, knob + plan.tighter + 1))
    ms = {round(knob * 10 ** (j / 4)) for j in range(plan.tighter + 1)}
    return sorted(ms)


class TheirSearch:
    """torchdiffeq's runs for one (problem, method), cached by knob."""

    def __init__(self, prob: Problem, method: str) -> None:
        self.prob, self.method = prob, method
        self.runs: dict[int, Result | None] = {}  # None: stopped at the NFE cap

    def run(self, knob: int, cap: int | None = None) -> Result | None:
        if knob in self.runs and (self.runs[knob] is not None or cap is None):
            return self.runs[knob]
        rtol, atol, options, _ = knob_args(self.method, knob)
        try:
            self.runs[knob] = solve("torchdiffeq", self.prob, self.method, rtol, atol, options, max_nfe=cap)
        except OverCap:
            self.runs[knob] = None
        return self.runs[knob]

    def reach(self, knob: int, target: float, nfe_ours: int, plan: Plan) -> tuple[int | None, int, str | None]:
        """(NFE of the first run with error <= target or None, most NFE tried, that run's label)."""
        cap = min(max(plan.nfe_cap_factor * nfe_ours, 2000), plan.nfe_cap_abs)
        most = 0
        for k in search_knobs(self.method, knob, plan):
            if not is_adaptive(self.method):  # fixed grid: NFE scales with m; skip runs predicted past the cap
                nfe_here = self.run(knob).nfe  # type: ignore[union-attr]
                if nfe_here * k / knob > cap:
                    break
            res = self.run(k, cap)
            if res is None:
                most = max(most, cap)
                break
            nfe, err, _ = res  # a failed run (err nan) does not qualify
            most = max(most, nfe)
            if err <= SLACK * target:
                return nfe, most, knob_args(self.method, k)[3]
        return None, most, None


def compare(prob: Problem, method: str, plan: Plan) -> list[dict]:
    """One row per ours' knob: ours and torchdiffeq at that knob, and torchdiffeq's NFE at ours' error."""
    knobs = (plan.low_order_k if method in LOW_ORDER else plan.adaptive_k) if is_adaptive(method) else plan.fixed_m
    theirs = TheirSearch(prob, method)
    rows = []
    for knob in knobs:
        rtol, atol, options, label = knob_args(method, knob)
        nfe_ours, err_ours, fail_ours = solve("ours", prob, method, rtol, atol, options)
        nfe_theirs, err_theirs, fail_theirs = theirs.run(knob)  # type: ignore[misc]
        comparable = math.isfinite(err_ours)
        at_nfe, most, at_label = theirs.reach(knob, err_ours, nfe_ours, plan) if comparable else (None, 0, None)
        rows.append({
            "problem": prob.name, "method": method, "adaptive": is_adaptive(method), "knob": label,
            "rtol": rtol if options is None else None, "atol": atol if options is None else None,
            "step_size": options["step_size"] if options else None,
            "nfe_ours": nfe_ours, "err_ours": err_ours, "nfe_torchdiffeq": nfe_theirs, "err_torchdiffeq": err_theirs,
            "nfe_torchdiffeq_at_ours_err": at_nfe, "torchdiffeq_knob_at_ours_err": at_label,
            "torchdiffeq_max_nfe_tried": most, "failure_ours": fail_ours, "failure_torchdiffeq": fail_theirs,
            "no_more_nfe": (at_nfe is None or nfe_ours <= at_nfe) if comparable else None,
        })
    return rows


def run(problems: list[str] | None = None, methods: list[str] | None = None, quick: bool = False,
        progress: Callable[[str], None] | None = None) -> list[dict]:
    """All rows for the given problems and methods (default: all)."""
    plan = QUICK if quick else FULL
    probs = make_problems()
    rows = []
    for pname in problems or list(probs):
        for method in methods or METHODS:
            if progress:
                progress(f"{pname} {method}")
            rows += compare(probs[pname], method, plan)
    return rows


def header() -> str:
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (f"work-precision, neuralode {neuralode.__version__} vs torchdiffeq {torchdiffeq.__version__} | "
            f"torch {torch.__version__} | {platform.platform()} ({platform.machine()}), {os.cpu_count()} CPUs, "
            f"torch threads {torch.get_num_threads()} | {now} | loadavg {load}")


def reference_check(probs: dict[str, Problem]) -> str:
    """How far neuralode's dopri8 at rtol = atol = 1e-13 is from each reference (a bound on its error)."""
    parts = []
    for p in probs.values():
        err = solve("ours", p, "dopri8", 1e-13, 1e-13).err
        parts.append(f"{p.name} {err:.1e}")
    return "reference check, max |reference - neuralode dopri8 at rtol=atol=1e-13|: " + ", ".join(parts)


def err_cell(r: dict, side: str) -> str:
    fail = r[f"failure_{side}"]
    return f"failed ({fail[:60]})" if fail else f"{r[f'err_{side}']:.2e}"


def at_cell(r: dict) -> str:
    if r["no_more_nfe"] is None:
        return "n/a (ours' error not finite)"
    if r["nfe_torchdiffeq_at_ours_err"] is None:
        return f">{r['torchdiffeq_max_nfe_tried']} (never)"
    return f"{r['nfe_torchdiffeq_at_ours_err']} ({r['torchdiffeq_knob_at_ours_err']})"


def tables(rows: list[dict], probs: dict[str, Problem]) -> str:
    out = []
    for pname in dict.fromkeys(r["problem"] for r in rows):
        out += [f"## {pname}: {probs[pname].desc}", "",
                "| method | tol or step | ours NFE | ours error | torchdiffeq NFE | torchdiffeq error | "
                "torchdiffeq NFE at ours' error |", "|---|---|--:|--:|--:|--:|---|"]
        for r in rows:
            if r["problem"] == pname:
                out.append(f"| {r['method']} | {r['knob']} | {r['nfe_ours']} | {err_cell(r, 'ours')} | {r['nfe_torchdiffeq']} "
                           f"| {err_cell(r, 'torchdiffeq')} | {at_cell(r)} |")
        out.append("")
    out.append("## summary: ours needs no more NFE than torchdiffeq at equal error")
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method and r["no_more_nfe"] is not None]
        bad = [r for r in mine if not r["no_more_nfe"]]
        skipped = sum(r["method"] == method and r["no_more_nfe"] is None for r in rows)
        line = f"- {method}: no more NFE at equal error: {'no' if bad else 'yes'} ({len(mine) - len(bad)}/{len(mine)} cases"
        if skipped:
            line += f"; {skipped} not compared, ours' error not finite"
        if bad:
            line += "; more in " + ", ".join(f"{r['problem']} {r['knob']}: {r['nfe_ours']} vs "
                                             f"{r['nfe_torchdiffeq_at_ours_err']}" for r in bad)
        out.append(line + ")")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer tolerances and step sizes, shorter searches (< 1 min)")
    p.add_argument("--json", action="store_true", help="print one JSON object per row instead of the tables")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of: {', '.join(METHODS)}")
    p.add_argument("--problems", default="decay,lotka,mlp", help="comma-separated subset of: decay, lotka, mlp")
    args = p.parse_args(argv)
    methods = [m for m in args.methods.split(",") if m]
    problems = [n for n in args.problems.split(",") if n]
    bad = [m for m in methods if m not in METHODS] + [n for n in problems if n not in ("decay", "lotka", "mlp")]
    if bad:
        p.error(f"unknown method(s)/problem(s): {', '.join(bad)}")
    torch.set_num_threads(1)
    head = header()
    rows = run(problems, methods, args.quick, progress=lambda s: print(f"... {s}", file=sys.stderr, flush=True))
    if args.json:
        for r in rows:
            print(json.dumps(r))
        return 0
    probs = make_problems()
    print(head)
    print(reference_check({n: probs[n] for n in problems}))
    print(f"float64; adaptive: atol = rtol/100; fixed grid: rtol=1e-7, atol=1e-9 (used by implicit_adams' corrector); "
          f"NFE = calls of the dynamics; error = max abs error at the outputs; 'at ours' error': first torchdiffeq "
          f"run with error <= {SLACK} x ours, tightening from ours' ({'quick' if args.quick else 'full'} plan)\n")
    print(tables(rows, probs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
