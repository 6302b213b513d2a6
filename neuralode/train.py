"""The shared trainer: one loop for every task, with metrics, TensorBoard, checkpoints and exact resume.

Run dir layout::

    metrics.jsonl            one JSON object per finished epoch
    events.out.tfevents.*    TensorBoard: scalars per epoch, the figures, hparams
    steps/events.out.*       TensorBoard: loss, lr and NFE every ``trainer.log_every_steps`` optimiser steps
    checkpoints/last.pt      model, optimiser, scheduler, epoch, config, RNG states (written atomically)
    figures/                 the task's figures

Resume: when ``checkpoints/last.pt`` exists (and ``trainer.resume`` is true) training continues after the
checkpoint's epoch with its RNG states, so the metrics equal those of an uninterrupted run. The checkpoint
also holds every epoch's record, and a resume makes metrics.jsonl match them: lines of epochs it does not
contain (a kill between the two writes) are dropped, damaged ones restored (and kept aside).
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from neuralode.config import ConfigError, RegularizeConfig, validate
from neuralode.errors import NeuralodeError
from neuralode.models.odeblock import ODEBlock, SolverSpec, collect_solve_stats, reset_solve_stats, take_penalties
from neuralode.solvers import MaxNumStepsError, NonFiniteError
from neuralode.tasks import Task
from neuralode.utils.checkpoint import (
    CheckpointError,
    checkpoint_config,
    get_rng_state,
    load_checkpoint,
    restore_part,
    save_checkpoint,
    set_rng_state,
)
from neuralode.utils.interrupt import StopSignals
from neuralode.utils.memory import PeakMemory
from neuralode.utils.metrics import MetricsFile, TensorBoardLog
from neuralode.utils.records import MetricsError
from neuralode.utils.rundir import RunDirLock
from neuralode.utils.runtime import (
    build_task_from_config,
    measure_evaluation,
    preserved_rng,
    resolve_device,
    resolve_solver,
    seed_everything,
    synchronize,
)

log = logging.getLogger(__name__)

# Config keys that may differ between a checkpoint and the command resuming it: where the data lives,
# the device, and how the trainer reports and how long it runs.
_RESUME_FREE = {"device", "trainer", "profile", "data.root", "data.download", "data.cache_dir"}
# Keys added after run dirs already existed, with the value that reproduces those runs: a checkpoint saved
# without the key resumes under that value (and is refused under any other).
_ADDED_KEYS: dict[str, Any] = {"task.lr_cycles": 1, "regularize": dataclasses.asdict(RegularizeConfig())}
# A bar redraws at most this often: each redraw is a line in anything that records the terminal.
BAR_REDRAW_S = 0.5


def show_progress_bars(setting: bool | str, stream: IO[str] = sys.stderr) -> bool:
    """``trainer.progress``: ``auto`` draws bars only on a terminal; logs get the one line per epoch instead."""
    return stream.isatty() if setting == "auto" else bool(setting)


def train(cfg: DictConfig, run_dir: Path, on_accepted: Callable[[], None] | None = None) -> dict[str, Any]:
    """Train ``cfg.task`` into ``run_dir`` (resuming when it holds a checkpoint); return the last epoch's metrics.

    SIGINT/SIGTERM stop it at the next safe point with :class:`~neuralode.utils.interrupt.Interrupted`; a second
    process training into the same run dir is refused. ``on_accepted`` runs once every check has passed (lock
    held, checkpoint fits, task built, metrics.jsonl matches the checkpoint) and before training starts, so that
    what it records (the CLI's copy of the config) is never changed by a refused command.
    """
    validate(cfg)
    with RunDirLock(Path(run_dir)), StopSignals() as stop:
        return _train(cfg, Path(run_dir), stop, on_accepted or (lambda: None))


def _train(cfg: DictConfig, run_dir: Path, stop: StopSignals, on_accepted: Callable[[], None]) -> dict[str, Any]:
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    device = resolve_device(cfg.device)
    config = OmegaConf.to_container(cfg, resolve=True)
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    metrics_file = MetricsFile(run_dir / "metrics.jsonl")
    _check_writable(ckpt_path)
    ckpt = _resumable_checkpoint(cfg, config, ckpt_path) if cfg.trainer.resume and ckpt_path.exists() else None

    seed_everything(cfg.seed)
    solver = resolve_solver(cfg)
    task = build_task_from_config(cfg, device, solver)
    _check_regularized(cfg, task)
    epochs = cfg.trainer.epochs
    optimizer, scheduler = task.configure_optimizers(epochs)
    done = ckpt["epoch"] if ckpt is not None else 0
    history: list[dict[str, Any]] = []
    if ckpt is not None:
        _restore(ckpt, ckpt_path, task, optimizer, scheduler)
        history = _restored_metrics(metrics_file, ckpt, run_dir)
    on_accepted()
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    if done:
        log.info(f"resuming {run_dir} after epoch {done}")

    per_step = getattr(task, "lr_interval", "epoch") == "step"
    step = ckpt.get("step", 0) if done else 0
    tb = TensorBoardLog(run_dir, first_epoch=done + 1, first_step=step + 1, every_steps=cfg.trainer.log_every_steps)
    record: dict[str, Any] = history[-1] if history else {}
    try:
        for epoch in range(done + 1, epochs + 1):
            try:
                record, step = _run_epoch(task, optimizer, scheduler if per_step else None, epoch, epochs, device,
                                          show_progress_bars(cfg.trainer.progress), tb, step,
                                          lambda: stop.check(f"during epoch {epoch}/{epochs}, which is dropped; "
                                                             + _resume_hint(ckpt_path, epoch - 1)))
            except (MaxNumStepsError, NonFiniteError) as e:
                raise TrainingError(_failure_message(e, cfg, solver, epoch, epochs, epoch - 1, ckpt_path)) from e
            history.append(record)
            if scheduler is not None and not per_step:
                scheduler.step()
            try:
                _save_epoch(metrics_file, ckpt_path, {
                    "model": task.model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict() if scheduler is not None else None,
                    "epoch": epoch,
                    "step": step,
                    "config": config,
                    "rng": get_rng_state(),
                    "metrics": record,
                    "history": history,
                })
            except OSError as e:  # a full disk, say: what could not be written, and what is kept
                where = f": {e.filename}" if e.filename else ""
                raise OSError(e.errno, f"epoch {epoch}/{epochs} could not be saved ({e.strerror or e}{where}); "
                                       f"{_resume_hint(ckpt_path, epoch - 1)} once there is room") from e
            tb.scalars(record, epoch)
            log.info(_summary(record, epochs))
            stop.check(f"after epoch {epoch}/{epochs}; " + (_resume_hint(ckpt_path, epoch) if epoch < epochs else
                       f"{ckpt_path} keeps it, and the same command writes the figures"))
            if cfg.trainer.figures_every and epoch % cfg.trainer.figures_every == 0 and epoch < epochs:
                tb.figures(_save_figures(task, run_dir), epoch)
        if done >= epochs:
            log.info(f"{run_dir} already holds {done} epochs (trainer.epochs={epochs}); nothing to train")
        paths = _save_figures(task, run_dir)
        if done < epochs:
            tb.figures(paths, epochs)
            tb.hparams(_with_resolved_tolerances(config, solver), record)
        stop.check("after the run finished; nothing is lost")  # a stop asked during the figures ends a sweep too
    finally:
        tb.close()
    log.info(f"run dir: {run_dir}  ({len(paths)} figures)")
    return record


def _check_regularized(cfg: DictConfig, task: Task) -> None:
    """A ``regularize.*`` setting no ODE block of the model took (a plug-in task that does not pass it on) would
    train unregularised without a word: refuse it."""
    asked = [f"regularize.{k}={v}" for k, v in cfg.regularize.items() if v]
    if asked and not any(m.regularization.active for m in task.model.modules() if isinstance(m, ODEBlock)):
        raise ConfigError(f"{' '.join(asked)} is set, but no ODE block of task={cfg.task.name}'s model takes it; "
                          "build its ODEBlock with regularization=regularization_from_config(cfg.regularize, ...) "
                          "(neuralode/models/regularization.py), or leave regularize out")


def _save_epoch(metrics_file: MetricsFile, ckpt_path: Path, ckpt: dict[str, Any]) -> None:
    """The metrics line goes first: a kill before the checkpoint lands leaves a line the checkpoint lacks, which a
    resume replaces with the checkpoint's history (a fresh start's first line included)."""
    if ckpt["epoch"] == 1:
        _drop_checkpoint_without_history(ckpt_path)
        metrics_file.replace([ckpt["metrics"]])
    else:
        metrics_file.append(ckpt["metrics"])
    save_checkpoint(ckpt_path, ckpt)


def _check_writable(ckpt_path: Path) -> None:
    """Found now, not after an epoch of training: a checkpoint that could not be saved, or not replaced."""
    if ckpt_path.exists() and not ckpt_path.is_file():
        raise CheckpointError(f"{ckpt_path} is not a file, so no checkpoint can be saved there; move it away, "
                              "or train into another hydra.run.dir")
    folder = next(p for p in ckpt_path.parents if p.exists())  # where the first missing folder would be made
    if not os.access(folder, os.W_OK):
        raise PermissionError(f"{folder} is not writable, so no checkpoint could be saved; "
                              "make it writable or train into another hydra.run.dir")


def _resumable_checkpoint(cfg: DictConfig, config: dict[str, Any], ckpt_path: Path) -> dict[str, Any]:
    """The run dir's checkpoint, checked before anything is built: readable, of this experiment, and naming no
    code but the command's own task module."""
    run_dir = ckpt_path.parent.parent
    try:
        ckpt = load_checkpoint(ckpt_path)
        checkpoint_config(ckpt, ckpt_path, cfg.task.get("module"))
    except CheckpointError as e:
        raise CheckpointError(f"{run_dir} cannot resume: {e}; move it away to start over "
                              "(or trainer.resume=false), or use another hydra.run.dir") from None
    _check_same_run(ckpt["config"], config, run_dir)
    return ckpt


