"""REPORT.md generation from synthetic run outputs: paper numbers, our numbers, missing runs."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from report_testdata import common, write_metrics

from neuralode.report import paper, tables
from neuralode.report.plan import DataChoice, build_plan
from neuralode.report.reproduce import detect_data, is_complete
from neuralode.report.runs import MetricsError, load_run, read_metrics
from neuralode.report.writer import FIGURE3_FILE, FIGURE3_PAPER_SOLVER_FILE, STATE_FILE, write_report


@pytest.fixture
def runs_dir(tmp_path: Path) -> Path:
    """Synthetic outputs of a smoke reproduction with some runs deliberately missing."""
    runs = tmp_path / "runs"
    accs = {"mlp": 0.8123, "resnet": 0.9012, "rknet": 0.8876}  # odenet missing on purpose
    for model, acc in accs.items():
        write_metrics(runs / f"table1/{model}", [{**common(1, 26.0 if model == "rknet" else 0.0),
                                                  "train_acc": acc - 0.05, "test_acc": acc, "n_params": 215_000}])
    rmse = {("latent_ode", 30): 0.2468, ("rnn", 30): 0.4321, ("latent_ode", 100): 0.1357}
    for (model, n), v in rmse.items():
        write_metrics(runs / f"table2/{model}_n{n}", [{**common(1, 14.0), "test_rmse": v + 0.1},
                                                      {**common(2, 20.0), "test_rmse": v}])
    write_metrics(runs / "figure4/ring_modes/cnf_m2", [{**common(1, 30.0), "kl": 0.5432}])
    write_metrics(runs / "figure4/ring_modes/planar_k2", [{**common(1), "kl": 0.9876}])
    write_metrics(runs / "figure5/two_moons/cnf", [{**common(1, 40.0), "test_nll": 1.2346}])
    (runs / STATE_FILE).write_text(json.dumps({
        "profile": "smoke", "command": "make reproduce PROFILE=smoke REPORT_DIR=x",
        "data": {"name": "fashion_mnist", "root": "/data/fm", "note": "offline stand-in"},
        "runs": {"table1/odenet": {"status": "failed", "rc": 2, "seconds": 1.0}},
    }))
    return runs


def test_report_has_paper_and_our_numbers_and_missing_runs(runs_dir: Path, tmp_path: Path) -> None:
    plan = build_plan("smoke", DataChoice("fashion_mnist", "/data/fm"))
    report = write_report("smoke", plan, runs_dir, tmp_path / "report")
    text = report.read_text()
    # Paper's Table 1 and Table 2 numbers.
    for row in paper.TABLE1:
        assert f"{row.test_error_pct:.2f}%" in text and f"{row.params_m:.2f}M" in text and row.memory in text
    for values in paper.TABLE2_RMSE.values():
        for v in values:
            assert f"{v:.4f}" in text
    # Ours: errors from test_acc, params, RMSE, KL, NLL.
    assert "18.77%" in text and "9.88%" in text and "11.24%" in text
    assert "0.215M" in text
    assert "0.2468" in text and "0.4321" in text and "0.1357" in text
    assert "0.543" in text and "0.988" in text and "1.235" in text
    # Missing runs are reported, not fatal; the failed run is named.
    assert "missing" in text
    assert "`table1/odenet`" in text and "Failed runs" in text
    assert "latent_ode_n50" in text.split("Missing runs")[1]
    # Report header: data set, profile, command, machine.
    assert "fashion_mnist" in text and "offline stand-in" in text
    assert "make reproduce PROFILE=smoke" in text and "Machine" in text
    assert "not directly comparable" in text
    # Figures exist for what has data; Figure 3 still plots (d)-less placeholder panels.
    assert (tmp_path / "report/figures/table1_curves.png").is_file()
    assert (tmp_path / "report/figures/table2_rmse.png").is_file()
    assert (tmp_path / "report/figures/figure3.png").is_file()
    assert "Figure 3 measurements missing" in text


def test_report_with_no_runs_at_all(tmp_path: Path) -> None:
    plan = build_plan("quick", DataChoice("mnist"))
    text = write_report("quick", plan, tmp_path / "nothing", tmp_path / "report").read_text()
    assert text.count("missing") >= len(plan)
    assert "0.42%" in text and "0.1642" in text


def test_figure3_section_reads_measurements(runs_dir: Path, tmp_path: Path) -> None:
    odenet = runs_dir / "table1/odenet"
    write_metrics(odenet, [{**common(e, 20.0 + 2 * e), "test_acc": 0.9} for e in (1, 2, 3)])
    rows = [{"tol": t, "nfe_forward": n, "nfe_forward_train": n, "nfe_backward": b, "error_state": e,
             "error_logits": e / 2, "accuracy": 0.9, "forward_time_s": n / 1000, "train_step_time_s": 0.1}
            for t, n, b, e in ((1e-1, 14, 20, 1e-2), (1e-3, 26, 32, 1e-4))]
    (odenet / FIGURE3_FILE).write_text(json.dumps({
        "batch_size": 8, "reference_tol": 1e-9, "rows": rows,
        "backward_over_forward": {"median": 1.3, "min": 1.23, "max": 1.43}}))
    plan = build_plan("smoke", DataChoice("fashion_mnist"))
    text = write_report("smoke", plan, runs_dir, tmp_path / "report").read_text()
    assert "does NOT reproduce" in text and "1.30" in text
    assert "1e-01" in text and "1.00e-04" in text
    assert f"{FIGURE3_PAPER_SOLVER_FILE} not found" in text
    # Panel (c) with the paper's solver family, from its own measurements file.
    half = [{**r, "nfe_backward": r["nfe_forward"] / 2} for r in rows]
    (odenet / FIGURE3_PAPER_SOLVER_FILE).write_text(json.dumps({
        "batch_size": 8, "reference_tol": 1e-9, "rows": half, "solver": "lsoda", "method": "scipy_solver",
        "method_options": {"solver": "LSODA"}, "backward_over_forward": {"median": 0.5, "min": 0.5, "max": 0.5}}))
    text = write_report("smoke", plan, runs_dir, tmp_path / "report").read_text()
    paper_part = text.split("Panel (c) with the paper's solver family:")[1]
    assert "`solver=lsoda`" in paper_part and "agrees with the paper's 'roughly half'" in paper_part


def test_tables_format_missing_cells() -> None:
    assert tables.fmt(None) == tables.MISSING
    assert tables.table2({}).count(tables.MISSING) == 6
    assert "No KL runs" in tables.flows_table({}, "kl", "KL")


def test_truncated_metrics_line_is_skipped_and_epochs_deduplicated(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text('{"epoch": 1, "test_acc": 0.5}\n{"epoch": 1, "test_acc": 0.6}\n{"epoch": 2, "te')
    records = read_metrics(run)
    assert records == [{"epoch": 1, "test_acc": 0.6}]
    assert load_run(run).final("test_acc") == 0.6


def test_is_complete_counts_epochs_of_the_composed_config(tmp_path: Path) -> None:
    run = next(r for r in build_plan("smoke", DataChoice("mnist")) if r.key == "table1/mlp")
    run_dir = tmp_path / "mlp"
    assert not is_complete(run, run_dir)
    write_metrics(run_dir, [common(1)])  # profile=smoke trains one MNIST epoch
    assert is_complete(run, run_dir)


def test_data_detection_uses_files_present_and_names_a_missing_folder(tmp_path: Path) -> None:
    from report_testdata import write_tiny_idx

    root = str(write_tiny_idx(tmp_path / "idx"))
    assert detect_data("auto", root) == DataChoice("mnist", root)  # MNIST files found there: no download
    assert detect_data("fashion_mnist", root).root == root
    with pytest.raises(SystemExit, match="no image data set"):
        detect_data("fashion_mnist", str(tmp_path / "nowhere"))


FAKE_CLI = '''
import json, os, sys
from pathlib import Path
args = dict(a.split("=", 1) for a in sys.argv[2:])
run_dir = Path(args["hydra.run.dir"])
with open(os.environ["FAKE_CLI_LOG"], "a") as f:
    f.write(run_dir.name + "\\n")
if args["task"] == "spiral" and args["data.n_obs"] == "50":
    sys.exit(2)
run_dir.mkdir(parents=True, exist_ok=True)
(run_dir / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 0.5, "test_rmse": 0.25, "kl": 1.5,
                                                   "test_nll": 2.5, "nfe_forward": 10.0, "nfe_backward": 5.0}) + "\\n")
'''


@pytest.mark.parametrize("jobs", [1, 2])
def test_reproduce_skips_complete_runs_and_reports_failures(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           jobs: int) -> None:
    from report_testdata import write_tiny_idx

    from neuralode.report import reproduce

    fake = tmp_path / "fake_cli.py"
    fake.write_text(FAKE_CLI)
    monkeypatch.setattr(reproduce, "neuralode_command", lambda: [sys.executable, str(fake)])
    log = tmp_path / "calls.log"
    monkeypatch.setenv("FAKE_CLI_LOG", str(log))
    runs, report = tmp_path / "runs", tmp_path / "report"
    argv = ["--profile", "smoke", "--runs-dir", str(runs), "--report-dir", str(report),
            "--data", "fashion_mnist", "--data-root", str(write_tiny_idx(tmp_path / "idx")), "--jobs", str(jobs)]
    assert reproduce.main(argv) == 1  # two spiral runs failed, and there is no ODE-Net checkpoint for Figure 3
    calls = log.read_text().split()
    assert len(calls) == len(build_plan("smoke", DataChoice("fashion_mnist")))
    text = (report / "REPORT.md").read_text()
    assert "`table2/latent_ode_n50`" in text.split("Failed runs")[1] and "`figure3`" in text.split("Failed runs")[1]
    assert "0.2500" in text and "50.00%" in text
    # Rerunning trains only what is not complete: the two failed runs.
    assert reproduce.main(argv) == 1
    again = log.read_text().split()[len(calls):]
    assert sorted(again) == ["latent_ode_n50", "rnn_n50"]
    state = json.loads((runs / "reproduce.json").read_text())
    assert state["jobs"] == jobs and state["wall_seconds"] > 0
    # Several at once: each run's output is in its own log file, and each gets its share of the threads.
    assert (runs / "logs").is_dir() == (jobs > 1)


# A run that waits for its stop, and records how many SIGINTs it got.
STOPPABLE_CLI = '''
import signal, sys, time
from pathlib import Path
run_dir = Path(dict(a.split("=", 1) for a in sys.argv[2:])["hydra.run.dir"])
run_dir.mkdir(parents=True)
signals = []
signal.signal(signal.SIGINT, lambda signum, frame: signals.append(signum))
(run_dir / "ready").touch()
deadline = time.monotonic() + 120
while not signals and time.monotonic() < deadline:
    time.sleep(0.05)
time.sleep(1)  # time for a second one to arrive
(run_dir / "sigints").write_text(str(len(signals)))
sys.exit(130)
'''


def test_ctrl_c_during_make_reproduce_reaches_each_running_run_once(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The runs are in sessions of their own (a terminal's Ctrl-C reaches only make reproduce), and it passes one on."""
    import time

    from report_testdata import write_tiny_idx

    from neuralode.report import reproduce

    fake = tmp_path / "fake_cli.py"
    fake.write_text(STOPPABLE_CLI)
    monkeypatch.setattr(reproduce, "neuralode_command", lambda: [sys.executable, str(fake)])
    runs = tmp_path / "runs"
    sleep = time.sleep

    def ctrl_c_once_two_run(_seconds: float) -> None:  # make reproduce waits for a free slot: the user presses Ctrl-C
        deadline = time.monotonic() + 600
        while len(list(runs.rglob("ready"))) < 2 and time.monotonic() < deadline:
            sleep(0.05)
        raise KeyboardInterrupt

    monkeypatch.setattr(reproduce.time, "sleep", ctrl_c_once_two_run)
    argv = ["--profile", "smoke", "--runs-dir", str(runs), "--report-dir", str(tmp_path / "report"),
            "--data", "fashion_mnist", "--data-root", str(write_tiny_idx(tmp_path / "idx")), "--jobs", "2"]
    assert reproduce.main(argv) == 130
    assert [p.read_text() for p in runs.rglob("sigints")] == ["1", "1"]


