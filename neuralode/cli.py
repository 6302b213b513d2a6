"""The ``neuralode`` command: ``neuralode train <overrides>`` and ``neuralode eval <overrides>``.

Each subcommand is a thin ``@hydra.main`` wrapper around :func:`neuralode.train.train` or
:func:`neuralode.evaluate.evaluate`. Mistakes in the command line or config (unknown option, bad type,
bad value, unreadable checkpoint, missing data) end with one line on stderr and exit code 2.

Hydra, OmegaConf and torch are imported only once a command runs: ``neuralode --help`` answers at once.
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, NoReturn

if TYPE_CHECKING:
    from omegaconf import DictConfig
    from omegaconf.errors import OmegaConfBaseException

USAGE = """\
usage: neuralode <command> [overrides ...]

commands:
  train   train a task; the run dir is outputs/<task>/<overrides>, and the same command resumes it
          neuralode train task=mnist model=odenet solver=dopri5 profile=smoke
  eval    evaluate a checkpoint, e.g. at another solver or tolerance
          neuralode eval checkpoint=<run dir or .pt> solver=rk4 solver.tol=1e-2

`neuralode <command> --help` lists the config groups, their options and the keys; `--cfg job` prints the
composed config; -m runs a sweep (solver=dopri5,rk4). HYDRA_FULL_ERROR=1 shows tracebacks.
"""

COMMAND_USAGE = {
    "train": """\
usage: neuralode train [group=option ...] [key=value ...]
       neuralode train -m [group=option,option ...] [key=value,value ...]   (a sweep, one run per combination)

Trains a task. The run dir is outputs/<task>/<overrides>; the same command resumes it, and with a larger
trainer.epochs continues it.
""",
    "eval": """\
usage: neuralode eval checkpoint=<run dir or last.pt> [solver=<method>] [key=value ...]

