"""Paper Figure 3: statistics of a trained ODE-Net across solver tolerances.

For each tolerance we re-solve the trained ODE block on one fixed test batch and record:

* forward NFE, wall time of the forward pass, and the numerical error of the ODE block's output
  (and of the logits) against a tight-tolerance float64 solve of the same block on the same input;
* backward NFE of one forward+backward pass (cross-entropy on the batch) through the adjoint.

Panel (d), forward NFE over training, comes from the run's ``metrics.jsonl``. Beside the figure, the test
accuracy over many test images (all of them by default) at each of a few tolerances: the paper's
test-time trade-off of accuracy for speed. Measurements are saved
as JSON so the report (and the plot) can be rebuilt without the checkpoint.

    python -m neuralode.report.figure3 <run dir or last.pt> [--out figure3.json] [--png figure3.png]
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from neuralode.errors import CheckpointError, NeuralodeError
from neuralode.models.odeblock import ODEBlock, collect_solve_stats, reset_solve_stats
from neuralode.report.plan import FIG3_ACCURACY_TOLS, FIG3_TOLS_LONG
from neuralode.utils.files import read_json, write_text_atomic
from neuralode.utils.runtime import synchronize

# The reference is solved in float64 at this factor below the tightest tolerance swept: tight enough
# that its own error is ~1% of the smallest error measured, without the NFE (and minutes) of 1e-9.
REFERENCE_FACTOR = 1e-2


def ode_blocks(model: nn.Module) -> list[ODEBlock]:
    blocks = [m for m in model.modules() if isinstance(m, ODEBlock)]
    if not blocks:
        raise CheckpointError("the model has no ODE block: Figure 3 needs an ODE-Net (model=odenet) checkpoint")
    return blocks


def set_method(model: nn.Module, method: str, options: dict[str, Any]) -> None:
    """Solve every ODE block of ``model`` with ``method`` and ``options`` (forward and adjoint alike)."""
    for block in ode_blocks(model):
        block.use_solver(method=method, options=options, adjoint_options={})


def set_tolerance(model: nn.Module, tol: float, *, adjoint: bool | None = None) -> None:
    """Solve every ODE block of ``model`` at rtol = atol = ``tol`` (and optionally switch the adjoint)."""
    for block in ode_blocks(model):
        block.use_solver(rtol=tol, atol=tol, adjoint=adjoint)


class _BlockOutputs:
    """Forward hook keeping the last output of every ODE block (the state h(1) the error is measured on)."""

    def __init__(self, model: nn.Module) -> None:
        self.outputs: list[torch.Tensor] = []
        self._handles = [b.register_forward_hook(self._hook) for b in ode_blocks(model)]

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> None:
        self.outputs.append(output.detach())

    def take(self) -> torch.Tensor:
        out = torch.cat([o.flatten(1) for o in self.outputs], dim=1)
        self.outputs = []
        return out

    def close(self) -> None:
        for h in self._handles:
            h.remove()


def _rel_error(x: torch.Tensor, ref: torch.Tensor) -> float:
    """Relative L2 error over the whole batch, in float64."""
    x, ref = x.double(), ref.double()
    return float((x - ref).norm() / ref.norm().clamp_min(1e-300))


@torch.no_grad()
def _reference(model: nn.Module, x: torch.Tensor, tol: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Block output and logits of a float64 copy of ``model`` solved at ``tol``."""
    ref_model = copy.deepcopy(model).double()
    set_tolerance(ref_model, tol, adjoint=False)
    hooks = _BlockOutputs(ref_model)
    logits = ref_model(x.double())
    state = hooks.take()
    hooks.close()
    return state, logits


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, tolerances: Sequence[float] = FIG3_TOLS_LONG,
            repeats: int = 3, progress: bool = True, solver: dict[str, Any] | None = None) -> dict[str, Any]:
    """Figure 3 (a)-(c) measurements of ``model`` on the batch ``(x, y)``, one record per tolerance.

    ``solver`` (``method`` and ``options``): measure with that method instead of the trained one; the
    reference stays the trained method's, so the errors of both are measured against the same solution."""
    model.eval()
    ref_tol = min(tolerances) * REFERENCE_FACTOR
    if progress:
        print(f"  figure3: reference solve in float64 at tol {ref_tol:.0e}", flush=True)
    ref_state, ref_logits = _reference(model, x, ref_tol)
    if solver is not None:
        set_method(model, solver["method"], solver["options"])
    hooks = _BlockOutputs(model)
    rows: list[dict[str, float]] = []
    try:
        for i, tol in enumerate(tolerances):
            set_tolerance(model, tol, adjoint=True)
            # Forward only: error and NFE of one solve (timed below, interleaved with the other tolerances).
            reset_solve_stats(model)
            with torch.no_grad():
                hooks.outputs = []
                logits = model(x)
            nfe_forward = collect_solve_stats(model).nfe_forward
            state = hooks.take()
            # Forward + backward through the adjoint: the backward NFE of the same tolerance.
            reset_solve_stats(model)
            model.zero_grad(set_to_none=True)
            synchronize(x.device)
            t0 = time.perf_counter()
            loss = nn.functional.cross_entropy(model(x), y)
            loss.backward()
            synchronize(x.device)
            train_step_s = time.perf_counter() - t0
            hooks.outputs = []
            stats = collect_solve_stats(model)
            rows.append({
                "tol": float(tol),
                "nfe_forward": float(nfe_forward),
                "nfe_forward_train": float(stats.nfe_forward),
                "nfe_backward": float(stats.nfe_backward),
                "error_state": _rel_error(state, ref_state),
                "error_logits": _rel_error(logits, ref_logits),
                "accuracy": float((logits.argmax(1) == y).float().mean()),
                "train_step_time_s": train_step_s,
            })
            if progress:
                r = rows[-1]
                print(f"  figure3 [{i + 1}/{len(tolerances)}] tol={tol:.0e}  NFE fwd {r['nfe_forward']:.0f} "
                      f"bwd {r['nfe_backward']:.0f}  error {r['error_state']:.2e}", flush=True)
        load_before = os.getloadavg()[0]
        for row, (wall, cpu) in zip(rows, _interleaved_forward_times(model, x, tolerances, repeats)):
            row.update(forward_time_s=statistics.median(wall), forward_time_min_s=min(wall),
                       forward_time_max_s=max(wall), forward_cpu_s=statistics.median(cpu))
        load = {"before": load_before, "after": os.getloadavg()[0], "cpus": os.cpu_count()}
    finally:
        hooks.close()
        model.zero_grad(set_to_none=True)
    ratios = [r["nfe_backward"] / r["nfe_forward_train"] for r in rows if r["nfe_forward_train"] > 0]
    return {
        "tolerances": [float(t) for t in tolerances],
        "timing_rounds": max(1, repeats),
        "load_average_1min": load,
        "reference_tol": ref_tol,
        "batch_size": int(x.shape[0]),
        "rows": rows,
        "backward_over_forward": {
            "median": statistics.median(ratios) if ratios else None,
            "min": min(ratios) if ratios else None,
            "max": max(ratios) if ratios else None,
        },
    }


