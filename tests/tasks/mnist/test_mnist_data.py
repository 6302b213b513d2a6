"""IDX parsing and locating MNIST-style files in both layouts, without writing to the source folder."""
from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from mnist_testdata import N_TEST, N_TRAIN, tiny_split, write_dataset, write_idx

from neuralode.data import mnist as mnist_data
from neuralode.data.idx import IDXError, read_idx
from neuralode.data.mnist import DataError, load_split


@pytest.mark.parametrize("name", ["a.idx", "a.idx.gz"])
def test_read_idx_roundtrip(tmp_path: Path, name: str) -> None:
    images, _ = tiny_split(5, 0)
    out = read_idx(write_idx(tmp_path / name, images))
    assert out.dtype == torch.uint8 and out.shape == (5, 28, 28)
    assert torch.equal(out, torch.from_numpy(images))


def test_read_idx_rejects_bad_magic_and_truncation(tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x02\x03\x04rest")
    with pytest.raises(IDXError, match="bad magic"):
        read_idx(bad)
    good = write_idx(tmp_path / "good", np.zeros((3, 4, 4), np.uint8))
    cut = tmp_path / "cut"
    cut.write_bytes(good.read_bytes()[:-5])
    with pytest.raises(IDXError, match="header promises"):
        read_idx(cut)
    broken_gz = tmp_path / "broken.gz"
    broken_gz.write_bytes(b"not gzip at all")
    with pytest.raises(IDXError, match="cannot read"):
        read_idx(broken_gz)


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


def test_direct_layout_is_read_in_place(idx_root: Path, tmp_path: Path) -> None:
    before = _snapshot(idx_root)
    os.chmod(idx_root, 0o555)  # also read-only by mode (root ignores modes, hence the snapshot check)
    try:
        train = load_split("fashion_mnist", True, idx_root, tmp_path / "cache", download=True)
        test = load_split("fashion_mnist", False, idx_root, tmp_path / "cache", download=True)
    finally:
        os.chmod(idx_root, 0o755)
    assert train.images.shape == (N_TRAIN, 28, 28) and train.labels.dtype == torch.int64
    assert test.images.shape == (N_TEST, 28, 28)
    assert torch.equal(train.labels, torch.from_numpy(tiny_split(N_TRAIN, 0)[1]).long())
    assert train.source == idx_root
    assert _snapshot(idx_root) == before, "loading must not write into the source folder"
    assert not (tmp_path / "cache").exists(), "files found in root must not be copied or downloaded"


@pytest.mark.parametrize("name,folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_torchvision_layout_uncompressed(tmp_path: Path, name: str, folder: str) -> None:
    write_dataset(tmp_path / "tv" / folder / "raw", gz=False)
    split = load_split(name, False, tmp_path / "tv", tmp_path / "cache", download=False)
    assert split.images.shape == (N_TEST, 28, 28)
    assert split.source == tmp_path / "tv" / folder / "raw"


def test_missing_files_offline_names_path_and_fix(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError) as err:
        load_split("mnist", True, empty, tmp_path / "cache", download=False)
    msg = str(err.value)
    assert "\n" not in msg
    assert str(empty) in msg and "data.root=" in msg and "data.download=true" in msg


def test_failed_download_is_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Offline:
        def __init__(self, root: str, train: bool, download: bool) -> None:
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried https://a/, got:\n"
                               "<urlopen error [Errno -2] Name or service not known>\n")

    monkeypatch.setattr(mnist_data, "torchvision_dataset", lambda name: Offline)
    with pytest.raises(DataError, match=r"could not download mnist into .*data\.root=") as err:
        load_split("mnist", True, None, tmp_path / "cache", download=True)
    assert "\n" not in str(err.value) and "Name or service not known" in str(err.value)


def test_failed_download_leaves_no_folders_it_created(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    class Offline:  # as torchvision does: makes <root>/MNIST/raw, then fails to fetch the first file
        def __init__(self, root: str, train: bool, download: bool) -> None:
            (Path(root) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: <urlopen error>")

    monkeypatch.setattr(mnist_data, "torchvision_dataset", lambda name: Offline)
    existing = tmp_path / "existing"
    (existing / "MNIST").mkdir(parents=True)
    for root in (tmp_path / "new" / "data", existing):
        with pytest.raises(DataError, match="could not download mnist"):
            load_split("mnist", True, root, tmp_path / "cache", download=True)
    assert not (tmp_path / "new").exists()  # data.root=/nonexistent leaves no /nonexistent behind
    assert (existing / "MNIST").is_dir() and not (existing / "MNIST" / "raw").exists()  # what was there stays


def test_download_goes_to_cache_when_root_not_writable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    targets: list[str] = []

    class MNIST:  # stands in for torchvision.datasets.MNIST: writes the files where it would
        def __init__(self, root: str, train: bool, download: bool) -> None:
            targets.append(root)
            write_dataset(Path(root) / "MNIST" / "raw")

    source = tmp_path / "readonly"
    source.mkdir()
    monkeypatch.setattr(mnist_data, "torchvision_dataset", lambda name: MNIST)
    monkeypatch.setattr(mnist_data, "_writable", lambda folder: folder != source)
    split = load_split("mnist", True, source, tmp_path / "cache", download=True)
    assert set(targets) == {str(tmp_path / "cache")}
    assert list(source.iterdir()) == []
    assert split.source == tmp_path / "cache" / "MNIST" / "raw"


def test_mismatched_files_are_reported(tmp_path: Path) -> None:
    folder = write_dataset(tmp_path / "idx")
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(3, np.uint8))
    with pytest.raises(DataError, match="expected N >= 1 uint8 images"):
        load_split("mnist", False, folder, tmp_path / "cache", download=False)


def test_dotted_idx_names_are_found(tmp_path: Path) -> None:
    """Some mirrors name the files train-images.idx3-ubyte (a dot before "idx")."""
    folder = write_dataset(tmp_path / "plain", gz=False)
    for f in list(folder.iterdir()):
        f.rename(f.with_name(f.name.replace("-idx", ".idx")))
    split = load_split("fashion_mnist", True, folder, tmp_path / "cache", download=False)
    assert split.images.shape == (N_TRAIN, 28, 28) and split.source == folder


def test_digits_are_mnist_shaped_with_a_fixed_stratified_split(tmp_path: Path) -> None:
    train = load_split("digits", True, None, tmp_path / "cache", download=False)
    test = load_split("digits", False, None, tmp_path / "cache", download=False)
    assert train.images.shape == (1437, 28, 28) and test.images.shape == (360, 28, 28)
    assert train.images.dtype == torch.uint8 and int(train.images.max()) == 255
    assert test.labels.bincount().tolist() == [36] * 10
    # MNIST's layout: the digit inside a 20x20 box, a blank 4-pixel border around it.
    assert int(train.images[:, :4].max()) == 0 and int(train.images[:, :, -4:].max()) == 0
    again = load_split("digits", False, None, tmp_path / "cache", download=False)
    assert torch.equal(again.images, test.images) and torch.equal(again.labels, test.labels)
    assert mnist_data.class_names("digits") == [str(d) for d in range(10)]
    assert not (tmp_path / "cache").exists()


def test_read_idx_reads_only_what_its_header_promises(tmp_path: Path) -> None:
    header = write_idx(tmp_path / "one", np.zeros((1, 28, 28), np.uint8)).read_bytes()
    bomb = tmp_path / "bomb.gz"
    with gzip.open(bomb, "wb") as f:  # a small file that inflates to 64 MB past what the header promises
        f.write(header)
        for _ in range(64):
            f.write(bytes(2**20))
    assert bomb.stat().st_size < 2**20
    with pytest.raises(IDXError, match=r"bomb.gz holds more data bytes, its header promises 784"):
        read_idx(bomb)
    damaged = tmp_path / "damaged.gz"
    damaged.write_bytes(b"\x1f\x8b\x08\x00" + bytes(6) + np.random.default_rng(0).bytes(4096))  # gzip header, random data
    with pytest.raises(IDXError, match=f"cannot read IDX file {damaged}"):
        read_idx(damaged)


@pytest.mark.parametrize("images", [np.zeros((0, 28, 28), np.uint8), np.zeros((3, 10, 10), np.uint8)],
                         ids=["no images", "10x10"])
def test_images_the_models_cannot_take_are_refused(tmp_path: Path, images: np.ndarray) -> None:
    folder = write_dataset(tmp_path / "idx")
    write_idx(folder / "t10k-images-idx3-ubyte.gz", images)
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.zeros(len(images), np.uint8))
    with pytest.raises(DataError, match=r"expected N >= 1 uint8 images of 28x28 pixels"):
        load_split("mnist", False, folder, tmp_path / "cache", download=False)


def test_a_root_that_is_a_file_or_a_symlink_loop_is_named(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    with pytest.raises(DataError, match=f"data.root={a_file} is not a folder"):
        load_split("mnist", False, a_file, tmp_path / "cache", download=True)
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    with pytest.raises(DataError, match=f"data.root={loop} cannot be resolved"):
        load_split("mnist", False, loop, tmp_path / "cache", download=False)


def test_class_names_are_torchvisions_without_importing_it() -> None:
    """The names are kept here so that a run reading IDX files never imports torchvision (seconds of start-up)."""
    import torchvision

    for name, folder in mnist_data.DATASETS.items():
        assert mnist_data.class_names(name) == list(getattr(torchvision.datasets, folder).classes)
