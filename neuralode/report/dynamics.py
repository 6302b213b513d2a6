"""The course exercise "learning dynamics from trajectories" (task=dynamics) for REPORT.md: one run dir summarised,
and a Markdown table of several, each error beside the issue's target for the neural ODE."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from neuralode.report.runs import read_metrics, read_run_config

# Targets for the neural ODE on the quick profile (issue 26): relative L2 errors.
TARGETS = {"rel_l2_train": 0.05, "rel_l2_extrap": 0.15, "rel_l2_unseen": 0.20, "field_rel_l2": 0.10}
COLUMNS = (("rel_l2_train", "rel. L2 train span"), ("rel_l2_extrap", "rel. L2 extrapolation"),
           ("rel_l2_unseen", "rel. L2 unseen ICs"), ("field_rel_l2", "field rel. L2"),
           ("interp_mse", "interp. MSE"), ("extrap_mse", "extrap. MSE"), ("unseen_mse", "unseen MSE"),
           ("nfe_forward", "NFE fwd"), ("nfe_backward", "NFE bwd"))


def summarize_dynamics_run(run_dir: Path) -> dict[str, Any] | None:
    """System, sampling, model, epochs, the last epoch's metrics (``COLUMNS``), total training time, whether
    each ``TARGETS`` error is met (model=node only), and the run's figures; None without metrics or a recorded
    config."""
    run_dir = Path(run_dir)
    records = read_metrics(run_dir)
    if not records:
        return None
    config = read_run_config(run_dir)
    data, model = config.get("data", {}), config.get("model", {})
    if not isinstance(model.get("name"), str) or not isinstance(data.get("name"), str):
        return None  # no recorded config (.hydra/config.yaml) to say which system and model it is
    last = records[-1]
    is_node = model.get("name") == "node"
    return {
        "run_dir": run_dir,
        "system": data.get("name"),
        "sampling": "irregular" if data.get("irregular") else "regular",
        "model": model.get("name") + (" (cubic feature)" if model.get("cubic_feature") else ""),
        "epochs": last.get("epoch"),
        "metrics": {key: last.get(key) for key, _ in COLUMNS},
        "train_time_s": sum(r.get("epoch_time_s") or 0.0 for r in records),
        "targets_met": {key: last[key] <= bound for key, bound in TARGETS.items()
                        if is_node and isinstance(last.get(key), (int, float))},
        "figures": sorted((run_dir / "figures").glob("dynamics_*.png")),
    }


def _cell(summary: dict[str, Any], key: str) -> str:
    value = summary["metrics"].get(key)
    if not isinstance(value, (int, float)):
        return "-"
    text = f"{100 * value:.1f} %" if key in TARGETS else (f"{value:.0f}" if key.startswith("nfe") else f"{value:.2e}")
    met = summary["targets_met"].get(key)
    return text if met is None else f"{text} {'(met)' if met else f'(target {100 * TARGETS[key]:.0f} %)'}"


def dynamics_table(summaries: Sequence[dict[str, Any]]) -> str:
    """A Markdown table, one row per summarised run (from :func:`summarize_dynamics_run`)."""
    header = ["system", "sampling", "model", "epochs", *(label for _, label in COLUMNS), "train time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for s in summaries:
        cells = [s["system"], s["sampling"], s["model"], str(s["epochs"]), *(_cell(s, key) for key, _ in COLUMNS),
                 f"{s['train_time_s']:.0f} s"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