Evaluates a trained checkpoint, by default with the solver it was trained with; what you set replaces it.
""",
}
# The groups a user picks, in the order the help lists them (task_profile follows task and profile by itself).
_HELP_GROUPS = {"train": ("task", "model", "data", "solver", "profile"), "eval": ("solver",)}
# Where a group without a default in the command's config takes its option from.
_HELP_DEFAULT_FROM = {"train": "the task's", "eval": "the checkpoint's"}
# What the schema's free-form dicts hold.
_HELP_FREE_FORM = {"train": "the keys of the chosen task, model and data", "eval": "changes to the checkpoint's data "
                   "config, e.g. data.root=<folder>"}


def user_error(error: BaseException) -> BaseException | None:
    """The user's mistake behind ``error``, or None for a bug, which keeps its traceback: one of neuralode's own
    errors (:class:`~neuralode.errors.NeuralodeError`: config, data, checkpoint, a solve that could not finish),
    Hydra's or OmegaConf's error about the command line or config, or an OSError (the user's files and folders:
    a missing path, no permission, a full disk) -- raised as such or named as the cause of another (Hydra wraps an
    unwritable run dir's OSError in a ValueError). Imports Hydra and torch, which ``--help`` does not need."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from neuralode.errors import NeuralodeError

    cause: BaseException | None = error
    while cause is not None:
        if isinstance(cause, (NeuralodeError, HydraException, OmegaConfBaseException, OSError)):
            return cause
        cause = cause.__cause__
    return None


def _train_app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode
    from tqdm import tqdm

    from neuralode.train import train  # imported here: TensorBoard & co. load only for this command
    from neuralode.utils.interrupt import Interrupted

    hydra_cfg = HydraConfig.get()
    run_dir = Path(hydra_cfg.runtime.output_dir)
    if hydra_cfg.mode != RunMode.MULTIRUN and not str(hydra_cfg.run.dir).strip():
        _fail("neuralode train", "hydra.run.dir is empty, which would train into the current directory; "
                                 "name a folder, e.g. hydra.run.dir=outputs/my_run")
    try:
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # Jobs of a parallel sweep share one terminal or log: each of their lines names its job.
            _label_log_lines(f"job #{hydra_cfg.job.num} ({hydra_cfg.job.override_dirname})")
            if cfg.trainer.progress == "auto":  # bars of parallel jobs would redraw over each other's lines
                cfg.trainer.progress = False
            # tqdm's default lock is a named semaphore in a launcher's worker process; a worker ended by a stop
            # (joblib kills them on Ctrl-C or SIGTERM) never frees it, and Python's resource tracker then warns
            # at exit. Each job's bars are its own process's, so a thread lock is all they need.
            tqdm.set_lock(threading.RLock())
        with _file_log_held() as release_file_log:
            def accepted() -> None:
                _record_config(cfg, run_dir)
                release_file_log()

            if hydra_cfg.mode == RunMode.MULTIRUN:
                # A sweep outlives a failed job: raise, so Hydra records the failure and runs the other jobs;
                # it re-raises the first failure at the end, which main() reports in one line (exit code 2).
                train(cfg, run_dir, on_accepted=accepted)
            else:
                with _reported("neuralode train"):
                    train(cfg, run_dir, on_accepted=accepted)
    except Interrupted as e:
        _remove_if_unused(run_dir)
        print(f"neuralode train: {e}", file=sys.stderr)
        if hydra_cfg.mode == RunMode.MULTIRUN:
            # Ends the sweep (Hydra's launchers record only an Exception and go on), from a launcher's worker
            # process too, and main() says so last, whichever stop reaches it first: this one or its own.
            raise Stopped(e.signum) from None
        sys.exit(e.exit_code)
    except BaseException:  # refused, stopped or crashed: a run dir that holds nothing is not left behind
        _remove_if_unused(run_dir)
        raise


def _record_config(cfg: DictConfig, run_dir: Path) -> None:
    """Write ``<run dir>/.hydra`` as Hydra would, but only once the run is accepted (configs/config.yaml turns
    Hydra's own early writing off), so a refused command never changes the config a run records."""
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    from neuralode.utils.files import write_text_atomic

    hydra_cfg = HydraConfig.get()
    for name, node in (("config.yaml", cfg), ("hydra.yaml", OmegaConf.create({"hydra": hydra_cfg})),
                       ("overrides.yaml", hydra_cfg.overrides.task)):
        write_text_atomic(run_dir / ".hydra" / name, OmegaConf.to_yaml(node))


@contextlib.contextmanager
def _file_log_held() -> Iterator[Callable[[], None]]:
    """Hold the lines meant for the run dir's ``train.log`` back until the command is accepted; the function it
    yields writes them and lets later lines through. Until then a line logged by anything (a library's warning
    while the task is built) would create ``train.log``, which keeps a refused command's run dir, or add to an
    existing run's log. The console shows every line as it comes; a refused command's held lines are dropped."""
    from logging.handlers import MemoryHandler

    root = logging.getLogger()
    held = {handler: MemoryHandler(capacity=sys.maxsize, flushLevel=sys.maxsize, target=handler, flushOnClose=False)
            for handler in root.handlers if isinstance(handler, logging.FileHandler)}
    for file_handler, buffer in held.items():
        buffer.setLevel(file_handler.level)
    buffers = {buffer: file_handler for file_handler, buffer in held.items()}
    root.handlers = [held.get(handler, handler) for handler in root.handlers]

    def restore() -> None:
        root.handlers = [buffers.get(handler, handler) for handler in root.handlers]

    def release() -> None:
        restore()
        for buffer in held.values():
            buffer.flush()

    try:
        yield release
    finally:
        restore()  # a no-op once released
        for buffer in held.values():
            # Without a target: logging.shutdown() at exit flushes every handler still referenced (by a traceback
            # kept up to then, say), and a refused command's lines must not reach train.log even so.
            buffer.close()


class _JobLabel(logging.Filter):
    def __init__(self, label: str) -> None:
        super().__init__()
        self.label = label

    def filter(self, record: logging.LogRecord) -> bool:
        if not getattr(record, "job_labelled", False):  # one record passes every handler
            record.msg, record.job_labelled = f"{self.label} {record.msg}", True
        return True


def _label_log_lines(label: str) -> None:
    """Prefix every log line of this job (console and train.log) with ``label``."""
    for handler in logging.getLogger().handlers:
        handler.addFilter(_JobLabel(label))


def _remove_if_unused(run_dir: Path) -> None:
    """A command refused before training leaves no run dir: Hydra created it and wrote nothing in it (train.log
    opens with its first line), so it is removed if it is still empty; a folder holding anything stays."""
    with contextlib.suppress(OSError):
        run_dir.rmdir()


def _eval_app(cfg: DictConfig) -> None:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from neuralode.evaluate import evaluate

    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        try:
            evaluate(cfg)  # as in train: a failed job is recorded and the sweep goes on
        finally:  # eval writes nothing into the job folder Hydra made; don't leave it behind
            with contextlib.suppress(OSError):
                Path(hydra_cfg.runtime.output_dir).rmdir()
    else:
        with _reported("neuralode eval"):
            evaluate(cfg)


COMMANDS: dict[str, tuple[str, Callable[[DictConfig], None]]] = {
    "train": ("config", _train_app),
    "eval": ("eval", _eval_app),
}


def main(argv: Sequence[str] | None = None) -> None:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help", "help"):
        print(USAGE, end="")
        sys.exit(0 if args else 2)
    command, rest = args[0], args[1:]
    if command not in COMMANDS:
        _fail("neuralode", f"unknown command {command!r}; use one of: {', '.join(COMMANDS)} (neuralode --help)")
    if rest in (["--help"], ["-h"]):  # with overrides, Hydra's help shows the config they compose
        print(command_help(command, COMMANDS[command][0]), end="")
        sys.exit(0)
    _check_launcher(command, rest)
    # Outside the trainer (which handles both signals itself while it trains) a stop is one line, not a traceback:
    # from here on, start-up included (importing Hydra and torch takes seconds).
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        _run(command, rest)
    except KeyboardInterrupt as e:  # Ctrl-C, or a Stopped
        signum = e.signum if isinstance(e, Stopped) else signal.SIGINT
        print(f"neuralode {command}: stopped by {signal.Signals(signum).name}; every run keeps its last checkpoint, "
              "and the same command resumes", file=sys.stderr)
        sys.exit(128 + signum)
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(command: str, args: Sequence[str]) -> None:
    import hydra

    from neuralode.config import config_dir, register_configs

    config_name, app = COMMANDS[command]
    register_configs()
    _compose_once(args)
    run = hydra.main(version_base="1.3", config_path=str(config_dir()), config_name=config_name)(app)
    # Hydra reads its overrides from sys.argv and reports errors itself unless HYDRA_FULL_ERROR is set;
    # setting it makes Hydra re-raise, so user errors can be reported here in one line.
    global _wants_traceback
    _wants_traceback = os.environ.get("HYDRA_FULL_ERROR") == "1"
    os.environ["HYDRA_FULL_ERROR"] = "1"
    sys.argv = [f"neuralode {command}", *(rewrite_override(arg, command) for arg in args)]
    with _reported(f"neuralode {command}"):
        run()


def command_help(command: str, config_name: str) -> str:
    """``neuralode <command> --help``: the groups' options and the keys, read from the shipped configs and the
    schema. Hydra's own help would take seconds (it copies its config repository once per group and option)."""
    import textwrap

    import yaml

    from neuralode.config import Config, EvalConfig, config_dir, solver_names

    defaults_list = yaml.safe_load((config_dir() / f"{config_name}.yaml").read_text()).get("defaults", [])
    defaults = {k: v for entry in defaults_list if isinstance(entry, dict) for k, v in entry.items() if v is not None}
    lines = [COMMAND_USAGE[command], "groups (group=option; * marks the default):"]
    for group in _HELP_GROUPS[command]:
        options = solver_names() if group == "solver" else [p.stem for p in (config_dir() / group).glob("*.yaml")]
        listed = ", ".join(f"{o}*" if o == defaults.get(group) else o for o in sorted(options, key=str.lower))
        if group not in defaults:
            listed = f"(default: {_HELP_DEFAULT_FROM[command]}) {listed}"
        lines.append(textwrap.fill(listed, width=110, initial_indent=f"  {group:<8} ",
                                   subsequent_indent=" " * 11, break_on_hyphens=False))
    nested, free_form, scalars = [], [], []
    for field in dataclasses.fields(Config if command == "train" else EvalConfig):
        default = field.default_factory() if field.default_factory is not dataclasses.MISSING else field.default
        if dataclasses.is_dataclass(default) and field.name != "profile":  # profile.name is set by profile=
            nested.append(f"  {field.name + '.':<9}{', '.join(f.name for f in dataclasses.fields(default))}")
        elif isinstance(default, dict):
            free_form.append(f"{field.name}.*")
        elif field.name != "profile":
            scalars.append(field.name)
    example = "task=mnist model=odenet" if command == "train" else "checkpoint=<run dir>"
    lines += ["", f"keys (key=value; neuralode {command} {example} --cfg job prints every value):", *nested,
              f"  {', '.join(free_form)}: {_HELP_FREE_FORM[command]}", f"  {', '.join(scalars)}", "",
              f"neuralode {command} <overrides> --help shows Hydra's help with the config those overrides compose;",
              "--hydra-help shows Hydra's own flags."]
    return "\n".join(lines) + "\n"


class Stopped(KeyboardInterrupt):
    """A stop by signal ``signum``: SIGTERM outside the trainer's own handling, or a sweep job's stop passed up to
    the sweep; raised like Ctrl-C so that every layer unwinds the same way (joblib's launcher then ends its
    workers, none is left behind)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signum)  # the arguments a launcher's worker process pickles it with
        self.signum = signum


def _raise_terminated(signum: int, _frame: FrameType | None) -> None:
    raise Stopped(signum)


_wants_traceback = False
# Launchers (hydra/launcher=...) that submit through SLURM's commands, and the extra that installs each plugin.
_SLURM_LAUNCHERS = ("slurm_gpu", "submitit_slurm")
_LAUNCHER_EXTRAS = {"joblib": "joblib", "submitit_slurm": "slurm", "submitit_local": "slurm", "slurm_gpu": "slurm"}


def _compose_once(args: Sequence[str]) -> None:
    """Before running, Hydra composes the whole config an extra time only to read ``hydra.mode``, which
    neuralode's configs never set (a second of a short run's start-up): skip that unless the command sets it."""
    if any(arg.lstrip("+~").startswith("hydra.mode=") for arg in args):
        return
    from hydra._internal.hydra import Hydra  # hydra-core is pinned to 1.3, whose get_mode this replaces

    Hydra.get_mode = lambda self, config_name, overrides: None  # None: -m decides, as with no hydra.mode


def _check_launcher(command: str, args: Sequence[str]) -> None:
    """A SLURM launcher off a cluster would end in submitit's traceback after composing; say it up front."""
    if not {"-m", "--multirun"} & set(args):
        return
    for arg in args:
        key, _, launcher = arg.lstrip("+~").partition("=")
        if key == "hydra/launcher" and launcher in _SLURM_LAUNCHERS and shutil.which("srun") is None:
            _fail(f"neuralode {command}", f"hydra/launcher={launcher} submits SLURM jobs, but srun is not on "
                  "this machine; run the sweep on the cluster's login node, or use hydra/launcher=joblib here")


