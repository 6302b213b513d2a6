"""Structured configs: the typed schema Hydra merges the YAML groups into, plus value checks.

Types (and unknown keys) are enforced by OmegaConf while Hydra composes; the value ranges that a type
cannot express (positive tolerances, epochs >= 1, a known solver method) are checked by :func:`validate`.
``task``, ``model`` and ``data`` are free-form here: each task validates its own keys.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import re
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Dict, Optional

from omegaconf import MISSING, DictConfig, OmegaConf

import neuralode
from neuralode.errors import ConfigError
from neuralode.solvers.names import METHOD_NAMES
from neuralode.utils.rundir import safe_name


@dataclass
class SolverConfig:
    method: str = MISSING
    tol: Optional[float] = None    # None: the task's default tolerance
    rtol: Optional[float] = None   # None: tol
    atol: Optional[float] = None   # None: tol
    adjoint: bool = True
    options: Dict[str, Any] = field(default_factory=dict)
    adjoint_options: Dict[str, Any] = field(default_factory=dict)
    compile: bool = False          # options['compile']: each step one torch.compile'd program (adaptive explicit RK)
    per_sample: bool = False       # options['per_sample']: each sample of a batch on its own steps (adaptive explicit RK)


@dataclass
class TrainerConfig:
    epochs: int = 10                # profile=<name> sets it per task (configs/task_profile/)
    resume: bool = True             # continue from <run dir>/checkpoints/last.pt when it exists
    # tqdm bar per epoch (loss, NFE): auto draws it only on a terminal, not in a sweep; elsewhere (and with
    # false) one line per epoch
    progress: Any = "auto"
    figures_every: int = 0          # also save figures every N epochs (0: only at the end)
    log_every_steps: int = 50       # TensorBoard loss, lr and NFE every N optimiser steps (0: never)
    threads: Optional[int] = None   # torch.set_num_threads; None leaves torch's default


@dataclass
class RegularizeConfig:
    """Training-time regularisers of every ODE block (neuralode/models/regularization.py); 0 leaves one off."""

    kinetic: float = 0.0    # weight of the kinetic energy, the integral of mean f² over the solve
    jacobian: float = 0.0   # weight of the Jacobian's squared Frobenius norm (Hutchinson), integrated alike
    steer: float = 0.0      # STEER's b: the solve's end time t1 ~ U[T - b, T + b] in training


@dataclass
class ProfileConfig:
    name: str = MISSING


@dataclass
class Config:
    task: Dict[str, Any] = field(default_factory=dict)
    model: Dict[str, Any] = field(default_factory=dict)
    data: Dict[str, Any] = field(default_factory=dict)
    solver: SolverConfig = field(default_factory=SolverConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    regularize: RegularizeConfig = field(default_factory=RegularizeConfig)
    profile: ProfileConfig = field(default_factory=ProfileConfig)
    seed: int = 0
    device: str = "auto"            # auto | cpu | cuda | cuda:N


@dataclass
class EvalSolverConfig:
    """Solver changes for ``neuralode eval``: fields left None keep the checkpoint's value; options are
    added to the checkpoint's (which are dropped when the method changes)."""

    method: Optional[str] = None
    tol: Optional[float] = None
    rtol: Optional[float] = None
    atol: Optional[float] = None
    adjoint: Optional[bool] = None
    options: Dict[str, Any] = field(default_factory=dict)
    adjoint_options: Dict[str, Any] = field(default_factory=dict)
    compile: Optional[bool] = None
    per_sample: Optional[bool] = None


@dataclass
class EvalConfig:
    checkpoint: str = MISSING                        # a last.pt file or a run dir holding checkpoints/last.pt
    solver: EvalSolverConfig = field(default_factory=EvalSolverConfig)
    data: Dict[str, Any] = field(default_factory=dict)  # patches the checkpoint's data config (e.g. data.root)
    device: str = "auto"
    output: Optional[str] = None                     # append the result as one JSON line to this file
    task_module: Optional[str] = None                # a plug-in task's module (never taken from the checkpoint)
    threads: Optional[int] = None                    # torch.set_num_threads; None leaves torch's default


