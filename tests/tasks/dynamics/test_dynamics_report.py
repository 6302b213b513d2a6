"""neuralode.report.dynamics: a task=dynamics run dir summarised for REPORT.md, errors beside the targets."""
from __future__ import annotations

import json
from pathlib import Path

from neuralode.report.dynamics import dynamics_table, summarize_dynamics_run


def fake_run(run_dir: Path, model: str, **last: float) -> Path:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "config.yaml").write_text(
        f"data:\n  name: cubic\n  irregular: true\nmodel:\n  name: {model}\n  cubic_feature: true\n")
    records = [{"epoch": 1, "epoch_time_s": 2.0, "rel_l2_train": 0.5},
               {"epoch": 2, "epoch_time_s": 3.0, "nfe_forward": 40.0, "nfe_backward": 0.0, **last}]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    (run_dir / "figures").mkdir()
    (run_dir / "figures" / f"dynamics_{model}_phase.png").write_bytes(b"png")
    return run_dir


def test_a_node_run_is_summarised_with_its_targets(tmp_path: Path):
    run = fake_run(tmp_path / "node", "node", rel_l2_train=0.04, rel_l2_extrap=0.2, rel_l2_unseen=0.1,
                   field_rel_l2=0.05, extrap_mse=0.01)
    summary = summarize_dynamics_run(run)
    assert (summary["system"], summary["sampling"], summary["model"], summary["epochs"]) == (
        "cubic", "irregular", "node (cubic feature)", 2)
    assert summary["train_time_s"] == 5.0
    assert summary["targets_met"] == {"rel_l2_train": True, "rel_l2_extrap": False, "rel_l2_unseen": True,
                                      "field_rel_l2": True}
    assert [p.name for p in summary["figures"]] == ["dynamics_node_phase.png"]
    table = dynamics_table([summary])
    row = table.splitlines()[2]
    assert "| cubic | irregular | node (cubic feature) | 2 | 4.0 % (met) | 20.0 % (target 15 %) |" in row
    assert "| 1.00e-02 |" in row and row.endswith("| 5 s |")


def test_baselines_have_no_targets_and_a_missing_run_none(tmp_path: Path):
    summary = summarize_dynamics_run(fake_run(tmp_path / "rnn", "rnn_dt", rel_l2_extrap=0.9))
    assert summary["targets_met"] == {}
    assert "| 90.0 % |" in dynamics_table([summary])
    assert summarize_dynamics_run(tmp_path / "absent") is None


def test_a_run_without_its_recorded_config_is_not_summarised(tmp_path: Path):
    run = fake_run(tmp_path / "node", "node", rel_l2_train=0.04)
    (run / ".hydra" / "config.yaml").unlink()  # e.g. a run a refused command never recorded
    assert summarize_dynamics_run(run) is None
