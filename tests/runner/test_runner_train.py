"""The shared trainer on the toy task, in-process: metrics, TensorBoard, checkpoints, resume, determinism."""
from __future__ import annotations

import json

import pytest
import torch
from runner_helpers import compose_config, toy_config, without_timings

from neuralode.config import ConfigError
from neuralode.train import train
from neuralode.utils.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from neuralode.utils.memory import PeakMemory
from neuralode.utils.metrics import MetricsFile

# The spiral task at smoke size with the RNN (no ODE solve): seconds, and its schedule is a LambdaLR.
SPIRAL_RNN = ("task=spiral", "profile=smoke", "model=rnn", "trainer.progress=false", "device=cpu")
REQUIRED = {"epoch", "train_loss", "train_rmse", "test_rmse", "nfe_forward", "nfe_backward", "nfe_eval",
            "peak_memory_mb", "peak_memory_kind", "epoch_time_s", "eval_time_s", "lr", "n_params"}


def test_metrics_tensorboard_checkpoint_and_figures(train_toy):
    run_dir, records = train_toy("trainer.epochs=2")
    assert [r["epoch"] for r in records] == [1, 2]
    for r in records:
        assert set(r) == REQUIRED
        assert r["nfe_forward"] > 0 and r["nfe_backward"] > 0  # adjoint: the backward solve counts too
        assert r["peak_memory_mb"] > 0 and r["peak_memory_kind"] == "saved_for_backward"
    ckpt = load_checkpoint(run_dir / "checkpoints" / "last.pt")
    assert ckpt["epoch"] == 2 and ckpt["config"]["task"]["name"] == "toy"
    assert {"model", "optimizer", "scheduler", "rng"} <= set(ckpt) and {"torch", "python", "numpy"} <= set(ckpt["rng"])
    assert (run_dir / "figures" / "toy.txt").is_file()

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir)).Reload()
    tags = set(events.Tags()["scalars"])
    assert {"loss/train", "rmse/train", "rmse/test", "nfe/forward", "nfe/backward", "nfe/eval",
            "memory/peak_mb", "time/epoch_s", "lr"} <= tags
    assert [e.value for e in events.Scalars("nfe/forward")] == pytest.approx([r["nfe_forward"] for r in records])
    assert [e.step for e in events.Scalars("loss/train")] == [1, 2]
    assert "_hparams_/experiment" in events.PluginTagToContent("hparams")


def test_per_sample_solver_trains_with_the_per_sample_adjoint(train_toy):
    """solver.per_sample=true: the toy task trains, every sample on its own steps, forward and backward."""
    _, records = train_toy("trainer.epochs=1", "solver.per_sample=true")
    _, joint = train_toy("trainer.epochs=1", name="joint")
    assert records[0]["nfe_forward"] > 0 and records[0]["nfe_backward"] > 0
    assert torch.isfinite(torch.tensor(records[0]["test_rmse"]))
    assert records[0]["test_rmse"] == pytest.approx(joint[0]["test_rmse"], rel=0.05)  # same task, other steps


def test_same_seed_same_metrics_and_other_seed_differs(train_toy):
    _, first = train_toy("trainer.epochs=2", name="a")
    _, second = train_toy("trainer.epochs=2", name="b")
    _, other = train_toy("trainer.epochs=2", "seed=1", name="c")
    assert without_timings(first) == without_timings(second)
    assert without_timings(first) != without_timings(other)


def test_resume_continues_exactly(train_toy):
    _, straight = train_toy("trainer.epochs=3", name="straight")
    run_dir, _ = train_toy("trainer.epochs=2", name="resumed")
    # A kill between writing epoch 3's metrics line and its checkpoint leaves a line the checkpoint lacks.
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"epoch": 3, "train_loss": -1.0}) + "\n" + '{"epoch": 4, "tr')
    _, resumed = train_toy("trainer.epochs=3", name="resumed")
    assert [r["epoch"] for r in resumed] == [1, 2, 3]
    assert without_timings(resumed) == without_timings(straight)


def test_regularisers_are_logged_per_epoch_and_resume_exactly(train_toy):
    """Each regulariser's value goes to metrics.jsonl and TensorBoard beside the NFE; the Hutchinson probes and STEER's
    end times come from the checkpointed RNG, so a resumed run equals an uninterrupted one; train_loss stays the
    task's loss, and the regularised run trains differently from the plain one."""
    regularize = ("regularize.kinetic=0.1", "regularize.jacobian=0.1", "regularize.steer=0.5")
    run_dir, straight = train_toy("trainer.epochs=2", *regularize, name="straight")
    train_toy("trainer.epochs=1", *regularize, name="resumed")
    _, resumed = train_toy("trainer.epochs=2", *regularize, name="resumed")
    assert without_timings(resumed) == without_timings(straight)
    assert all(set(r) == REQUIRED | {"reg_kinetic", "reg_jacobian"} for r in straight)
    assert all(r["reg_kinetic"] > 0 and r["reg_jacobian"] > 0 for r in straight)
    _, plain = train_toy("trainer.epochs=2", name="plain")
    assert [r["train_loss"] for r in plain] != [r["train_loss"] for r in straight]

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir)).Reload()
    assert [e.value for e in events.Scalars("regularize/kinetic")] == pytest.approx([r["reg_kinetic"] for r in straight])
    assert [e.value for e in events.Scalars("regularize/jacobian")] == pytest.approx(
        [r["reg_jacobian"] for r in straight])


