"""Dataset readers on small files written in the real on-disk formats."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from repsim.networks.data import DatasetNotFoundError, read_cifar, reference_dataset, reference_loader


def write_cifar(root, name="cifar10", n_per_file=6, seed=0):
    """A miniature CIFAR tree: same folder names, file names, pickle layout and byte order."""
    rng = np.random.default_rng(seed)
    folder, train_files, test_files, key = {
        "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
        "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
    }[name]
    base = root / folder
    base.mkdir(parents=True)
    classes = 10 if name == "cifar10" else 100
    written = {}
    for fname in train_files + test_files:
        data = rng.integers(0, 256, size=(n_per_file, 3072), dtype=np.uint8)
        labels = rng.integers(0, classes, n_per_file).tolist()
        batch = {b"data": data, key: labels, b"batch_label": b"x", b"filenames": [b"f.png"] * n_per_file}
        if name == "cifar100":
            batch[b"coarse_labels"] = [0] * n_per_file
        with open(base / fname, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        written[fname] = (data, labels)
    return written


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_cifar_reader(tmp_path, name):
    written = write_cifar(tmp_path, name)
    images, labels = read_cifar(tmp_path, name, train=True)
    n_train = 30 if name == "cifar10" else 6
    assert images.shape == (n_train, 32, 32, 3) and images.dtype == np.uint8 and labels.shape == (n_train,)
    first = next(iter(written.values()))[0][0]
    # row-major channel planes: R (1024), G, B
    assert np.array_equal(images[0, :, :, 0].ravel(), first[:1024])
    assert np.array_equal(images[0, :, :, 2].ravel(), first[2048:])
    test_x, _ = read_cifar(
        tmp_path / ("cifar-10-batches-py" if name == "cifar10" else "cifar-100-python"), name, train=False
    )
    assert test_x.shape[0] == 6
    ds = reference_dataset(f"{name}:{tmp_path}")
    x, y = ds[0]
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.long


def test_cifar_refuses_code_in_pickles(tmp_path):
    write_cifar(tmp_path)

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump({b"data": Evil(), b"labels": []}, f)
    with pytest.raises(ValueError, match=r"refusing to load builtins\.print"):
        read_cifar(tmp_path, train=False)


def test_missing_dataset_says_where_to_put_it(tmp_path):
    with pytest.raises(DatasetNotFoundError, match=r"cifar-10-batches-py.*Nothing is downloaded"):
        read_cifar(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="unknown dataset"):
        reference_dataset("mnist")
    with pytest.raises(DatasetNotFoundError, match="image folder"):
        reference_dataset(f"folder:{tmp_path / 'nope'}")


def write_image_folder(root, classes=("cat", "dog"), per_class=3, size=20, split="val"):
    rng = np.random.default_rng(0)
    for c in classes:
        d = root / split / c
        d.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)).save(d / f"{i}.JPEG")


def test_image_folder(tmp_path):
    write_image_folder(tmp_path)
    ds = reference_dataset(f"folder:{tmp_path}", image_size=16)
    assert len(ds) == 6 and ds.classes == ["cat", "dog"]
    x, y = ds[4]
    assert x.shape == (3, 16, 16) and y == 1


def test_digits_split_is_seeded_and_ordered():
    loader = reference_loader("digits", batch_size=100)
    x1, y1 = next(iter(loader))
    x2, y2 = next(iter(reference_loader("digits", batch_size=100)))
    assert torch.equal(x1, x2) and torch.equal(y1, y2) and x1.shape == (100, 1, 8, 8)
    assert len(loader.dataset) == 450 and len(reference_dataset("digits", train=True)) == 1347


@pytest.mark.parametrize(
    "name, archive, folder",
    [
        ("cifar10", "cifar-10-python.tar.gz", "cifar-10-batches-py"),
        ("cifar100", "cifar-100-python.tar.gz", "cifar-100-python"),
    ],
)
def test_cifar_not_found_names_the_real_archive(tmp_path, name, archive, folder):
    """Defect 5 of issue 32: the message named archives that do not exist (cifar-100thon-python.tar.gz)."""
    with pytest.raises(DatasetNotFoundError) as err:
        read_cifar(tmp_path / "nowhere", name)
    message = str(err.value)
    assert f" {archive}," in message and f"{folder}/" in message
    assert "thon-python" not in message and "batches-python" not in message