def _interleaved(tolerances: Sequence[float], rounds: int, run: Callable[[int], None],
                 device: torch.device) -> list[tuple[list[float], list[float]]]:
    """Wall and process-CPU seconds of ``run(i)`` for each tolerance ``i`` and round. Each round visits every
    tolerance, alternating the order, so that a change of load during the measurement falls on all tolerances
    alike instead of on the ones measured last."""
    times: list[tuple[list[float], list[float]]] = [([], []) for _ in tolerances]
    for r in range(max(1, rounds)):
        order = range(len(tolerances)) if r % 2 == 0 else reversed(range(len(tolerances)))
        for i in order:
            synchronize(device)
            t0, c0 = time.perf_counter(), time.process_time()
            run(i)
            synchronize(device)
            times[i][0].append(time.perf_counter() - t0)
            times[i][1].append(time.process_time() - c0)
    return times


@torch.no_grad()
def _interleaved_forward_times(model: nn.Module, x: torch.Tensor, tolerances: Sequence[float],
                               rounds: int) -> list[tuple[list[float], list[float]]]:
    """Wall and process-CPU seconds of one forward pass per tolerance and round (see :func:`_interleaved`)."""
    def forward(i: int) -> None:
        set_tolerance(model, tolerances[i])
        model(x)
    return _interleaved(tolerances, rounds, forward, x.device)


