"""scripts/adjoint_ratio_study.py: its norms are the library's where they claim to be, and a study of a tiny trained
ODE-Net gives well-formed ratios per setting."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch
from test_figure3 import train_tiny
from torch import nn

from neuralode.solvers import SolveStats, odeint_adjoint

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "adjoint_ratio_study.py"


def _load():
    spec = importlib.util.spec_from_file_location("adjoint_ratio_study", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


class Tanh(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(3, 3)
        self.scale = nn.Parameter(torch.tensor([1.5]))

    def forward(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.scale * torch.tanh(self.lin(y))


def _steps_and_grads(func: nn.Module, norm) -> tuple[SolveStats, list[torch.Tensor]]:
    y0 = torch.linspace(-1.0, 1.0, 12, dtype=torch.float64).reshape(4, 3).requires_grad_(True)
    stats = SolveStats()
    options = {"controller": "pi"}
    adjoint_options = None if norm is None else {**options, "norm": norm}
    ys = odeint_adjoint(func, y0, torch.tensor([0.0, 1.0], dtype=torch.float64), rtol=1e-6, atol=1e-6,
                        method="dopri5", options=options, adjoint_options=adjoint_options, stats=stats)
    grads = torch.autograd.grad(ys[-1].square().sum(), [y0, *func.parameters()])
    return stats, list(grads)


@pytest.mark.parametrize(("name", "library"), [("mixed", None), ("seminorm", "seminorm")])
def test_the_recording_norms_take_the_library_steps(name: str, library: str | None) -> None:
    study = _load()
    torch.manual_seed(0)
    func = Tanh().double()
    ours_stats, ours_grads = _steps_and_grads(func, study.RecordingNorm(study.NORMS[name]))
    lib_stats, lib_grads = _steps_and_grads(func, library)
    assert ours_stats == lib_stats and ours_stats.nfe_backward > 0
    for ours, lib in zip(ours_grads, lib_grads):
        torch.testing.assert_close(ours, lib, rtol=1e-10, atol=1e-12)


def test_the_norms_differ_as_described() -> None:
    study = _load()
    z, a, big, small = torch.full((4,), 2.0), torch.full((4,), 1.0), torch.full((9,), 3.0), torch.full((1,), 5.0)
    parts = (torch.zeros(()), z, a, big, small)
    values = {name: float(study.RecordingNorm(spec)(parts)) for name, spec in study.NORMS.items()}
    theta_rms = ((9 * 9 + 25) / 10) ** 0.5
    assert values["mixed"] == pytest.approx(theta_rms)
    assert values["mixed-per-tensor"] == pytest.approx(5.0)  # torchdiffeq: each parameter tensor on its own
    assert values["seminorm"] == values["z-only"] == pytest.approx(2.0)
    assert values["joint-z-a"] == pytest.approx(((4 * 4 + 4) / 8) ** 0.5)
    assert values["joint"] == pytest.approx(((16 + 4 + 81 + 25) / 18) ** 0.5)
    assert values["adjoint-only"] == pytest.approx(theta_rms)


def test_a_study_of_a_tiny_odenet(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    study = _load()
    run_dir = train_tiny(tmp_path, "odenet")
    out, md = tmp_path / "study.json", tmp_path / "study.md"
    assert study.main([str(run_dir), "--images", "6", "--batch-size", "3", "--axes", "norm", "adjoint-tol",
                       "--gradient-batches", "1", "--out", str(out), "--markdown", str(md)]) == 0
    (record,) = json.loads(out.read_text())["checkpoints"]
    assert record["images"] == 6 and record["trained_tol"] > 0
    assert record["lsoda_forward"]["method_used"] in (1, 2) and record["lsoda_forward"]["nfe"] > 0
    labels = [(s["axis"], s["norm"], s["tol"], s["adjoint_tol"]) for s in record["settings"]]
    assert len(labels) == 1 + 2 * (len(study.NORMS) - 1) + 6 and len(set(labels)) == len(labels)
    for s in record["settings"]:
        assert len(s["batches"]) == 2
        assert all(b["ratio"] == b["nfe_backward"] / b["nfe_forward"] > 0 for b in s["batches"])
        # Every step tried was seen, the adjoint's with each part's RMS; kept for the first batch only.
        first = s["batches"][0]
        tried = first["steps_accepted_backward"] + first["steps_rejected_backward"]
        assert len(first["steps"]["backward"]) == tried and all("rms" in step for step in first["steps"]["backward"])
        assert len(first["steps"]["forward"]) == first["steps_accepted_forward"] + first["steps_rejected_forward"]
        assert "steps" not in s["batches"][1]
        m = s["summary"]
        assert m["ratio_min"] <= m["ratio_median"] <= m["ratio_max"]
        assert sum(m["largest_error_part"].values()) == pytest.approx(1.0)
        assert "grad_error_params" in s["batches"][0] and "grad_error_params" not in s["batches"][1]
    looser = next(s for s in record["settings"] if s["axis"] == "adjoint-tol")
    assert looser["adjoint_tol"] == pytest.approx(100 * record["trained_tol"])
    assert "| baseline | dopri5, mixed norm |" in md.read_text()
    # A model without an ODE block: one clear line, exit 2.
    mlp = train_tiny(tmp_path, "mlp")
    assert study.main([str(mlp), "--images", "2", "--out", str(tmp_path / "mlp.json")]) == 2
    assert "no ODE block" in capsys.readouterr().err
