"""Figure 3(c) study: what sets the adjoint's backward/forward NFE ratio on a trained MNIST ODE-Net.

The paper reports that the adjoint's backward solve takes about half the evaluations of the forward solve. For
each ``task=mnist model=odenet`` checkpoint given, this runs one training step (the ODE block on downsampled test
images, the training's cross-entropy, mean over the batch, so that a = dL/dz has its training scale) per batch
of test images under settings that change one ingredient at a time:

* ``norm``: the adjoint's error norm over the augmented state (z, a, a_theta): the runner's mixed norm (max of
  the RMS of z, a and a_theta); torchdiffeq's (one part per parameter tensor); the seminorm (z, a); one RMS over
  the flattened state, with and without a_theta; z alone; the adjoint alone (a, a_theta);
* ``adjoint-tol``: the adjoint's tolerance against the forward one;
* ``tol``: both solves at another tolerance than the one trained at;
* ``solver``: explicit Runge-Kutta pairs of orders 2 to 8, SciPy's LSODA (the paper's family: implicit Adams,
  BDF when stiff) and SciPy's RK45, both with their own error norms.

Per batch it records forward and backward NFE, accepted and rejected steps, the step sizes, which part of the
augmented state had the largest error at each of the adjoint's error tests, the size of a = dL/dz(1) against
the tolerance, and (on the first batches) the relative error of the gradient against a float64 adjoint at a
tight tolerance; the JSON keeps the steps of each setting's first batch and the summary of all. Settings run one
after another and the JSON is rewritten after each, so a stopped study keeps what it measured.

    python scripts/adjoint_ratio_study.py <run dir or last.pt> [...] [--images 1024] [--batch-size 64] \
        [--axes norm adjoint-tol tol solver] [--out study.json] [--markdown study.md]
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from neuralode.config import solver_defaults
from neuralode.models.odeblock import ODEBlock, SolverSpec
from neuralode.report.figure3 import load_odenet, ode_blocks
from neuralode.solvers import SOLVERS, SolveStats, odeint_adjoint
from neuralode.solvers.adjoint import inherited_options
from neuralode.solvers.tableaus import TABLEAUS
from neuralode.utils.files import write_text_atomic

PARTS = ("z", "a", "a_theta")
AXES = ("norm", "adjoint-tol", "tol", "solver")
REFERENCE_TOL = 1e-7  # the float64 adjoint the gradients are compared with (rtol = atol)


@dataclasses.dataclass(frozen=True)
class NormSpec:
    """An error norm over torchdiffeq's adjoint tuple ``(t, z, a, *a_theta)`` (each entry already divided by its
    error scale): the max of the RMS of the ``parts`` used, or one RMS over them flattened together (``joint``);
    ``per_tensor`` splits a_theta into one part per parameter tensor, as torchdiffeq's default does."""

    parts: tuple[str, ...]
    joint: bool = False
    per_tensor: bool = False


NORMS: dict[str, NormSpec] = {
    "mixed": NormSpec(PARTS),  # the runner's adjoint norm (MixedNorm over [z, a, a_theta])
    "mixed-per-tensor": NormSpec(PARTS, per_tensor=True),  # torchdiffeq's default
    "seminorm": NormSpec(("z", "a")),
    "joint": NormSpec(PARTS, joint=True),
    "joint-z-a": NormSpec(("z", "a"), joint=True),
    "z-only": NormSpec(("z",)),
    "adjoint-only": NormSpec(("a", "a_theta")),
}


def _sum_squares(x: torch.Tensor) -> float:
    return float(x.double().square().sum())


class RecordingNorm:
    """The adjoint error norm of a :class:`NormSpec`; it remembers its value and each part's RMS at its last call,
    which the step callbacks attach to the step that was just tested."""

    def __init__(self, spec: NormSpec) -> None:
        self.spec = spec
        self.last_rms: dict[str, float] = {}
        self.last_value = float("nan")

    def __call__(self, parts: tuple) -> torch.Tensor:
        _, z, a, *theta = parts
        squares = {"z": (_sum_squares(z), z.numel()), "a": (_sum_squares(a), a.numel()),
                   "a_theta": (sum(_sum_squares(p) for p in theta), sum(p.numel() for p in theta))}
        self.last_rms = {k: (s / n) ** 0.5 if n else 0.0 for k, (s, n) in squares.items()}
        spec = self.spec
        if spec.joint:
            total = sum(squares[k][0] for k in spec.parts)
            count = sum(squares[k][1] for k in spec.parts)
            self.last_value = (total / count) ** 0.5
        else:
            rms = [self.last_rms[k] for k in spec.parts if k != "a_theta" or not spec.per_tensor]
            if "a_theta" in spec.parts and spec.per_tensor:
                rms += [(_sum_squares(p) / p.numel()) ** 0.5 for p in theta if p.numel()]
            self.last_value = max(rms)
        return z.new_tensor(self.last_value)