@torch.no_grad()
def accuracy_by_tolerance(model: nn.Module, images: torch.Tensor, labels: torch.Tensor,
                          tolerances: Sequence[float], batch_size: int = 1000, progress: bool = True,
                          rounds: int = 1) -> list[dict[str, float]]:
    """Test accuracy, mean forward NFE per batch and time over ``images`` at each tolerance. The passes run in
    ``rounds`` interleaved rounds (:func:`_interleaved`): the time is the median over the rounds, with its range
    and the median process CPU time; accuracy and NFE, the same in every round, come from the first."""
    model.eval()
    counted: list[dict[str, float]] = [{} for _ in tolerances]

    def evaluate(i: int) -> None:
        set_tolerance(model, tolerances[i])
        reset_solve_stats(model)
        correct, batches = 0, 0
        for start in range(0, len(images), batch_size):
            correct += int((model(images[start:start + batch_size]).argmax(1) == labels[start:start + batch_size]).sum())
            batches += 1
        if not counted[i]:
            counted[i] = {"accuracy": correct / len(images), "nfe_forward": collect_solve_stats(model).nfe_forward / batches}

    rows = []
    for tol, found, (wall, cpu) in zip(tolerances, counted, _interleaved(tolerances, rounds, evaluate, images.device)):
        rows.append({"tol": float(tol), **found, "time_s": statistics.median(wall), "time_min_s": min(wall),
                     "time_max_s": max(wall), "cpu_s": statistics.median(cpu), "rounds": len(wall)})
        if progress:
            r = rows[-1]
            print(f"  figure3 accuracy tol={tol:.0e}: {r['accuracy']:.2%} on {len(images)} images, "
                  f"NFE {r['nfe_forward']:.1f}, {r['time_s']:.1f} s ({r['time_min_s']:.1f}-{r['time_max_s']:.1f}) "
                  f"over {r['rounds']} round(s)", flush=True)
    return rows


ROW_KEYS = ("tol", "nfe_forward", "nfe_forward_train", "nfe_backward", "error_state", "error_logits",
            "forward_time_s", "accuracy")
ACCURACY_KEYS = ("tol", "accuracy", "nfe_forward", "time_s")
# Timings added later: optional (files measured before lack them), finite numbers where present.
ROW_TIMING_KEYS = ("forward_time_min_s", "forward_time_max_s", "forward_cpu_s")
ACCURACY_TIMING_KEYS = ("time_min_s", "time_max_s", "cpu_s", "rounds")


def _numbers(record: Any, keys: Sequence[str]) -> bool:
    return isinstance(record, dict) and all(
        isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool) and math.isfinite(record[k])
        for k in keys)


def _optional_numbers(record: dict[str, Any], keys: Sequence[str]) -> bool:
    return _numbers(record, [k for k in keys if k in record])


def read_measurements(path: Path) -> dict[str, Any] | None:
    """The measurements :func:`main` saved at ``path``; None if missing, or damaged or crafted (a field the
    report prints is absent or not a finite number), so the report blanks Figure 3 instead of failing."""
    data = read_json(path)
    if not (_numbers(data, ("batch_size", "reference_tol")) and isinstance(data.get("rows"), list)
            and all(_numbers(r, ROW_KEYS) and _optional_numbers(r, ROW_TIMING_KEYS) for r in data["rows"])
            and _optional_numbers(data, ("timing_rounds",))):
        return None
    ratio = data.get("backward_over_forward")
    if ratio is not None and not _numbers(ratio, ("median", "min", "max")):
        return None
    accuracy = data.get("accuracy_by_tolerance") or []
    if not isinstance(accuracy, list) or not all(
            _numbers(r, ACCURACY_KEYS) and _optional_numbers(r, ACCURACY_TIMING_KEYS) for r in accuracy):
        return None
    if accuracy and not _numbers(data, ("accuracy_images",)):
        return None
    return data


HALF = (0.35, 0.65)  # backward/forward NFE ratios read as the paper's "roughly half"


def verdict(data: dict[str, Any]) -> str:
    """One honest sentence on the paper's claim that backward NFE is about half of forward NFE."""
    r = data.get("backward_over_forward", {}) or {}
    med = r.get("median")
    if med is None:
        return "Backward NFE was not measured."
    method = data.get("solver") or data.get("method") or "the trained method"
    span = f"median {med:.2f}, range {r['min']:.2f}-{r['max']:.2f} over {len(data['rows'])} tolerances with {method}"
    if HALF[0] <= med <= HALF[1]:
        return f"Measured backward/forward NFE ratio: {span}. This agrees with the paper's 'roughly half'."
    return (f"Measured backward/forward NFE ratio: {span}. This does NOT reproduce the paper's claim that the "
            f"backward pass needs roughly half the evaluations of the forward pass.")


