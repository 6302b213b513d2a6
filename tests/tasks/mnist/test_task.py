"""The MNIST task on tiny IDX files: batching, determinism, schedule, validation, metrics and figures."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from mnist_testdata import N_TEST, N_TRAIN
from omegaconf import DictConfig, OmegaConf

from neuralode.config import solver_defaults
from neuralode.tasks.mnist import MnistTask, build, crop, random_offsets
from neuralode.utils.runtime import resolve_solver

CONFIGS = Path(__file__).resolve().parents[3] / "configs"


def make_cfg(root: Path, model: str = "mlp", **dotlist: Any) -> DictConfig:
    """The task's slice of a composed config, built from the shipped YAML files without Hydra."""
    cfg = OmegaConf.create({
        "task": OmegaConf.load(CONFIGS / "task" / "mnist.yaml").task,
        "model": OmegaConf.load(CONFIGS / "model" / f"{model}.yaml"),
        "data": OmegaConf.load(CONFIGS / "data" / "fashion_mnist.yaml"),
        "solver": solver_defaults("rk4"),
        "seed": 0,
    })
    cfg.data.root = str(root)
    cfg.data.batch_size = 16
    cfg.data.download = False
    return OmegaConf.merge(cfg, OmegaConf.from_dotlist([f"{k}={v}" for k, v in dotlist.items()]))


def build_on_cpu(cfg: DictConfig) -> MnistTask:
    """The task as the runner builds it: with the solver it resolved from the config."""
    return build(cfg, torch.device("cpu"), resolve_solver(cfg))


def test_batches_are_deterministic_per_epoch_and_cover_the_data(idx_root: Path) -> None:
    task = build_on_cpu(make_cfg(idx_root))
    epoch0 = list(task.train_batches(0))
    again = list(task.train_batches(0))
    epoch1 = list(task.train_batches(1))
    assert [len(y) for _, y in epoch0] == [16, 16, N_TRAIN - 32] and len(task.train_batches(0)) == 3
    x, _ = epoch0[0]
    assert x.shape == (16, 1, 28, 28) and x.dtype == torch.float32 and 0 <= x.min() and x.max() <= 1
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(epoch0, again))
    assert not torch.equal(epoch0[0][1], epoch1[0][1])
    assert sorted(torch.cat([y for _, y in epoch0]).tolist()) == sorted(task.train_labels.tolist())


def test_random_crop_is_a_shifted_window_of_the_padded_image() -> None:
    images = torch.arange(2 * 5 * 5, dtype=torch.uint8).reshape(2, 5, 5)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(crop(images, 0, random_offsets(2, 0, g)), images)
    offsets = random_offsets(2, 2, g)
    assert 0 <= offsets.min() and offsets.max() <= 4
    out = crop(images, 2, offsets)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for i in range(2):
        r, c = offsets[i].tolist()
        assert torch.equal(out[i], padded[i, r:r + 5, c:c + 5])