def test_a_regulariser_no_ode_block_takes_is_refused(train_toy, monkeypatch):
    """A plug-in task that does not pass ``regularize`` on to its ODE blocks would train unregularised in silence."""
    import toy_task

    from neuralode.models.regularization import Regularization

    monkeypatch.setattr(toy_task, "regularization_from_config", lambda *args, **kwargs: Regularization())
    with pytest.raises(ConfigError, match=r"^regularize.kinetic=0.1 is set, but no ODE block of task=toy's model "
                                          r"takes it; .*\(neuralode/models/regularization.py\), or leave regularize out$"):
        train_toy("regularize.kinetic=0.1")


def test_finished_run_is_not_retrained(train_toy):
    run_dir, records = train_toy("trainer.epochs=1")
    before = (run_dir / "checkpoints" / "last.pt").stat().st_mtime_ns
    _, again = train_toy("trainer.epochs=1")
    assert again == records and (run_dir / "checkpoints" / "last.pt").stat().st_mtime_ns == before


def test_extended_run_resumes_on_the_extended_lr_schedule(tmp_path):
    """Raising trainer.epochs stretches a cosine schedule: epoch 3 of 4 trains at half the lr, not at the
    lr the 2-epoch schedule would have moved on to."""
    spiral = (*SPIRAL_RNN, "task.lr=0.01", "task.lr_schedule=cosine")
    train(compose_config(*spiral, "trainer.epochs=2"), tmp_path)
    train(compose_config(*spiral, "trainer.epochs=4"), tmp_path)
    lrs = [r["lr"] for r in MetricsFile(tmp_path / "metrics.jsonl").records()]
    assert lrs == pytest.approx([0.01, 0.005, 0.005, 0.00146], abs=1e-5)


def test_checkpoint_from_before_an_added_key_resumes_under_its_old_value(tmp_path):
    train(compose_config(*SPIRAL_RNN, "trainer.epochs=1"), tmp_path)
    ckpt_path = tmp_path / "checkpoints" / "last.pt"
    ckpt = load_checkpoint(ckpt_path)
    del ckpt["config"]["task"]["lr_cycles"]  # as saved before the keys existed
    del ckpt["config"]["regularize"]
    save_checkpoint(ckpt_path, ckpt)
    with pytest.raises(ConfigError, match=r"another run \(task.lr_cycles: 1 there, 2 now\)"):
        train(compose_config(*SPIRAL_RNN, "trainer.epochs=2", "task.lr_cycles=2"), tmp_path)
    train(compose_config(*SPIRAL_RNN, "trainer.epochs=2"), tmp_path)
    assert [r["epoch"] for r in MetricsFile(tmp_path / "metrics.jsonl").records()] == [1, 2]


def test_resume_false_starts_over(train_toy):
    train_toy("trainer.epochs=2")
    _, records = train_toy("trainer.epochs=1", "trainer.resume=false")
    assert [r["epoch"] for r in records] == [1]


def test_corrupt_checkpoint_is_a_clear_error(train_toy):
    run_dir, _ = train_toy("trainer.epochs=1")
    ckpt = run_dir / "checkpoints" / "last.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:200])
    with pytest.raises(CheckpointError, match=f"checkpoint {ckpt} is damaged"):
        train_toy("trainer.epochs=2")


def test_checkpoint_of_another_run_is_refused(train_toy):
    run_dir, _ = train_toy("trainer.epochs=1")
    with pytest.raises(ConfigError, match=r"another run \(task.hidden: 16 there, 8 now\)"):
        train(toy_config("task.hidden=8"), run_dir)


def test_peak_memory_shows_the_adjoint_saving(train_toy):
    """Backprop through the solver keeps every step's activations; the adjoint keeps (almost) none."""
    _, adjoint = train_toy("solver=rk4", "++solver.options.step_size=0.05", name="adjoint")
    _, direct = train_toy("solver=rk4", "++solver.options.step_size=0.05", "solver.adjoint=false", name="direct")
    assert direct[0]["nfe_backward"] == 0 and adjoint[0]["nfe_backward"] > 0
    assert direct[0]["peak_memory_mb"] > 10 * adjoint[0]["peak_memory_mb"]


def test_peak_memory_counts_live_saved_tensors_once():
    x = torch.ones(1000, requires_grad=True)  # 4000 bytes
    with PeakMemory(torch.device("cpu")) as meter:
        y = (x * x).sum()  # saves x twice: counted once
        y.backward()
        z = (x.exp() * 2).sum()  # exp saves its 4000-byte result; the first graph is gone by now
    del z
    assert meter.peak_mb * 2**20 == 4000