# Runner names for a method with fixed options, beside one per solver method. lsoda is the solver family of
# the paper's experiments (LSODE's implicit Adams, switching to BDF when stiff), run by SciPy on the host.
SOLVER_PRESETS: dict[str, dict[str, Any]] = {
    "lsoda": {"method": "scipy_solver", "options": {"solver": "LSODA"}},
}


def solver_names() -> list[str]:
    """Every ``solver=<name>``: the registered methods and the presets whose method is registered."""
    return [*METHOD_NAMES, *(name for name, p in SOLVER_PRESETS.items() if p["method"] in METHOD_NAMES)]


def solver_label(method: str, options: Any) -> str:
    """The ``solver=<name>`` a resolved method and its options came from: a preset's name (``lsoda``, not
    ``scipy_solver``) when the options hold the preset's, else the method."""
    for name, preset in SOLVER_PRESETS.items():
        if preset["method"] == method and all((options or {}).get(k) == v for k, v in preset["options"].items()):
            return name
    return method


def solver_defaults(name: str) -> dict[str, Any]:
    """The ``solver`` config of ``solver=<name>``: the method (and a preset's options) with every other key at
    its default."""
    return dataclasses.asdict(SolverConfig(**SOLVER_PRESETS.get(name, {"method": name})))


def run_name(override_dirname: str) -> str:
    """Run dir name from Hydra's ``override_dirname`` (``model=resnet,profile=smoke``); ``default`` for none.

    ``+``/``++`` prefixes are dropped so that adding a key names the dir like setting it.
    """
    return safe_name(re.sub(r"(^|,)\++", r"\1", override_dirname) or "default")


def register_configs() -> None:
    """Put the schemas in Hydra's ConfigStore (``config.yaml`` and ``eval.yaml`` list them first) and the
    ``run_name`` resolver the run dir is named with."""
    from hydra.core.config_store import ConfigStore  # Hydra loads for a command, not for its --help

    OmegaConf.register_new_resolver("run_name", run_name, replace=True)
    OmegaConf.register_new_resolver("safe_name", safe_name, replace=True)
    cs = ConfigStore.instance()
    cs.store(name="base_config", node=Config)
    cs.store(name="base_eval", node=EvalConfig)
    # One solver=<name> option per entry of the registry (adding a tableau adds the option) and preset. Plain dicts, so
    # they merge into the train schema (SolverConfig) and the eval one (EvalSolverConfig) alike.
    for name in solver_names():
        cs.store(group="solver", name=name, node=solver_defaults(name))


def config_dir() -> Path:
    """The folder holding ``config.yaml``: ``neuralode/configs`` in a wheel, top-level ``configs/`` in a checkout."""
    package = Path(neuralode.__file__).resolve().parent
    for candidate in (package / "configs", package.parent / "configs"):
        if (candidate / "config.yaml").is_file():
            return candidate
    raise FileNotFoundError(f"neuralode's configs are missing: neither {package / 'configs'} nor "
                            f"{package.parent / 'configs'} holds config.yaml; reinstall the package")


_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def validate_device(device: str, key: str = "device") -> None:
    if not _DEVICE.fullmatch(device):
        raise ConfigError(f"{key}={device!r} is invalid; use auto, cpu, cuda or cuda:N")


def validate_threads(threads: int | None, key: str) -> None:
    if threads is not None and threads < 1:
        raise ConfigError(f"{key}={threads} is invalid; use a positive number or null")


# The models train in float32: a relative tolerance near its machine epsilon (1.2e-7) cannot be met, and the
# adaptive solver would shrink its steps for minutes before giving up.
MIN_RTOL = 5e-7