class RecordingRMS:
    """The forward solve's own error norm (the RMS of the scaled error of z), remembering its last value."""

    def __init__(self) -> None:
        self.last_value = float("nan")

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.last_value = (_sum_squares(z) / z.numel()) ** 0.5
        return z.new_tensor(self.last_value)


@dataclasses.dataclass(frozen=True)
class Setting:
    axis: str
    label: str
    method: str = "dopri5"
    options: tuple[tuple[str, Any], ...] = ()  # the method's own options (SciPy's solver, the controller)
    tol: float | None = None  # None: the tolerance the model was trained at
    adjoint_tol: float | None = None  # None: the forward one
    norm: str | None = "mixed"  # a key of NORMS; None: the method's own norm (SciPy's)


TIGHT_TOL = 1e-5  # where the trained models' steps are limited by their error, not by how fast a step may grow
LSODA = tuple(solver_defaults("lsoda")["options"].items())


def settings(axes: Sequence[str], trained_tol: float) -> list[Setting]:
    """The settings of ``axes``; each differs from a baseline (dopri5 with the runner's PI controller and the
    mixed norm, both solves at the trained tolerance or at TIGHT_TOL) in one ingredient."""
    out = [Setting("baseline", "dopri5, mixed norm")]
    tols = (None, TIGHT_TOL)
    if "tol" in axes:
        out += [Setting("tol", "dopri5, mixed norm", tol=tol) for tol in (1e-1, 1e-2, 1e-4, 1e-5) if tol != trained_tol]
    if "norm" in axes:
        out += [Setting("norm", name, norm=name, tol=tol) for tol in tols for name in NORMS if name != "mixed"]
    if "adjoint-tol" in axes:
        out += [Setting("adjoint-tol", f"adjoint tol {k:g} x forward", tol=tol, adjoint_tol=(tol or trained_tol) * k)
                for tol in tols for k in (100.0, 10.0, 0.1)]
        if "solver" in axes:  # the paper's family with the same asymmetry
            out.append(Setting("adjoint-tol", "lsoda, adjoint tol 10 x forward", method="scipy_solver", options=LSODA,
                               tol=trained_tol / 10, adjoint_tol=trained_tol, norm=None))
    if "solver" in axes:
        out += [Setting("solver", "dopri5, integral controller (torchdiffeq's)", options=(("controller", "integral"),),
                        tol=tol) for tol in tols]
        # fehlberg2 (order 2) and dopri8 only at the trained tolerance: at TIGHT_TOL they take hundreds of NFE.
        out += [Setting("solver", method, method=method) for method in ("fehlberg2", "bosh3", "tsit5", "dopri8")]
        out += [Setting("solver", method, method=method, tol=TIGHT_TOL) for method in ("bosh3", "tsit5")]
        out += [Setting("solver", "lsoda", method="scipy_solver", options=LSODA, tol=tol, norm=None)
                for tol in (1e-1, 1e-2, None, 1e-4)]
        out.append(Setting("solver", "scipy RK45", method="scipy_solver", options=(("solver", "RK45"),), norm=None))
    return out


@contextlib.contextmanager
def step_records(func: nn.Module, forward_norm: RecordingRMS | None, adjoint_norm: RecordingNorm | None,
                 method: str) -> Iterator[dict[str, list]]:
    """Size, outcome and error ratio of every step the forward and the adjoint solve tried (and the per-part error
    RMS of the adjoint's), through the step callbacks, on the methods that call them."""
    records: dict[str, list] = {"forward": [], "backward": []}
    names = ("callback_accept_step", "callback_reject_step")
    if not set(names) <= SOLVERS[method].valid_callbacks:
        yield records
        return

    def hook(phase: str, accepted: bool, norm: RecordingRMS | RecordingNorm | None):
        def record(_t0: torch.Tensor, _y: Any, dt: torch.Tensor) -> None:
            entry: dict[str, Any] = {"dt": abs(float(dt)), "accepted": accepted}
            if norm is not None:
                entry["error"] = norm.last_value
            if isinstance(norm, RecordingNorm):
                entry["rms"] = dict(norm.last_rms)
            records[phase].append(entry)
        return record

    for name, accepted in zip(names, (True, False)):
        setattr(func, name, hook("forward", accepted, forward_norm))
        setattr(func, name + "_adjoint", hook("backward", accepted, adjoint_norm))
    try:
        yield records
    finally:
        for name in names:
            delattr(func, name)
            delattr(func, name + "_adjoint")


