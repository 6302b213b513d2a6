"""The shared trainer: one loop for every task, with metrics, TensorBoard, checkpoints and exact resume.

Run dir layout::

    metrics.jsonl            one JSON object per finished epoch
    events.out.tfevents.*    TensorBoard scalars and hparams
    checkpoints/last.pt      model, optimiser, scheduler, epoch, config, RNG states (written atomically)
    figures/                 the task's figures

Resume: when ``checkpoints/last.pt`` exists (and ``trainer.resume`` is true) training continues after the
checkpoint's epoch with its RNG states, so the metrics equal those of an uninterrupted run; metrics.jsonl
lines of epochs the checkpoint does not contain (a kill between the two writes) are dropped.
"""
from __future__ import annotations

import logging
import math
import os
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from tqdm import tqdm

from neuralode.config import ConfigError, validate
from neuralode.models.odeblock import collect_solve_stats, reset_solve_stats
from neuralode.solvers import MaxNumStepsError, NonFiniteError
from neuralode.tasks import Task
from neuralode.utils.checkpoint import CheckpointError, get_rng_state, load_checkpoint, save_checkpoint, set_rng_state
from neuralode.utils.interrupt import StopSignals
from neuralode.utils.memory import PeakMemory
from neuralode.utils.metrics import MetricsFile, TensorBoardLog
from neuralode.utils.rundir import RunDirLock
from neuralode.utils.runtime import (
    build_task_from_config,
    measure_evaluation,
    preserved_rng,
    resolve_device,
    seed_everything,
    synchronize,
)

log = logging.getLogger(__name__)

# Config keys that may differ between a checkpoint and the command resuming it: where the data lives,
# the device, and how the trainer reports and how long it runs.
_RESUME_FREE = {"device", "trainer", "profile", "data.root", "data.download", "data.cache_dir"}
# Keys added after run dirs already existed, with the value that reproduces those runs: a checkpoint saved
# without the key resumes under that value (and is refused under any other).
_ADDED_KEYS: dict[str, Any] = {"task.lr_cycles": 1}


def train(cfg: DictConfig, run_dir: Path) -> dict[str, Any]:
    """Train ``cfg.task`` into ``run_dir`` (resuming when it holds a checkpoint); return the last epoch's metrics.

    SIGINT/SIGTERM stop it at the next safe point with :class:`~neuralode.utils.interrupt.Interrupted`; a second
    process training into the same run dir is refused.
    """
    validate(cfg)
    with RunDirLock(Path(run_dir)), StopSignals() as stop:
        return _train(cfg, Path(run_dir), stop)


