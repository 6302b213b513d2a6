"""``make reproduce``: train every run the paper's tables and figures need, then write REPORT.md.

    python -m neuralode.report.reproduce --profile smoke|quick|full --report-dir DIR [--no-train]

Each run is one ``neuralode train`` subprocess writing into ``<runs dir>/<key>``; with ``--jobs 1`` its
progress bars stream through, with ``--jobs N`` N runs train at once (each with its share of the CPU
threads) and each run's output goes to ``<runs dir>/logs/<key>.log``. On a CPU two one-thread runs get
through more work than one two-thread run: these models' small convolutions gain little from a second
thread. A run whose ``metrics.jsonl`` already holds every epoch is skipped, and an
interrupted one resumes from its checkpoint, so rerunning the same command continues where it stopped.
A failed run is recorded and the others still run; the exit code is 1 if any failed. ``--seeds 0 1 2``
trains every run once per seed and the report gives each cell as mean ± sd over the seeds. ``--no-train``
only rebuilds the report from what is on disk, and refuses (exit 2, nothing written) while a run is missing.
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from neuralode.report import writer
from neuralode.report.plan import (
    DEFAULT_SEED,
    FASHION_MNIST_ROOT,
    PROFILES,
    DataChoice,
    Run,
    build_plan,
    check_profile,
)
from neuralode.report.runs import MetricsError, read_metrics, read_run_config
from neuralode.utils.files import write_text_atomic

CACHE_DIR = "~/.cache/neuralode/data"  # the data configs' default cache_dir


def neuralode_command() -> list[str]:
    """How to start the CLI from this interpreter: the console script beside it, else the module."""
    script = Path(sys.executable).with_name("neuralode")
    if script.is_file():
        return [str(script)]
    found = shutil.which("neuralode")
    return [found] if found else [sys.executable, "-m", "neuralode.cli"]


def detect_data(requested: str, root: str | None = None) -> DataChoice:
    """The image data set for Table 1: MNIST when present or downloadable, else offline Fashion-MNIST."""
    from neuralode.data.mnist import DataError, load_split

    note = ""
    if requested == "auto":
        if _mnist_available(root):
            return DataChoice("mnist", root)
        requested, root = "fashion_mnist", None
        note = ("MNIST is not on this machine and could not be downloaded, so Fashion-MNIST (offline copy) "
                "stands in for it.")
    if requested == "mnist":
        return DataChoice("mnist", root)
    fm_root = root or FASHION_MNIST_ROOT
    try:
        load_split("fashion_mnist", False, fm_root, CACHE_DIR, download=False)
    except DataError as e:
        raise SystemExit(f"error: no image data set for Table 1: {e}") from None
    return DataChoice("fashion_mnist", fm_root, note)


def _mnist_available(root: str | None) -> bool:
    from neuralode.data.mnist import DataError, load_split

    try:  # present (in root or the cache), or downloadable; fails fast when offline
        for train in (False, True):
            load_split("mnist", train, root, CACHE_DIR, download=True)
    except DataError:
        return False
    return True


def expected_epochs(run: Run, run_dir: Path) -> int | None:
    """``trainer.epochs`` the run's command composes to (from the saved config if composing fails)."""
    try:
        from hydra import compose, initialize_config_dir
        from hydra.core.global_hydra import GlobalHydra

        from neuralode.config import config_dir, register_configs

        register_configs()
        GlobalHydra.instance().clear()
        with initialize_config_dir(version_base="1.3", config_dir=str(config_dir())):
            cfg = compose("config", overrides=list(run.overrides))
        return int(cfg.trainer.epochs)
    except Exception:  # config not composable here (e.g. a task not installed): trust the run's own record
        epochs = read_run_config(run_dir).get("trainer", {}).get("epochs")
        return epochs if isinstance(epochs, int) and not isinstance(epochs, bool) and epochs >= 1 else None


def is_complete(run: Run, run_dir: Path) -> bool:
    """Its ``metrics.jsonl`` holds epochs 1..n for every epoch the run's command trains (damaged: not)."""
    try:
        logged = len(read_metrics(run_dir))
    except MetricsError:
        return False
    if not logged:  # nothing trained: no need to compose the config
        return False
    epochs = expected_epochs(run, run_dir)
    return epochs is not None and logged >= epochs


