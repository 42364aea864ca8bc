"""Training data for the zoo: two augmented views per sample, class subsets, balanced batches.

Readers come from :mod:`repsim.networks.data` (digits, Fashion-MNIST idx files, CIFAR-10/100 python pickles,
ImageFolder roots); nothing is ever downloaded. Augmentations are torchvision transforms v2 presets:
SimCLR's for 32/64/224 px colour images, its crop and flip for grayscale Fashion-MNIST, and a mild
affine + noise one for 8x8 digits. The trainer draws each batch
once and feeds the same two views to every model (shared randomness).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, Sampler

from repsim.networks.data import NORMALIZATION, ArrayImages, eval_transform, parse_spec, read_arrays


def simclr_augment(size: int, kind: str = "cifar10", blur: bool | None = None):
    """SimCLR (Chen et al. 2020): RandomResizedCrop(size, 0.08-1), flip, ColorJitter(0.4,0.4,0.4,0.1) p=0.8,
    grayscale p=0.2, Gaussian blur at 224 px; then float and normalise."""
    from torchvision.transforms import v2

    mean, std = NORMALIZATION[kind]
    steps = [
        v2.ToImage(),
        v2.RandomResizedCrop(size, scale=(0.08, 1.0), antialias=True),
        v2.RandomHorizontalFlip(),
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
    ]
    if blur if blur is not None else size >= 128:
        steps.append(v2.RandomApply([v2.GaussianBlur(23, sigma=(0.1, 2.0))], p=0.5))
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def _digits_float(t: torch.Tensor) -> torch.Tensor:
    return t.float() / 16.0


def digits_augment(noise: float = 0.05, strength: float = 1.0):
    """Mild augmentation for 8x8 digits: small affine (+-10 deg, 1 px shift, 0.9-1.1 scale), pixel noise.

    ``strength`` scales every range (0 = no augmentation, 2 = +-20 deg, 2 px, 0.8-1.2, twice the noise).
    """
    from torchvision.transforms import v2

    if not 0 <= strength <= 4:
        raise ValueError(f"strength must be in [0, 4] (the shift reaches half the 8-px image at 4), got {strength}")
    mean, std = NORMALIZATION["digits"]
    return v2.Compose(
        [
            v2.RandomAffine(
                degrees=10 * strength,
                translate=(0.125 * strength, 0.125 * strength) if strength else None,
                scale=(1 - 0.1 * strength, 1 + 0.1 * strength) if strength else None,
            ),
            v2.Lambda(_digits_float),
            v2.GaussianNoise(mean=0.0, sigma=noise * strength, clip=True),
            v2.Normalize(mean, std),
        ]
    )


def randomise_labels(labels: np.ndarray, fraction: float, n_classes: int, seed: int = 0) -> np.ndarray:
    """A copy of ``labels`` with a ``fraction`` of the samples (chosen with ``seed``) given a uniformly
    random class (Zhang et al. 2017's label randomisation; a random class may hit the true one)."""
    if not 0 <= fraction <= 1:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng([seed, 1])
    out = np.array(labels, dtype=np.int64, copy=True)
    chosen = rng.permutation(len(out))[: round(fraction * len(out))]
    out[chosen] = rng.integers(0, n_classes, size=len(chosen))
    return out


def _shortcut_slots(labels: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Each label's shortcut block: (rows, cols, k), a k x k block, k = max(1, width // 16), at a
    class-specific place on the border (class c: top row at column k c, the bottom row for the classes
    that do not fit on top)."""
    k = max(1, width // 16)
    slots = width // k
    if labels.max() >= 2 * slots:
        raise ValueError(f"{int(labels.max()) + 1} classes do not fit the {2 * slots} border slots")
    rows = np.where(labels < slots, 0, height - k)
    return rows, k * (labels % slots), k


def _shortcut_carriers(n: int, probability: float, seed: int) -> np.ndarray:
    """Which of n samples carry the shortcut: each with ``probability``, fixed per sample by ``seed``."""
    if not 0 <= probability <= 1:
        raise ValueError(f"probability must be in [0, 1], got {probability}")
    return np.random.default_rng([seed, 2]).random(n) < probability


def add_shortcut(images: np.ndarray, labels: np.ndarray, probability: float, seed: int = 0) -> np.ndarray:
    """A copy of ``images`` (N, H, W[, C], uint8) where each sample carries, with ``probability``, a
    class-coded shortcut: a bright k x k block (k = max(1, W // 16)) at a class-specific place on the
    border (class c: top row at column k c, the bottom row for the classes that do not fit on top).
    The draw is fixed per sample by ``seed``; a shortcut-free copy is ``probability=0``.

    The mark is in the raw image, so it must survive the augmentation to be a shortcut: it does under
    small affine maps (the digits preset), not under random resized crops and flips, which cut it
    away or mirror it onto another class's slot; use :class:`StampedViews` there."""
    carry = _shortcut_carriers(len(images), probability, seed)
    out = np.array(images, copy=True)
    labels = np.asarray(labels)
    rows, cols, k = _shortcut_slots(labels, out.shape[1], out.shape[2])
    bright = 16 if out.max() <= 16 else 255  # digits are 0..16, other images 0..255
    for i in np.flatnonzero(carry):
        out[i, rows[i] : rows[i] + k, cols[i] : cols[i] + k] = bright
    return out


def grayscale_augment(size: int, kind: str = "fashion-mnist", strength: float = 1.0):
    """SimCLR's geometric augmentations for grayscale images: RandomResizedCrop(size, scale=(0.2**strength, 1)) and
    a horizontal flip; no colour jitter or grayscale step (one channel has neither hue nor saturation). At
    ``strength`` 1 the crop scale is (0.2, 1), as in the CIFAR recipe of SupCon (Khosla et al. 2020); 0 is no
    augmentation, 2 crops down to 4 % of the image. Then float and normalise."""
    from torchvision.transforms import v2

    if not 0 <= strength <= 4:
        raise ValueError(f"strength must be in [0, 4], got {strength}")
    mean, std = NORMALIZATION[kind]
    steps = [v2.ToImage()]
    if strength:
        steps += [v2.RandomResizedCrop(size, scale=(0.2**strength, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    else:
        steps += [v2.Resize(size, antialias=True), v2.CenterCrop(size)]
    steps += [v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean, std)]
    return v2.Compose(steps)


def augmentation(kind: str, image_size: int):
    if kind == "digits":
        return digits_augment()
    return grayscale_augment(image_size, kind) if kind == "fashion-mnist" else simclr_augment(image_size, kind)


class TwoViews(Dataset):
    """(view1, view2, label): two independent draws of ``transform`` on one sample."""

    def __init__(self, base: Dataset, transform) -> None:
        self.base, self.transform = base, transform

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        img, label = self.base[i]
        return self.transform(img), self.transform(img), label


class StampedViews(TwoViews):
    """(view1, view2, label) as :class:`TwoViews`, with the class-coded shortcut of :func:`add_shortcut`
    stamped onto each *augmented* view of the carrying samples (at the view's own border, at the
    brightest value of the normalised range), so no crop or flip removes or moves it: at
    ``probability`` 1 the mark alone identifies the class of every training view."""

    def __init__(self, base: Dataset, transform, labels, probability: float, kind: str, seed: int = 0) -> None:
        super().__init__(base, transform)
        self.labels = np.asarray(labels)
        self.carry = _shortcut_carriers(len(self.labels), probability, seed)
        mean, std = NORMALIZATION[kind]
        self.bright = torch.tensor([(1.0 - m) / s for m, s in zip(mean, std, strict=True)])[:, None, None]

    def _stamp(self, view: torch.Tensor, i: int) -> torch.Tensor:
        if not self.carry[i]:
            return view
        rows, cols, k = _shortcut_slots(self.labels[i : i + 1], view.shape[1], view.shape[2])
        view = view.clone()
        view[:, rows[0] : rows[0] + k, cols[0] : cols[0] + k] = self.bright.to(view.dtype)
        return view

    def __getitem__(self, i):
        v1, v2, label = super().__getitem__(i)
        return self._stamp(v1, i), self._stamp(v2, i), label


def class_subset(labels: np.ndarray, classes: Sequence[int] | int | None) -> tuple[np.ndarray, dict[int, int]]:
    """Indices of the samples of ``classes`` (a list, or the first C classes) and the relabelling to 0..C'-1."""
    present = np.unique(labels)
    if classes is None:
        chosen = present
    elif isinstance(classes, int):
        if not 2 <= classes <= len(present):
            raise ValueError(f"classes must be between 2 and {len(present)}, got {classes}")
        chosen = present[:classes]
    else:
        chosen = np.asarray(sorted(set(classes)))
        unknown = sorted(set(chosen.tolist()) - set(present.tolist()))
        if unknown or len(chosen) < 2:
            raise ValueError(
                f"classes {unknown} are not in the dataset (it has {present.tolist()})"
                if unknown
                else "pick at least two classes"
            )
    mapping = {int(c): i for i, c in enumerate(chosen)}
    return np.flatnonzero(np.isin(labels, chosen)), mapping


def load_split(
    spec: str, train: bool, classes=None, seed: int = 0, image_size: int | None = None, augment: bool = False
) -> tuple[Dataset, int]:
    """A dataset of one split (un-augmented, or raw images for augmentation) and its number of classes."""
    kind, root = parse_spec(spec)
    if kind == "folder":
        from torchvision.datasets import ImageFolder

        from repsim.networks.data import folder_split_root

        base = ImageFolder(str(folder_split_root(root, train)))
        labels = np.asarray(base.targets)
        index, mapping = class_subset(labels, classes)
        base.samples = [(base.samples[i][0], mapping[int(labels[i])]) for i in index]
        base.targets = [t for _, t in base.samples]
        base.transform = None if augment else eval_transform(kind, image_size or 64)
        return base, len(mapping)
    images, labels = read_arrays(kind, root, train, seed)
    index, mapping = class_subset(labels, classes)
    relabelled = np.asarray([mapping[int(c)] for c in labels[index]], dtype=np.int64)
    transform = None if augment else eval_transform(kind, image_size)
    return ArrayImages(images[index], relabelled, transform), len(mapping)


class LabelledSubset(torch.utils.data.Subset):
    """A :class:`~torch.utils.data.Subset` that keeps its samples' labels as ``labels``."""

    def __init__(self, dataset: Dataset, indices: Sequence[int]) -> None:
        super().__init__(dataset, list(indices))
        self.labels = dataset_labels(dataset)[np.asarray(self.indices, dtype=np.int64)]


def stratified_indices(labels: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """``n`` sample indices with the class proportions of ``labels`` (scikit-learn's stratified split, seeded),
    sorted; all of them when ``n >= len(labels)``."""
    from sklearn.model_selection import train_test_split

    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    if n < len(np.unique(labels)):
        raise ValueError(f"train_samples {n} is smaller than the number of classes {len(np.unique(labels))}")
    keep, _ = train_test_split(np.arange(len(labels)), train_size=n, random_state=seed, stratify=labels)
    return np.sort(keep)


def dataset_labels(ds: Dataset) -> np.ndarray:
    if hasattr(ds, "labels"):
        return np.asarray(ds.labels)
    return np.asarray(ds.targets)


class BalancedBatchSampler(Sampler[list[int]]):
    """Batches with the same number of samples from every class (B / C each), seeded per epoch.

    Each epoch shuffles every class and deals out ``batch_size // n_classes`` per class per
    batch until the smallest class runs out; the theory of arXiv 2510.08852 assumes balance.
    """

    def __init__(self, labels: Sequence[int], batch_size: int, seed: int = 0) -> None:
        self.labels = np.asarray(labels)
        self.classes = np.unique(self.labels)
        if batch_size < len(self.classes):
            raise ValueError(f"batch_size {batch_size} is smaller than the number of classes {len(self.classes)}")
        self.per_class = batch_size // len(self.classes)
        self.seed, self.epoch = seed, 0
        self.n_batches = min((self.labels == c).sum() for c in self.classes) // self.per_class
        if self.n_batches == 0:
            raise ValueError("the smallest class has fewer samples than batch_size / n_classes")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return int(self.n_batches)

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        pools = [rng.permutation(np.flatnonzero(self.labels == c)) for c in self.classes]
        for b in range(len(self)):
            batch = np.concatenate([p[b * self.per_class : (b + 1) * self.per_class] for p in pools])
            yield rng.permutation(batch).tolist()
