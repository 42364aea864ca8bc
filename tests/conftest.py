import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # pytest-xdist runs one worker per core (scripts/test.sh): a second OpenMP thread per worker, in
    # this process or the example subprocesses that inherit the variable, would only wait for a core
    os.environ["OMP_NUM_THREADS"] = "1"

import pytest
import torch


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(1234)


def related(gen, n=120, p=30, q=20, noise=0.5, dtype=torch.float64):
    """Two feature sets that share a linear signal."""
    x = torch.randn(n, p, generator=gen, dtype=dtype)
    y = x[:, : min(p, 10)] @ torch.randn(min(p, 10), q, generator=gen, dtype=dtype)
    return x, y + noise * torch.randn(n, q, generator=gen, dtype=dtype)
