"""Reading datasets from local files in their real on-disk formats (nothing is ever downloaded).

* ``digits``: scikit-learn's bundled 8x8 digits (the embedded default), seeded stratified split.
* ``cifar10:ROOT`` / ``cifar100:ROOT``: the standard "python version" pickles
  (``cifar-10-batches-py/data_batch_1..5, test_batch``; ``cifar-100-python/train, test``), read
  with an unpickler that only rebuilds numpy arrays and plain containers.
* ``folder:ROOT``: an ImageFolder tree (``ROOT/[train|val|test]/CLASS/*.jpg``), e.g. Mini- or
  Tiny-ImageNet, decoded with PIL.

These are the un-augmented reference views used to compare and probe models; ``zoo.data`` adds
training augmentations on top of the same readers.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

# (mean, std) per channel, the usual constants of each dataset.
NORMALIZATION = {
    "digits": ((0.5,), (0.5,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "folder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that is not on disk: the message says where to put it."""


def digits_split(seed: int = 0, test_fraction: float = 0.25):
    """scikit-learn's digits as uint8 images (N, 8, 8) in 0..16 and labels, split stratified with ``seed``.

    Returns ((train_images, train_labels), (test_images, test_labels)) as numpy arrays.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images, labels = data.images.astype(np.uint8), data.target.astype(np.int64)
    tr_x, te_x, tr_y, te_y = train_test_split(
        images, labels, test_size=test_fraction, random_state=seed, stratify=labels
    )
    return (tr_x, tr_y), (te_x, te_y)


class _ArraysOnly(pickle.Unpickler):
    """Unpickler for dataset files: numpy arrays and builtin containers, nothing executable."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("numpy.core.multiarray", "scalar"),
            ("numpy._core.multiarray", "scalar"),
            ("numpy.core.numeric", "_frombuffer"),
            ("numpy._core.numeric", "_frombuffer"),
            ("_codecs", "encode"),
        }
    )

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a dataset file")


def _read_pickle(path: Path) -> dict:
    with open(path, "rb") as f:
        try:
            return _ArraysOnly(f, encoding="bytes").load()
        except pickle.UnpicklingError as err:
            raise ValueError(f"{path} is not a plain CIFAR batch file: {err}") from None


def cifar_root(root, name: str) -> Path:
    folder = _CIFAR[name][0]
    root = Path(root).expanduser()
    for candidate in (root / folder, root):
        if (candidate / _CIFAR[name][2][0]).exists():
            return candidate
    raise DatasetNotFoundError(
        f"{name} not found under {root}: put the extracted python version there so that "
        f"{root / folder / _CIFAR[name][2][0]} exists (the archive from the CIFAR page, "
        f"{folder.replace('-py', '').replace('-python', '')}-python.tar.gz, extracted as is). Nothing is downloaded."
    )


def read_cifar(root, name: str = "cifar10", train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10/100 images (N, 32, 32, 3) uint8 and labels (N,) int64 from the python pickles."""
    if name not in _CIFAR:
        raise ValueError(f"name must be 'cifar10' or 'cifar100', got {name!r}")
    base = cifar_root(root, name)
    _, train_files, test_files, label_key = _CIFAR[name]
    images, labels = [], []
    for fname in train_files if train else test_files:
        path = base / fname
        if not path.exists():
            raise DatasetNotFoundError(f"{path} is missing; the {name} folder looks incomplete")
        batch = _read_pickle(path)
        images.append(np.asarray(batch[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(np.asarray(batch[label_key], dtype=np.int64))
    return np.concatenate(images), np.concatenate(labels)


def folder_split_root(root, train: bool) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DatasetNotFoundError(
            f"image folder {root} not found: expected ROOT/train/CLASS/*.jpg (or ROOT/CLASS/*.jpg)"
        )
    names = ("train",) if train else ("val", "test", "valid")
    for name in names:
        if (root / name).is_dir():
            return root / name
    return root


class ArrayImages(Dataset):
    """Images held in memory as a uint8 array (N, H, W[, C]) with labels; ``transform`` gets a
    uint8 tensor image (C, H, W) (torchvision v2 accepts these) and returns the sample."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, transform=None) -> None:
        if len(images) != len(labels):
            raise ValueError(f"{len(images)} images but {len(labels)} labels")
        array = images[..., None] if images.ndim == 3 else images
        self.images = torch.from_numpy(np.ascontiguousarray(array.transpose(0, 3, 1, 2)))
        self.labels = torch.as_tensor(labels, dtype=torch.long)
        self.transform = transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i):
        img = self.images[i]
        return (self.transform(img) if self.transform else img), self.labels[i]


def parse_spec(spec: str) -> tuple[str, str | None]:
    """'digits' | 'cifar10:ROOT' | 'cifar100:ROOT' | 'folder:ROOT' -> (kind, root)."""
    kind, _, root = spec.partition(":")
    if kind not in NORMALIZATION:
        raise ValueError(f"unknown dataset {spec!r}: use digits, cifar10:ROOT, cifar100:ROOT or folder:ROOT")
    if kind != "digits" and not root:
        raise ValueError(f"{kind} needs a root folder: {kind}:/path/to/data")
    return kind, root or None


def _digits_to_unit(t: torch.Tensor) -> torch.Tensor:
    return t.float() / 16.0


def eval_transform(kind: str, image_size: int | None = None):
    """Deterministic preprocessing: (resize and centre crop), float in [0, 1], normalise."""
    from torchvision.transforms import v2

    mean, std = NORMALIZATION[kind]
    steps = []
    if image_size is not None:
        steps += [v2.Resize(image_size, antialias=True), v2.CenterCrop(image_size)]
    if kind == "digits":  # digits are 0..16, not 0..255
        steps += [v2.Lambda(_digits_to_unit)]
    else:
        steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True)]
    steps += [v2.Normalize(mean, std)]
    return v2.Compose(steps)


def reference_dataset(spec: str, train: bool = False, image_size: int | None = None, seed: int = 0) -> Dataset:
    """The un-augmented split of a dataset spec, as (image tensor, label) samples."""
    kind, root = parse_spec(spec)
    if kind == "folder":
        from torchvision.datasets import ImageFolder

        return ImageFolder(str(folder_split_root(root, train)), transform=eval_transform(kind, image_size or 64))
    if kind == "digits":
        (tr_x, tr_y), (te_x, te_y) = digits_split(seed)
        images, labels = (tr_x, tr_y) if train else (te_x, te_y)
    else:
        images, labels = read_cifar(root, kind, train)
    return ArrayImages(images, labels, eval_transform(kind, image_size))


def reference_loader(
    spec: str,
    train: bool = False,
    batch_size: int = 256,
    image_size: int | None = None,
    seed: int = 0,
    num_workers: int = 0,
) -> DataLoader:
    """An ordered (unshuffled) loader over :func:`reference_dataset`: both models see the same samples."""
    return DataLoader(
        reference_dataset(spec, train, image_size, seed), batch_size=batch_size, shuffle=False, num_workers=num_workers
    )