# Free-form dicts under a typed schema: new keys need Hydra's "++" prefix, which users shouldn't have to know.
_OPEN_DICTS = {"train": ("solver.options.", "solver.adjoint_options."),
               "eval": ("solver.options.", "solver.adjoint_options.", "data.")}
# Path values taken verbatim: run dir names hold "=" and ",", which Hydra's override grammar would parse, and
# a folder name may hold quotes or a newline, which its lexer refuses.
_PATH_KEYS = {"train": ("hydra.run.dir", "hydra.sweep.dir"), "eval": ("checkpoint", "output")}


def rewrite_override(arg: str, command: str) -> str:
    """Spare users two Hydra subtleties: ``solver.options.step_size=0.1`` becomes ``++solver.options...``
    (add the key or override it), and ``checkpoint=outputs/mnist/model=odenet,profile=smoke`` is quoted."""
    key, eq, value = arg.partition("=")
    if not eq:
        return arg
    quoted = len(value) >= 2 and value[0] == value[-1] and value[0] in "'\""  # quoted for Hydra already
    if key in _PATH_KEYS[command] and not quoted:
        # Hydra's quoted strings take any character; only quotes, and backslashes before a quote or the closing
        # one, are escaped.
        return f"{key}='" + re.sub(r"(\\*)('|$)", lambda m: m[1] * 2 + ("\\'" if m[2] else ""), value) + "'"
    if key.startswith(_OPEN_DICTS[command]):
        return "++" + arg
    return arg


