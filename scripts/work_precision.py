"""Work against precision: NFE and error of neuralode against torchdiffeq 0.2.5, for every method both have.

Float64, no gradients, one process. Each problem has an exact or tight reference at its outputs. The error of
a solve is the max abs error over all outputs and components; its work (NFE) is the number of calls of the
dynamics, counted by the same wrapper for both libraries.

Adaptive methods: both libraries run on the same fine grid of tolerances (``rtol = 10^(-j/16)``,
``atol = rtol / 100``). Each library's work-precision front (the fewest NFE that reached an error <= e, over
its runs) is compared with the other's at every error level either library reached inside both ranges: a
level where ours' front needs more NFE than torchdiffeq's is a case of "more work at equal error". Comparing
fronts built from the same grid is fair to both: a single run set against the other library's front would
lose about half the time to pure chance even between identical solvers (step counts jump with the
tolerance). The table rows show a few of the tolerances, with torchdiffeq's front at ours' error.

Fixed-grid methods run at a few ``options={"step_size": h}``; torchdiffeq's step is refined (``0.1 / m`` for
integers ``m`` about 10^(1/4) apart, so every step divides the output spacing) until its error is <= ours'
(0.1% slack for roundoff). Rows where ours' error is not finite (an unstable step size) are not compared.
``scipy_solver`` is left out: it runs the same SciPy code in both libraries.

    python scripts/work_precision.py [--quick] [--json] [--controller integral|pi] [--methods dopri5,...]
                                     [--problems decay,lotka,mlp]
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
from neuralode.solvers.controller import CONTROLLERS

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

    sweep_j: tuple[int, int, int]  # adaptive: rtol = 10^(-j/16) for j in range(*sweep_j)
    low_order_j: tuple[int, int, int]  # the same for fehlberg2 and adaptive_heun (their tight tolerances take long)
    shown_j: tuple[int, ...]  # the sweep points listed as table rows
    fixed_m: tuple[int, ...]  # step_size = STEP_BASE / m
    tighter: int  # fixed-grid search: at most this many quarter-decades finer than ours
    nfe_cap_factor: int  # ... or once torchdiffeq needs more than this many times ours' NFE (at least 2000)
    nfe_cap_abs: int  # ... and never past this many NFE


FULL = Plan(sweep_j=(48, 145, 1), low_order_j=(48, 97, 1), shown_j=(48, 80, 112, 144), fixed_m=(1, 4, 16),
            tighter=12, nfe_cap_factor=10, nfe_cap_abs=100_000)
QUICK = Plan(sweep_j=(48, 81, 4), low_order_j=(48, 65, 4), shown_j=(48, 80), fixed_m=(1, 4),
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
    """(rtol, atol, options, label) for knob ``j`` (adaptive: rtol = 10^(-j/16)) or ``m`` (fixed: h = 0.1 / m)."""
    if is_adaptive(method):
        rtol = 10.0 ** (-knob / 16)
        return rtol, rtol / 100, None, f"rtol={rtol:.2g}"
    return 1e-7, 1e-9, {"step_size": STEP_BASE / knob}, f"h={STEP_BASE / knob:.3g}"


def front_nfe(runs: list[Result], err: float) -> int | None:
    """The fewest NFE among ``runs`` that reached an error <= ``err`` (0.1% slack for roundoff); None if none did."""
    nfes = [r.nfe for r in runs if r.err <= SLACK * err]
    return min(nfes) if nfes else None


def sweep(lib: str, prob: Problem, method: str, knobs: range, cap: int, ours_options: dict | None) -> list[Result]:
    """``lib``'s runs at ``knobs`` (loose to tight), stopping at the first run past ``cap`` NFE."""
    runs = []
    for j in knobs:
        rtol, atol, _, _ = knob_args(method, j)
        try:
            runs.append(solve(lib, prob, method, rtol, atol, ours_options if lib == "ours" else None, max_nfe=cap))
        except OverCap:
            break
    return runs


