"""Find, download (through torchvision) and load MNIST / Fashion-MNIST as in-memory tensors.

Where the files may be, in the order searched:

1. ``root`` itself holding the four IDX files (``train-images-idx3-ubyte[.gz]`` ...), as Debian's
   dataset packages lay them out (e.g. ``/usr/share/datasets/fashion-mnist``);
2. torchvision's layout ``root/<MNIST|FashionMNIST>/raw/``;
3. the same torchvision layout under ``cache_dir``, where downloads go when ``root`` is not writable.

Files are read in place with :func:`neuralode.data.idx.read_idx` (gzip included), so a read-only source
folder is never written to. Only a download writes, into ``root`` if it is writable, else ``cache_dir``.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from neuralode.data.digits import CLASSES as DIGIT_CLASSES
from neuralode.data.digits import load_digits_split
from neuralode.data.idx import IDXError, read_idx
from neuralode.errors import DataError

# Config name -> torchvision class name, also torchvision's folder name. torchvision itself is imported only to
# download: importing it costs seconds that a run reading IDX files would otherwise spend starting up.
DATASETS: dict[str, str] = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
# torchvision's ``classes`` of each data set (a test checks them against torchvision's).
CLASS_NAMES: dict[str, tuple[str, ...]] = {
    "mnist": ("0 - zero", "1 - one", "2 - two", "3 - three", "4 - four", "5 - five", "6 - six", "7 - seven",
              "8 - eight", "9 - nine"),
    "fashion_mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
}
IMAGE_DATASETS = (*DATASETS, "digits")  # digits: neuralode/data/digits.py, embedded in scikit-learn
IMAGE_SIZE = (28, 28)  # MNIST's and Fashion-MNIST's; the models' layers are sized for it
_STEMS = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass
class Split:
    """One split in memory: ``images`` uint8 (N, 28, 28), ``labels`` int64 (N,)."""

    images: torch.Tensor
    labels: torch.Tensor
    source: Path  # folder the files were read from


def _find_file(folder: Path, stem: str) -> Path | None:
    dotted = stem.replace("-idx", ".idx")  # some mirrors name them train-images.idx3-ubyte
    for name in (stem, stem + ".gz", dotted, dotted + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _find_split(folder: Path, train: bool) -> tuple[Path, Path] | None:
    found = [_find_file(folder, stem) for stem in _STEMS[train]]
    return (found[0], found[1]) if found[0] and found[1] else None


def _candidates(name: str, root: Path | None, cache_dir: Path) -> list[Path]:
    cls_dir = DATASETS[name]
    folders = [] if root is None else [root, root / cls_dir / "raw"]
    folders.append(cache_dir / cls_dir / "raw")
    return folders


def _writable(folder: Path) -> bool:
    # The nearest existing ancestor decides whether torchvision could create the folder.
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return os.access(folder, os.W_OK)


def torchvision_dataset(name: str) -> Any:
    """torchvision's class for ``name``, which downloads it."""
    import torchvision

    return getattr(torchvision.datasets, DATASETS[name])


def _download(name: str, root: Path | None, cache_dir: Path) -> None:
    target = root if root is not None and _writable(root) else cache_dir
    # The folders torchvision is about to make, deepest first: a failed download removes those it left empty,
    # so that a mistyped data.root leaves no folder tree behind.
    made = [d for d in (target / DATASETS[name] / "raw", target / DATASETS[name], target, *target.parents)
            if not d.exists()]
    try:
        dataset = torchvision_dataset(name)
        for train in (True, False):
            dataset(root=str(target), train=train, download=True)
    except Exception as e:  # torchvision raises RuntimeError/URLError/OSError depending on what failed
        for folder in made:
            with contextlib.suppress(OSError):  # one holding a partial file stays
                folder.rmdir()
        # torchvision lists every mirror it tried on its own line; the first and last say what went wrong.
        lines = [line.strip() for line in str(e).splitlines() if line.strip()] or [type(e).__name__]
        detail = lines[0] if len(lines) == 1 else f"{lines[0]} {lines[-1]}"
        raise DataError(
            f"could not download {name} into {target} ({detail}); "
            f"pass data.root=<folder with the four IDX files> or retry with internet access"
        ) from e


def class_names(name: str) -> list[str]:
    if name == "digits":
        return list(DIGIT_CLASSES)
    return list(CLASS_NAMES[name])


def load_split(name: str, train: bool, root: str | Path | None, cache_dir: str | Path,
               download: bool) -> Split:
    """Load one split of ``name`` (``mnist`` | ``fashion_mnist`` | ``digits``), downloading it if allowed and
    missing; ``digits`` ships inside scikit-learn and ignores the location arguments."""
    if name == "digits":
        return Split(*load_digits_split(train))
    if name not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; choose one of: {', '.join(IMAGE_DATASETS)}")
    root_p = None if root is None else _resolved(root, "data.root")
    cache_p = _resolved(cache_dir, "data.cache_dir")
    if root_p is not None and not root_p.is_dir() and (root_p.exists() or not download):
        raise DataError(f"data.root={root_p} is not a folder; pass data.root=<folder with the four IDX files>")
    folders = _candidates(name, root_p, cache_p)

    def locate() -> tuple[Path, Path] | None:
        return next((f for f in (_find_split(d, train) for d in folders) if f), None)

    files = locate()
    if files is None and download:
        _download(name, root_p, cache_p)
        files = locate()
    if files is None:
        where = ", ".join(str(d) for d in folders)
        stems = " and ".join(s + "[.gz]" for s in _STEMS[train])
        hint = ("pass data.root=<folder holding them>" if download
                else "pass data.root=<folder holding them> or data.download=true (needs internet)")
        raise DataError(f"{name}: no {stems} in {where}; {hint}")
    try:
        images, labels = read_idx(files[0]), read_idx(files[1])
    except IDXError as e:
        raise DataError(str(e)) from e
    if images.dim() != 3 or labels.dim() != 1 or images.shape[0] != labels.shape[0] or images.dtype != torch.uint8 \
            or images.shape[1:] != IMAGE_SIZE or images.shape[0] == 0:
        raise DataError(f"{files[0]} / {files[1]}: expected N >= 1 uint8 images of {IMAGE_SIZE[0]}x{IMAGE_SIZE[1]} "
                        f"pixels and N labels, got {tuple(images.shape)} {images.dtype} and {tuple(labels.shape)}")
    return Split(images=images, labels=labels.long(), source=files[0].parent)


def _resolved(folder: str | Path, key: str) -> Path:
    try:
        return Path(folder).expanduser().resolve()
    except (OSError, RuntimeError) as e:  # RuntimeError: a symlink loop (Python < 3.13)
        raise DataError(f"{key}={folder} cannot be resolved ({e}); pass a real folder") from None