def gradient_step(func: nn.Module, head: nn.Module, z0: torch.Tensor, labels: torch.Tensor, t: torch.Tensor,
                  spec: SolverSpec, adjoint_tol: float, stats: SolveStats, forward_norm: RecordingRMS | None = None,
                  adjoint_norm: RecordingNorm | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One training step's gradients through the adjoint: dL/dz(1), dL/dz(0) and dL/dtheta of the ODE function.
    The norms (None: the library's) are those of the forward and the adjoint solve."""
    z0 = z0.detach().requires_grad_(True)
    options = spec.options if forward_norm is None else {**spec.options, "norm": forward_norm}
    adjoint_options = None if adjoint_norm is None else {**inherited_options(spec.options), "norm": adjoint_norm}
    z1 = odeint_adjoint(func, z0, t, rtol=spec.rtol, atol=spec.atol, method=spec.method, options=options,
                        adjoint_rtol=adjoint_tol, adjoint_atol=adjoint_tol, adjoint_options=adjoint_options,
                        stats=stats)[-1]
    params = [p for p in func.parameters() if p.requires_grad]
    loss = F.cross_entropy(head(z1), labels)
    dz1, dz0, *dtheta = torch.autograd.grad(loss, [z1, z0, *params])
    return dz1, dz0, torch.cat([g.reshape(-1) for g in dtheta])


def _relative(x: torch.Tensor, ref: torch.Tensor) -> float:
    return float((x.double() - ref).norm() / ref.norm().clamp_min(1e-300))


def _rms(x: torch.Tensor) -> float:
    return float(x.double().square().mean().sqrt())


def measure_setting(block: ODEBlock, head: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]],
                    setting: Setting, trained_tol: float,
                    references: list[tuple[torch.Tensor, torch.Tensor]]) -> dict[str, Any]:
    tol = trained_tol if setting.tol is None else setting.tol
    adjoint_tol = tol if setting.adjoint_tol is None else setting.adjoint_tol
    spec = SolverSpec.from_config({"method": setting.method, "options": dict(setting.options)}, tol)
    # DOP853's step control combines two error norms, so a norm's last value is not the step's error ratio: there
    # the library's own norms (the mixed one for the adjoint) run, without the per-step diagnostics.
    two_estimates = getattr(TABLEAUS.get(setting.method), "b_error2", None) is not None
    if setting.norm is None or (two_estimates and setting.norm == "mixed"):
        adjoint_norm, forward_norm = None, None
    elif two_estimates:
        raise ValueError(f"{setting.method}: only the mixed norm can be measured (two error estimates)")
    else:
        adjoint_norm, forward_norm = RecordingNorm(NORMS[setting.norm]), RecordingRMS()
    t = block.default_t
    rows = []
    wall0, cpu0 = time.perf_counter(), time.process_time()
    for i, (z0, labels) in enumerate(batches):
        stats = SolveStats()
        with step_records(block.func, forward_norm, adjoint_norm, setting.method) as steps:
            dz1, dz0, dtheta = gradient_step(block.func, head, z0, labels, t.to(z0), spec, adjoint_tol, stats,
                                             forward_norm, adjoint_norm)
        row: dict[str, Any] = {**stats.as_dict(), "ratio": stats.nfe_backward / stats.nfe_forward,
                               "a1_rms": _rms(dz1), "a1_max": float(dz1.abs().max()),
                               "steps": steps}
        if i < len(references):
            ref_dz0, ref_dtheta = references[i]
            row.update(grad_error_input=_relative(dz0, ref_dz0), grad_error_params=_relative(dtheta, ref_dtheta))
        rows.append(row)
        print(f"    [{i + 1}/{len(batches)}] NFE fwd {stats.nfe_forward} bwd {stats.nfe_backward} "
              f"ratio {row['ratio']:.2f}", flush=True)
    summary = summarise(rows)
    for row in rows[1:]:  # the first batch's steps as an example; the summary has them all
        del row["steps"]
    return {**dataclasses.asdict(setting), "tol": tol, "adjoint_tol": adjoint_tol, "options": spec.options,
            "wall_s": time.perf_counter() - wall0, "cpu_s": time.process_time() - cpu0,
            "summary": summary, "batches": rows}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Median and range of the ratio over the batches, mean step counts, and which part of the augmented state
    had the largest error RMS at the adjoint's error tests (share of all tests over all batches)."""
    ratios = [r["ratio"] for r in rows]
    out: dict[str, Any] = {
        "ratio_median": statistics.median(ratios), "ratio_min": min(ratios), "ratio_max": max(ratios),
        "nfe_forward_median": statistics.median(r["nfe_forward"] for r in rows),
        "nfe_backward_median": statistics.median(r["nfe_backward"] for r in rows),
        "a1_rms_median": statistics.median(r["a1_rms"] for r in rows),
        "a1_max_median": statistics.median(r["a1_max"] for r in rows),
    }
    for key in ("steps_accepted_forward", "steps_rejected_forward", "steps_accepted_backward",
                "steps_rejected_backward"):
        out[key + "_mean"] = statistics.fmean(r[key] for r in rows)
    for phase in ("forward", "backward"):
        errors = [s["error"] for r in rows for s in r["steps"][phase] if s["accepted"] and "error" in s]
        if errors:
            out[f"error_ratio_accepted_{phase}_median"] = statistics.median(errors)
            out[f"error_ratio_accepted_{phase}_max"] = max(errors)
        first = [r["steps"][phase][0]["dt"] for r in rows if r["steps"][phase]]
        if first:
            out[f"first_step_{phase}_median"] = statistics.median(first)
    tests = [s["rms"] for r in rows for s in r["steps"]["backward"] if "rms" in s]
    if tests:
        out["largest_error_part"] = {p: sum(max(PARTS, key=lambda k: rms[k]) == p for rms in tests) / len(tests)
                                     for p in PARTS}
        out["error_rms_median"] = {p: statistics.median(rms[p] for rms in tests) for p in PARTS}
    for key in ("grad_error_input", "grad_error_params"):
        values = [r[key] for r in rows if key in r]
        if values:
            out[key + "_median"] = statistics.median(values)
    return out