def front_comparison(ours: list[Result], theirs: list[Result]) -> dict:
    """Both fronts at every error level either library reached inside both ranges: how many levels there are,
    at how many ours needs more NFE, the geometric mean and the largest of ours' NFE over theirs. Ranges that do
    not overlap: no level if ours is the more accurate throughout, every one of ours' if torchdiffeq is."""
    err_o = [r.err for r in ours if math.isfinite(r.err)]
    err_t = [r.err for r in theirs if math.isfinite(r.err)]
    if not err_o or not err_t:
        return {"levels": 0, "more": 0, "ratio_gmean": math.nan, "ratio_max": math.nan}
    if max(err_t) < min(err_o):  # torchdiffeq more accurate at every tolerance: every level of ours' costs more
        return {"levels": len(err_o), "more": len(err_o), "ratio_gmean": math.nan, "ratio_max": math.nan}
    lo, hi = max(min(err_o), min(err_t)), min(max(err_o), max(err_t))
    ratios = []
    for e in sorted(e for e in err_o + err_t if lo <= e <= hi):
        n_o, n_t = front_nfe(ours, e), front_nfe(theirs, e)
        if n_o is not None and n_t is not None:
            ratios.append(n_o / n_t)
    return {"levels": len(ratios), "more": sum(r > 1 for r in ratios),
            "ratio_gmean": math.exp(sum(map(math.log, ratios)) / len(ratios)) if ratios else math.nan,
            "ratio_max": max(ratios, default=math.nan)}


def row(prob: Problem, method: str, knob: int, ours: Result, theirs: Result, at_nfe: int | None, at_label: str | None,
        most: int, ours_front: int | None = None) -> dict:
    """One table row; ``ours_front``: ours' fewest NFE at this run's error over ours' sweep (adaptive methods),
    the fair counterpart of torchdiffeq's front. Without it, this run's NFE stands for ours."""
    rtol, atol, options, label = knob_args(method, knob)
    comparable = math.isfinite(ours.err)
    ours_at = ours.nfe if ours_front is None else ours_front
    return {
        "problem": prob.name, "method": method, "adaptive": is_adaptive(method), "knob": label,
        "rtol": rtol if options is None else None, "atol": atol if options is None else None,
        "step_size": options["step_size"] if options else None,
        "nfe_ours": ours.nfe, "err_ours": ours.err, "nfe_torchdiffeq": theirs.nfe, "err_torchdiffeq": theirs.err,
        "nfe_ours_at_ours_err": ours_at if comparable else None,
        "nfe_torchdiffeq_at_ours_err": at_nfe if comparable else None,
        "torchdiffeq_knob_at_ours_err": at_label if comparable else None,
        "torchdiffeq_max_nfe_tried": most, "failure_ours": ours.failure, "failure_torchdiffeq": theirs.failure,
        "no_more_nfe": (at_nfe is None or ours_at <= at_nfe) if comparable else None,
    }


def compare_adaptive(prob: Problem, method: str, plan: Plan, ours_options: dict | None) -> tuple[list[dict], dict]:
    """Rows at ``plan.shown_j`` (torchdiffeq's NFE at ours' error read off its front) and the front comparison."""
    knobs = range(*(plan.low_order_j if method in LOW_ORDER else plan.sweep_j))
    ours = sweep("ours", prob, method, knobs, plan.nfe_cap_abs, ours_options)
    theirs = sweep("torchdiffeq", prob, method, knobs, plan.nfe_cap_abs, None)
    rows = []
    for i, j in enumerate(knobs):
        if j in plan.shown_j and i < min(len(ours), len(theirs)):
            at = front_nfe(theirs, ours[i].err)
            at_label = None if at is None else next(knob_args(method, k)[3] for k, r in zip(knobs, theirs)
                                                    if r.nfe == at and r.err <= SLACK * ours[i].err)
            rows.append(row(prob, method, j, ours[i], theirs[i], at, at_label, max(r.nfe for r in theirs),
                            front_nfe(ours, ours[i].err)))
    same = sum(o.nfe == t.nfe and abs(o.err - t.err) <= 1e-6 * abs(t.err) for o, t in zip(ours, theirs))
    summary = {"problem": prob.name, "method": method, "runs": min(len(ours), len(theirs)), "identical": same,
               "first_rtol": knob_args(method, knobs[0])[0], "last_rtol": knob_args(method, knobs[-1])[0],
               **front_comparison(ours, theirs)}
    return rows, summary


