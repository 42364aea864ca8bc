"""Tiny models for fast tests."""

import torch
from torch import nn


class TinyConvNet(nn.Module):
    """Two conv blocks and a head; ``forward`` can return a tensor, a tuple or a dict."""

    def __init__(self, out: str = "tensor", in_channels: int = 1, num_classes: int = 10) -> None:
        super().__init__()
        self.block1 = nn.Sequential(nn.Conv2d(in_channels, 8, 3, padding=1), nn.ReLU())
        self.block2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, stride=2), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, num_classes))
        self.out = out

    def forward(self, x):
        h = self.block2(self.block1(x))
        logits = self.head(h)
        if self.out == "tuple":
            return logits, h
        if self.out == "dict":
            return {"logits": logits, "features": h}
        return logits


class Broken(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block1 = nn.Linear(4, 4)
        self.block2 = nn.Linear(4, 4)

    def forward(self, x):
        self.block1(x)
        raise RuntimeError("boom")


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.shared = nn.Linear(4, 4)
        self.other = nn.Linear(4, 4)

    def forward(self, x):
        return self.other(self.shared(self.shared(x)))


def seeded(cls, seed: int, **kwargs):
    torch.manual_seed(seed)
    return cls(**kwargs)


def digits_batches(n: int = 200, batch: int = 50):
    from repsim.networks.data import reference_dataset

    ds = reference_dataset("digits")
    x = torch.stack([ds[i][0] for i in range(n)])
    y = torch.stack([ds[i][1] for i in range(n)])
    return [(x[i : i + batch], y[i : i + batch]) for i in range(0, n, batch)]
