"""Reading datasets from local files in their real on-disk formats (nothing is ever downloaded).

* ``digits``: scikit-learn's bundled 8x8 digits (the embedded default), seeded stratified split.
* ``cifar10:ROOT`` / ``cifar100:ROOT``: the standard "python version" pickles
  (``cifar-10-batches-py/data_batch_1..5, test_batch``; ``cifar-100-python/train, test``), read
  with an unpickler that only rebuilds numpy arrays and plain containers.
* ``fashion-mnist`` / ``fashion-mnist:ROOT``: Fashion-MNIST's four original idx files (gzipped or
  not), read with torchvision's MNIST idx reader; without ROOT, ``$REPSIM_FASHION_MNIST`` or the
  Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``).
* ``folder:ROOT``: an ImageFolder tree (``ROOT/[train|val|test]/CLASS/*.jpg``), e.g. Mini- or
  Tiny-ImageNet, decoded with PIL.

These are the un-augmented reference views used to compare and probe models; ``zoo.data`` adds
training augmentations on top of the same readers.
"""

from __future__ import annotations

import functools
import os
import pickle
import shutil
import subprocess
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

# (mean, std) per channel, the usual constants of each dataset.
NORMALIZATION = {
    "digits": ((0.5,), (0.5,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "folder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
_CIFAR = {
    "cifar10": ("cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)], ["test_batch"], b"labels"),
    "cifar100": ("cifar-100-python", ["train"], ["test"], b"fine_labels"),
}
# The archives' names on https://www.cs.toronto.edu/~kriz/cifar.html (python versions).
CIFAR_ARCHIVES = {"cifar10": "cifar-10-python.tar.gz", "cifar100": "cifar-100-python.tar.gz"}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset that is not on disk: the message says where to put it."""


def in_channels(kind: str) -> int:
    """Image channels of a dataset kind (1 for digits and Fashion-MNIST, 3 otherwise)."""
    return len(NORMALIZATION[kind][0])


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
        f"{CIFAR_ARCHIVES[name]}, extracted as is). Nothing is downloaded."
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


FASHION_MNIST_ENV = "REPSIM_FASHION_MNIST"
FASHION_MNIST_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_DEFAULT = Path("/usr/share/datasets/fashion-mnist")
_FASHION_FILES = {True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
                  False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}  # fmt: skip
_FASHION_HOWTO = (
    "get the four idx files (train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
    "t10k-labels-idx1-ubyte, gzipped or not) with `apt-get install dataset-fashion-mnist` on Debian/Ubuntu, "
    "or from the Fashion-MNIST repository (github.com/zalandoresearch/fashion-mnist, data/fashion), and pass "
    f"fashion-mnist:ROOT or set ${FASHION_MNIST_ENV}. Nothing is downloaded."
)


def _debian_package_folder() -> Path | None:
    """The folder holding the idx files of the installed Debian package, from ``dpkg -L`` (None if absent)."""
    if shutil.which("dpkg") is None:
        return None
    try:
        listing = subprocess.run(
            ["dpkg", "-L", FASHION_MNIST_PACKAGE], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    for line in listing.stdout.splitlines():
        if line.endswith(_FASHION_FILES[True][0] + ".gz") or line.endswith(_FASHION_FILES[True][0]):
            return Path(line).parent
    return None


def _idx_file(folder: Path, name: str) -> Path | None:
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def fashion_mnist_root(root=None) -> Path:
    """The folder with Fashion-MNIST's idx files: ``root`` (or its ``FashionMNIST/raw`` subfolder, torchvision's
    layout), else ``$REPSIM_FASHION_MNIST``, else the Debian package's folder (the known path, then ``dpkg -L``)."""
    if root is not None:
        candidates, where = [Path(root).expanduser()], f"under {root}"
    elif os.environ.get(FASHION_MNIST_ENV):
        candidates, where = [Path(os.environ[FASHION_MNIST_ENV]).expanduser()], f"in ${FASHION_MNIST_ENV}"
    else:
        candidates = [FASHION_MNIST_DEFAULT] + [p for p in [_debian_package_folder()] if p is not None]
        where = f"in {FASHION_MNIST_DEFAULT} (the {FASHION_MNIST_PACKAGE} package is not installed)"
    for base in candidates:
        for folder in (base, base / "FashionMNIST" / "raw"):
            if all(_idx_file(folder, name) for names in _FASHION_FILES.values() for name in names):
                return folder
    raise DatasetNotFoundError(f"Fashion-MNIST not found {where}: {_FASHION_HOWTO}")


def _read_idx(path: Path, reader) -> torch.Tensor:
    """An idx file through torchvision's reader; a gzipped one is decompressed into a temporary folder first
    (torchvision's readers take plain files only)."""
    if path.suffix != ".gz":
        return reader(str(path))
    from torchvision.datasets.utils import extract_archive

    with tempfile.TemporaryDirectory(prefix="repsim-idx-") as tmp:
        return reader(extract_archive(str(path), tmp))  # a .gz lands in tmp under its name without .gz


def read_fashion_mnist(root=None, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images (N, 28, 28) uint8 and labels (N,) int64 from the idx files (see
    :func:`fashion_mnist_root` for where they are looked for)."""
    images, labels = _read_fashion_cached(str(fashion_mnist_root(root)), train)
    return images.copy(), labels.copy()  # the cache stays pristine whatever the caller does


@functools.lru_cache(maxsize=2)
def _read_fashion_cached(folder: str, train: bool) -> tuple[np.ndarray, np.ndarray]:
    from torchvision.datasets.mnist import read_image_file, read_label_file

    folder = Path(folder)
    images_name, labels_name = _FASHION_FILES[train]
    try:
        images = _read_idx(_idx_file(folder, images_name), read_image_file)
        labels = _read_idx(_idx_file(folder, labels_name), read_label_file)
    except (AssertionError, ValueError, RuntimeError, OSError, EOFError) as err:  # torchvision asserts on bad headers
        raise ValueError(f"{folder} holds a damaged or non-idx Fashion-MNIST file: {err!r}") from None
    if images.ndim != 3 or len(images) != len(labels):
        raise ValueError(f"{folder}: {tuple(images.shape)} images but {len(labels)} labels")
    return images.numpy(), labels.numpy().astype(np.int64)


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
    """'digits' | 'fashion-mnist[:ROOT]' | 'cifar10:ROOT' | 'cifar100:ROOT' | 'folder:ROOT' -> (kind, root)."""
    kind, _, root = spec.partition(":")
    if kind not in NORMALIZATION:
        raise ValueError(
            f"unknown dataset {spec!r}: use digits, fashion-mnist[:ROOT], cifar10:ROOT, cifar100:ROOT or folder:ROOT"
        )
    if kind not in ("digits", "fashion-mnist") and not root:
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
    images, labels = read_arrays(kind, root, train, seed)
    return ArrayImages(images, labels, eval_transform(kind, image_size))


def read_arrays(kind: str, root: str | None, train: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8, labels int64) of one split of an in-memory dataset kind (digits, Fashion-MNIST, CIFAR)."""
    if kind == "digits":
        (tr_x, tr_y), (te_x, te_y) = digits_split(seed)
        return (tr_x, tr_y) if train else (te_x, te_y)
    if kind == "fashion-mnist":
        return read_fashion_mnist(root, train)
    return read_cifar(root, kind, train)


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
