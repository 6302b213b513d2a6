"""Several seeds per run: plan layout, mean ± sd cells, verdicts that weigh the spread."""
from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

import pytest
from report_testdata import common, write_metrics

from neuralode.report import tables
from neuralode.report.compare import difference, lower
from neuralode.report.plan import DataChoice, build_plan
from neuralode.report.runs import Spread
from neuralode.report.writer import write_report

FM = DataChoice("fashion_mnist")


def test_one_default_seed_keeps_the_single_seed_layout_and_several_train_once_each() -> None:
    single = build_plan("smoke", FM)
    assert [r.key for r in build_plan("smoke", FM, (0,))] == [r.key for r in single]
    assert all(not any(a.startswith("seed=") for a in r.command("d")) for r in single)
    seeded = build_plan("smoke", FM, (0, 1, 2))
    assert len(seeded) == 3 * len(single) and len({r.key for r in seeded}) == len(seeded)
    odenet = [r for r in seeded if r.base == "table1/odenet"]
    assert [r.key for r in odenet] == ["seed0/table1/odenet", "seed1/table1/odenet", "seed2/table1/odenet"]
    assert "seed=2" in odenet[2].command("d")


def test_a_difference_counts_only_beyond_two_standard_errors() -> None:
    noisy_a, noisy_b = Spread((4.40, 4.50, 4.43)), Spread((4.45, 4.55, 4.50))
    assert not difference(noisy_a, noisy_b).clear
    assert lower(noisy_a, noisy_b, "CNF", "NF") == "neither (within 2 SE)"
    assert lower(Spread((1.0, 1.1, 1.05)), Spread((2.0, 2.1, 2.05)), "CNF", "NF") == "CNF"
    # The smoke report's "Lower: CNF" on 4.442 against 4.500: one seed cannot call it.
    assert lower(Spread((4.442,)), Spread((4.500,)), "CNF", "NF") == "CNF? (one seed)"


def test_cells_are_mean_sd_n_with_seeds_and_plain_with_one() -> None:
    assert tables.fmt(Spread((10.0, 11.0, 12.0)), ".2f", "%") == "11.00 ± 1.00% (n=3)"
    assert tables.fmt(Spread((10.0,)), ".2f", "%") == "10.00%"


def _seeded_runs(runs: Path, errors: dict[str, tuple[float, ...]]) -> None:
    for model, errs in errors.items():
        for seed, err in enumerate(errs):
            write_metrics(runs / f"seed{seed}/table1/{model}", [
                {**common(1, 20.0 if model == "odenet" else 0.0), "test_acc": 1 - (err + 1) / 100, "n_params": 100},
                {**common(2, 23.0 + seed if model == "odenet" else 0.0), "test_acc": 1 - err / 100, "n_params": 100}])
    for seed, (cnf, nf) in enumerate(((4.44, 4.50), (4.52, 4.47), (4.47, 4.49))):
        write_metrics(runs / f"seed{seed}/figure4/ring_modes/cnf_m2", [{**common(1, 30.0), "kl": cnf}])
        write_metrics(runs / f"seed{seed}/figure4/ring_modes/planar_k2", [{**common(1), "kl": nf}])


