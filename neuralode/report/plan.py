"""Which training runs each profile of ``make reproduce`` needs, as ``neuralode train`` overrides.

The plan is pure data, so the report can name every command and find every run dir without training.
Each run lives in ``<runs dir>/<key>``; the key is readable (``table1/odenet``, ``table2/rnn_n30``). With
several seeds every run is trained once per seed, in ``<runs dir>/seed<s>/<base>`` (``seed1/table1/odenet``).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

from neuralode.errors import ConfigError
from neuralode.report import paper

PROFILES = ("smoke", "quick", "full")
FASHION_MNIST_ROOT = "/usr/share/datasets/fashion-mnist"


DEFAULT_SEED = 0  # the config's ``seed``: a one-seed plan with it keeps the single-seed layout


@dataclass(frozen=True)
class Run:
    base: str                # the experiment, e.g. ``table1/odenet``: the runs of all seeds share it
    section: str             # table1 | table2 | figure4 | figure5 | figure7
    overrides: tuple[str, ...]
    meta: dict[str, str | int] = field(default_factory=dict, compare=False)  # model, n_obs, data, size
    seed: int | None = None  # None: the config's default seed, in the single-seed layout

    @property
    def key(self) -> str:
        """Run dir relative to the runs dir, also the name shown in progress lines."""
        return self.base if self.seed is None else f"seed{self.seed}/{self.base}"

    def command(self, run_dir: str) -> list[str]:
        """The ``neuralode train`` arguments for this run, writing into ``run_dir``."""
        seed = [] if self.seed is None else [f"seed={self.seed}"]
        return ["train", *self.overrides, *seed, f"hydra.run.dir={run_dir}"]


@dataclass(frozen=True)
class DataChoice:
    """The image data set for Table 1 and Figure 3."""

    name: str                # mnist | fashion_mnist
    root: str | None = None  # data.root override, None: the data config's default (download/cache)
    note: str = ""           # why this data set was chosen, for the report

    def overrides(self) -> tuple[str, ...]:
        out = (f"data={self.name}",)
        return out + ((f"data.root={self.root}",) if self.root else ())


FIG3_TOLS_SHORT = (1e-1, 1e-2, 1e-3, 1e-4)
FIG3_TOLS_LONG = (1e-1, 3e-2, 1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5)
FIG3_ACCURACY_TOLS = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)


@dataclass(frozen=True)
class ProfileSpec:
    """Per-profile breadth of the reproduction (the per-run sizes come from ``profile=<name>``)."""

    cnf_sizes: tuple[int, ...]         # K = M for Figure 4
    cnf_targets: tuple[str, ...]       # Figure 4 target potentials
    cnf_datasets: tuple[str, ...]      # Figure 5 data sets
    fig5_planar_flows: int             # K of the planar NF compared with the CNF in Figure 5
    figure3_tolerances: tuple[float, ...]
    figure3_batch: int
    figure3_repeats: int = 3           # interleaved timing rounds over the tolerances (median, range)
    # The test-time trade-off table: accuracy over the run's whole test set at these tolerances.
    figure3_accuracy_tolerances: tuple[float, ...] = FIG3_ACCURACY_TOLS
    # Panel (c) again with the paper's own solver family (solver=<name>), on the same checkpoint and batch.
    figure3_paper_solver: str = "lsoda"
    figure3_paper_tolerances: tuple[float, ...] = FIG3_ACCURACY_TOLS


# The course exercise beyond the paper (task=dynamics): both systems, sampled at irregular times, where the
# neural ODE should beat the RNN given the gaps and the fixed-step ResNet-as-Euler should fail.
DYNAMICS_SYSTEMS = ("cubic", "lotka_volterra")
DYNAMICS_MODELS = ("node", "rnn_dt", "resnet_euler")
FIG4_TARGETS = ("ring_modes", "wave", "split_wave")
FIG5_DATASETS = ("two_circles", "two_moons")

SPECS: dict[str, ProfileSpec] = {
    "smoke": ProfileSpec(cnf_sizes=(2,), cnf_targets=FIG4_TARGETS[:1], cnf_datasets=FIG5_DATASETS[1:],
                         fig5_planar_flows=64, figure3_tolerances=FIG3_TOLS_SHORT, figure3_batch=16,
                         figure3_repeats=1, figure3_accuracy_tolerances=FIG3_TOLS_SHORT,
                         figure3_paper_tolerances=FIG3_TOLS_SHORT),
    "quick": ProfileSpec(cnf_sizes=paper.FIGURE4_WIDTHS, cnf_targets=FIG4_TARGETS[:1], cnf_datasets=FIG5_DATASETS,
                         fig5_planar_flows=64, figure3_tolerances=FIG3_TOLS_LONG, figure3_batch=1000),
    "full": ProfileSpec(cnf_sizes=paper.FIGURE4_WIDTHS, cnf_targets=FIG4_TARGETS, cnf_datasets=FIG5_DATASETS,
                        fig5_planar_flows=64, figure3_tolerances=FIG3_TOLS_LONG, figure3_batch=1000),
}


def check_profile(profile: str) -> ProfileSpec:
    if profile not in SPECS:
        raise ConfigError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    return SPECS[profile]


def build_plan(profile: str, data: DataChoice, seeds: Sequence[int] = (DEFAULT_SEED,)) -> list[Run]:
    """Every training run of ``profile``, once per seed, in the order they are run: seed by seed, so an
    interrupted reproduction has whole seeds; Table 1 first in each (Figure 3 needs it)."""
    runs = _experiments(profile, data)
    if tuple(seeds) == (DEFAULT_SEED,):
        return runs
    return [replace(run, seed=seed) for seed in seeds for run in runs]


def _experiments(profile: str, data: DataChoice) -> list[Run]:
    """One run per experiment of ``profile``, at the config's default seed."""
    spec = check_profile(profile)
    p = f"profile={profile}"
    runs: list[Run] = []
    for ref in paper.TABLE1:
        runs.append(Run(f"table1/{ref.model}", "table1", ("task=mnist", f"model={ref.model}", *data.overrides(), p),
                        {"model": ref.model, "data": data.name}))
    for model in ("latent_ode", "rnn"):
        for n in paper.TABLE2_N_OBS:
            runs.append(Run(f"table2/{model}_n{n}", "table2", ("task=spiral", f"model={model}", f"data.n_obs={n}", p),
                            {"model": model, "n_obs": n}))
    for model in ("latent_ode_poisson", "poisson_const"):
        runs.append(Run(f"figure7/{model}", "figure7", ("task=poisson", f"model={model}", p), {"model": model}))
    for target in spec.cnf_targets:
        for k in spec.cnf_sizes:
            runs.append(Run(f"figure4/{target}/planar_k{k}", "figure4",
                            ("task=cnf_match", "model=planar", f"model.flows={k}", f"data={target}", p),
                            {"model": "planar", "data": target, "size": k}))
            runs.append(Run(f"figure4/{target}/cnf_m{k}", "figure4",
                            ("task=cnf_match", "model=cnf", f"model.width={k}", f"data={target}", p),
                            {"model": "cnf", "data": target, "size": k}))
    for ds in spec.cnf_datasets:
        runs.append(Run(f"figure5/{ds}/cnf", "figure5", ("task=cnf", "model=cnf", f"data={ds}", p),
                        {"model": "cnf", "data": ds}))
        k = spec.fig5_planar_flows
        runs.append(Run(f"figure5/{ds}/planar_k{k}", "figure5",
                        ("task=cnf", "model=planar", f"model.flows={k}", f"data={ds}", p),
                        {"model": "planar", "data": ds, "size": k}))
    for system in DYNAMICS_SYSTEMS:
        for model in DYNAMICS_MODELS:
            # The course's y**3 input feature for the models with a vector field on the cubic oscillator.
            cubic = ("model.cubic_feature=true",) if system == "cubic" and model != "rnn_dt" else ()
            runs.append(Run(f"dynamics/{system}/{model}", "dynamics",
                            ("task=dynamics", f"data={system}", "data.irregular=true", f"model={model}", *cubic, p),
                            {"model": model, "data": system}))
    return runs