def observations(data: dict[str, Any] | None, nfe_over_epochs: tuple[Sequence[float], Sequence[float]]) -> list[str]:
    """What panels (a), (b) and (d) show, measured, one sentence each (panel (c) is :func:`verdict`)."""
    out = []
    rows = (data or {}).get("rows", [])
    if len(rows) >= 2:
        lo, hi = min(rows, key=lambda r: r["nfe_forward"]), max(rows, key=lambda r: r["nfe_forward"])
        out.append(f"(a) From {lo['nfe_forward']:.0f} to {hi['nfe_forward']:.0f} forward NFE the error of h(1) went "
                   f"from {lo['error_state']:.1e} to {hi['error_state']:.1e}.")
        out.append(_timing_observation(rows, data.get("timing_rounds", 1)))
    acc = (data or {}).get("accuracy_by_tolerance") or []
    if len(acc) >= 2:
        loose, tight = acc[0], acc[-1]
        timed = [_Timed(r["tol"], r["nfe_forward"], r["time_s"], r.get("time_min_s"), r.get("time_max_s"))
                 for r in acc]
        rounds = min(int(r.get("rounds", 1)) for r in acc)

        def seconds(row: dict[str, Any]) -> str:
            spread = f" (range {row['time_min_s']:.1f}-{row['time_max_s']:.1f})" if rounds > 1 else ""
            cpu = f", CPU {row['cpu_s']:.1f} s" if "cpu_s" in row else ""
            return f"{row['time_s']:.1f} s{spread}{cpu}"

        out.append(f"Test-time trade-off: from tolerance {tight['tol']:.0e} to {loose['tol']:.0e} the forward NFE per "
                   f"batch fell from {tight['nfe_forward']:.0f} to {loose['nfe_forward']:.0f} and the median time over "
                   f"{data['accuracy_images']} test images ({rounds} interleaved round(s)) went from {seconds(tight)} "
                   f"to {seconds(loose)}, while the test accuracy went from {tight['accuracy']:.2%} to "
                   f"{loose['accuracy']:.2%}." + _spread_verdict(timed, rounds, "time"))
    _, nfe = nfe_over_epochs
    if len(nfe) >= 2:
        trend = "rose" if nfe[-1] > nfe[0] else "fell" if nfe[-1] < nfe[0] else "stayed"
        out.append(f"(d) Mean forward NFE per training batch {trend} from {nfe[0]:.1f} (epoch 1) to {nfe[-1]:.1f} "
                   f"(epoch {len(nfe)})" + ("; the paper's growth over training is not seen in this short run."
                                            if trend != "rose" else "."))
    elif nfe:
        out.append("(d) Only one epoch was trained, so there is no trend to see.")
    return out


@dataclasses.dataclass(frozen=True)
class _Timed:
    """One tolerance's timing: median over the rounds and its range (None: not recorded)."""

    tol: float
    nfe: float
    median: float
    low: float | None
    high: float | None


def _spread_verdict(points: Sequence[_Timed], rounds: int, what: str) -> str:
    """What the timings support, as a sentence to append: no trend where the spread is unknown or larger than the
    change from the fewest to the most NFE; where the change is real, whether it is monotone in NFE (a tolerance
    with fewer NFE slower than one with more, beyond both ranges, is named)."""
    if rounds < 2 or any(p.low is None or p.high is None for p in points):
        return " One timing per tolerance: its spread is unknown, so no trend is drawn from it."
    lo, hi = min(points, key=lambda p: p.nfe), max(points, key=lambda p: p.nfe)
    if lo.high >= hi.low and hi.high >= lo.low:
        return " The ranges overlap: the spread is larger than the effect, so no trend is drawn."
    for fewer in points:
        for more in points:
            if fewer.nfe < more.nfe and fewer.low > more.high:
                return (f" Not monotone: at tol {fewer.tol:.0e} ({fewer.nfe:.0f} NFE) the {what} was longer than at "
                        f"tol {more.tol:.0e} ({more.nfe:.0f} NFE) beyond both ranges, so only the end-to-end change "
                        "stands.")
    return (" The change is larger than the spread, and monotone within it: no tolerance with fewer NFE took longer "
            "than one with more beyond both ranges.")


