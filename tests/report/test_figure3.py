"""Figure 3 on a tiny ODE-Net trained for one epoch by the real trainer."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from report_testdata import write_tiny_idx

from neuralode.config import config_dir, register_configs
from neuralode.report import figure3
from neuralode.train import train


def train_tiny(tmp_path: Path, model: str) -> Path:
    register_configs()
    GlobalHydra.instance().clear()
    root = write_tiny_idx(tmp_path / "idx")
    overrides = ["task=mnist", f"model={model}", "data=mnist", f"data.root={root}", "data.download=false",
                 "profile=smoke", "data.limit_train=16", "data.batch_size=16", "trainer.progress=false",
                 "trainer.threads=1", "device=cpu"]
    if model == "odenet":
        overrides.append("model.channels=8")
    with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
        cfg = compose("config", overrides=overrides)
    run_dir = tmp_path / model
    train(cfg, run_dir)
    return run_dir


def test_figure3_measures_a_trained_odenet(tmp_path: Path) -> None:
    run_dir = train_tiny(tmp_path, "odenet")
    png = tmp_path / "fig3.png"
    rc = figure3.main([str(run_dir), "--tolerances", "1e-1", "1e-4", "--batch-size", "4", "--repeats", "2",
                       "--accuracy-tolerances", "1e-1", "1e-4", "--accuracy-images", "10", "--png", str(png)])
    assert rc == 0
    data = json.loads((run_dir / "figure3.json").read_text())
    loose, tight = data["rows"]
    assert (loose["tol"], tight["tol"]) == (1e-1, 1e-4)
    # A tighter tolerance costs more evaluations and gives a smaller error against the reference solve.
    assert tight["nfe_forward"] > loose["nfe_forward"] > 0
    # NFE is per forward pass, whatever the number of timed repeats, and the same with gradients on.
    assert loose["nfe_forward"] == loose["nfe_forward_train"]
    assert tight["error_state"] < loose["error_state"]
    assert tight["error_state"] < 1e-2
    # The adjoint's backward solve ran and was counted.
    assert loose["nfe_backward"] > 0 and tight["nfe_backward"] > 0
    assert data["backward_over_forward"]["median"] > 0
    assert "backward/forward NFE ratio" in figure3.verdict(data)
    # Timings: two interleaved rounds per tolerance, median inside the range, CPU time and load beside them.
    assert data["timing_rounds"] == 2 and set(data["load_average_1min"]) == {"before", "after", "cpus"}
    for row in data["rows"]:
        assert row["forward_time_min_s"] <= row["forward_time_s"] <= row["forward_time_max_s"]
        assert row["forward_cpu_s"] > 0
    assert png.is_file() and png.stat().st_size > 1000
    # The test-time trade-off: accuracy over the test images at each tolerance, with its NFE.
    acc_loose, acc_tight = data["accuracy_by_tolerance"]
    assert data["accuracy_images"] == 10 and (acc_loose["tol"], acc_tight["tol"]) == (1e-1, 1e-4)
    assert acc_tight["nfe_forward"] > acc_loose["nfe_forward"] > 0
    assert all(0 <= r["accuracy"] <= 1 and r["accuracy"] * 10 == round(r["accuracy"] * 10) for r in (acc_loose, acc_tight))
    # Its times too come from interleaved rounds (--repeats), with their range, CPU time and the load.
    for r in (acc_loose, acc_tight):
        assert r["rounds"] == 2 and r["time_min_s"] <= r["time_s"] <= r["time_max_s"] and r["cpu_s"] > 0
    assert set(data["accuracy_load_average_1min"]) == {"before", "after", "cpus"}
    assert figure3.read_measurements(run_dir / "figure3.json") == data


def test_figure3_with_the_paper_solver_family(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """--solver lsoda measures the same checkpoint with SciPy's LSODA, forward and adjoint."""
    run_dir = train_tiny(tmp_path, "odenet")
    out = tmp_path / "lsoda.json"
    assert figure3.main([str(run_dir), "--solver", "lsoda", "--tolerances", "1e-2", "1e-4", "--batch-size", "4",
                         "--repeats", "1", "--accuracy-tolerances", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    assert (data["solver"], data["method"], data["method_options"]) == ("lsoda", "scipy_solver", {"solver": "LSODA"})
    loose, tight = data["rows"]
    assert tight["nfe_forward"] > loose["nfe_forward"] > 0 and loose["nfe_backward"] > 0
    assert tight["error_state"] < loose["error_state"]
    assert "with lsoda" in figure3.verdict(data) and data["accuracy_by_tolerance"] == []
    with pytest.raises(SystemExit):
        figure3.main([str(run_dir), "--solver", "lsodaa"])
    assert "--solver 'lsodaa' is unknown" in capsys.readouterr().err


def test_figure3_rejects_a_model_without_ode_block(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = train_tiny(tmp_path, "mlp")
    assert figure3.main([str(run_dir), "--batch-size", "2"]) == 2
    assert "no ODE block" in capsys.readouterr().err


def test_figure3_missing_checkpoint_is_one_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert figure3.main([str(tmp_path / "nowhere")]) == 2
    assert "no checkpoint" in capsys.readouterr().err


def _timed(nfe: float, median: float, low: float, high: float) -> dict:
    return {"tol": 1e-3, "nfe_forward": nfe, "error_state": 1e-3, "forward_time_s": median,
            "forward_time_min_s": low, "forward_time_max_s": high}


def test_a_timing_trend_is_drawn_only_beyond_its_spread() -> None:
    """On a busy machine a forward pass at 14 NFE once took longer than one at 50 NFE: noise, not a trend."""
    noisy = {"timing_rounds": 3, "rows": [_timed(14, 4.5, 1.0, 5.0), _timed(50, 2.8, 2.5, 6.0)]}
    (b,) = [line for line in figure3.observations(noisy, ([], [])) if line.startswith("(b)")]
    assert "spread is larger than the effect" in b and "range 1000-5000" in b
    clear = {"timing_rounds": 3, "rows": [_timed(14, 1.0, 0.9, 1.1), _timed(50, 3.0, 2.9, 3.2)]}
    (b,) = [line for line in figure3.observations(clear, ([], [])) if line.startswith("(b)")]
    assert "no trend" not in b and "from 1000 ms" in b
    single = {"timing_rounds": 1, "rows": [_timed(14, 1.0, 1.0, 1.0), _timed(50, 3.0, 3.0, 3.0)]}
    (b,) = [line for line in figure3.observations(single, ([], [])) if line.startswith("(b)")]
    assert "spread is unknown" in b


def test_a_timing_trend_beyond_its_spread_is_checked_for_monotony() -> None:
    """A tolerance with fewer NFE that took longer than one with more, beyond both ranges, is named."""
    rows = [_timed(14, 1.0, 0.9, 1.1), _timed(26, 2.5, 2.4, 2.6), _timed(50, 2.0, 1.9, 2.1)]
    for i, row in enumerate(rows):
        row["tol"] = 10.0 ** -(i + 1)
    (b,) = [line for line in figure3.observations({"timing_rounds": 3, "rows": rows}, ([], [])) if line.startswith("(b)")]
    assert "Not monotone: at tol 1e-02 (26 NFE)" in b and "tol 1e-03 (50 NFE)" in b
    rows[2].update(forward_time_s=3.0, forward_time_min_s=2.9, forward_time_max_s=3.1)
    (b,) = [line for line in figure3.observations({"timing_rounds": 3, "rows": rows}, ([], [])) if line.startswith("(b)")]
    assert "larger than the spread, and monotone" in b


def _accuracy_row(tol: float, nfe: float, median: float, low: float, high: float) -> dict:
    return {"tol": tol, "accuracy": 0.9, "nfe_forward": nfe, "time_s": median, "time_min_s": low,
            "time_max_s": high, "cpu_s": median / 2, "rounds": 3}


def test_the_test_time_trade_off_draws_no_trend_within_its_spread() -> None:
    """The quick report once read 42.6 s at tol 1e-3 and 25.9 s at 1e-5 on a busy machine: within the spread."""
    noisy = {"accuracy_images": 100, "accuracy_by_tolerance": [
        _accuracy_row(1e-3, 26, 42.6, 20.0, 45.0), _accuracy_row(1e-5, 62, 25.9, 24.0, 50.0)]}
    (line,) = figure3.observations(noisy, ([], []))
    assert "42.6 s (range 20.0-45.0), CPU 21.3 s" in line and "spread is larger than the effect" in line
    clear = {"accuracy_images": 100, "accuracy_by_tolerance": [
        _accuracy_row(1e-3, 26, 20.0, 19.0, 21.0), _accuracy_row(1e-5, 62, 40.0, 39.0, 42.0)]}
    (line,) = figure3.observations(clear, ([], []))
    assert "from 40.0 s" in line and "larger than the spread, and monotone" in line
    # Files measured before the rounds existed: one timing, so no trend.
    old = {"accuracy_images": 100, "accuracy_by_tolerance": [
        {"tol": 1e-3, "accuracy": 0.9, "nfe_forward": 26, "time_s": 42.6},
        {"tol": 1e-5, "accuracy": 0.9, "nfe_forward": 62, "time_s": 25.9}]}
    (line,) = figure3.observations(old, ([], []))
    assert "spread is unknown" in line and "range" not in line


def test_crafted_timing_fields_blank_the_measurements(tmp_path: Path) -> None:
    row = {"tol": 1e-3, "nfe_forward": 26, "nfe_forward_train": 26, "nfe_backward": 20, "error_state": 1e-3,
           "error_logits": 1e-3, "forward_time_s": 1.0, "accuracy": 0.9}
    base = {"batch_size": 8, "reference_tol": 1e-9, "rows": [row], "accuracy_images": 10,
            "accuracy_by_tolerance": [_accuracy_row(1e-3, 26, 1.0, 0.9, 1.1)]}
    path = tmp_path / "figure3.json"
    path.write_text(json.dumps(base))
    assert figure3.read_measurements(path) == base
    for crafted in ({**base, "rows": [{**row, "forward_time_min_s": "fast"}]},
                    {**base, "accuracy_by_tolerance": [{**base["accuracy_by_tolerance"][0], "rounds": "3"}]},
                    {**base, "timing_rounds": None}):
        path.write_text(json.dumps(crafted))
        assert figure3.read_measurements(path) is None