def _restore(ckpt: dict[str, Any], ckpt_path: Path, task: Task, optimizer: torch.optim.Optimizer,
             scheduler: torch.optim.lr_scheduler.LRScheduler | None) -> None:
    """Load the checkpoint's weights, optimiser, schedule and RNG states into the freshly built run."""
    restore_part(ckpt_path, "model weights", lambda: task.model.load_state_dict(ckpt["model"]))
    restore_part(ckpt_path, "optimizer state", lambda: optimizer.load_state_dict(ckpt["optimizer"]))
    if scheduler is not None and ckpt.get("scheduler") is not None:
        restore_part(ckpt_path, "lr schedule", lambda: scheduler.load_state_dict(ckpt["scheduler"]))
        _lr_from_schedule(optimizer, scheduler)
    restore_part(ckpt_path, "RNG state", lambda: set_rng_state(ckpt["rng"]))


def _restored_metrics(metrics_file: MetricsFile, ckpt: dict[str, Any], run_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl made to hold exactly the checkpoint's epochs; returns their records."""
    try:
        return metrics_file.restore(ckpt["epoch"], ckpt.get("history"))
    except MetricsError as e:
        raise MetricsError(f"{run_dir} cannot resume: {e}; put the missing lines back, or start over with "
                           "trainer.resume=false") from None


def _drop_checkpoint_without_history(ckpt_path: Path) -> None:
    """A fresh start replaces an older run's metrics with its first epoch's line, before its own checkpoint
    lands: a resume after a kill in between restores the older run from that checkpoint's history. An older
    checkpoint without one could not, so it is removed now (with it, the older run is over either way)."""
    if not ckpt_path.is_file():
        return
    try:
        keeps = "history" in load_checkpoint(ckpt_path)
    except CheckpointError:
        keeps = False
    if not keeps:
        ckpt_path.unlink()


class TrainingError(NeuralodeError, ValueError):
    """Training cannot go on as configured (diverged, solver gave up); the message says why and what to change."""


def _failure_message(error: Exception, cfg: DictConfig, solver: SolverSpec, epoch: int, epochs: int, kept: int,
                     ckpt_path: Path) -> str:
    """One line: what failed where, the likely causes with the keys to change, and what was kept."""
    lr = cfg.task.get("lr")
    lr_now = f" (task.lr={lr} now)" if lr is not None else ""
    tol = solver.rtol
    if isinstance(error, MaxNumStepsError):
        causes = (f"the dynamics grew too stiff for the step cap: a learning rate too high{lr_now} blows them up, "
                  f"or the tolerance (rtol {tol}) is tighter than needed; lower task.lr, loosen solver.tol or "
                  f"raise solver.options.{error.option}")
    else:
        causes = f"training diverged: lower the learning rate{lr_now} or tighten solver.tol (rtol {tol} now)"
    return f"epoch {epoch}/{epochs} failed: {_first_sentence(error)}; {causes}; {_resume_hint(ckpt_path, kept)}"


def _resume_hint(ckpt_path: Path, kept: int) -> str:
    """What is left after a stop, and what the same command then does."""
    if kept:
        return f"{ckpt_path} keeps epoch {kept}, and the same command resumes from it"
    return "no epoch was completed, so the same command starts over"


def _first_sentence(error: Exception) -> str:
    return str(error).split("; ")[0].rstrip(".")


def _with_resolved_tolerances(config: dict[str, Any], solver: SolverSpec) -> dict[str, Any]:
    """The config with the tolerances the solver used in place of nulls (``solver.tol=null``: the task's default)."""
    tol = solver.rtol if solver.rtol == solver.atol else None
    return {**config, "solver": {**config["solver"], "tol": tol, "rtol": solver.rtol, "atol": solver.atol}}


def _run_epoch(task: Task, optimizer: torch.optim.Optimizer, step_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
               epoch: int, epochs: int, device: torch.device, progress: bool, tb: TensorBoardLog, step: int,
               check_stop: Callable[[], None]) -> tuple[dict[str, Any], int]:
    """One pass over the task's training batches, then its evaluation; returns the metrics.jsonl record and the
    number of optimiser steps taken so far (``step`` before the epoch).

    ``step_scheduler`` (tasks whose ``lr_interval`` is ``"step"``) advances after every optimiser step;
    the record's ``lr`` is then the epoch's first. ``check_stop`` runs after every batch.
    """
    model = task.model
    model.train()
    reset_solve_stats(model)
    lr = optimizer.param_groups[0]["lr"]
    sums: dict[str, float] = defaultdict(float)
    seen = 0
    batches = 0
    nfe_before = (0, 0)  # the solve stats' totals after the previous step
    memory = PeakMemory(device)
    synchronize(device)
    start = time.perf_counter()
    with memory:
        data = task.train_batches(epoch)
        bar = tqdm(data, total=len(data) if hasattr(data, "__len__") else None, desc=f"epoch {epoch}/{epochs}",
                   leave=False, disable=not progress, dynamic_ncols=True, mininterval=BAR_REDRAW_S)
        for batch in bar:
            out = task.training_step(batch)
            loss = out.loss.item()
            penalty, penalties = take_penalties(model)  # the regularisers' weighted sum and values (reg_*)
            if not math.isfinite(loss) or not all(map(math.isfinite, penalties.values())):
                raise NonFiniteError(f"the training loss is {loss} at step {batches + 1}"
                                     + "".join(f", {name} {value}" for name, value in penalties.items()))
            optimizer.zero_grad(set_to_none=True)
            (out.loss if penalty is None else out.loss + penalty).backward()
            optimizer.step()
            step += 1
            step_lr = optimizer.param_groups[0]["lr"]
            if step_scheduler is not None:
                step_scheduler.step()
            check_stop()
            sums["train_loss"] += loss * out.batch_size
            for key, value in (*out.metrics.items(), *penalties.items()):
                sums[key] += float(value) * out.batch_size
            seen += out.batch_size
            batches += 1
            stats = collect_solve_stats(model)
            tb.step_scalars({"loss": loss, "lr": step_lr, "nfe_forward": stats.nfe_forward - nfe_before[0],
                             "nfe_backward": stats.nfe_backward - nfe_before[1], **penalties}, step)
            nfe_before = (stats.nfe_forward, stats.nfe_backward)
            bar.set_postfix(loss=f"{loss:.4f}", nfe=f"{stats.nfe_forward / batches:.1f}/{stats.nfe_backward / batches:.1f}",
                            refresh=False)
        bar.close()
    synchronize(device)
    epoch_time = time.perf_counter() - start
    if not batches:
        raise ConfigError(f"the task gave no training batches in epoch {epoch}; check the data config (limits, batch size)")
    stats = collect_solve_stats(model)
    record: dict[str, Any] = {"epoch": epoch}
    record.update({key: total / seen for key, total in sums.items()})
    record.update({
        "nfe_forward": stats.nfe_forward / batches,
        "nfe_backward": stats.nfe_backward / batches,
        "peak_memory_mb": memory.peak_mb,
        "peak_memory_kind": memory.kind,
        "epoch_time_s": epoch_time,
        "lr": lr,
        "n_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
    })
    record.update(measure_evaluation(task, device))  # test metrics, nfe_eval, eval_time_s
    return record, step


def _save_figures(task: Task, run_dir: Path) -> list[Path]:
    with preserved_rng():
        return list(task.save_figures(run_dir / "figures"))


def _summary(record: dict[str, Any], epochs: int) -> str:
    """``epoch 3/10  train_loss 0.4123  test_acc 0.9010  nfe 26.0/32.1  mem 123.4 MB  12.3 s  lr 0.1``."""
    fixed = {"epoch", "nfe_forward", "nfe_backward", "nfe_eval", "peak_memory_mb", "peak_memory_kind",
             "epoch_time_s", "eval_time_s", "lr"}
    metrics = "  ".join(f"{k} {v:.4f}" for k, v in record.items() if k not in fixed and isinstance(v, float))
    return (f"epoch {record['epoch']}/{epochs}  {metrics}  nfe {record['nfe_forward']:.1f}/{record['nfe_backward']:.1f}"
            f"  mem {record['peak_memory_mb']:.1f} MB  {record['epoch_time_s']:.1f} s  lr {record['lr']:.3g}")


def _lr_from_schedule(optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """A resumed run may have raised trainer.epochs, which moves a LambdaLR schedule (cosine, cycles), so the
    next epoch's lr comes from the schedule, not the checkpoint (the same value when nothing changed)."""
    if isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR):
        for group, base_lr, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
            group["lr"] = base_lr * factor(scheduler.last_epoch)


def _check_same_run(saved: dict[str, Any], current: dict[str, Any], run_dir: Path, prefix: str = "") -> None:
    """Refuse to resume a checkpoint of a different experiment (possible only with an explicit hydra.run.dir)."""
    for key in sorted(set(saved) | set(current)):
        name = prefix + key
        if name in _RESUME_FREE:
            continue
        old, new = saved.get(key, _ADDED_KEYS.get(name)), current.get(key)
        if isinstance(old, dict) and isinstance(new, dict):
            _check_same_run(old, new, run_dir, name + ".")
        elif old != new:
            raise ConfigError(f"{run_dir} holds a checkpoint of another run ({name}: {old!r} there, {new!r} now); "
                              "use another hydra.run.dir, or trainer.resume=false to start over in this one")
