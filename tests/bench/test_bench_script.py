"""scripts/bench.py runs end to end and prints one well-formed JSON line per case (no timing thresholds)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "scripts" / "bench.py"
REQUIRED = {
    "case", "device", "adjoint", "ours_ms", "torchdiffeq_ms", "speedup", "nfe_ours", "nfe_torchdiffeq",
    "nfe_fwd_ours", "nfe_bwd_ours", "nfe_fwd_torchdiffeq", "nfe_bwd_torchdiffeq", "peak_mem_mb_ours",
    "peak_mem_mb_torchdiffeq", "saved_mb_ours", "saved_mb_torchdiffeq", "max_abs_diff",
}


def _bench(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=120)


def test_quick_cases_print_json_lines_with_required_keys():
    proc = _bench("--quick", "--cases", "tiny_long_solve,mlp_grad_adjoint", "--repeats", "1", "--warmup", "0")
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert [(r["case"], r["adjoint"]) for r in rows] == [("tiny_long_solve", False), ("mlp_grad_adjoint", True)]
    for r in rows:
        assert REQUIRED <= set(r), REQUIRED - set(r)
        assert r["device"] == "cpu" and r["ours_ms"] > 0 and r["torchdiffeq_ms"] > 0
        # The times are rounded to 0.01 ms and the ratio to 0.001: allow exactly those roundings.
        rounding = 5e-4 + r["speedup"] * (5e-3 / r["ours_ms"] + 5e-3 / r["torchdiffeq_ms"]) + 1e-9
        assert abs(r["speedup"] - r["torchdiffeq_ms"] / r["ours_ms"]) <= rounding
        assert r["nfe_fwd_ours"] > 0 and r["nfe_fwd_torchdiffeq"] > 0
        assert r["nfe_ours"] == r["nfe_fwd_ours"] + r["nfe_bwd_ours"]
        assert r["peak_mem_mb_ours"] is None and "peak_mem_note" in r  # CPU: no allocator peak
    solve, grad = rows
    # A no-grad solve has no backward; a gradient case has a backward solve and saves (little) for it.
    assert solve["nfe_bwd_ours"] == 0 and solve["saved_mb_ours"] is None
    assert grad["nfe_bwd_ours"] > 0 and grad["nfe_bwd_torchdiffeq"] > 0 and grad["saved_mb_ours"] >= 0
    # Both libraries solved the same problem: the outputs agree to about the tolerance (1e-6).
    assert solve["max_abs_diff"] < 1e-3 and grad["max_abs_diff"] < 1e-3


def test_adjoint_filter_selects_variants():
    proc = _bench("--quick", "--cases", "mlp_solve,mlp_grad_adjoint", "--adjoint", "true", "--repeats", "1",
                  "--warmup", "0")
    assert proc.returncode == 0, proc.stderr
    assert [json.loads(line)["case"] for line in proc.stdout.splitlines()] == ["mlp_grad_adjoint"]


def test_unknown_case_is_one_clear_error():
    proc = _bench("--cases", "odenet_train_stepp")
    assert proc.returncode == 2
    assert "unknown case(s) odenet_train_stepp; valid: " in proc.stderr and "odenet_train_step" in proc.stderr


@pytest.mark.slow  # the float64 reference at tolerance 1e-10: 130 s on the loaded 2-core machine
def test_peer_case_reports_a_missing_library_and_the_errors_of_the_others(monkeypatch):
    """A peer case (small dynamics against every library) runs with whatever is installed: a missing library is
    reported, never an error; each result comes with its error against the float64 reference."""
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench_peers
    finally:
        sys.path.remove(str(BENCH.parent))
    monkeypatch.setattr(bench_peers, "installed", lambda library: library != "diffrax")
    row = bench_peers.run_peer_case("vdp_joint", warmup=0, repeats=1, libraries=("neuralode", "diffrax"))
    assert row["diffrax"] == "not installed"
    assert row["neuralode"]["ms"] > 0 and 0 < row["neuralode"]["rel_err"] < 1e-2  # tolerance 1e-5 over 200 outputs
    table = bench_peers.table([row], ("neuralode", "diffrax"))
    assert "| vdp_joint | " in table and "| not installed |" in table


def test_per_sample_case_runs_without_torchode_and_reports_each_librarys_work(monkeypatch):
    """The per-sample Van der Pol case on a tiny batch: torchode missing is reported, not an error; the per-sample
    solve takes fewer steps per sample and fewer evaluations summed over the samples than the joint solve, when the
    samples' mu differ."""
    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench_peers
    finally:
        sys.path.remove(str(BENCH.parent))
    monkeypatch.setattr(bench_peers, "installed", lambda library: library not in ("torchode", "torchode_jit"))
    libraries = ("neuralode_per_sample", "neuralode", "torchode")
    row = bench_peers.run_peer_case("vdp_per_sample_mu", warmup=0, repeats=1, libraries=libraries, samples=4)
    assert row["samples"] == 4 and row["torchode"] == "not installed"
    per_sample, joint = row["neuralode_per_sample"], row["neuralode"]
    assert 0 < per_sample["rel_err"] < 1e-2 and 0 < joint["rel_err"] < 1e-2
    assert per_sample["steps_mean"] < per_sample["steps_max"] <= joint["steps_mean"] == joint["steps_max"]
    assert per_sample["sample_evals"] < joint["sample_evals"] == joint["calls"] * 4
    table = bench_peers.work_table([row])
    assert "| vdp_per_sample_mu | torchode | not installed |" in table
    assert f"| {per_sample['steps_mean']:.1f} / {per_sample['steps_max']} |" in table


def test_every_case_builds_and_both_sides_run_once():
    """Each registered case at --quick size: both libraries' forward runs and gives the same shape (a case that
    only a full bench run reaches must not break unseen, as the CNF case once did)."""
    import torch

    sys.path.insert(0, str(BENCH.parent))
    try:
        import bench
    finally:
        sys.path.remove(str(BENCH.parent))
    for c in bench.CASES:
        w = c.build(torch.device("cpu"), True, c.adjoint)
        ours, theirs = w.ours.forward(), w.theirs.forward()
        assert ours.shape == theirs.shape, c.name
        assert torch.isfinite(ours).all() and torch.isfinite(theirs).all(), c.name
