"""Hydra callback that reports every job of a multirun sweep, failed ones included.

Hydra runs every job of a sweep even when one fails, then raises the *first* failure only. This
callback says, as each job ends, whether it completed or failed (with the one-line reason), and keeps
``<sweep dir>/jobs.jsonl`` for the latest sweep (one line per job: number, overrides, status, run dir, error) so a sweep's
outcome can be read afterwards, whichever launcher (basic, joblib, submitit) ran the jobs.

Enabled in ``configs/config.yaml``::

    hydra:
      callbacks:
        sweep_status:
          _target_: neuralode.utils.sweep.SweepStatus
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from hydra.types import RunMode
from omegaconf import DictConfig

from neuralode.utils.files import read_jsonl
from neuralode.utils.rundir import RunDirBusy, RunDirLock

JOBS_FILE = "jobs.jsonl"


def _is_multirun(config: DictConfig) -> bool:
    mode = config.hydra.get("mode")
    return mode == RunMode.MULTIRUN or str(mode) == "MULTIRUN"


def _error_line(error: BaseException) -> str:
    lines = [ln.strip() for ln in str(error).strip().splitlines() if ln.strip()]
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def read_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """The job records of a sweep, in the order the jobs ended."""
    return read_jsonl(Path(sweep_dir) / JOBS_FILE)


class SweepStatus(Callback):
    """Print and record each multirun job's outcome; a no-op for single runs."""

    _lock: RunDirLock | None = None

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        # One sweep at a time per sweep dir (the lock is held until this process ends): two would mix their jobs.
        self._lock = RunDirLock(sweep_dir)
        try:
            self._lock.__enter__()
        except RunDirBusy:  # SystemExit: Hydra turns a callback's exceptions into warnings and goes on
            print(f"neuralode train: error: {sweep_dir} is in use by another sweep; wait for it to finish, or give "
                  "this one another hydra.sweep.dir", file=sys.stderr)
            raise SystemExit(2) from None
        # The sweep dir is reused by the same command (so runs resume): the file describes the latest sweep.
        (sweep_dir / JOBS_FILE).unlink(missing_ok=True)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        if not _is_multirun(config):
            return
        failed = job_return.status == JobStatus.FAILED
        record = {
            "num": int(config.hydra.job.num),
            "overrides": list(job_return.overrides or []),
            "status": "failed" if failed else "completed",
            "run_dir": str(config.hydra.runtime.output_dir),
            # ``return_value`` re-raises a failed job's exception; the stored one is what we want to show.
            "error": _error_line(job_return._return_value) if failed else None,
        }
        sweep_dir = Path(config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        # One write of one line with O_APPEND: jobs ending at once in other processes don't interleave.
        fd = os.open(sweep_dir / JOBS_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, (json.dumps(record) + "\n").encode())
        finally:
            os.close(fd)
        what = " ".join(record["overrides"])
        if failed:
            print(f"sweep: job #{record['num']} ({what}) FAILED: {record['error']}", file=sys.stderr, flush=True)
        else:
            print(f"sweep: job #{record['num']} ({what}) completed -> {record['run_dir']}", file=sys.stderr,
                  flush=True)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        # Only reached when no job failed (Hydra raises the first failure before this hook).
        jobs = read_jobs(Path(config.hydra.sweep.dir))
        print(f"sweep: all {len(jobs)} jobs completed; statuses in {Path(config.hydra.sweep.dir) / JOBS_FILE}",
              file=sys.stderr, flush=True)
        if self._lock is not None:
            self._lock.__exit__(None, None, None)