def _timing_observation(rows: Sequence[dict[str, Any]], rounds: int) -> str:
    """Panel (b) in words: the trend only where the timings' spread over the rounds is smaller than it."""
    lo, hi = min(rows, key=lambda r: r["nfe_forward"]), max(rows, key=lambda r: r["nfe_forward"])

    def ms(row: dict[str, Any]) -> str:
        low, high = row.get("forward_time_min_s"), row.get("forward_time_max_s")
        spread = f" (range {low * 1e3:.0f}-{high * 1e3:.0f})" if low is not None and rounds > 1 else ""
        return f"{row['forward_time_s'] * 1e3:.0f} ms{spread}"

    timed = [_Timed(r["tol"], r["nfe_forward"], r["forward_time_s"], r.get("forward_time_min_s"),
                    r.get("forward_time_max_s")) for r in rows]
    return (f"(b) Median forward time over {rounds} interleaved round(s) went from {ms(lo)} to {ms(hi)} over the "
            "same range." + _spread_verdict(timed, rounds, "forward time"))


def plot(data: dict[str, Any] | None, nfe_over_epochs: tuple[Sequence[float], Sequence[float]], out_png: Path,
         title: str = "", paper_solver: dict[str, Any] | None = None) -> Path:
    """Four panels as in the paper's Figure 3; panels without data say so instead of failing. ``paper_solver``:
    measurements with another method (the paper's LSODA), added to panel (c)."""
    from matplotlib.figure import Figure

    from neuralode.report.figures import epoch_ticks, save_figure

    fig = Figure(figsize=(16, 3.6))
    axes = fig.subplots(1, 4)
    rows = (data or {}).get("rows", [])
    nfe = [r["nfe_forward"] for r in rows]
    panels = [
        ("(a)", "Numerical error", [r["error_state"] for r in rows], True),
        ("(b)", "Forward time (s), median", [r["forward_time_s"] for r in rows], False),
        ("(c)", "NFE backward", [r["nfe_backward"] for r in rows], False),
    ]
    for ax, (tag, ylabel, ys, logy) in zip(axes[:3], panels):
        if rows:
            ax.plot(nfe, ys, "o-")
            _label_tolerances(ax, rows, nfe, ys)
            if logy:
                ax.set_yscale("log")
        else:
            ax.text(0.5, 0.5, "no checkpoint measured", ha="center", va="center", transform=ax.transAxes)
        ax.set_xlabel("NFE forward")
        ax.set_ylabel(ylabel)
        ax.set_title(tag)
    if rows and "forward_time_min_s" in rows[0]:  # the range over the timing rounds
        axes[1].errorbar(nfe, [r["forward_time_s"] for r in rows], fmt="none", ecolor="gray", capsize=3,
                         yerr=[[r["forward_time_s"] - r["forward_time_min_s"] for r in rows],
                               [r["forward_time_max_s"] - r["forward_time_s"] for r in rows]])
    other = (paper_solver or {}).get("rows", [])
    if rows and other:
        axes[2].lines[0].set_label(data.get("method", "trained method"))
        other_x, other_y = [r["nfe_forward_train"] for r in other], [r["nfe_backward"] for r in other]
        axes[2].plot(other_x, other_y, "s-", label=paper_solver.get("solver") or paper_solver.get("method"))
        _label_tolerances(axes[2], other, other_x, other_y, left=True)  # apart from the trained method's labels
    if rows:
        lim = max(nfe + [r["nfe_backward"] for r in rows + other] + [r["nfe_forward_train"] for r in other]) * 1.05
        axes[2].plot([0, lim], [0, lim / 2], "--", color="gray", label="backward = forward / 2")
        axes[2].legend(fontsize=8)
    xs, ys = nfe_over_epochs
    ax = axes[3]
    if ys:
        ax.plot(xs, ys, "o-")
    else:
        ax.text(0.5, 0.5, "no metrics.jsonl", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("Training epoch")
    epoch_ticks(ax, xs)
    ax.set_ylabel("NFE forward")
    ax.set_title("(d)")
    if title:
        fig.suptitle(title)
    return save_figure(fig, out_png)


def _label_tolerances(ax: Any, rows: Sequence[dict[str, Any]], xs: Sequence[float], ys: Sequence[float],
                      left: bool = False) -> None:
    """Write each point's tolerance beside it (right and below, or left and above): which tolerance gave which
    NFE is what the panel is about."""
    for row, x, y in zip(rows, xs, ys):
        ax.annotate(f"{row['tol']:.0e}", (x, y), xytext=(-4, 4) if left else (4, -4), textcoords="offset points",
                    fontsize=8, ha="right" if left else "left", va="bottom" if left else "top")


def load_odenet(checkpoint: str | Path, batch_size: int | None, device: str = "cpu",
                data: dict[str, Any] | None = None) -> tuple[nn.Module, torch.Tensor, torch.Tensor, dict[str, Any]]:
    """The trained model of an MNIST ODE-Net checkpoint and its first ``batch_size`` test images (all: None)
    and labels."""
    from neuralode.evaluate import restore_task

    task, ckpt, cfg, _ = restore_task(checkpoint, data=data, device=device, task_name="mnist")
    ode_blocks(task.model)  # fail early, with a clear message, on a model without an ODE block
    x, labels = task.test_inputs(batch_size)
    info = {"checkpoint": str(checkpoint), "epoch": int(ckpt["epoch"]), "model": cfg.model.name,
            "data": cfg.data.name, "method": cfg.solver.method}
    return task.model, x, labels, info


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neuralode.report.figure3", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="run dir of a task=mnist model=odenet run, or its last.pt")
    parser.add_argument("--out", type=Path, help="JSON with the measurements (default: <run dir>/figure3.json)")
    parser.add_argument("--png", type=Path, help="also plot the figure here")
    parser.add_argument("--tolerances", type=float, nargs="+", default=list(FIG3_TOLS_LONG))
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timing rounds, each timing one forward pass per "
                        "tolerance (and one pass of the accuracy table over its images), interleaved (median and "
                        "range over the rounds)")
    parser.add_argument("--accuracy-tolerances", type=float, nargs="*", default=list(FIG3_ACCURACY_TOLS),
                        help="tolerances of the accuracy table (none: skip it)")
    parser.add_argument("--accuracy-images", type=int, help="test images of the accuracy table (default: all)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--data-root", help="data.root override if the data moved since training")
    parser.add_argument("--solver", help="measure with this solver=<name> (e.g. lsoda) instead of the trained one")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or args.repeats < 1 or any(t <= 0 for t in args.tolerances + args.accuracy_tolerances):
        parser.error("--batch-size and --repeats must be >= 1 and every tolerance > 0")
    if args.accuracy_images is not None and args.accuracy_images < 1:
        parser.error("--accuracy-images must be >= 1")
    solver = None
    if args.solver:
        from neuralode.config import solver_defaults, solver_names

        if args.solver not in solver_names():
            parser.error(f"--solver {args.solver!r} is unknown; use one of: {', '.join(solver_names())}")
        solver = solver_defaults(args.solver)
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        model, images, labels, info = load_odenet(args.checkpoint, None, args.device,
                                                  {"root": args.data_root} if args.data_root else None)
    except NeuralodeError as e:  # a checkpoint, data or config error: one clear line
        print(f"error: {e}", file=sys.stderr)
        return 2
    x, y = images[:args.batch_size], labels[:args.batch_size]
    print(f"figure3: {info['model']} on {info['data']} (epoch {info['epoch']}), batch {x.shape[0]}, "
          f"{len(args.tolerances)} tolerances", flush=True)
    data = {**info, **measure(model, x, y, args.tolerances, repeats=args.repeats, solver=solver)}
    if solver is not None:
        data.update(method=solver["method"], method_options=solver["options"], solver=args.solver)
    n_acc = args.accuracy_images or len(images)
    data["accuracy_images"] = n_acc
    load_before = os.getloadavg()[0]
    data["accuracy_by_tolerance"] = accuracy_by_tolerance(model, images[:n_acc], labels[:n_acc],
                                                          args.accuracy_tolerances, rounds=args.repeats)
    data["accuracy_load_average_1min"] = {"before": load_before, "after": os.getloadavg()[0], "cpus": os.cpu_count()}
    run_dir = Path(args.checkpoint) if Path(args.checkpoint).is_dir() else Path(args.checkpoint).parent.parent
    out = args.out or run_dir / "figure3.json"
    write_text_atomic(out, json.dumps(data, indent=1))
    print(f"figure3: {verdict(data)}\nfigure3: wrote {out}", flush=True)
    if args.png:
        from neuralode.report.runs import load_run

        print(f"figure3: wrote {plot(data, load_run(run_dir).series('nfe_forward'), args.png)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