def _train(cfg: DictConfig, run_dir: Path, stop: StopSignals) -> dict[str, Any]:
    if cfg.trainer.threads:
        torch.set_num_threads(cfg.trainer.threads)
    device = resolve_device(cfg.device)
    config = OmegaConf.to_container(cfg, resolve=True)
    ckpt_path = run_dir / "checkpoints" / "last.pt"
    metrics_file = MetricsFile(run_dir / "metrics.jsonl")
    ckpt_path.parent.mkdir(parents=True, exist_ok=True)
    if not os.access(ckpt_path.parent, os.W_OK):  # found now, not after an epoch of training
        raise PermissionError(f"{ckpt_path.parent} is not writable, so no checkpoint could be saved; "
                              "make it writable or train into another hydra.run.dir")

    seed_everything(cfg.seed)
    task = build_task_from_config(cfg, device)
    optimizer, scheduler = task.configure_optimizers()
    done = 0
    if cfg.trainer.resume and ckpt_path.exists():
        try:
            ckpt = load_checkpoint(ckpt_path)
        except CheckpointError as e:
            raise CheckpointError(f"{run_dir} cannot resume: {e}; move it away to start over "
                                  "(or trainer.resume=false), or use another hydra.run.dir") from None
        _check_same_run(ckpt["config"], config, run_dir)
        task.model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        if scheduler is not None and ckpt.get("scheduler") is not None:
            scheduler.load_state_dict(ckpt["scheduler"])
            _lr_from_schedule(optimizer, scheduler)
        set_rng_state(ckpt["rng"])
        done = ckpt["epoch"]
        metrics_file.truncate(done)
        log.info(f"resuming {run_dir} after epoch {done}")
    # A fresh start (trainer.resume=false) over an older run replaces its metrics only with the first new epoch:
    # a start that fails before that leaves the older run whole.
    replace_metrics = done == 0

    epochs = cfg.trainer.epochs
    per_step = getattr(task, "lr_interval", "epoch") == "step"
    tb = TensorBoardLog(run_dir, first_epoch=done + 1)
    record: dict[str, Any] = (metrics_file.records() or [{}])[-1] if done else {}
    try:
        for epoch in range(done + 1, epochs + 1):
            try:
                record = _run_epoch(task, optimizer, scheduler if per_step else None, epoch, epochs, device,
                                    cfg.trainer.progress,
                                    lambda: stop.check(f"during epoch {epoch}/{epochs}, which is dropped; "
                                                       + _resume_hint(ckpt_path, epoch - 1)))
            except (MaxNumStepsError, NonFiniteError) as e:
                raise TrainingError(_failure_message(e, cfg, epoch, epochs, epoch - 1, ckpt_path)) from e
            if replace_metrics:
                metrics_file.replace([record])
                replace_metrics = False
            else:
                metrics_file.append(record)
            tb.scalars(record, epoch)
            if scheduler is not None and not per_step:
                scheduler.step()
            save_checkpoint(ckpt_path, {
                "model": task.model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else None,
                "epoch": epoch,
                "config": config,
                "rng": get_rng_state(),
                "metrics": record,
            })
            log.info(_summary(record, epochs))
            if epoch < epochs:
                stop.check(f"after epoch {epoch}/{epochs}; " + _resume_hint(ckpt_path, epoch))
            if cfg.trainer.figures_every and epoch % cfg.trainer.figures_every == 0 and epoch < epochs:
                _save_figures(task, run_dir)
        if done >= epochs:
            log.info(f"{run_dir} already holds {done} epochs (trainer.epochs={epochs}); nothing to train")
        paths = _save_figures(task, run_dir)
        if done < epochs:
            tb.hparams(config, record)
    finally:
        tb.close()
    log.info(f"run dir: {run_dir}  ({len(paths)} figures)")
    return record


class TrainingError(ValueError):
    """Training cannot go on as configured (diverged, solver gave up); the message says why and what to change."""


def _failure_message(error: Exception, cfg: DictConfig, epoch: int, epochs: int, kept: int, ckpt_path: Path) -> str:
    """One line: what failed where, the likely causes with the keys to change, and what was kept."""
    lr = cfg.task.get("lr")
    lr_now = f" (task.lr={lr} now)" if lr is not None else ""
    tol = cfg.solver.rtol or cfg.solver.tol or cfg.task.get("default_tol")
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


def _run_epoch(task: Task, optimizer: torch.optim.Optimizer, step_scheduler: torch.optim.lr_scheduler.LRScheduler | None,
               epoch: int, epochs: int, device: torch.device, progress: bool,
               check_stop: Callable[[], None]) -> dict[str, Any]:
    """One pass over the task's training batches, then its evaluation; returns the metrics.jsonl record.

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
    memory = PeakMemory(device)
    synchronize(device)
    start = time.perf_counter()
    with memory:
        data = task.train_batches(epoch)
        bar = tqdm(data, total=len(data) if hasattr(data, "__len__") else None, desc=f"epoch {epoch}/{epochs}",
                   leave=False, disable=not progress, dynamic_ncols=True)
        for batch in bar:
            out = task.training_step(batch)
            loss = out.loss.item()
            if not math.isfinite(loss):
                raise NonFiniteError(f"the training loss is {loss} at step {batches + 1}")
            optimizer.zero_grad(set_to_none=True)
            out.loss.backward()
            optimizer.step()
            if step_scheduler is not None:
                step_scheduler.step()
            check_stop()
            sums["train_loss"] += loss * out.batch_size
            for key, value in out.metrics.items():
                sums[key] += float(value) * out.batch_size
            seen += out.batch_size
            batches += 1
            stats = collect_solve_stats(model)
            bar.set_postfix(loss=f"{loss:.4f}", nfe=f"{stats.nfe_forward / batches:.1f}/{stats.nfe_backward / batches:.1f}")
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
    return record


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
