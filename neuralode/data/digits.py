"""scikit-learn's 1,797 real handwritten digits, laid out like MNIST so the Table 1 models run unchanged.

The 8x8 images (UCI optical digits, 16 grey levels) ship inside the scikit-learn wheel, so this data set
works offline with nothing to download. Each image is upsampled bilinearly to 20x20 and centred in a 28x28
frame with a 4-pixel border, MNIST's own layout, as uint8 in [0, 255]. The train/test split is fixed
(seeded, stratified by class), so every run and every machine tests on the same 360 images.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from neuralode.errors import DataError

CLASSES = tuple(str(d) for d in range(10))
TEST_PER_CLASS = 36          # 360 test images, 1,437 train
_SPLIT_SEED = 20180619       # part of the data set's definition, not the run's seed
_DIGIT_SIZE, _BORDER = 20, 4


def _load_images() -> tuple[torch.Tensor, torch.Tensor, Path]:
    try:
        import sklearn
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise DataError("data=digits needs scikit-learn (pip install scikit-learn); it ships the digits") from e
    bunch = load_digits()
    pixels = torch.as_tensor(bunch.images, dtype=torch.float32)[:, None] / 16.0   # (N, 1, 8, 8) in [0, 1]
    big = F.interpolate(pixels, size=(_DIGIT_SIZE, _DIGIT_SIZE), mode="bilinear", align_corners=False)
    framed = F.pad(big, (_BORDER,) * 4)[:, 0]
    images = framed.clamp(0, 1).mul(255).round().to(torch.uint8)
    return images, torch.as_tensor(bunch.target, dtype=torch.long), Path(sklearn.__file__).parent / "datasets" / "data"


def load_digits_split(train: bool) -> tuple[torch.Tensor, torch.Tensor, Path]:
    """The fixed train or test split as (images, labels, source folder): the first TEST_PER_CLASS of a seeded
    shuffle of each class are test."""
    images, labels, source = _load_images()
    gen = torch.Generator().manual_seed(_SPLIT_SEED)
    order = torch.randperm(len(labels), generator=gen)
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    for digit in range(len(CLASSES)):
        is_test[order[labels[order] == digit][:TEST_PER_CLASS]] = True
    keep = torch.nonzero(~is_test if train else is_test).squeeze(1)
    return images[keep], labels[keep], source
