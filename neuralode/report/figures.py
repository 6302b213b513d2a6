"""PNG figures for REPORT.md, drawn from run outputs (metrics.jsonl and the tasks' own figures).

Figures are kept small (dpi 80) so a report can be committed with its images. They are drawn with
matplotlib's object API (``Figure``, no pyplot): no global backend or figure state, so importing this module
changes nothing for the caller's own plots.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib.image
from matplotlib.figure import Figure

from neuralode.report import paper
from neuralode.report.runs import RunSummary
from neuralode.report.tables import test_error_pct

DPI = 80


def shrink_png(path: Path, max_width: int = 1400, colors: int = 128) -> Path:
    """Downscale ``path`` to at most ``max_width`` pixels and quantise it to ``colors``, in place:
    a few times smaller, so a report can be committed with its figures."""
    from PIL import Image  # a matplotlib dependency

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.width > max_width:
            im = im.resize((max_width, round(im.height * max_width / im.width)), Image.Resampling.LANCZOS)
        im.quantize(colors=colors).save(path, optimize=True)
    return path


def save_figure(fig: Figure, out: Path, dpi: int = DPI) -> Path:
    """Lay out ``fig``, write it to ``out`` as a small PNG and return the path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    return shrink_png(out)


def table1_curves(runs: Mapping[str, RunSummary], out: Path) -> Path | None:
    """Test error and forward NFE per epoch for the Table 1 models; None if no run has records."""
    present = {label: run for label, run in runs.items() if run.exists}
    if not present:
        return None
    fig = Figure(figsize=(10, 3.6))
    ax_err, ax_nfe = fig.subplots(1, 2)
    for label, run in present.items():
        epochs = [r.get("epoch", i) for i, r in enumerate(run.records)]
        errs = [test_error_pct(RunSummary(run.run_dir, [r])) for r in run.records]
        pts = [(e, v) for e, v in zip(epochs, errs) if v is not None]
        if pts:
            ax_err.plot(*zip(*pts), "o-", label=label)
        xs, ys = run.series("nfe_forward")
        if ys and max(ys) > 0:
            ax_nfe.plot(xs, ys, "o-", label=label)
    ax_err.set_xlabel("epoch")
    ax_err.set_ylabel("test error (%)")
    ax_err.set_yscale("log")
    ax_err.legend(fontsize=8)
    ax_nfe.set_xlabel("epoch")
    ax_nfe.set_ylabel("NFE forward per batch")
    if ax_nfe.lines:
        ax_nfe.legend(fontsize=8)
    return save_figure(fig, out)


def table2_plot(runs: Mapping[tuple[str, int], RunSummary], out: Path) -> Path | None:
    """Spiral test RMSE against the number of observations, ours (solid) and the paper's (dashed)."""
    if not any(r.exists for r in runs.values()):
        return None
    fig = Figure(figsize=(5, 3.6))
    ax = fig.subplots()
    n_obs = list(paper.TABLE2_N_OBS)
    for i, model in enumerate(("latent_ode", "rnn")):
        color = f"C{i}"
        label = paper.TABLE2_LABELS[model]
        ax.plot(n_obs, paper.TABLE2_RMSE[model], "--", color=color, label=f"{label} (paper)")
        pts = [(n, runs[(model, n)].final("test_rmse")) for n in n_obs if (model, n) in runs]
        pts = [(n, v) for n, v in pts if v is not None]
        if pts:
            ax.plot(*zip(*pts), "o-", color=color, label=f"{label} (ours)")
    ax.set_xlabel("observed points (of 100)")
    ax.set_ylabel("test RMSE")
    ax.set_xticks(n_obs)
    ax.legend(fontsize=8)
    return save_figure(fig, out)


def image_grid(cells: Sequence[Sequence[tuple[str, Path | None]]], out: Path,
               cell_size: tuple[float, float]) -> Path | None:
    """Tile existing PNGs (rows of (title, path)) into one figure; a missing image shows as 'missing'."""
    if not any(p is not None and p.is_file() for row in cells for _, p in row):
        return None
    nrows, ncols = len(cells), max(len(row) for row in cells)
    fig = Figure(figsize=(cell_size[0] * ncols, cell_size[1] * nrows))
    axes = fig.subplots(nrows, ncols, squeeze=False)
    for r, row in enumerate(cells):
        for c in range(ncols):
            ax = axes[r][c]
            ax.axis("off")
            if c >= len(row):
                continue
            title, path = row[c]
            if path is not None and path.is_file():
                ax.imshow(matplotlib.image.imread(path))
            else:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
            ax.set_title(title, fontsize=9)
    return save_figure(fig, out)