def validate_solver(solver: Any, key: str = "solver") -> None:
    """Check a (possibly partial, for eval) solver config: known method, tolerances positive and above what
    float32 resolves."""
    from neuralode.solvers import SOLVERS  # imports torch, which the CLI's help does not need
    from neuralode.solvers.odeint import check_options

    method = solver.get("method")
    if method is not None and method not in SOLVERS:
        raise ConfigError(f"{key}.method={method!r} is unknown; use one of: {', '.join(sorted(SOLVERS))}")
    if method is not None:
        for group in ("options", "adjoint_options"):
            options = solver.get(group)
            try:  # the solver core's own check, before any data is loaded, under the config's key names
                check_options(SOLVERS[method], options,
                              f"{key}.{group}", strict=True)
            except (TypeError, ValueError) as e:
                raise ConfigError(str(e)) from None
    if solver.get("compile") and method is not None and "compile" not in SOLVERS[method].valid_options:
        compiled = ", ".join(name for name, m in SOLVERS.items() if "compile" in m.valid_options)
        raise ConfigError(f"{key}.compile=true needs an adaptive explicit Runge-Kutta method ({compiled}); "
                          f"{key}.method={method} has no compiled step")
    check_per_sample(solver, key)
    norm = (solver.get("adjoint_options") or {}).get("norm")
    if norm not in (None, "seminorm"):  # a config cannot hold the other choice, a callable
        raise ConfigError(f"{key}.adjoint_options.norm={norm!r} is invalid; use {key}.adjoint_options.norm=seminorm "
                          "or leave it out (the mixed RMS norm)")
    for name in ("tol", "rtol", "atol"):
        value = solver.get(name)
        if value is not None and not 0 < value < math.inf:
            raise ConfigError(f"{key}.{name}={value} is invalid; tolerances must be positive and finite, "
                              f"e.g. {key}.{name}=1e-3")
        if value is not None and name != "atol" and value < MIN_RTOL:
            raise ConfigError(f"{key}.{name}={value:g} is below what float32 can resolve (machine epsilon 1.2e-07); "
                              f"use {key}.{name} >= {MIN_RTOL:g}")


def check_per_sample(solver: Any, key: str = "solver") -> None:
    """``per_sample=true`` asks the adaptive explicit Runge-Kutta loop for one solve per sample: refuse what it lacks
    (of a partial config, what it holds; eval checks the checkpoint's solver merged with its changes again)."""
    if not solver.get("per_sample"):
        return
    from neuralode.solvers import SOLVERS
    from neuralode.solvers.per_sample import PER_SAMPLE_OPTIONS
    from neuralode.solvers.rk import AdaptiveRK

    if solver.get("compile"):
        raise ConfigError(f"{key}.per_sample=true and {key}.compile=true cannot be combined (the compiled step solves "
                          f"the batch jointly); set one of them to false")
    adaptive = [name for name, m in SOLVERS.items() if isinstance(m, AdaptiveRK)]
    method = solver.get("method")
    if method is not None and method not in adaptive:
        raise ConfigError(f"{key}.per_sample=true needs an adaptive explicit Runge-Kutta method ({', '.join(adaptive)}); "
                          f"{key}.method={method} cannot solve each sample on its own steps")
    # The per-sample adjoint takes the seminorm on its backward solve; the forward solve has no norm option.
    for group, supported in (("options", PER_SAMPLE_OPTIONS), ("adjoint_options", (*PER_SAMPLE_OPTIONS, "norm"))):
        refused = sorted(set(solver.get(group) or {}) - set(supported))
        if refused:
            raise ConfigError(f"{key}.per_sample=true does not support {key}.{group}.{refused[0]}; "
                              f"{key}.{group} may hold: {', '.join(supported)}")