def test_three_seed_report_shows_spreads_bands_and_verdicts_from_them(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    _seeded_runs(runs, {"odenet": (10.5, 10.7, 10.6), "resnet": (10.6, 10.4, 10.8), "mlp": (13.0, 13.4, 13.2)})
    text = write_report("smoke", build_plan("smoke", FM, (0, 1, 2)), runs, tmp_path / "report").read_text()
    assert "| ODE-Net | 10.60 ± 0.10% (n=3) |" in text and "| ResNet | 10.60 ± 0.20% (n=3) |" in text
    verdicts = text.split("## What reproduced")[1].split("## Table 1")[0]
    row = next(line for line in verdicts.splitlines() if "as accurate as the ResNet" in line)
    assert "**reproduced**" in row and "within 2 SE, they match" in row
    growth = next(line for line in verdicts.splitlines() if "NFE grows" in line)
    assert "+4.0 ± 1.0 (n=3)" in growth and "**reproduced**" in growth  # 3, 4, 5: mean 4, SE 0.58
    fig4 = next(line for line in verdicts.splitlines() if line.startswith("| Figure 4"))
    assert "**partly**" in fig4 and "a tie, not a win" in fig4
    assert "| ring_modes | 2 |" in text and "neither (within 2 SE)" in text
    assert "Seeds:** 3 (0, 1, 2)" in text
    assert (tmp_path / "report/figures/table1_curves.png").is_file()


def test_single_seed_report_judges_no_comparison(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    write_metrics(runs / "table1/odenet", [{**common(1, 20.0), "test_acc": 0.8944, "n_params": 100}])
    write_metrics(runs / "table1/resnet", [{**common(1), "test_acc": 0.8891, "n_params": 300}])
    write_metrics(runs / "figure4/ring_modes/cnf_m2", [{**common(1, 30.0), "kl": 4.442}])
    write_metrics(runs / "figure4/ring_modes/planar_k2", [{**common(1), "kl": 4.500}])
    text = write_report("smoke", build_plan("smoke", FM), runs, tmp_path / "report").read_text()
    assert text.index("## What reproduced") < text.index("## Table 1")
    verdicts = text.split("## What reproduced")[1].split("## Table 1")[0]
    for claim in ("as accurate as the ResNet", "Figure 4"):
        row = next(line for line in verdicts.splitlines() if claim in line)
        assert "**not judged**" in row and "one seed" in row
    assert "| ODE-Net | 10.56% |" in text  # today's single-seed cell
    assert "| ring_modes | 2 | 4.500 | 4.442 | 30.0 / 15.0 | CNF? (one seed) |" in text


FAKE_CLI = '''
import json, sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[2:])
run_dir = Path(args["hydra.run.dir"])
run_dir.mkdir(parents=True, exist_ok=True)
(run_dir / "argv.json").write_text(json.dumps(sys.argv[2:]))
(run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 0.5 + int(args["seed"]) / 100,
    "test_rmse": 0.25, "kl": 1.5, "test_nll": 2.5, "nfe_forward": 10.0, "nfe_backward": 5.0}) + "\\n")
'''


def test_reproduce_with_seeds_trains_each_run_per_seed_and_lists_thread_settings(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from report_testdata import write_tiny_idx

    from neuralode.report import reproduce

    fake = tmp_path / "fake_cli.py"
    fake.write_text(FAKE_CLI)
    monkeypatch.setattr(reproduce, "neuralode_command", lambda: [sys.executable, str(fake)])
    runs, report = tmp_path / "runs", tmp_path / "report"
    argv = ["--profile", "smoke", "--runs-dir", str(runs), "--report-dir", str(report), "--data", "fashion_mnist",
            "--data-root", str(write_tiny_idx(tmp_path / "idx")), "--jobs", "2", "--threads", "1", "--seeds", "0", "1"]
    sigterm = signal.getsignal(signal.SIGTERM)
    assert reproduce.main(argv) == 1  # no ODE-Net checkpoint for Figure 3
    assert signal.getsignal(signal.SIGTERM) == sigterm  # its Ctrl-C-like SIGTERM handling ends with it
    for seed in (0, 1):
        assert f"seed={seed}" in json.loads((runs / f"seed{seed}/table1/mlp/argv.json").read_text())
    text = (report / "REPORT.md").read_text()
    assert "| 1-Layer MLP | 49.50 ± 0.71% (n=2) |" in text
    assert "SEEDS=2" in text and "trainer.threads=1" in text.split("## Runs")[1]
    # make report finds the seeds that were trained without being told again.
    assert reproduce.main(["--profile", "smoke", "--runs-dir", str(runs), "--report-dir", str(report),
                           "--no-train"]) == 0