class FixedSearch:
    """torchdiffeq's fixed-grid runs for one (problem, method), cached by ``m``."""

    def __init__(self, prob: Problem, method: str) -> None:
        self.prob, self.method = prob, method
        self.runs: dict[int, Result] = {}

    def run(self, m: int) -> Result:
        if m not in self.runs:
            rtol, atol, options, _ = knob_args(self.method, m)
            self.runs[m] = solve("torchdiffeq", self.prob, self.method, rtol, atol, options)
        return self.runs[m]

    def reach(self, m: int, target: float, nfe_ours: int, plan: Plan) -> tuple[int | None, int, str | None]:
        """(NFE of the first run with error <= target or None, most NFE tried, that run's label)."""
        cap = min(max(plan.nfe_cap_factor * nfe_ours, 2000), plan.nfe_cap_abs)
        most = 0
        for k in sorted({round(m * 10 ** (j / 4)) for j in range(plan.tighter + 1)}):
            if self.run(m).nfe * k / m > cap:  # NFE scales with m: skip runs predicted past the cap
                break
            res = self.run(k)
            most = max(most, res.nfe)
            if res.err <= SLACK * target:  # a failed run (err nan) does not qualify
                return res.nfe, most, knob_args(self.method, k)[3]
        return None, most, None


def compare_fixed(prob: Problem, method: str, plan: Plan) -> list[dict]:
    theirs = FixedSearch(prob, method)
    rows = []
    for m in plan.fixed_m:
        rtol, atol, options, _ = knob_args(method, m)
        ours = solve("ours", prob, method, rtol, atol, options)
        at = theirs.reach(m, ours.err, ours.nfe, plan) if math.isfinite(ours.err) else (None, 0, None)
        rows.append(row(prob, method, m, ours, theirs.run(m), at[0], at[2], at[1]))
    return rows


def run(problems: list[str] | None = None, methods: list[str] | None = None, quick: bool = False,
        progress: Callable[[str], None] | None = None,
        ours_options: dict | None = None) -> tuple[list[dict], list[dict]]:
    """All rows and the adaptive methods' front comparisons for the given problems and methods (default: all)."""
    plan = QUICK if quick else FULL
    probs = make_problems()
    rows, fronts = [], []
    for pname in problems or list(probs):
        for method in methods or METHODS:
            if progress:
                progress(f"{pname} {method}")
            if is_adaptive(method):
                more, summary = compare_adaptive(probs[pname], method, plan, ours_options)
                rows += more
                fronts.append(summary)
            else:
                rows += compare_fixed(probs[pname], method, plan)
    return rows, fronts


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