def test_parameter_count_of_an_older_run_comes_from_its_checkpoint_without_unpickling(tmp_path: Path) -> None:
    import pickle

    import torch

    from neuralode.report.runs import load_run
    from neuralode.utils.checkpoint import save_checkpoint

    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"epoch": 1, "test_acc": 0.5}) + "\n")
    save_checkpoint(run / "checkpoints" / "last.pt", {"model": {"w": torch.zeros(3, 4), "steps": torch.tensor(7)},
                                                       "optimizer": {}, "epoch": 1, "config": {"task": {"name": "mnist"}},
                                                       "rng": {}})
    assert load_run(run, with_params=True).n_params == 12

    class Evil:  # unpickling this would run code: the report must refuse it, not execute it
        def __reduce__(self):
            return (exec, ("open(%r, 'w').write('ran')" % str(tmp_path / "pwned"),))

    (run / "checkpoints" / "last.pt").write_bytes(pickle.dumps({"model": Evil()}, protocol=2))
    assert load_run(run, with_params=True).n_params is None and not (tmp_path / "pwned").exists()


def test_the_latent_space_figures_show_under_table_2(runs_dir: Path, tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    figs = runs_dir / "table2/latent_ode_n30/figures"
    figs.mkdir(parents=True)
    for name in ("spiral_latent_ode_n30", "latent_trajectories_n30", "latent_interpolation_n30"):
        Figure(figsize=(2, 2)).savefig(figs / f"{name}.png")
    text = write_report("smoke", build_plan("smoke", DataChoice("fashion_mnist")), runs_dir,
                        tmp_path / "report").read_text()
    table2 = text.split("## Table 2")[1].split("## Figure 4")[0]
    assert "![Fig. 8(c): latent trajectories](figures/latent_trajectories.png)" in table2
    assert "![Fig. 9: one latent dimension varied](figures/latent_interpolation.png)" in table2
    assert (tmp_path / "report/figures/latent_trajectories.png").is_file()


def test_figure7_section_has_both_models_and_the_true_nll(runs_dir: Path, tmp_path: Path) -> None:
    write_metrics(runs_dir / "figure7/latent_ode_poisson", [{**common(1, 60.0), "test_nll": 4.321, "true_nll": 3.111,
                                                            "intensity_rmse": 0.456}])
    write_metrics(runs_dir / "figure7/poisson_const", [{**common(1), "test_nll": 9.876, "true_nll": 3.111,
                                                       "intensity_rmse": 1.234}])
    text = write_report("smoke", build_plan("smoke", DataChoice("fashion_mnist")), runs_dir,
                        tmp_path / "report").read_text()
    section = text.split("## Figure 7")[1].split("## Figure 4")[0]
    assert "| latent_ode_poisson | 4.321 | 3.111 | 0.456 | 60.0 |" in section
    assert "| poisson_const | 9.876 | 3.111 | 1.234 |" in section and "Paper's claim" in section


def _snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {str(f.relative_to(folder)): (f.read_bytes(), f.stat().st_mtime_ns) for f in folder.rglob("*") if f.is_file()}


def test_make_report_without_runs_refuses_and_leaves_a_committed_report_alone(tmp_path: Path) -> None:
    """A fresh clone: `make report` must not replace the committed report with one built from nothing."""
    import subprocess

    repo_root = Path(__file__).resolve().parents[2]
    clone = tmp_path / "clone"
    report = clone / "docs/report-quick"
    (report / "figures").mkdir(parents=True)
    (report / "REPORT.md").write_text("# the committed report\n")
    (report / "figures/table1_curves.png").write_bytes(b"\x89PNG committed")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-C", str(clone)]
    subprocess.run(["git", "init", "-q", str(clone)], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "committed report"], check=True)
    before = _snapshot(report)
    done = subprocess.run(["make", "-s", "-f", str(repo_root / "Makefile"), "report", "PROFILE=quick",
                           "REPORT_DIR=docs/report-quick", f"PY={sys.executable}"],
                          cwd=clone, capture_output=True, text=True)
    assert done.returncode == 2, done.stderr
    lines = [line for line in done.stderr.splitlines() if not line.startswith("make")]  # make's own "Error 2"
    assert len(lines) == 1 and lines[0].startswith("error:")
    assert "table1/mlp" in lines[0] and "make reproduce PROFILE=quick REPORT_DIR=docs/report-quick" in lines[0]
    assert _snapshot(report) == before
    status = subprocess.run([*git, "status", "--porcelain"], capture_output=True, text=True, check=True).stdout
    assert status == ""