def incomplete_runs(plan: list[Run], runs_dir: Path) -> list[str]:
    return [run.key for run in plan if not is_complete(run, runs_dir / run.key)]


def refusal(missing: list[str], n_runs: int, runs_dir: Path, make_them: str) -> str:
    """The one line ``--no-train`` prints instead of a report built from missing runs."""
    shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
    return (f"error: {len(missing)} of {n_runs} runs are missing or unfinished under {runs_dir} ({shown}); "
            f"no report written. Make them with: {make_them}")


def _fmt_s(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"


class Reproduction:
    """Runs the plan in order, logging each run's outcome to ``<runs dir>/reproduce.json``."""

    def __init__(self, profile: str, runs_dir: Path, data: DataChoice, command: str, threads: int | None,
                 jobs: int = 1, seeds: tuple[int, ...] = (DEFAULT_SEED,)) -> None:
        self.profile, self.runs_dir = profile, runs_dir
        self.plan = build_plan(profile, data, seeds)
        self.jobs = jobs
        # N runs at once share the cores: each gets its share of threads unless --threads says otherwise.
        self.threads = threads or (max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None)
        self.extra = [f"trainer.threads={self.threads}"] if self.threads else []
        if self.jobs > 1:
            self.extra.append("trainer.progress=false")
        self.state: dict[str, Any] = writer.read_state(runs_dir)
        self.state.update({"profile": profile, "command": command, "machine": writer.machine_info(),
                           "data": {"name": data.name, "root": data.root, "note": data.note},
                           "seeds": list(seeds), "run_overrides": self.extra})
        self.state.setdefault("runs", {})
        self.start = time.perf_counter()

    def save_state(self) -> None:
        write_text_atomic(self.runs_dir / writer.STATE_FILE, json.dumps(self.state, indent=1))

    def _log(self, msg: str) -> None:
        print(f"[reproduce {_fmt_s(time.perf_counter() - self.start)}] {msg}", flush=True)

    def _start(self, key: str, cmd: list[str], shown: str, i: int, n: int, log_file: Path | None) -> subprocess.Popen:
        self._log(f"[{i}/{n}] {key}: {shown}" + (f"  (output: {log_file})" if log_file else ""))
        if log_file is None:
            return subprocess.Popen(cmd, start_new_session=True)
        log_file.parent.mkdir(parents=True, exist_ok=True)
        with open(log_file, "a") as out:
            return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

    def _finish(self, key: str, rc: int, secs: float, shown: str, i: int, n: int) -> bool:
        status = "ok" if rc == 0 else "failed"
        self.state["runs"][key] = {"status": status, "rc": rc, "seconds": round(secs, 1), "command": shown}
        self.save_state()
        self._log(f"[{i}/{n}] {key}: {status} in {_fmt_s(secs)}" + ("" if rc == 0 else f" (exit code {rc})"))
        return rc == 0

    def _execute(self, key: str, cmd: list[str], shown: str, i: int, n: int) -> bool:
        t0 = time.perf_counter()
        proc = self._start(key, cmd, shown, i, n, None)
        try:
            rc = proc.wait()
        except KeyboardInterrupt:
            proc.send_signal(signal.SIGINT)
            proc.wait()
            raise
        return self._finish(key, rc, time.perf_counter() - t0, shown, i, n)

    def train_all(self) -> list[str]:
        """Train (or resume, or skip) every run, ``jobs`` at a time, then measure Figure 3 (on every thread);
        returns the keys that failed."""
        started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        executed = False
        failed: list[str] = []
        n = len(self.plan) + 1  # + the Figure 3 measurement
        running: dict[str, tuple[subprocess.Popen, float, str, int]] = {}

        def reap(block: bool) -> None:
            while running and (block or len(running) >= self.jobs):
                for key, (proc, t0, shown, i) in list(running.items()):
                    if proc.poll() is not None:
                        del running[key]
                        if not self._finish(key, proc.returncode, time.perf_counter() - t0, shown, i, n):
                            failed.append(key)
                if running and (block or len(running) >= self.jobs):
                    time.sleep(0.2)

        try:
            for i, run in enumerate(self.plan, 1):
                run_dir = self.runs_dir / run.key
                if is_complete(run, run_dir):
                    self._log(f"[{i}/{n}] {run.key}: complete, skipped")
                    self.state["runs"][run.key] = {**self.state["runs"].get(run.key, {}), "status": "ok"}
                    continue
                if not executed:  # the report's dates are those of the invocation that last trained something
                    self.state["started"], executed = started, True
                reap(block=False)
                cmd = neuralode_command() + run.command(str(run_dir)) + self.extra
                shown = writer.command_line(run, self.runs_dir, self.extra)
                log_file = self.runs_dir / "logs" / f"{run.key.replace('/', '_')}.log" if self.jobs > 1 else None
                running[run.key] = (self._start(run.key, cmd, shown, i, n, log_file), time.perf_counter(), shown, i)
            reap(block=True)
            failed.sort(key=[r.key for r in self.plan].index)  # parallel runs finish in any order
        finally:  # interrupted: the runs stop at their next safe point, keeping their checkpoints
            # Each run is in its own session (so a terminal's Ctrl-C reaches only this process): it gets
            # exactly one SIGINT, from here.
            for proc, *_ in running.values():
                proc.send_signal(signal.SIGINT)
            for proc, *_ in running.values():
                proc.wait()
        if not self._figure3(n):
            failed.append("figure3")
        if executed:
            self.state["finished"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
        # Compute time of the runs as they are on disk, resumed runs included.
        self.state["train_seconds"] = round(sum(v.get("seconds", 0.0) for v in self.state["runs"].values()), 1)
        if executed:
            self.state["wall_seconds"] = round(self.state.get("wall_seconds", 0.0) + time.perf_counter() - self.start, 1)
            self.state["jobs"] = self.jobs
        self.save_state()
        return failed

    def _figure3(self, i: int) -> bool:
        """Figure 3 with the trained method, then panel (c) with the paper's solver family, on the first
        seed's ODE-Net (one model: these are statistics of the solver on a trained model)."""
        run_dir = self.runs_dir / next(r.key for r in self.plan if r.base == "table1/odenet")
        ckpt = run_dir / "checkpoints" / "last.pt"
        if not ckpt.is_file():
            self._log(f"[{i}/{i}] figure3: no ODE-Net checkpoint at {ckpt}; skipped")
            self.state["runs"]["figure3"] = {"status": "missing"}
            return False
        spec = check_profile(self.profile)
        common = [str(run_dir), "--batch-size", str(spec.figure3_batch)]
        if self.threads and self.jobs == 1:
            common += ["--threads", str(self.threads)]
        measurements = [
            ("figure3", writer.FIGURE3_FILE,
             ["--repeats", str(spec.figure3_repeats),
              "--accuracy-tolerances", *(f"{t:g}" for t in spec.figure3_accuracy_tolerances),
              "--tolerances", *(f"{t:g}" for t in spec.figure3_tolerances)]),
            # Panel (c) only: its NFE, not its timings, are what the paper's solver family is measured for.
            (f"figure3_{spec.figure3_paper_solver}", writer.FIGURE3_PAPER_SOLVER_FILE,
             ["--repeats", "1", "--solver", spec.figure3_paper_solver, "--accuracy-tolerances",
              "--tolerances", *(f"{t:g}" for t in spec.figure3_paper_tolerances)]),
        ]
        ok = True
        for key, name, args in measurements:
            out = run_dir / name
            if out.is_file() and out.stat().st_mtime >= ckpt.stat().st_mtime:
                self._log(f"[{i}/{i}] {key}: measured after the last checkpoint, skipped")
                continue
            args = common + ["--out", str(out), *args]
            shown = "python -m neuralode.report.figure3 " + " ".join(shlex.quote(a) for a in args)
            ok = self._execute(key, [sys.executable, "-m", "neuralode.report.figure3", *args], shown, i, i) and ok
        return ok


def _interrupt(_signum: int, _frame: object) -> None:
    """SIGTERM stops the reproduction as Ctrl-C does: the running trainings are told to stop and kept."""
    raise KeyboardInterrupt


def make_command(args: argparse.Namespace, report_dir: Path, seeds: tuple[int, ...], *, train: bool) -> str:
    """The ``make`` command line equivalent to this invocation, for the report and for messages."""
    extra = [f"{flag} {value}" for flag, value in (("--runs-dir", args.runs_dir), ("--data-root", args.data_root),
                                                   ("--threads", args.threads)) if value is not None]
    extra += [f"--data {args.data}"] if args.data != "auto" else []
    if seeds != (DEFAULT_SEED,) and seeds != tuple(range(len(seeds))):
        extra.append("--seeds " + " ".join(map(str, seeds)))  # SEEDS=N means seeds 0..N-1
    return (f"make {'reproduce' if train else 'report'} PROFILE={args.profile} REPORT_DIR={report_dir}"
            + (f" JOBS={args.jobs}" if train and not args.no_train else "")  # make's default otherwise
            + (f" SEEDS={len(seeds)}" if len(seeds) > 1 and seeds == tuple(range(len(seeds))) else "")
            + (f' ARGS="{" ".join(extra)}"' if extra else ""))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m neuralode.report.reproduce", description=__doc__.split("\n\n")[0])
    parser.add_argument("--profile", default="smoke", choices=PROFILES)
    parser.add_argument("--report-dir", type=Path, help="where REPORT.md and figures/ go "
                        "(default: outputs/report-<profile>)")
    parser.add_argument("--runs-dir", type=Path, help="where the runs go (default: outputs/reproduce/<profile>)")
    parser.add_argument("--no-train", action="store_true", help="only rebuild the report from existing outputs")
    parser.add_argument("--data", default="auto", choices=("auto", "mnist", "fashion_mnist"),
                        help="Table 1 data set: auto (MNIST if available, else offline Fashion-MNIST), mnist or "
                        "fashion_mnist")
    parser.add_argument("--data-root", help="data.root for Table 1 (a folder with the four IDX files)")
    parser.add_argument("--threads", type=int, help="torch threads per run (trainer.threads); default: "
                        "torch's own with --jobs 1, else the CPU count divided by --jobs")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (default 1)")
    parser.add_argument("--seeds", type=int, nargs="+", help="train every run once per seed (make reproduce "
                        "SEEDS=3: --seeds 0 1 2); default: the config's seed, or with --no-train the seeds trained")
    args = parser.parse_args(argv)
    if args.threads is not None and args.threads < 1:
        parser.error("--threads must be >= 1")
    if args.jobs < 1:
        parser.error("--jobs must be >= 1")
    if args.seeds is not None and (len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0):
        parser.error(f"--seeds {' '.join(map(str, args.seeds))}: give distinct seeds >= 0, e.g. --seeds 0 1 2")
    report_dir = args.report_dir or Path(f"outputs/report-{args.profile}")
    runs_dir = args.runs_dir or Path(f"outputs/reproduce/{args.profile}")
    state = writer.read_state(runs_dir)
    seeds = tuple(args.seeds or (state.get("seeds") if args.no_train else None) or (DEFAULT_SEED,))
    failed: list[str] = []
    if args.no_train:
        d = state.get("data") or {}
        data = DataChoice(d.get("name", "mnist"), d.get("root"), d.get("note", ""))
        plan = build_plan(args.profile, data, seeds)
        missing = incomplete_runs(plan, runs_dir)
        if missing:
            print(refusal(missing, len(plan), runs_dir, make_command(args, report_dir, seeds, train=True)),
                  file=sys.stderr)
            return 2
    else:
        data = detect_data(args.data, args.data_root)
        print(f"[reproduce] profile {args.profile}: image data set {data.name}"
              + (f" ({data.note})" if data.note else ""), flush=True)
        rep = Reproduction(args.profile, runs_dir, data, make_command(args, report_dir, seeds, train=True),
                           args.threads, args.jobs, seeds)
        previous = signal.signal(signal.SIGTERM, _interrupt)
        try:
            failed = rep.train_all()
        except KeyboardInterrupt:
            print("\n[reproduce] interrupted; run the same command again to resume", file=sys.stderr)
            return 130
        finally:  # a caller's own SIGTERM handling (a test runner's, a notebook's) is theirs again
            signal.signal(signal.SIGTERM, previous)
        plan = rep.plan
    path = writer.write_report(args.profile, plan, runs_dir, report_dir)
    print(f"[reproduce] wrote {path}", flush=True)
    if failed:
        print(f"[reproduce] {len(failed)} step(s) failed: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