def validate_regularize(regularize: Any) -> None:
    """Weights and STEER's half-width are >= 0 and finite (whether b fits the solve's end time, and whether the
    model has an ODE block at all, the task checks: neuralode/models/regularization.py)."""
    for name in ("kinetic", "jacobian", "steer"):
        value = regularize[name]
        if not 0 <= value < math.inf:
            example = "regularize.steer=0.5 (b, with t1 ~ U[T - b, T + b])" if name == "steer" else f"regularize.{name}=0.01"
            raise ConfigError(f"regularize.{name}={value} is invalid; it must be >= 0 and finite (0: off), e.g. {example}")


def is_fixed_step(method: str) -> bool:
    """Whether ``method`` steps on a grid set by ``options.step_size`` (rk4, euler, the implicit RK and Adams family)."""
    from neuralode.solvers import SOLVERS

    solver = SOLVERS[method]
    return not solver.adaptive and "step_size" in solver.valid_options


def check_step_size(solver: Any, key: str = "solver") -> None:
    """A fixed-step method without ``step_size`` would step only from one output time to the next (once over
    [0, 1] in an ODE-Net): refuse it instead of training or evaluating on one step."""
    options = solver.get("options") or {}
    if is_fixed_step(solver.method) and "step_size" not in options and "grid_constructor" not in options:
        raise ConfigError(f"{key}.method={solver.method} takes fixed steps; set their size with "
                          f"{key}.options.step_size=<size>, e.g. {key}.options.step_size=0.1")


def did_you_mean(word: str, candidates: Iterable[str], prefix: str = "") -> str:
    """``did you mean <prefix><closest>? `` for a near miss (a typo, ``-`` for ``_``), else nothing."""
    by_spelling = {c.replace("-", "_").lower(): c for c in candidates}
    close = difflib.get_close_matches(word.replace("-", "_").lower(), list(by_spelling), n=1)
    return f"did you mean {prefix}{by_spelling[close[0]]}? " if close else ""


def _check_keys(node: Any, schema: type, prefix: str) -> None:
    """Keys added with Hydra's ``+`` bypass the schema; reject them like any unknown key."""
    known = [f.name for f in fields(schema)]
    for key in node:
        if key not in known:
            raise ConfigError(f"{prefix}{key} is not a known key; {did_you_mean(key, known, prefix)}"
                              f"{schema.__name__} has: {', '.join(known)}")


def shipped_group(group: str, name: str) -> dict[str, Any] | None:
    """The keys and default values of ``configs/<group>/<name>.yaml`` (a task file's ``task:`` node); None for a
    plug-in group file outside the shipped configs, which checks its own keys."""
    path = config_dir() / group / f"{name}.yaml"
    if not path.is_file():
        return None
    node = OmegaConf.load(path)
    node = node.get("task") if group == "task" else node
    return OmegaConf.to_container(node) if node is not None else None


def _task_default(task: str, group: str) -> str | None:
    """The ``/<group>: <option>`` a shipped task YAML's defaults list picks."""
    path = config_dir() / "task" / f"{task}.yaml"
    if not path.is_file():
        return None
    for entry in OmegaConf.load(path).get("defaults", []):
        if isinstance(entry, DictConfig) and f"/{group}" in entry:
            return str(entry[f"/{group}"])
    return None


def _type_ok(default: Any, value: Any) -> bool:
    """Whether ``value`` has the type of the shipped default (null defaults and free-form dicts take anything)."""
    if default is None or value is None:
        return True
    if isinstance(default, bool) or isinstance(value, bool):
        return isinstance(default, bool) and isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float))
    for kind in (int, str, list, dict):
        if isinstance(default, kind):
            return isinstance(value, kind)
    return True


