"""The table REPORT.md opens with: each claim of the paper, whether our runs reproduce it, ours and the paper's.

Verdicts are reproduced / partly / not reproduced / not judged. A comparison between two trained models
counts only beyond the seed-to-seed spread (:mod:`neuralode.report.compare`); with one seed it is "not
judged" and the direction is shown. Properties of one model that do not vary from seed to seed (its
parameter count, the bytes it saves for backward) and measurements of the solver on one trained model
(Figure 3) are judged from a single run.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neuralode.report import figure3, paper, tables
from neuralode.report.compare import Z, difference
from neuralode.report.runs import RunGroup, RunSummary, Spread

REPRODUCED, PARTLY, NOT, NOT_JUDGED = "reproduced", "partly", "not reproduced", "not judged"


@dataclass(frozen=True)
class Verdict:
    claim: str
    outcome: str
    ours: str
    paper: str


def _lower_outcome(pairs: Sequence[tuple[Spread | None, Spread | None]]) -> tuple[str, str]:
    """Outcome of "the first of each pair is lower" over several pairs (sizes, data sets), and why."""
    present = [(a, b) for a, b in pairs if a is not None and b is not None]
    if not present:
        return NOT_JUDGED, "runs missing"
    diffs = [difference(a, b) for a, b in present]
    if not all(d.judged for d in diffs):
        return NOT_JUDGED, "one seed: run-to-run spread unknown"
    better = sum(d.clear and d.diff < 0 for d in diffs)
    worse = sum(d.clear and d.diff > 0 for d in diffs)
    if better == len(diffs):
        return REPRODUCED, f"lower by more than {Z:g} SE in {better} of {len(diffs)}"
    if better == 0 and worse == 0:
        return PARTLY, f"within {Z:g} SE in {len(diffs)} of {len(diffs)}: a tie, not a win"
    if better == 0:
        return NOT, f"higher by more than {Z:g} SE in {worse} of {len(diffs)}"
    return PARTLY, f"lower by more than {Z:g} SE in {better} of {len(diffs)}, higher in {worse}"


def _ranking(errors: Mapping[str, float]) -> str:
    return " < ".join(label for label, _ in sorted(errors.items(), key=lambda item: item[1]))


def _table1_ranking(t1: Mapping[str, RunGroup]) -> Verdict:
    claim = "Table 1: the ODE-Net is as accurate as the ResNet"
    paper_text = (f"0.42 % vs 0.41 % test error; ranking "
                  f"{_ranking({row.label: row.test_error_pct for row in paper.TABLE1})}")
    errors = {row.label: tables.test_error(t1[row.model]) for row in paper.TABLE1 if row.model in t1}
    ode, res = errors.get("ODE-Net"), errors.get("ResNet")
    if ode is None or res is None:
        return Verdict(claim, NOT_JUDGED, "runs missing", paper_text)
    d = difference(ode, res)
    ranking = _ranking({label: e.mean for label, e in errors.items() if e is not None})
    ours = (f"{tables.fmt(ode, '.2f', '%')} vs {tables.fmt(res, '.2f', '%')}; ODE-Net − ResNet "
            f"{d.describe('.2f', ' pp')}")
    ranking = f"; ranking of the means {ranking}"
    if not d.judged:
        return Verdict(claim, NOT_JUDGED, ours + ranking, paper_text)
    if not d.clear:
        return Verdict(claim, REPRODUCED, f"{ours}: within {Z:g} SE, they match{ranking}", paper_text)
    side = "lower" if d.diff < 0 else "higher"
    return Verdict(claim, REPRODUCED if d.diff < 0 else NOT,
                   f"{ours}: the ODE-Net is {side} beyond {Z:g} SE{ranking}", paper_text)


def _param_ratio(t1: Mapping[str, RunGroup]) -> Verdict:
    claim = "Table 1: the ODE-Net has about 0.37x the ResNet's parameters"
    ref = {row.model: row.params_m for row in paper.TABLE1}
    paper_ratio = ref["odenet"] / ref["resnet"]
    paper_text = f"0.22M / 0.60M = {paper_ratio:.2f}x"
    ode, res = (t1[m].n_params if m in t1 else None for m in ("odenet", "resnet"))
    if ode is None or res is None:
        return Verdict(claim, NOT_JUDGED, "runs missing", paper_text)
    ratio = ode.mean / res.mean
    outcome = REPRODUCED if abs(ratio / paper_ratio - 1) <= 0.1 else PARTLY if ratio < 1 else NOT
    return Verdict(claim, outcome, f"{ode.mean / 1e6:.3f}M / {res.mean / 1e6:.3f}M = {ratio:.2f}x "
                   "(reproduced: within 10 % of the paper's ratio)", paper_text)


def _memory(t1: Mapping[str, RunGroup]) -> Verdict:
    claim = "Table 1: O(1) memory: the ODE-Net (adjoint) saves less for backward than the RK-Net"
    paper_text = "O(1) vs O(L~)"
    ode, rk = (t1[m].best("peak_memory_mb", "max") if m in t1 else None for m in ("odenet", "rknet"))
    if ode is None or rk is None:
        return Verdict(claim, NOT_JUDGED, "runs missing", paper_text)
    ours = f"{tables.fmt(ode, '.1f')} MB vs {tables.fmt(rk, '.1f')} MB ({ode.mean / rk.mean:.2f}x)"
    d = difference(ode, rk)
    lower = d.clear and d.diff < 0 if d.judged else ode.mean < rk.mean  # saved bytes: the same for every seed
    return Verdict(claim, REPRODUCED if lower else NOT, ours + "; not measured across solver steps", paper_text)


def _nfe_growth(odenet: RunGroup | None) -> Verdict:
    claim = "Figure 3(d): forward NFE grows during training"
    paper_text = "grows over training"
    growth = odenet.spread(_growth) if odenet is not None else None
    if growth is None:
        return Verdict(claim, NOT_JUDGED, "no run with two or more epochs", paper_text)
    ours = f"last epoch − epoch 1: {tables.fmt(growth, '+.1f')} NFE per batch"
    if growth.sem is None:
        return Verdict(claim, NOT_JUDGED, ours + " (one seed: spread unknown)", paper_text)
    grew = growth.mean > Z * growth.sem
    return Verdict(claim, REPRODUCED if grew else NOT,
                   ours + (f", above {Z:g} SE" if grew else f", not above {Z:g} SE"), paper_text)


def _growth(run: RunSummary) -> float | None:
    _, nfe = run.series("nfe_forward")
    return nfe[-1] - nfe[0] if len(nfe) >= 2 else None


def _tolerance(f3: dict[str, Any] | None) -> Verdict:
    claim = "Figure 3(a): a looser tolerance takes fewer NFE at a larger numerical error"
    paper_text = "error falls as NFE rises"
    rows = sorted((f3 or {}).get("rows", []), key=lambda r: -r["tol"])  # loose to tight
    if len(rows) < 2:
        return Verdict(claim, NOT_JUDGED, "Figure 3 not measured", paper_text)
    nfe, err = [r["nfe_forward"] for r in rows], [r["error_state"] for r in rows]
    monotone = all(a <= b for a, b in zip(nfe, nfe[1:])) and all(a >= b for a, b in zip(err, err[1:]))
    ends = nfe[0] < nfe[-1] and err[0] > err[-1]
    ours = (f"tol {rows[0]['tol']:.0e} → {rows[-1]['tol']:.0e}: NFE {nfe[0]:.0f} → {nfe[-1]:.0f}, error "
            f"{err[0]:.1e} → {err[-1]:.1e}" + ("" if monotone else " (not monotone)") + "; times are not judged")
    return Verdict(claim, REPRODUCED if monotone else PARTLY if ends else NOT, ours, paper_text)


def _backward_half(measured: Sequence[dict[str, Any] | None]) -> Verdict:
    claim = "Figure 3(c): the backward pass takes about half the forward NFE"
    paper_text = "≈ 0.5"
    medians = [(m.get("solver") or m.get("method", "?"), m["backward_over_forward"]["median"])
               for m in measured if m and (m.get("backward_over_forward") or {}).get("median") is not None]
    if not medians:
        return Verdict(claim, NOT_JUDGED, "Figure 3 not measured", paper_text)
    half = [name for name, med in medians if figure3.HALF[0] <= med <= figure3.HALF[1]]
    ours = "median backward/forward " + ", ".join(f"{med:.2f} ({name})" for name, med in medians)
    return Verdict(claim, REPRODUCED if half else NOT, ours, paper_text)


def _table2(t2: Mapping[tuple[str, int], RunGroup]) -> Verdict:
    claim = "Table 2: the latent ODE's RMSE is below the RNN's at 30, 50 and 100 observations"
    pairs = [tuple(t2[(m, n)].final("test_rmse") if (m, n) in t2 else None for m in ("latent_ode", "rnn"))
             for n in paper.TABLE2_N_OBS]
    outcome, why = _lower_outcome(pairs)
    ours = "; ".join(f"{n}: {tables.fmt(a, '.3f')} vs {tables.fmt(b, '.3f')}"
                     for n, (a, b) in zip(paper.TABLE2_N_OBS, pairs))
    lat, rnn = paper.TABLE2_RMSE["latent_ode"], paper.TABLE2_RMSE["rnn"]
    paper_text = "; ".join(f"{n}: {a:.4f} vs {b:.4f}" for n, a, b in zip(paper.TABLE2_N_OBS, lat, rnn))
    return Verdict(claim, outcome, f"{ours} ({why})", paper_text)


def _flows(runs: Mapping[tuple[str, str, int], RunGroup], key: str, claim: str, paper_text: str) -> Verdict:
    """The CNF's ``key`` (a loss) below the planar NF's, per data set and size."""
    pairs, labels = [], []
    for data, size in sorted({(d, k) for d, m, k in runs if m == "cnf"}):
        nf = _planar_for(runs, data, size)
        pairs.append((runs[(data, "cnf", size)].final(key), nf.final(key) if nf else None))
        labels.append(data + (f" K=M={size}" if size else ""))
    outcome, why = _lower_outcome(pairs)
    ours = "; ".join(f"{lab}: CNF {tables.fmt(a, '.3f')} vs NF {tables.fmt(b, '.3f')}"
                     for lab, (a, b) in zip(labels, pairs))
    return Verdict(claim, outcome, f"{ours} ({why})" if pairs else "runs missing", paper_text)


def _planar_for(runs: Mapping[tuple[str, str, int], RunGroup], data: str, size: int) -> RunGroup | None:
    """The planar NF compared with the CNF of ``data``: the same K = M (Figure 4), or the only one (Figure 5,
    where the CNF has no size)."""
    return next((g for (d, m, k), g in runs.items() if d == data and m == "planar" and size in (0, k)), None)


def _figure7(f7: Mapping[str, RunGroup]) -> Verdict:
    claim = "Figure 7: the latent ODE learns the Poisson intensity (better than a constant rate)"
    ode, const = f7.get("latent_ode_poisson"), f7.get("poisson_const")
    pairs = [(ode.final(k) if ode else None, const.final(k) if const else None) for k in ("test_nll", "intensity_rmse")]
    outcome, why = _lower_outcome(pairs)
    ours = (f"test NLL {tables.fmt(pairs[0][0], '.2f')} vs {tables.fmt(pairs[0][1], '.2f')}; intensity RMSE "
            f"{tables.fmt(pairs[1][0], '.3f')} vs {tables.fmt(pairs[1][1], '.3f')} ({why})")
    return Verdict(claim, outcome, ours, "a plot: learned intensity follows the events")


def verdicts(t1: Mapping[str, RunGroup], f3: dict[str, Any] | None, f3_paper: dict[str, Any] | None,
             t2: Mapping[tuple[str, int], RunGroup], f4: Mapping[tuple[str, str, int], RunGroup],
             f5: Mapping[tuple[str, str, int], RunGroup], f7: Mapping[str, RunGroup]) -> list[Verdict]:
    return [
        _table1_ranking(t1), _param_ratio(t1), _memory(t1), _nfe_growth(t1.get("odenet")), _tolerance(f3),
        _backward_half([f3, f3_paper]), _table2(t2),
        _flows(f4, "kl", "Figure 4: the CNF matches a density at least as well as a planar NF with K = M (KL)",
               "a plot: CNF at least as good, sometimes much better"),
        _flows(f5, "test_nll", "Figure 5: the CNF fits two circles / two moons better than a planar NF (test NLL)",
               "a plot: the CNF transforms noise into the data"),
        _figure7(f7),
    ]


def verdict_table(found: list[Verdict]) -> str:
    rows = [[v.claim, f"**{v.outcome}**", v.ours, v.paper] for v in found]
    return tables.markdown_table(["Claim of the paper", "Verdict", "Ours", "Paper"], rows)


HOW_JUDGED = (f"A difference between two models counts only when their means over the seeds differ by more than "
              f"{Z:g} standard errors of the difference; inside that it is a tie, not a win. With one seed the "
              "run-to-run spread is unknown, so such comparisons are \"not judged\" (`make reproduce SEEDS=3` "
              "judges them). Parameter counts, saved bytes and Figure 3 (the solver on one trained model) are "
              "judged from one run.")