def lsoda_methods_used(func: nn.Module, z0: torch.Tensor, tol: float) -> dict[str, Any]:
    """The forward solve through SciPy's ``odeint`` (the paper's LSODA driver), whose ``full_output`` says which
    method family LSODA used (1: Adams, 2: BDF) and the last time it switched (0: never)."""
    from scipy.integrate import odeint as scipy_odeint

    def fun(y, s):
        with torch.no_grad():
            out = func(torch.tensor(s, dtype=z0.dtype), torch.from_numpy(y).to(z0.dtype).view_as(z0))
        return out.double().reshape(-1).numpy()

    _, info = scipy_odeint(fun, z0.double().reshape(-1).numpy(), [0.0, 1.0], rtol=tol, atol=tol, full_output=True)
    return {"method_used": int(info["mused"][0]), "last_switch_t": float(info["tsw"][0]),
            "nfe": int(info["nfe"][0]), "steps": int(info["nst"][0])}


def study(checkpoint: str, images: int, batch_size: int, axes: Sequence[str], gradient_batches: int,
          out: Path, markdown: Path | None, results: list[dict[str, Any]]) -> dict[str, Any]:
    """Every setting on one checkpoint; ``results`` (all checkpoints so far) is rewritten to ``out`` after each."""
    model, x, labels, info = load_odenet(checkpoint, images)
    model.eval()
    downsampling, block, head = model[0], ode_blocks(model)[0], model[2]
    if len(ode_blocks(model)) != 1 or model[1] is not block:
        raise ValueError(f"{checkpoint}: expected the ODE-Net of Table 1 (downsampling, one ODE block, head)")
    trained_tol = block.solver.rtol
    with torch.no_grad():
        z0_all = downsampling(x)
    batches = [(z0_all[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, len(x), batch_size)]
    print(f"{checkpoint}: epoch {info['epoch']}, trained at tol {trained_tol:g}, {len(x)} images in "
          f"{len(batches)} batches of {batch_size}", flush=True)
    record: dict[str, Any] = {**info, "trained_tol": trained_tol, "images": len(x), "batch_size": batch_size,
                              "load_average_1min": {"before": os.getloadavg()[0]}, "settings": []}
    record["lsoda_forward"] = lsoda_methods_used(block.func, batches[0][0], trained_tol)
    func64, head64 = copy.deepcopy(block.func).double(), copy.deepcopy(head).double()
    ref_spec = SolverSpec.from_config({"method": "dopri5"}, REFERENCE_TOL)
    references = []
    for z0, y in batches[:gradient_batches]:
        _, dz0, dtheta = gradient_step(func64, head64, z0.double(), y, block.default_t.double(), ref_spec,
                                       REFERENCE_TOL, SolveStats())
        references.append((dz0, dtheta))
    results.append(record)
    for setting in settings(axes, trained_tol):
        print(f"  {setting.axis}: {setting.label}", flush=True)
        record["settings"].append(measure_setting(block, head, batches, setting, trained_tol, references))
        record["load_average_1min"]["after"] = os.getloadavg()[0]
        _write(out, markdown, results)
    return record


def _write(out: Path, markdown: Path | None, results: list[dict[str, Any]]) -> None:
    meta = {"date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "torch_threads": torch.get_num_threads(),
            "command": " ".join(sys.argv)}
    write_text_atomic(out, json.dumps({**meta, "checkpoints": results}, indent=1))
    if markdown is not None:
        write_text_atomic(markdown, tables(results))


def tables(results: list[dict[str, Any]]) -> str:
    """One markdown table per checkpoint: per setting, the median NFE and the ratio's median and range over the
    batches, mean step counts, the first step tried and the median error ratio of the accepted steps (forward /
    backward), which part had the largest error at the adjoint's tests, and the gradient's relative error."""
    def pair(m: dict[str, Any], key: str, fmt: str) -> str:
        values = [m.get(key.format(phase)) for phase in ("forward", "backward")]
        return " / ".join("-" if v is None else format(v, fmt) for v in values)

    lines = []
    for r in results:
        lines += [f"### {r['checkpoint']} (epoch {r['epoch']}, trained at tol {r['trained_tol']:g}; {r['images']} "
                  f"test images in batches of {r['batch_size']})", "",
                  "| axis | setting | tol fwd / bwd | NFE fwd | NFE bwd | bwd/fwd median (range) | steps fwd acc/rej "
                  "| steps bwd acc/rej | first step fwd / bwd | error ratio fwd / bwd | largest error z / a / a_theta "
                  "| grad error |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in r["settings"]:
            m = s["summary"]
            part = m.get("largest_error_part")
            shares = " / ".join(f"{part[p]:.0%}" for p in PARTS) if part else "-"
            grad = f"{m['grad_error_params_median']:.1e}" if "grad_error_params_median" in m else "-"
            lines.append(
                f"| {s['axis']} | {s['label']} | {s['tol']:.0e} / {s['adjoint_tol']:.0e} | {m['nfe_forward_median']:g} "
                f"| {m['nfe_backward_median']:g} | {m['ratio_median']:.2f} ({m['ratio_min']:.2f}-{m['ratio_max']:.2f}) "
                f"| {m['steps_accepted_forward_mean']:.1f} / {m['steps_rejected_forward_mean']:.1f} "
                f"| {m['steps_accepted_backward_mean']:.1f} / {m['steps_rejected_backward_mean']:.1f} "
                f"| {pair(m, 'first_step_{}_median', '.3f')} | {pair(m, 'error_ratio_accepted_{}_median', '.2g')} "
                f"| {shares} | {grad} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoints", nargs="+", help="run dirs (or last.pt files) of task=mnist model=odenet runs")
    p.add_argument("--images", type=int, default=1024, help="first test images measured")
    p.add_argument("--batch-size", type=int, default=64, help="images per training step (the training batch: 64)")
    p.add_argument("--axes", nargs="+", choices=AXES, default=list(AXES))
    p.add_argument("--gradient-batches", type=int, default=4, help="batches whose gradient error is measured")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("adjoint_ratio_study.json"))
    p.add_argument("--markdown", type=Path, help="also write the tables here")
    args = p.parse_args(argv)
    if args.images < 1 or args.batch_size < 1 or args.gradient_batches < 0 or args.threads < 1:
        p.error("--images, --batch-size and --threads must be >= 1, --gradient-batches >= 0")
    torch.set_num_threads(args.threads)
    results: list[dict[str, Any]] = []
    try:
        for checkpoint in args.checkpoints:
            study(checkpoint, args.images, args.batch_size, args.axes, args.gradient_batches, args.out,
                  args.markdown, results)
    except ValueError as e:  # CheckpointError, DataError, ConfigError: one clear line each
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(tables(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
