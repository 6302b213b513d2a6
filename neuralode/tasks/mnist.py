"""Paper Table 1: MNIST (or Fashion-MNIST) classification with ODE-Net, RK-Net, ResNet and an MLP.

Training follows the paper's reference code (odenet_mnist.py): SGD with momentum 0.9, lr 0.1 scaled by
batch/128, decayed x0.1 after 60, 100 and 140 of 160 epochs, batch 128, random 28x28 crops of the image
zero-padded by 4, pixels in [0, 1] without normalisation, cross-entropy loss.

The datasets are small enough to hold in memory (on the task's device), so batches are built with tensor
ops from a generator seeded by ``(cfg.seed, epoch)``: the epoch's order and crops depend on nothing else,
which makes runs reproducible and a resumed run replay exactly the epochs it missed. There are no
DataLoader worker processes to configure for the same reason.
"""
from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from matplotlib.figure import Figure
from omegaconf import DictConfig

from neuralode.data.mnist import IMAGE_DATASETS, DataError, class_names, load_split
from neuralode.models.mnist import MODELS, ODE_MODELS, build_mnist_model, count_parameters
from neuralode.models.odeblock import SolverSpec
from neuralode.models.regularization import regularization_from_config
from neuralode.tasks.base import StepOutput, check, validated

log = logging.getLogger(__name__)


# The types of the task's config groups. Their defaults and what each key means live once, in the YAML files
# (configs/task/mnist.yaml, configs/data/<mnist|fashion_mnist|digits>.yaml, configs/model/<name>.yaml).
@dataclass
class MnistTaskConfig:
    name: str
    default_tol: float
    lr: float
    momentum: float
    weight_decay: float
    lr_schedule: str
    lr_decay_at: list[float]
    lr_decay_factor: float


@dataclass
class MnistDataConfig:
    name: str
    root: str | None
    cache_dir: str
    download: bool
    batch_size: int
    test_batch_size: int
    limit_train: int | None
    limit_test: int | None
    augment: bool
    crop_padding: int


@dataclass
class ConvModelConfig:  # odenet, rknet
    name: str
    channels: int


@dataclass
class ResNetConfig:
    name: str
    channels: int
    num_blocks: int


@dataclass
class MLPConfig:
    name: str
    hidden: int


LR_SCHEDULES = ("step", "cosine")
_MODEL_SCHEMAS = {"odenet": ConvModelConfig, "rknet": ConvModelConfig, "resnet": ResNetConfig, "mlp": MLPConfig}


def validate_config(cfg: DictConfig) -> tuple[MnistTaskConfig, MnistDataConfig, Any]:
    """Typed, range-checked task/data/model sections of the composed config."""
    # Names first: another task's model or data group would otherwise fail as a list of unknown keys.
    model_name, data_name = cfg.model.get("name"), cfg.data.get("name")
    check(model_name in _MODEL_SCHEMAS, f"model={model_name} is not an MNIST model; choose one of: {', '.join(MODELS)}")
    check(data_name in IMAGE_DATASETS,
           f"data={data_name} is not an MNIST-style dataset; choose one of: {', '.join(IMAGE_DATASETS)}")
    task = validated(MnistTaskConfig, cfg.task, "task")
    data = validated(MnistDataConfig, cfg.data, "data")
    model = validated(_MODEL_SCHEMAS[model_name], cfg.model, "model")

    check(task.lr > 0, f"task.lr must be > 0, got {task.lr}")
    check(task.lr_schedule in LR_SCHEDULES,
           f"task.lr_schedule={task.lr_schedule!r} is unknown; choose one of: {', '.join(LR_SCHEDULES)}")
    check(0 <= task.momentum < 1, f"task.momentum must be in [0, 1), got {task.momentum}")
    check(task.weight_decay >= 0, f"task.weight_decay must be >= 0, got {task.weight_decay}")
    check(all(0 < f <= 1 for f in task.lr_decay_at),
           f"task.lr_decay_at holds fractions of the run's SGD steps in (0, 1], got {task.lr_decay_at}")
    check(0 < task.lr_decay_factor <= 1, f"task.lr_decay_factor must be in (0, 1], got {task.lr_decay_factor}")
    for key in ("batch_size", "test_batch_size"):
        check(getattr(data, key) >= 1, f"data.{key} must be >= 1, got {getattr(data, key)}")
    for key in ("limit_train", "limit_test"):
        value = getattr(data, key)
        check(value is None or value >= 1, f"data.{key} must be null (all) or >= 1, got {value}")
    check(data.crop_padding >= 0, f"data.crop_padding must be >= 0, got {data.crop_padding}")
    for key in ("channels", "num_blocks", "hidden"):
        value = getattr(model, key, 1)
        check(value >= 1, f"model.{key} must be >= 1, got {value}")
    return task, data, model


