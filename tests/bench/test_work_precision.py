"""scripts/work_precision.py's --quick core on dopri5: well-formed rows and front comparisons (no timing thresholds)."""
from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import torch

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "work_precision.py"
KEYS = {
    "problem", "method", "adaptive", "knob", "rtol", "atol", "step_size", "nfe_ours", "err_ours", "nfe_torchdiffeq",
    "nfe_ours_at_ours_err",
    "err_torchdiffeq", "nfe_torchdiffeq_at_ours_err", "torchdiffeq_knob_at_ours_err", "torchdiffeq_max_nfe_tried",
    "no_more_nfe", "failure_ours", "failure_torchdiffeq",
}


def _load():
    spec = importlib.util.spec_from_file_location("work_precision", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def test_quick_core_on_dopri5_gives_positive_nfe_and_finite_errors():
    wp = _load()
    assert "dopri5" in wp.METHODS and "scipy_solver" not in wp.METHODS
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        rows, fronts = wp.run(methods=["dopri5"], quick=True)
    finally:
        torch.set_num_threads(threads)
    assert [(r["problem"], r["knob"]) for r in rows] == [
        (p, k) for p in ("decay", "lotka", "mlp") for k in ("rtol=0.001", "rtol=1e-05")]
    for r in rows:
        assert set(r) == KEYS and r["method"] == "dopri5" and r["adaptive"]
        assert r["atol"] == r["rtol"] / 100 and r["step_size"] is None
        assert r["nfe_ours"] > 0 and r["nfe_torchdiffeq"] > 0
        assert math.isfinite(r["err_ours"]) and math.isfinite(r["err_torchdiffeq"])
        assert r["failure_ours"] is None and r["failure_torchdiffeq"] is None
        assert r["torchdiffeq_max_nfe_tried"] > 0 and isinstance(r["no_more_nfe"], bool)
        if r["nfe_torchdiffeq_at_ours_err"] is not None:
            assert r["nfe_torchdiffeq_at_ours_err"] > 0 and r["no_more_nfe"] == (
                r["nfe_ours_at_ours_err"] <= r["nfe_torchdiffeq_at_ours_err"])
        assert r["nfe_ours_at_ours_err"] <= r["nfe_ours"]
    # The default controller takes torchdiffeq's steps: every run identical, so no error level costs more.
    assert [f["problem"] for f in fronts] == ["decay", "lotka", "mlp"]
    for f in fronts:
        assert f["method"] == "dopri5" and f["runs"] == 9 and f["identical"] == 9
        assert f["levels"] > 0 and f["more"] == 0 and f["ratio_gmean"] == f["ratio_max"] == 1.0
    text = wp.tables(rows, fronts, wp.make_problems())
    assert "| dopri5 | rtol=0.001 |" in text and "- dopri5: yes (fronts: more NFE at 0 of" in text