def test_report_never_deletes_figures_it_did_not_write(runs_dir: Path, tmp_path: Path) -> None:
    report = tmp_path / "report"
    (report / "figures").mkdir(parents=True)
    mine = report / "figures/my_notes.png"
    mine.write_bytes(b"not the report's")
    write_report("smoke", build_plan("smoke", DataChoice("fashion_mnist")), runs_dir, report)
    assert mine.read_bytes() == b"not the report's"


@pytest.mark.parametrize("lines", [
    ['{"test_acc": 0.5}'],                            # no epoch at all: not an epoch
    ['{"epoch": 1}', '{"epoch": 3}'],                 # a gap
    ['{"epoch": 0}'], ['{"epoch": true}'], ['{"epoch": "1"}'], ['{"epoch": 1.0}'],
])
def test_a_line_that_is_not_the_next_epoch_is_no_epoch(tmp_path: Path, lines: list[str]) -> None:
    run = next(r for r in build_plan("smoke", DataChoice("mnist")) if r.key == "table1/mlp")
    run_dir = tmp_path / "mlp"
    run_dir.mkdir()
    (run_dir / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(MetricsError, match="metrics.jsonl"):
        read_metrics(run_dir)
    assert not is_complete(run, run_dir)  # profile=smoke trains one epoch; none of these is one
    summary = load_run(run_dir)
    assert not summary.exists and "metrics.jsonl" in summary.damage


def test_damaged_metrics_blank_the_run_and_the_runs_table_says_why(runs_dir: Path, tmp_path: Path) -> None:
    (runs_dir / "table1/mlp/metrics.jsonl").write_text('{"epoch": 1, "test_acc": 0.8123}\n{"epoch": 5, "test_acc": 0.99}\n')
    text = write_report("smoke", build_plan("smoke", DataChoice("fashion_mnist")), runs_dir, tmp_path / "r").read_text()
    assert "18.77%" not in text and "| 1-Layer MLP | missing |" in text
    assert "damaged, not used" in text.split("## Runs")[1]


def test_crafted_checkpoint_and_figure3_file_blank_their_cells(runs_dir: Path, tmp_path: Path) -> None:
    from neuralode.utils.checkpoint import save_checkpoint

    odenet = runs_dir / "table1/odenet"
    write_metrics(odenet, [{**common(1, 20.0), "test_acc": 0.9}])  # logged before n_params existed
    save_checkpoint(odenet / "checkpoints/last.pt", {"model": {"w": [1, 2, 3]}, "optimizer": {}, "epoch": 1,
                                                     "config": {}, "rng": {}})
    (odenet / FIGURE3_FILE).write_text(json.dumps({"batch_size": 8, "reference_tol": 1e-9,
                                                   "rows": [{"tol": "1e-3", "nfe_forward": None}]}))
    text = write_report("smoke", build_plan("smoke", DataChoice("fashion_mnist")), runs_dir, tmp_path / "r").read_text()
    assert "| ODE-Net | 10.00% | 0.42% | missing |" in text
    assert "Figure 3 measurements missing" in text


def test_tiled_task_figures_keep_their_own_pixel_size(tmp_path: Path) -> None:
    """Shrinking a task's PNG into a small grid cell made its titles about 5 px tall."""
    from matplotlib.figure import Figure
    from PIL import Image

    from neuralode.report.figures import image_grid

    src = tmp_path / "density.png"
    Figure(figsize=(9.6, 3.4)).savefig(src, dpi=100)  # 960 x 340, as the cnf_match task writes
    out = image_grid([[("ring_modes: CNF M=2", src)], [("", None)]], tmp_path / "grid.png")
    with Image.open(out) as im:
        assert im.width == 960 and im.height > 2 * 340


def test_the_course_exercise_section_lists_every_dynamics_run_beside_the_targets(runs_dir: Path, tmp_path: Path) -> None:
    from matplotlib.figure import Figure

    plan = build_plan("smoke", DataChoice("fashion_mnist"))
    dynamics = [r for r in plan if r.section == "dynamics"]
    assert {(r.meta["data"], r.meta["model"]) for r in dynamics} == {
        (system, model) for system in ("cubic", "lotka_volterra") for model in ("node", "rnn_dt", "resnet_euler")}
    assert all("data.irregular=true" in r.overrides for r in dynamics)
    node = runs_dir / "dynamics/cubic/node"
    write_metrics(node, [{**common(1, 32.0), "rel_l2_train": 0.031, "rel_l2_extrap": 0.2, "field_rel_l2": 0.05}])
    (node / ".hydra").mkdir()
    (node / ".hydra/config.yaml").write_text("data:\n  name: cubic\n  irregular: true\n"
                                             "model:\n  name: node\n  cubic_feature: true\n")
    (node / "figures").mkdir()
    Figure(figsize=(2, 2)).savefig(node / "figures/dynamics_node_timeseries.png")
    text = write_report("smoke", plan, runs_dir, tmp_path / "report").read_text()
    section = text.split("## Beyond the paper: learning dynamics")[1].split("## Runs")[0]
    assert "| cubic | irregular | node (cubic feature) | 1 | 3.1 % (met) | 20.0 % (target 15 %) |" in section
    assert "![cubic: neural ODE time series](figures/dynamics_cubic_node.png)" in section
    assert "`dynamics/lotka_volterra/rnn_dt`" in text.split("## Runs")[1]  # not yet trained: listed as missing