@contextlib.contextmanager
def _reported(prog: str) -> Iterator[None]:
    """Turn a user error into one line on stderr and exit code 2 (a traceback with HYDRA_FULL_ERROR=1); any other
    exception is a bug and keeps its traceback."""
    try:
        yield
    except Exception as e:
        if _wants_traceback or user_error(e) is None:
            raise
        _fail(prog, describe_error(e))


def _fail(prog: str, message: str) -> NoReturn:
    print(f"{prog}: error: {message}", file=sys.stderr)
    sys.exit(2)


def describe_error(error: BaseException) -> str:
    """One line saying what is wrong and what would be right, from Hydra's or OmegaConf's multi-line errors."""
    from hydra.errors import MissingConfigException
    from omegaconf.errors import OmegaConfBaseException

    from neuralode.config import did_you_mean

    if isinstance(error, MissingConfigException) and error.missing_cfg_file:
        group, _, option = error.missing_cfg_file.rpartition("/")
        if group == "hydra/launcher" and option in _LAUNCHER_EXTRAS:
            extra = _LAUNCHER_EXTRAS[option]
            return (f"hydra/launcher={option} needs a launcher plugin that is not installed; "
                    f'install it with pip install -e ".[{extra}]" (a checkout) or pip install "neuralode[{extra}]"')
        if group and error.options:
            return (f"unknown {group} option {option!r}; {did_you_mean(option, error.options, group + '=')}"
                    f"choose one of: {', '.join(sorted(error.options))}")
        return _one_line(str(error))
    cause = error
    # Down to the cause Hydra's wrappers hide; neuralode's own errors already name it and what to do.
    while not isinstance(cause, (OmegaConfBaseException, OSError)) and cause.__cause__ is not None \
            and not type(cause).__module__.startswith("neuralode."):
        cause = cause.__cause__
    if isinstance(cause, OmegaConfBaseException):
        return _describe_omegaconf(cause)
    if isinstance(cause, OSError) and cause is not error:  # e.g. Hydra's "Unable to configure handler 'file'"
        return f"{_one_line(str(cause))} (the run dir must be writable; choose another with hydra.run.dir=...)"
    return _one_line(str(error)) or type(error).__name__