def _lrs(task: Any, steps: int, epochs: int) -> list[float]:
    """The lr of each of the first ``steps`` SGD steps of a run of ``epochs`` epochs, stepping the scheduler as the
    trainer does."""
    opt, sched = task.configure_optimizers(epochs)
    out = []
    for _ in range(steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_step_schedule_decays_at_the_papers_fractions_of_the_steps(idx_root: Path) -> None:
    task = build_on_cpu(make_cfg(idx_root, **{"data.batch_size": 64}))
    assert task.lr_interval == "step" and task.steps_per_epoch() == 1
    opt, _ = task.configure_optimizers(160)
    lr = 0.1 * N_TRAIN / 128  # the batch of 64 holds all N_TRAIN images: the lr scales by what a step sees
    assert opt.param_groups[0]["lr"] == pytest.approx(lr) and opt.param_groups[0]["momentum"] == 0.9
    lrs = _lrs(task, 160, epochs=160)  # one step per epoch: the paper's decays after epochs 60, 100 and 140
    assert lrs[59] == pytest.approx(lr) and lrs[60] == pytest.approx(lr / 10)
    assert lrs[99] == pytest.approx(lr / 10) and lrs[100] == pytest.approx(lr / 100)
    assert lrs[139] == pytest.approx(lr / 100) and lrs[140] == pytest.approx(lr / 1000)
    # Two epochs of 3 steps: the decays land inside the epochs, at 37.5 % / 62.5 % / 87.5 % of the 6 steps.
    task = build_on_cpu(make_cfg(idx_root))
    assert task.steps_per_epoch() == 3
    assert _lrs(task, 6, epochs=2) == pytest.approx([0.0125, 0.0125, 0.0125, 0.00125, 0.000125, 0.000125])


def test_a_batch_larger_than_the_training_set_scales_the_lr_by_the_images_it_holds(idx_root: Path) -> None:
    task = build_on_cpu(make_cfg(idx_root, **{"data.batch_size": 10**9}))
    opt, _ = task.configure_optimizers(4)
    assert task.steps_per_epoch() == 1 and opt.param_groups[0]["lr"] == pytest.approx(0.1 * N_TRAIN / 128)


def test_cosine_schedule_anneals_to_zero_over_the_steps(idx_root: Path) -> None:
    task = build_on_cpu(make_cfg(idx_root, **{"task.lr_schedule": "cosine"}))
    lrs = _lrs(task, 6, epochs=2)
    expected = [0.0125 * 0.5 * (1 + math.cos(math.pi * k / 6)) for k in range(6)]
    assert lrs == pytest.approx(expected) and task.lr_factor(6, epochs=2) == pytest.approx(0.0)


def test_a_longer_resumed_run_follows_the_longer_schedule(idx_root: Path) -> None:
    """The factor comes from the epochs the trainer passes (the current trainer.epochs), so extending a run
    stretches its schedule."""
    task = build_on_cpu(make_cfg(idx_root))
    assert task.lr_factor(3, epochs=2) == pytest.approx(0.1) and task.lr_factor(3, epochs=4) == pytest.approx(1.0)


def test_training_step_evaluate_and_figures(idx_root: Path, tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = build_on_cpu(make_cfg(idx_root, model="odenet"))
    opt, _ = task.configure_optimizers(4)
    out = task.training_step(next(iter(task.train_batches(0))))
    assert out.batch_size == 16 and set(out.metrics) == {"train_acc"} and 0 <= out.metrics["train_acc"] <= 1
    out.loss.backward()
    opt.step()
    metrics = task.evaluate()
    assert set(metrics) == {"test_acc", "test_loss"} and 0 <= metrics["test_acc"] <= 1
    assert len(task.test_labels) == N_TEST
    paths = task.save_figures(tmp_path / "figures")
    assert [p.name for p in paths] == ["test_predictions.png", "confusion_matrix.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in paths)


def test_limits_take_the_first_images(idx_root: Path) -> None:
    task = build_on_cpu(make_cfg(idx_root, **{"data.limit_train": 7, "data.limit_test": 3}))
    assert len(task.train_labels) == 7 and len(task.test_labels) == 3


@pytest.mark.parametrize("dotlist,match", [
    ({"model.name": "vgg"}, "model=vgg is not an MNIST model; choose one of: odenet, resnet, rknet, mlp"),
    ({"data.batch_size": "big"}, "data.batch_size: Value 'big' of type 'str' could not be converted to Integer"),
    ({"data.limit_train": -1}, "data.limit_train must be null"),
    ({"data.name": "cifar10"}, "data=cifar10 is not an MNIST-style dataset"),
    ({"task.lr": 0}, "task.lr must be > 0"),
    ({"task.lr_decay_at": [0.5, 2]}, "task.lr_decay_at holds fractions"),
    ({"task.lr_schedule": "linear"}, "task.lr_schedule='linear' is unknown; choose one of: step, cosine"),
    ({"model.hidden": 0}, "model.hidden must be >= 1"),
    ({"model.channels": 8}, "model.channels: Key 'channels' not in 'MLPConfig'"),
])
def test_bad_values_get_one_clear_line(idx_root: Path, dotlist: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError) as err:
        build_on_cpu(make_cfg(idx_root, **dotlist))
    assert match in str(err.value) and "\n" not in str(err.value)


def test_labels_out_of_range_are_one_line(tmp_path: Path) -> None:
    from mnist_testdata import write_dataset, write_idx

    root = write_dataset(tmp_path / "idx")
    write_idx(root / "t10k-labels-idx1-ubyte.gz", np.full(N_TEST, 12, np.uint8))
    with pytest.raises(ValueError) as err:
        build_on_cpu(make_cfg(root))
    assert "labels must lie in 0..9 for fashion_mnist, found 12..12" in str(err.value) and "\n" not in str(err.value)


def test_the_schema_holds_types_and_the_yaml_the_defaults() -> None:
    """A key a config lacks (a checkpoint saved before the key existed) takes the shipped YAML's value, once."""
    from neuralode.tasks.base import validated
    from neuralode.tasks.mnist import MnistDataConfig, MnistTaskConfig

    task = validated(MnistTaskConfig, {"name": "mnist", "lr": 0.2}, "task")
    shipped = OmegaConf.load(CONFIGS / "task" / "mnist.yaml").task
    assert task.lr == 0.2 and (task.momentum, task.lr_decay_at) == (shipped.momentum, list(shipped.lr_decay_at))
    assert validated(MnistDataConfig, {"name": "digits"}, "data").crop_padding == 2  # digits.yaml's, not mnist.yaml's
