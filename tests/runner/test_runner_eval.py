"""``evaluate_checkpoint``: a trained checkpoint evaluated at other solvers and tolerances (paper Figure 3)."""
from __future__ import annotations

import json

import pytest

from neuralode.config import ConfigError
from neuralode.evaluate import evaluate_checkpoint, format_result, record_result
from neuralode.models.odeblock import RUNNER_OPTIONS
from neuralode.utils.checkpoint import CheckpointError


@pytest.fixture
def trained(train_toy):
    run_dir, records = train_toy("solver=rk4", "++solver.options.step_size=0.25", "trainer.epochs=1")
    return run_dir, records[-1]


def test_unchanged_solver_reproduces_the_training_metrics(trained):
    run_dir, last = trained
    result = evaluate_checkpoint(run_dir, task_module="toy_task")
    assert result["test_rmse"] == pytest.approx(last["test_rmse"], rel=1e-6)
    assert result["nfe_eval"] == last["nfe_eval"] == 16  # rk4: 4 evaluations x 4 steps per forward pass
    assert (result["method"], result["options"], result["epoch"]) == ("rk4", {"step_size": 0.25}, 1)
    assert result["checkpoint"] == str(run_dir / "checkpoints" / "last.pt")
    assert "test_rmse" in format_result(result) and "nfe 16.0" in format_result(result)


def test_solver_changes(trained):
    run_dir, _ = trained
    finer = evaluate_checkpoint(run_dir, {"options": {"step_size": 0.125}}, task_module="toy_task")
    assert finer["nfe_eval"] == 32 and finer["options"] == {"step_size": 0.125}
    adaptive = evaluate_checkpoint(run_dir, {"method": "dopri5", "tol": 1e-6, "atol": 1e-8}, task_module="toy_task")
    # rk4's step_size dropped; the runner's step cap and controller added for the adaptive method
    assert (adaptive["rtol"], adaptive["atol"], adaptive["options"]) == (1e-6, 1e-8, RUNNER_OPTIONS)
    loose = evaluate_checkpoint(run_dir, {"method": "dopri5", "tol": 1e-1}, task_module="toy_task")
    assert loose["nfe_eval"] < adaptive["nfe_eval"]


def test_per_sample_evaluation_matches_the_joint_one_and_needs_an_adaptive_method(trained):
    run_dir, _ = trained
    joint = evaluate_checkpoint(run_dir, {"method": "dopri5", "tol": 1e-6}, task_module="toy_task")
    per_sample = evaluate_checkpoint(run_dir, {"method": "dopri5", "tol": 1e-6, "per_sample": True},
                                     task_module="toy_task")
    assert per_sample["options"] == {**RUNNER_OPTIONS, "per_sample": True}
    assert per_sample["test_rmse"] == pytest.approx(joint["test_rmse"], rel=1e-4)  # both within the tolerance
    with pytest.raises(ConfigError, match=r"^solver\.per_sample=true needs an adaptive explicit Runge-Kutta method "
                                          r".*; solver\.method=rk4 cannot"):
        evaluate_checkpoint(run_dir, {"per_sample": True}, task_module="toy_task")


def test_bad_requests(trained, tmp_path):
    run_dir, _ = trained
    with pytest.raises(ConfigError, match="solver.tol=-1 is invalid"):
        evaluate_checkpoint(run_dir, {"tol": -1})
    with pytest.raises(CheckpointError, match="no checkpoint at"):
        evaluate_checkpoint(tmp_path / "missing")


def test_a_fixed_step_method_is_shown_with_its_step_size_and_needs_one(trained):
    run_dir, _ = trained
    result = evaluate_checkpoint(run_dir, task_module="toy_task")
    assert "[rk4 step_size=0.25, epoch 1]" in format_result(result) and "rtol" not in format_result(result)
    with pytest.raises(ConfigError, match="solver.method=euler takes fixed steps; set their size"):
        evaluate_checkpoint(run_dir, {"method": "euler"}, task_module="toy_task")  # rk4's step size is dropped with the method


def test_lsoda_is_named_lsoda(trained):
    pytest.importorskip("scipy")
    run_dir, _ = trained
    result = evaluate_checkpoint(run_dir, {"method": "scipy_solver", "options": {"solver": "LSODA"}, "tol": 1e-2},
                                 task_module="toy_task")
    assert result["solver"] == "lsoda" and "[lsoda rtol=0.01 atol=0.01" in format_result(result)


def test_rerunning_an_evaluation_replaces_its_line(trained, tmp_path):
    run_dir, _ = trained
    out = tmp_path / "sweep.jsonl"
    coarse = evaluate_checkpoint(run_dir, task_module="toy_task")
    fine = evaluate_checkpoint(run_dir, {"options": {"step_size": 0.125}}, task_module="toy_task")
    for result in (coarse, fine, {**coarse, "eval_time_s": 9.0}):
        record_result(out, result)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["options"], r["eval_time_s"]) for r in rows] == [({"step_size": 0.125}, fine["eval_time_s"]),
                                                                ({"step_size": 0.25}, 9.0)]
