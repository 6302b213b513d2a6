"""Markdown tables that put our measured numbers beside the paper's.

Each function takes already-loaded :class:`RunGroup` objects (an experiment's runs, one per seed; missing
runs are summaries without records) and returns Markdown; a run that is missing shows as "missing", never as
an exception. With several seeds a cell is ``mean ± sd (n=seeds)``; with one it is the value alone.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

from neuralode.report import paper
from neuralode.report.compare import lower
from neuralode.report.runs import RunGroup, RunSummary, Spread

MISSING = "missing"


def fmt(value: float | Spread | None, spec: str = ".3g", suffix: str = "") -> str:
    if value is None:
        return MISSING
    if not isinstance(value, Spread):
        return f"{value:{spec}}{suffix}"
    if value.sd is None:
        return f"{value.mean:{spec}}{suffix}"
    if value.sd == 0:  # every seed gave the same value (a count, a deterministic measure)
        return f"{value.mean:{spec}}{suffix} (n={value.n})"
    return f"{value.mean:{spec}} ± {value.sd:{spec.lstrip('+')}}{suffix} (n={value.n})"  # an sd has no sign


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def test_error_pct(run: RunSummary) -> float | None:
    """Test error in % at the last epoch (the paper reports the final model, not the best epoch)."""
    acc = run.final("test_acc")
    if acc is None:
        return None
    # Accept accuracy as a fraction or as a percentage.
    return 100.0 * (1.0 - acc) if acc <= 1.0 else 100.0 - acc


def test_error(group: RunGroup) -> Spread | None:
    return group.spread(test_error_pct)


def table1(runs: Mapping[str, RunGroup]) -> str:
    """Paper Table 1 (MNIST classifiers): ``runs`` maps our model name to its run."""
    header = ["Model", "Test error (ours)", "Test error (paper)", "Params (ours)", "Params (paper)",
              "Peak memory MB (ours)", "Memory (paper)", "NFE fwd / bwd (ours)", "Time/epoch s (ours)",
              "Time (paper)", "Epochs (ours)"]
    rows = []
    for ref in paper.TABLE1:
        run = runs.get(ref.model)
        if run is None or not run.exists:
            rows.append([ref.label, MISSING, f"{ref.test_error_pct:.2f}%", MISSING, f"{ref.params_m:.2f}M",
                         MISSING, ref.memory, MISSING, MISSING, ref.time, MISSING])
            continue
        nfe_f, nfe_b = run.final("nfe_forward"), run.final("nfe_backward")
        nfe = "-" if nfe_f is None or nfe_f.mean == 0 else f"{fmt(nfe_f, '.1f')} / {fmt(nfe_b, '.1f')}"
        rows.append([
            ref.label,
            fmt(test_error(run), ".2f", "%"),
            f"{ref.test_error_pct:.2f}%",
            _millions(run.n_params),
            f"{ref.params_m:.2f}M",
            fmt(run.best("peak_memory_mb", "max"), ".1f"),
            ref.memory,
            nfe,
            fmt(run.mean("epoch_time_s"), ".1f"),
            ref.time,
            fmt(run.epochs(), ".0f"),
        ])
    return markdown_table(header, rows)


def _millions(params: Spread | None) -> str:
    """A parameter count in millions: one value when the seeds agree (the same architecture), as they should."""
    if params is None:
        return MISSING
    if params.sd in (None, 0.0):
        return f"{params.mean / 1e6:.3f}M"
    return fmt(Spread(tuple(v / 1e6 for v in params.values)), ".3f", "M")


def table2(runs: Mapping[tuple[str, int], RunGroup]) -> str:
    """Paper Table 2 (spiral predictive RMSE): ``runs`` maps (model, n_obs) to its run."""
    n_obs = paper.TABLE2_N_OBS
    header = ["Model"] + [f"{n}/100 (ours)" for n in n_obs] + [f"{n}/100 (paper)" for n in n_obs]
    rows = []
    for model in ("rnn", "latent_ode"):
        ours = []
        for n in n_obs:
            run = runs.get((model, n))
            ours.append(fmt(run.final("test_rmse") if run else None, ".4f"))
        theirs = [f"{v:.4f}" for v in paper.TABLE2_RMSE[model]]
        rows.append([paper.TABLE2_LABELS[model], *ours, *theirs])
    return markdown_table(header, rows)


def flows_table(runs: Mapping[tuple[str, str, int], RunGroup], key: str, label: str) -> str:
    """CNF vs planar NF: ``runs`` maps (data set, model, K=M) to its runs; one row per data set and size,
    the final ``key`` (``kl`` or ``test_nll``) of each model side by side, and which is lower beyond the
    seed-to-seed spread."""
    datasets = sorted({d for d, _, _ in runs})
    sizes = sorted({k for _, _, k in runs})
    header = ["Data", "K = M", f"Planar NF {label}", f"CNF {label}", "CNF NFE fwd / bwd", "Lower"]
    rows = []
    for d in datasets:
        for k in sizes:
            nf, cnf = runs.get((d, "planar", k)), runs.get((d, "cnf", k))
            if nf is None and cnf is None:
                continue
            v_nf = nf.final(key) if nf else None
            v_cnf = cnf.final(key) if cnf else None
            nfe = MISSING if cnf is None or not cnf.exists else (
                f"{fmt(cnf.final('nfe_forward'), '.1f')} / {fmt(cnf.final('nfe_backward'), '.1f')}")
            rows.append([d, str(k), fmt(v_nf, ".3f"), fmt(v_cnf, ".3f"), nfe, lower(v_cnf, v_nf, "CNF", "NF")])
    if not rows:
        return f"_No {label} runs found._"
    return markdown_table(header, rows)
