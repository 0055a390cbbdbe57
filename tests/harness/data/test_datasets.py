"""Tests of harness.data: in-memory decoding, ImageFolder roots, batched augmentation."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from harness.data import (
    BatchAugment,
    ImageTensorDataset,
    channel_stats,
    clear_cache,
    decode_dataset,
    load_image_dataset,
    subset,
)
from PIL import Image


def _make_folder(root: Path, sizes: dict[str, tuple[int, int]] | None = None) -> None:
    """root/{train,test}/{cat,dog}/k.png with a class-dependent colour."""
    rng = np.random.default_rng(0)
    for split, count in (("train", 3), ("test", 2)):
        for label, name in enumerate(("cat", "dog")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(count):
                h, w = (sizes or {}).get(f"{split}/{name}/{k}", (6, 5))
                pixels = rng.integers(0, 50, (h, w, 3), dtype=np.uint8) + 100 * label
                Image.fromarray(pixels).save(folder / f"{k}.png")


def test_image_folder_is_decoded_into_uint8_tensors(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    clear_cache()
    train, test, info = load_image_dataset("imagefolder", tmp_path)
    assert train.images.shape == (6, 3, 6, 5) and train.images.dtype == torch.uint8
    assert test.images.shape == (4, 3, 6, 5)
    assert train.classes == ["cat", "dog"] and train.targets.tolist() == [0, 0, 0, 1, 1, 1]
    assert info.num_classes == 2 and info.in_channels == 3 and info.image_size == (6, 5)
    # the pixels are the files' pixels
    first = np.array(Image.open(tmp_path / "train" / "cat" / "0.png"))
    assert torch.equal(train.images[0], torch.from_numpy(first).permute(2, 0, 1))
    assert info.mean[0] < 0.5 < info.mean[0] + 0.5  # cats dark, dogs bright
    image, label = train[4]
    assert image.shape == (3, 6, 5) and int(label) == 1


def test_decoded_images_are_cached_per_process(tmp_path: Path) -> None:
    _make_folder(tmp_path)
    clear_cache()
    first, _, _ = load_image_dataset("imagefolder", tmp_path)
    for path in tmp_path.rglob("*.png"):
        path.unlink()  # a cached dataset never reads the files again
    again, _, _ = load_image_dataset("imagefolder", tmp_path)
    assert again.images is first.images
    clear_cache()
    with pytest.raises(Exception):  # noqa: B017 - the files are gone once the cache is cleared
        load_image_dataset("imagefolder", tmp_path)


def test_mixed_sizes_need_an_image_size(tmp_path: Path) -> None:
    _make_folder(tmp_path, {"train/cat/1": (9, 9)})
    clear_cache()
    with pytest.raises(ValueError, match="image_size"):
        load_image_dataset("imagefolder", tmp_path)
    train, test, info = load_image_dataset("imagefolder", tmp_path, image_size=[4, 4])
    assert train.images.shape == (6, 3, 4, 4) and test.images.shape == (4, 3, 4, 4)
    assert info.image_size == (4, 4)


def test_cifar_names_accept_an_image_folder_root(tmp_path: Path) -> None:
    _make_folder(tmp_path / "cifar10-jpeg")
    clear_cache()
    train, _, info = load_image_dataset("cifar10", tmp_path)
    assert info.source.endswith("cifar10-jpeg") and len(train) == 6
    train2, _, _ = load_image_dataset("cifar100", tmp_path / "cifar10-jpeg")
    assert len(train2) == 6


def test_digits_are_embedded_single_channel_images() -> None:
    train, test, info = load_image_dataset("digits", split_seed=1, test_fraction=0.5)
    assert info.in_channels == 1 and info.image_size == (8, 8) and info.num_classes == 10
    assert len(train) + len(test) == 1797 and int(train.images.max()) == 255
    assert info.source == "sklearn"


def test_missing_or_unknown_data_raises(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="unknown dataset"):
        load_image_dataset("imagenet", tmp_path)
    with pytest.raises(ValueError, match="needs a data root"):
        load_image_dataset("cifar10")
    with pytest.raises(ValueError, match="not a directory"):
        load_image_dataset("mnist", tmp_path / "nope")
    with pytest.raises(ValueError, match="nothing is downloaded"):
        load_image_dataset("mnist", tmp_path)
    with pytest.raises(ValueError, match="does not exist"):
        load_image_dataset("imagefolder", tmp_path)


def test_torchvision_style_array_data_takes_the_fast_path() -> None:
    class Fake:
        data = np.arange(2 * 4 * 4 * 3, dtype=np.uint8).reshape(2, 4, 4, 3)
        targets = (1, 0)
        classes = ("a", "b")
        transform = None

        def __len__(self) -> int:
            raise AssertionError("the fast path must not iterate")

    out = decode_dataset(Fake())
    assert out.images.shape == (2, 3, 4, 4) and out.targets.tolist() == [1, 0]
    assert torch.equal(out.images[1], torch.from_numpy(Fake.data[1]).permute(2, 0, 1))


def test_generic_datasets_of_float_tensors_are_converted() -> None:
    samples = [(torch.full((1, 3, 3), 0.5), 0), (torch.ones(1, 3, 3), 1)]
    out = decode_dataset(samples, num_threads=1)
    assert out.images.dtype == torch.uint8 and out.images[1].unique().tolist() == [255]


def test_image_tensor_dataset_validates() -> None:
    with pytest.raises(ValueError, match="uint8"):
        ImageTensorDataset(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="targets must have shape"):
        ImageTensorDataset(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0]))
    with pytest.raises(ValueError, match="labels must lie"):
        ImageTensorDataset(torch.zeros(1, 1, 2, 2, dtype=torch.uint8), torch.tensor([2]), ["a"])


def test_subset_is_stratified_and_seeded() -> None:
    targets = torch.tensor([0] * 80 + [1] * 20)
    data = ImageTensorDataset(torch.arange(100, dtype=torch.uint8).view(100, 1, 1, 1), targets)
    small = subset(data, 10, seed=3)
    assert sorted(small.targets.tolist()) == [0] * 8 + [1] * 2
    assert torch.equal(small.images, subset(data, 10, seed=3).images)
    assert subset(data, None) is data and subset(data, 1000) is data


def test_channel_stats_match_numpy() -> None:
    images = torch.randint(0, 256, (7, 2, 3, 3), dtype=torch.uint8)
    mean, std = channel_stats(images, chunk=3)
    ref = images.double().numpy() / 255.0
    np.testing.assert_allclose(mean, ref.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(std, ref.std(axis=(0, 2, 3)), rtol=1e-6)


def _reference_crops(image: torch.Tensor, padding: int) -> list[torch.Tensor]:
    """Every (crop, flip) RandomCrop(padding) + RandomHorizontalFlip can produce."""
    h, w = image.shape[1:]
    padded = torch.nn.functional.pad(image, (padding,) * 4)
    out = []
    for dy in range(2 * padding + 1):
        for dx in range(2 * padding + 1):
            crop = padded[:, dy : dy + h, dx : dx + w]
            out += [crop, crop.flip(-1)]
    return out


def test_batch_augment_produces_only_valid_crops_and_flips() -> None:
    torch.manual_seed(0)
    images = torch.randint(1, 256, (64, 3, 6, 6), dtype=torch.uint8)
    out = BatchAugment(padding=2, flip=True)(images)
    assert out.shape == images.shape and out.dtype == torch.uint8
    seen_shift = seen_flip = False
    for x, y in zip(images, out, strict=True):
        candidates = _reference_crops(x, 2)
        index = next(i for i, c in enumerate(candidates) if torch.equal(c, y))
        seen_flip |= index % 2 == 1
        seen_shift |= index // 2 != 12  # 12 = (dy, dx) = (2, 2): no shift
    assert seen_flip and seen_shift


def test_batch_augment_is_reproducible_and_device_dtype_agnostic() -> None:
    images = torch.rand(8, 1, 5, 5)
    augment = BatchAugment(padding=1)
    torch.manual_seed(7)
    a = augment(images)
    torch.manual_seed(7)
    b = augment(images)
    assert torch.equal(a, b) and a.dtype == torch.float32
    assert torch.equal(BatchAugment(padding=0, flip=False)(images), images)
    flipped = BatchAugment(padding=0, flip=True)(images)
    for x, y in zip(images, flipped, strict=True):
        assert torch.equal(y, x) or torch.equal(y, x.flip(-1))
    with pytest.raises(ValueError, match="padding"):
        BatchAugment(padding=-1)
    with pytest.raises(ValueError, match="images must be"):
        augment(torch.zeros(3, 4, 4))


def test_split_holdout_is_disjoint_stratified_and_seeded() -> None:
    from harness.data import split_holdout

    images = torch.arange(60, dtype=torch.uint8).view(60, 1, 1, 1)
    data = ImageTensorDataset(images, torch.arange(60) % 3)
    rest, held = split_holdout(data, 12, seed=5)
    assert len(rest) == 48 and len(held) == 12
    ids_rest, ids_held = set(rest.images.flatten().tolist()), set(held.images.flatten().tolist())
    assert not ids_rest & ids_held and len(ids_rest | ids_held) == 60  # a partition
    assert torch.bincount(held.targets).tolist() == [4, 4, 4]
    again = split_holdout(data, 12, seed=5)[1]
    assert torch.equal(again.images, held.images)
    assert not torch.equal(split_holdout(data, 12, seed=6)[1].images, held.images)
    with pytest.raises(ValueError, match="holdout"):
        split_holdout(data, 60)


def test_cifar100_archive_is_extracted_once_into_the_cache(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tarfile

    from harness.data import clear_cache, extraction_cache_dir, load_image_dataset

    tree = tmp_path / "tree" / "cifar100-jpeg"
    for split, count in (("train", 3), ("test", 2)):
        for name, value in (("apple", 10), ("worm", 200)):
            folder = tree / split / name
            folder.mkdir(parents=True)
            for i in range(count):
                Image.new("RGB", (4, 4), (value, value, value)).save(folder / f"{i:04d}.png")
    root = tmp_path / "root"
    root.mkdir()
    with tarfile.open(root / "cifar100-jpeg.tar.gz", "w:gz") as tar:
        tar.add(tree, arcname="cifar100-jpeg")
    monkeypatch.setenv("HUG_PLUGINS_CACHE", str(tmp_path / "cache"))
    clear_cache()
    train, test, info = load_image_dataset("cifar100", root, cache=False)
    assert (len(train), len(test), info.num_classes) == (6, 4, 2)
    assert info.source == str(extraction_cache_dir() / "cifar100-jpeg")
    assert train.targets.tolist() == [0, 0, 0, 1, 1, 1]  # alphabetical = official label order
    marker = extraction_cache_dir() / "cifar100-jpeg" / "marker"
    marker.write_text("kept")
    assert len(load_image_dataset("cifar100", root, cache=False)[0]) == 6
    assert marker.is_file()  # the second load read the extracted tree, no new extraction
    assert not [p for p in extraction_cache_dir().iterdir() if p.name != "cifar100-jpeg"]