def tables(rows: list[dict], fronts: list[dict], probs: dict[str, Problem]) -> str:
    out = []
    for pname in dict.fromkeys(r["problem"] for r in rows):
        out += [f"## {pname}: {probs[pname].desc}", "",
                "| method | tol or step | ours NFE | ours error | torchdiffeq NFE | torchdiffeq error | "
                "ours' fewest NFE at ours' error | torchdiffeq's fewest NFE at ours' error |",
                "|---|---|--:|--:|--:|--:|--:|---|"]
        for r in rows:
            if r["problem"] == pname:
                ours_at = "n/a" if r["nfe_ours_at_ours_err"] is None else r["nfe_ours_at_ours_err"]
                out.append(f"| {r['method']} | {r['knob']} | {r['nfe_ours']} | {err_cell(r, 'ours')} | {r['nfe_torchdiffeq']} "
                           f"| {err_cell(r, 'torchdiffeq')} | {ours_at} | {at_cell(r)} |")
        out.append("")
    if fronts:
        out += ["## adaptive methods: work-precision fronts on the same tolerance grid", "",
                "| method | problem | rtol swept | runs | identical runs | error levels | levels where ours needs more NFE "
                "| ours / torchdiffeq NFE at equal error: geometric mean | max |", "|---|---|---|--:|--:|--:|--:|--:|--:|"]
        for f in fronts:
            # No ratio: no common error level, every run of one library is more accurate than all of the other's.
            ratios = ("- (ours more accurate at every tolerance) | -" if not f["levels"] else
                      "- (torchdiffeq more accurate at every tolerance) | -" if math.isnan(f["ratio_gmean"]) else
                      f"{f['ratio_gmean']:.3f} | {f['ratio_max']:.3f}")
            out.append(f"| {f['method']} | {f['problem']} | {f['first_rtol']:.2g} .. {f['last_rtol']:.2g} | {f['runs']} "
                       f"| {f['identical']} | {f['levels']} | {f['more']} | {ratios} |")
        out.append("")
    out.append("## summary: ours needs no more NFE than torchdiffeq at equal error")
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [f for f in fronts if f["method"] == method]
        if mine:
            more = sum(f["more"] for f in mine)
            levels = sum(f["levels"] for f in mine)
            line = (f"- {method}: {'yes' if more == 0 else 'no'} (fronts: more NFE at {more} of {levels} error levels; "
                    f"{sum(f['identical'] for f in mine)} of {sum(f['runs'] for f in mine)} runs identical to torchdiffeq's")
            out.append(line + ")")
            continue
        cases = [r for r in rows if r["method"] == method and r["no_more_nfe"] is not None]
        bad = [r for r in cases if not r["no_more_nfe"]]
        skipped = sum(r["method"] == method and r["no_more_nfe"] is None for r in rows)
        line = f"- {method}: {'no' if bad else 'yes'} ({len(cases) - len(bad)}/{len(cases)} step sizes"
        if skipped:
            line += f"; {skipped} not compared, ours' error not finite"
        if bad:
            line += "; more in " + ", ".join(f"{r['problem']} {r['knob']}: {r['nfe_ours']} vs "
                                             f"{r['nfe_torchdiffeq_at_ours_err']}" for r in bad)
        out.append(line + ")")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a coarser tolerance grid, fewer step sizes (< 1 min)")
    p.add_argument("--json", action="store_true", help="print one JSON object per row and per front comparison")
    p.add_argument("--controller", choices=list(CONTROLLERS), default="integral",
                   help="ours' options['controller'] for the adaptive methods (default: the API's default)")
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
    rows, fronts = run(problems, methods, args.quick, progress=lambda s: print(f"... {s}", file=sys.stderr, flush=True),
                       ours_options={"controller": args.controller})
    if args.json:
        for r in rows + fronts:
            print(json.dumps(r))
        return 0
    probs = make_problems()
    plan = QUICK if args.quick else FULL
    print(head)
    print(reference_check({n: probs[n] for n in problems}))
    print(f"float64; ours' controller: {args.controller}; adaptive: rtol = 10^(-j/16) for j in range{plan.sweep_j} "
          f"(fehlberg2, adaptive_heun: range{plan.low_order_j}), atol = rtol/100; fixed grid: rtol=1e-7, atol=1e-9 "
          f"(used by implicit_adams' corrector); NFE = calls of the dynamics; error = max abs error at the outputs; "
          f"'fewest NFE at ours' error': adaptive: over each library's runs on the grid with error <= {SLACK} x "
          f"ours' (ours: this run's NFE or fewer); fixed: this run, and the first finer torchdiffeq step that gets "
          f"there ({'quick' if args.quick else 'full'} plan)\n")
    print(tables(rows, fronts, probs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
