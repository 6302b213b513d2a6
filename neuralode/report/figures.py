"""PNG figures for REPORT.md, drawn from run outputs (metrics.jsonl and the tasks' own figures).

Figures are kept small (dpi 80) so a report can be committed with its images. They are drawn with
matplotlib's object API (``Figure``, no pyplot): no global backend or figure state, so importing this module
changes nothing for the caller's own plots.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import matplotlib.image
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from neuralode.report import paper
from neuralode.report.runs import RunGroup, RunSummary, Spread
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


def save_figure(fig: Figure, out: Path, dpi: int = DPI, layout: bool = True) -> Path:
    """Lay out ``fig`` (unless its axes are placed already), write it to ``out`` as a small PNG and return
    the path."""
    out.parent.mkdir(parents=True, exist_ok=True)
    if layout:
        fig.tight_layout()
    fig.savefig(out, dpi=dpi)
    return shrink_png(out)


def epoch_ticks(ax: Axes, epochs: Sequence[float]) -> None:
    """Whole-number epoch ticks: every epoch when there are few, else integer steps (never 0.96, 1.02)."""
    if epochs and max(epochs) - min(epochs) <= 12:
        ax.set_xticks(range(int(min(epochs)), int(max(epochs)) + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _by_epoch(group: RunGroup, value: Callable[[dict], float | None]) -> tuple[list[int], list[Spread]]:
    """``value`` of each epoch's record over the group's runs: epochs and their spreads."""
    per_epoch: dict[int, list[float]] = {}
    for run in group.present:
        for rec in run.records:
            v = value(rec)
            if v is not None:
                per_epoch.setdefault(rec["epoch"], []).append(v)
    epochs = sorted(per_epoch)
    return epochs, [Spread(tuple(per_epoch[e])) for e in epochs]


def _plot_spread(ax: Axes, xs: Sequence[float], spreads: Sequence[Spread], label: str, **style: object) -> None:
    """Mean line; with several seeds a band of ± one standard deviation around it (error bars where there is
    only one point, which a band cannot show)."""
    line, = ax.plot(xs, [s.mean for s in spreads], "o-", label=label, **style)
    if any(s.sd is not None for s in spreads):
        means, sds = [s.mean for s in spreads], [s.sd or 0.0 for s in spreads]
        if len(xs) == 1:
            ax.errorbar(xs, means, yerr=sds, fmt="none", ecolor=line.get_color(), capsize=4)
        else:
            ax.fill_between(xs, [m - d for m, d in zip(means, sds)], [m + d for m, d in zip(means, sds)],
                            color=line.get_color(), alpha=0.2, linewidth=0)


def _error_of(record: dict) -> float | None:
    return test_error_pct(RunSummary(Path(), [record]))


def _finite_of(key: str) -> Callable[[dict], float | None]:
    return lambda record: RunSummary(Path(), [record]).final(key)


def table1_curves(runs: Mapping[str, RunGroup], out: Path) -> Path | None:
    """Test error and forward NFE per epoch for the Table 1 models (mean, and a ± sd band over seeds);
    None if no run has records."""
    present = {label: group for label, group in runs.items() if group.exists}
    if not present:
        return None
    fig = Figure(figsize=(10, 3.6))
    ax_err, ax_nfe = fig.subplots(1, 2)
    all_epochs: set[int] = set()
    for label, group in present.items():
        epochs, errs = _by_epoch(group, _error_of)
        if epochs:
            _plot_spread(ax_err, epochs, errs, label)
        all_epochs.update(epochs)
        epochs, nfes = _by_epoch(group, _finite_of("nfe_forward"))
        if nfes and max(s.mean for s in nfes) > 0:
            _plot_spread(ax_nfe, epochs, nfes, label)
    n = max(len(g.present) for g in present.values())
    for ax, ylabel in ((ax_err, "test error (%)"), (ax_nfe, "NFE forward per batch")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        epoch_ticks(ax, sorted(all_epochs))
        if ax.lines:
            ax.legend(fontsize=9)
    if n > 1:
        fig.suptitle(f"mean over {n} seeds, band or bars: ± 1 sd")
    return save_figure(fig, out)


def table2_plot(runs: Mapping[tuple[str, int], RunGroup], out: Path) -> Path | None:
    """Spiral test RMSE against the number of observations, ours (solid, ± sd over seeds) and the paper's
    (dashed)."""
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
            xs, spreads = zip(*pts)
            _plot_spread(ax, xs, spreads, f"{label} (ours)", color=color)
    ax.set_xlabel("observed points (of 100)")
    ax.set_ylabel("test RMSE")
    ax.set_xticks(n_obs)
    ax.legend(fontsize=8)
    return save_figure(fig, out)


TITLE_INCHES = 0.35  # room above a tile for its title


def image_grid(cells: Sequence[Sequence[tuple[str, Path | None]]], out: Path) -> Path | None:
    """Tile existing PNGs (rows of (title, path); an empty title adds no title) into one figure, each shown
    pixel for pixel at its own size, so the text a task drew stays as readable as in its own PNG; a missing
    image shows as 'missing'."""
    images = {p: matplotlib.image.imread(p) for row in cells for _, p in row if p is not None and p.is_file()}
    if not images:
        return None
    nrows, ncols = len(cells), max(len(row) for row in cells)
    tile_w = max(a.shape[1] for a in images.values()) / DPI
    tile_h = max(a.shape[0] for a in images.values()) / DPI
    title_h = TITLE_INCHES if any(title for row in cells for title, _ in row) else 0.0
    width, height = ncols * tile_w, nrows * (tile_h + title_h)
    fig = Figure(figsize=(width, height))
    for r, row in enumerate(cells):
        for c, (title, path) in enumerate(row):
            bottom = height - (r + 1) * (tile_h + title_h)
            ax = fig.add_axes((c * tile_w / width, bottom / height, tile_w / width, tile_h / height))
            ax.axis("off")
            if path in images:
                ax.imshow(images[path])
            else:
                ax.text(0.5, 0.5, "missing", ha="center", va="center", transform=ax.transAxes)
            if title:
                ax.set_title(title, fontsize=12)
    return save_figure(fig, out, layout=False)