def random_offsets(n: int, padding: int, generator: torch.Generator) -> torch.Tensor:
    """(n, 2) crop offsets (row, col) in [0, 2 * padding], drawn on the CPU so every device crops alike."""
    return torch.randint(0, 2 * padding + 1, (n, 2), generator=generator)


def crop(images: torch.Tensor, padding: int, offsets: torch.Tensor) -> torch.Tensor:
    """Crop each (H, W) image at ``offsets`` from its copy zero-padded by ``padding`` on every side."""
    n, h, w = images.shape
    padded = F.pad(images, (padding, padding, padding, padding))
    offsets = offsets.to(images.device)
    rows = (offsets[:, :1] + torch.arange(h, device=images.device))[:, :, None]
    cols = (offsets[:, 1:] + torch.arange(w, device=images.device))[:, None, :]
    return padded[torch.arange(n, device=images.device)[:, None, None], rows, cols]


def _to_input(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W) -> float (N, 1, H, W) in [0, 1], as torchvision's ToTensor."""
    return images.unsqueeze(1).float().div_(255)


class MnistTask:
    """Table 1 task: see the module docstring."""

    def __init__(self, cfg: DictConfig, device: torch.device, solver: SolverSpec) -> None:
        self.cfg_task, self.cfg_data, self.cfg_model = validate_config(cfg)
        # Before the data load: a regulariser the model cannot take is refused at once.
        regularization = regularization_from_config(cfg.get("regularize"), self.cfg_model.name,
                                                    has_ode=self.cfg_model.name in ODE_MODELS, steer_end=1.0)
        self.device = device
        self.seed = int(cfg.seed)
        d = self.cfg_data
        train = load_split(d.name, True, d.root, d.cache_dir, d.download)
        test = load_split(d.name, False, d.root, d.cache_dir, d.download)
        self.train_images = train.images[: d.limit_train].to(device)
        self.train_labels = train.labels[: d.limit_train].to(device)
        self.test_images = test.images[: d.limit_test].to(device)
        self.test_labels = test.labels[: d.limit_test].to(device)
        self.class_names = class_names(d.name)
        for split, labels in ((train, self.train_labels), (test, self.test_labels)):
            if len(labels) and not 0 <= int(labels.min()) <= int(labels.max()) < len(self.class_names):
                raise DataError(f"{split.source}: labels must lie in 0..{len(self.class_names) - 1} for {d.name}, "
                                f"found {int(labels.min())}..{int(labels.max())}; are these the right label files?")

        hyper = {k: v for k, v in dataclasses.asdict(self.cfg_model).items() if k != "name"}
        self.model = build_mnist_model(self.cfg_model.name, solver, regularization=regularization, **hyper).to(device)
        self.num_params = count_parameters(self.model)
        self._last_predictions: torch.Tensor | None = None
        log.info("mnist: %s with %s parameters; %s: %d train / %d test images from %s",
                 self.cfg_model.name, f"{self.num_params:,}", d.name, len(self.train_labels),
                 len(self.test_labels), train.source)

    def train_batches(self, epoch: int) -> "EpochBatches":
        g = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
        n = len(self.train_labels)
        order = torch.randperm(n, generator=g)
        augment = self.cfg_data.augment and self.cfg_data.crop_padding > 0
        offsets = random_offsets(n, self.cfg_data.crop_padding, g) if augment else None
        return EpochBatches(self, order, offsets)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> StepOutput:
        x, y = batch
        self.model.train()
        logits = self.model(x)
        loss = F.cross_entropy(logits, y)
        acc = (logits.argmax(1) == y).float().mean().item()
        return StepOutput(loss=loss, batch_size=len(y), metrics={"train_acc": acc})

    @torch.no_grad()
    def _predict(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for uint8 ``images``, in batches of data.test_batch_size."""
        self.model.eval()
        bs = self.cfg_data.test_batch_size
        return torch.cat([self.model(_to_input(images[i:i + bs])) for i in range(0, len(images), bs)])

    def test_inputs(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``limit`` (all: None) test images as the model takes them, and their labels."""
        return _to_input(self.test_images[:limit]), self.test_labels[:limit]

    def evaluate(self) -> dict[str, float]:
        logits = self._predict(self.test_images)
        self._last_predictions = logits.argmax(1)
        return {
            "test_acc": (self._last_predictions == self.test_labels).float().mean().item(),
            "test_loss": F.cross_entropy(logits, self.test_labels).item(),
        }

    # The trainer steps the LR scheduler after every SGD step, not every epoch: a short run (profile=quick,
    # two epochs) then decays mid-epoch at the paper's fractions instead of only at epoch boundaries.
    lr_interval = "step"

    def steps_per_epoch(self) -> int:
        return -(-len(self.train_labels) // self.cfg_data.batch_size)

    def lr_factor(self, completed_steps: int, epochs: int) -> float:
        """LR multiplier for the SGD step after ``completed_steps``, from the fraction done of the steps of a run
        of ``epochs`` epochs (the trainer's, so a resumed run with more epochs follows the longer run's schedule).
        For 160 epochs the step schedule decays exactly after epochs 60, 100 and 140, as the paper.
        """
        t = self.cfg_task
        progress = completed_steps / (epochs * self.steps_per_epoch())
        if t.lr_schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        decays = sum(progress >= f - 1e-9 for f in t.lr_decay_at)
        return t.lr_decay_factor**decays

    def configure_optimizers(self, epochs: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        t = self.cfg_task
        # Scaled by the batch the steps actually see: data.batch_size=10**9 trains on every image at once, and
        # would otherwise scale the lr by millions.
        lr = t.lr * min(self.cfg_data.batch_size, len(self.train_labels)) / 128
        opt = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=t.momentum, weight_decay=t.weight_decay)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, partial(self.lr_factor, epochs=epochs))

    def save_figures(self, out_dir: Path) -> list[Path]:
        """A grid of the first 16 test images with predicted (true) labels, and the test confusion matrix."""
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        if self._last_predictions is None:
            self.evaluate()
        preds = self._last_predictions.cpu()
        labels = self.test_labels.cpu()
        return [self._plot_samples(out_dir / "test_predictions.png", preds, labels),
                self._plot_confusion(out_dir / "confusion_matrix.png", preds, labels)]

    def _plot_samples(self, path: Path, preds: torch.Tensor, labels: torch.Tensor) -> Path:
        k = min(16, len(labels))
        fig = Figure(figsize=(8, 8.6))
        for i in range(k):
            ax = fig.add_subplot(4, 4, i + 1)
            ax.imshow(self.test_images[i].cpu().numpy(), cmap="gray")
            ok = bool(preds[i] == labels[i])
            ax.set_title(f"{self.class_names[preds[i]]}\n({self.class_names[labels[i]]})",
                         fontsize=8, color="green" if ok else "red")
            ax.axis("off")
        fig.suptitle(f"{self.cfg_model.name}: prediction (true label)")
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        return path

    def _plot_confusion(self, path: Path, preds: torch.Tensor, labels: torch.Tensor) -> Path:
        n = len(self.class_names)
        cm = torch.bincount(labels * n + preds, minlength=n * n).reshape(n, n)
        fig = Figure(figsize=(7, 6))
        ax = fig.add_subplot()
        im = ax.imshow(cm.numpy(), cmap="Blues")
        fig.colorbar(im, ax=ax)
        for true, pred in zip(*torch.nonzero(cm, as_tuple=True)):  # the counts (none in empty cells)
            count = int(cm[true, pred])
            ax.text(int(pred), int(true), str(count), ha="center", va="center", fontsize=7,
                    color="white" if count > cm.max().item() / 2 else "black")
        ax.set_xticks(range(n), self.class_names, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(n), self.class_names, fontsize=7)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        acc = cm.diag().sum().item() / max(1, cm.sum().item())
        ax.set_title(f"{self.cfg_model.name} on {self.cfg_data.name} test: accuracy {acc:.2%}")
        fig.tight_layout()
        fig.savefig(path, dpi=80)
        return path


class EpochBatches:
    """One epoch's training batches in a fixed order with fixed crops; sized, so progress bars show a total."""

    def __init__(self, task: MnistTask, order: torch.Tensor, offsets: torch.Tensor | None) -> None:
        self.task, self.order, self.offsets = task, order, offsets
        self.batch_size = task.cfg_data.batch_size

    def __len__(self) -> int:
        return -(-len(self.order) // self.batch_size)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        t = self.task
        for start in range(0, len(self.order), self.batch_size):
            idx = self.order[start:start + self.batch_size].to(t.device)
            images = t.train_images[idx]
            if self.offsets is not None:
                images = crop(images, t.cfg_data.crop_padding, self.offsets[start:start + self.batch_size])
            yield _to_input(images), t.train_labels[idx]


def build(cfg: DictConfig, device: torch.device, solver: SolverSpec) -> MnistTask:
    return MnistTask(cfg, device, solver)
