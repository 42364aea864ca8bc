"""Input checks shared by the probes."""

from __future__ import annotations

import torch
from torch import Tensor

from repsim.core.validation import as_features


def features_and_labels(x, y, name: str) -> tuple[Tensor, Tensor]:
    x = as_features(x, f"{name}_x", 1)
    y = torch.as_tensor(y)
    if y.ndim != 1 or y.dtype.is_floating_point:
        raise ValueError(f"{name}_y must be a 1-D tensor of integer class labels, got shape {tuple(y.shape)} {y.dtype}")
    if len(y) != len(x):
        raise ValueError(f"{name}_y has {len(y)} labels but {name}_x has {len(x)} samples; they must match")
    return x, y.long()


def train_test(train_x, train_y, test_x, test_y) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Validated tensors plus the sorted class list; every test class must occur in train."""
    train_x, train_y = features_and_labels(train_x, train_y, "train")
    test_x, test_y = features_and_labels(test_x, test_y, "test")
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x has {train_x.shape[1]} features but test_x has {test_x.shape[1]}")
    classes = torch.unique(train_y)
    missing = sorted(set(torch.unique(test_y).tolist()) - set(classes.tolist()))
    if missing:
        raise ValueError(f"classes {missing} occur in test_y but not in train_y; a probe cannot predict unseen classes")
    if len(classes) < 2:
        raise ValueError("train_y holds a single class; a probe needs at least two")
    return train_x, train_y, test_x, test_y.to(train_y.device), classes


def topk_accuracy(scores: Tensor, targets: Tensor, k: int) -> float:
    top = scores.topk(min(k, scores.shape[1]), dim=1).indices
    return (top == targets[:, None]).any(dim=1).double().mean().item()