def _describe_omegaconf(error: OmegaConfBaseException) -> str:
    from omegaconf import DictConfig
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    from neuralode.config import did_you_mean

    key = getattr(error, "full_key", None)
    message = _one_line(getattr(error, "msg", None) or str(error))
    if isinstance(error, (ConfigKeyError, ConfigAttributeError)):
        prefix, _, name = str(key).rpartition(".")
        prefix = prefix + "." if prefix else ""
        schema = getattr(error, "object_type", None)
        if dataclasses.is_dataclass(schema):
            known = [f.name for f in dataclasses.fields(schema)]
            return (f"{key} is not a known key; {did_you_mean(name, known, prefix)}"
                    f"{schema.__name__} has: {', '.join(known)}")
        parent = getattr(error, "parent_node", None)
        if isinstance(parent, DictConfig) and len(parent):
            known = [str(k) for k in parent]
            return f"{key} is not a known key; {did_you_mean(name, known, prefix)}the keys there are: {', '.join(known)}"
        return f"{key} is not a known key (--cfg job shows the composed config)"
    if "Missing mandatory value" in message:
        return f"{key} is required; add {key}=<value> to the command"
    return f"{key}: {message}" if key else message


def _one_line(text: str) -> str:
    """A multi-line message joined into one, less Hydra's pointers to docs and tracebacks."""
    lines = [line.strip() for line in text.strip().splitlines()]
    return "; ".join(line.rstrip(".") for line in lines if line and not line.startswith(("See https", "Set the env")))


if __name__ == "__main__":
    main()