def _check_group(cfg: DictConfig, group: str) -> None:
    """Every key of ``cfg.<group>`` must be one the shipped YAML of the chosen option defines, with its type:
    the YAML files are the schema of the task, model and data groups (a typo would otherwise be ignored)."""
    node = cfg.get(group)
    option = cfg.task.get("name") if group == "task" else (node or {}).get("name")
    shipped = shipped_group(group, str(option)) if option is not None else None
    if shipped is None:
        return
    for key, value in OmegaConf.to_container(node).items():
        if key not in shipped:
            task_default = _task_default(str(cfg.task.name), group)
            if task_default not in (None, option) and key in (shipped_group(group, task_default) or {}):
                # The task (or its profile) set a key of its own kind of data/model: the choice is what is wrong.
                raise ConfigError(f"task={cfg.task.name} needs {group}={task_default} (or another {group} with its "
                                  f"keys); {group}={option} has no {group}.{key}")
            raise ConfigError(f"{group}.{key} is not a key of {group}={option}; {did_you_mean(key, shipped, group + '.')}"
                              f"its keys are: {', '.join(shipped)}")
        if not _type_ok(shipped[key], value):
            raise ConfigError(f"{group}.{key}={value!r} has the wrong type; {group}={option} expects "
                              f"{type(shipped[key]).__name__}, e.g. {group}.{key}={shipped[key]!r}")


def validate(cfg: DictConfig) -> None:
    """Value checks the schema's types cannot express; raises :class:`ConfigError` with one clear line."""
    for node, schema, prefix in ((cfg, Config, ""), (cfg.solver, SolverConfig, "solver."),
                                 (cfg.trainer, TrainerConfig, "trainer."), (cfg.regularize, RegularizeConfig, "regularize."),
                                 (cfg.profile, ProfileConfig, "profile.")):
        _check_keys(node, schema, prefix)
    validate_regularize(cfg.regularize)
    validate_solver(cfg.solver)
    integrals = [name for name in ("kinetic", "jacobian") if cfg.regularize[name] > 0]
    if cfg.solver.get("per_sample") and integrals:  # known here, before the task's first solve would refuse it
        raise ConfigError(f"solver.per_sample=true cannot integrate regularize.{integrals[0]} (the integrals join "
                          f"the state as a tuple, which a per-sample solve does not take); set "
                          f"regularize.{integrals[0]}=0 or solver.per_sample=false")
    check_step_size(cfg.solver)
    validate_device(cfg.device)
    trainer = cfg.trainer
    if trainer.progress not in (True, False, "auto"):
        raise ConfigError(f"trainer.progress={trainer.progress!r} is invalid; use auto (bars only on a terminal), "
                          "true or false")
    if trainer.epochs < 1:
        raise ConfigError(f"trainer.epochs={trainer.epochs} is invalid; it must be at least 1, e.g. trainer.epochs=10")
    if trainer.figures_every < 0:
        raise ConfigError(f"trainer.figures_every={trainer.figures_every} is invalid; use 0 (only at the end) "
                          "or a positive number of epochs")
    validate_threads(trainer.threads, "trainer.threads")
    if trainer.log_every_steps < 0:
        raise ConfigError(f"trainer.log_every_steps={trainer.log_every_steps} is invalid; use 0 (never) or a "
                          "positive number of steps")
    if "name" not in cfg.task:
        raise ConfigError("task.name is missing; pick a task with task=<name>")
    # First: the name also names config files and the run dir.
    if safe_name(str(cfg.task.name)) != cfg.task.name:
        raise ConfigError(f"task.name={cfg.task.name!r} cannot name a folder; use letters, digits, '_', '-' and '.', "
                          "not starting with '.'")
    for group in ("task", "model", "data"):
        _check_group(cfg, group)
    task_profile = config_dir() / "task_profile" / f"{cfg.task.name}_{cfg.profile.name}.yaml"
    shipped_task = (config_dir() / "task" / f"{cfg.task.name}.yaml").is_file()  # a plug-in task sizes itself
    if shipped_task and not task_profile.is_file():
        sized = sorted(p.stem.split("_")[-1] for p in task_profile.parent.glob(f"{cfg.task.name}_*.yaml")
                       if p.stem.rsplit("_", 1)[0] == cfg.task.name)
        raise ConfigError(f"profile={cfg.profile.name} has no sizes for task={cfg.task.name}; "
                          f"use one of: {', '.join(sized)}")
