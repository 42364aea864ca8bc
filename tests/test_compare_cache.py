"""compare_many's feature cache: keyed on content, checked on reuse, resumable after a kill."""

import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import repsim
from tests.models import TinyConvNet, digits_batches, seeded

ARCH = "tests.models:TinyConvNet"


def _counting(calls):
    forward = TinyConvNet.forward

    def counted(self, x):
        calls[0] += 1
        return forward(self, x)

    return forward, counted


def test_killed_extraction_resumes_from_last_finished_batch(tmp_path):
    paths = [repsim.save_state_dict(seeded(TinyConvNet, s).state_dict(), tmp_path / f"m{s}.pt") for s in (0, 1)]
    cache = tmp_path / "cache"
    script = textwrap.dedent(f"""
        import os, signal
        import repsim
        from tests.models import TinyConvNet, digits_batches
        calls = [0]
        forward = TinyConvNet.forward
        def dying(self, x):
            calls[0] += 1
            if calls[0] == 6:  # the 6th batch of the first model: 5 batches are on disk
                os.kill(os.getpid(), signal.SIGKILL)
            return forward(self, x)
        TinyConvNet.forward = dying
        repsim.compare_many({[str(p) for p in paths]!r}, digits_batches(80, 10), layers=["block2"], arch="{ARCH}",
                            cache_dir={str(cache)!r}, progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert not list(cache.rglob("*.tmp*"))  # atomic writes leave no partial file
    assert not list(cache.rglob("featureset.json"))  # the killed extraction was not finished

    calls = [0]
    forward, counted = _counting(calls)
    TinyConvNet.forward = counted
    try:
        resumed = repsim.compare_many(paths, digits_batches(80, 10), layers=["block2"], arch=ARCH, cache_dir=cache,
                                      progress=False)
        assert calls[0] == (8 - 5) + 8  # model 0: only its 3 unfinished batches; model 1: all 8
        calls[0] = 0
        again = repsim.compare_many(paths, digits_batches(80, 10), layers=["block2"], arch=ARCH, cache_dir=cache,
                                    progress=False)
        assert calls[0] == 0  # every feature read back
    finally:
        TinyConvNet.forward = forward
    fresh = repsim.compare_many(paths, digits_batches(80, 10), layers=["block2"], arch=ARCH, progress=False)
    for res in (resumed, again):
        assert np.abs(res.table["value"].to_numpy() - fresh.table["value"].to_numpy()).max() < 1e-12


def _loader(seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    return DataLoader(TensorDataset(torch.randn(96, 1, 8, 8, generator=g)), batch_size=32)


def test_the_stale_cache_case_gives_the_right_value(tmp_path):
    """The issue's case: the same call over another dataset of the same length must not reuse the features."""
    paths = [repsim.save_state_dict(seeded(TinyConvNet, s).state_dict(), tmp_path / f"m{s}.pt") for s in (0, 1)]
    cache = tmp_path / "cache"

    def value(loader, **kw):
        m = repsim.compare_many(paths, loader, layers=["block1"], arch=ARCH, progress=False, **kw)
        return m.matrix("linear_cka").iloc[0, 1]

    truth_1, truth_2 = value(_loader(1)), value(_loader(2))
    assert abs(truth_1 - truth_2) > 1e-6  # the two datasets do give different values
    assert value(_loader(1), cache_dir=cache) == pytest.approx(truth_1, abs=1e-12)
    assert value(_loader(2), cache_dir=cache) == pytest.approx(truth_2, abs=1e-12)  # 0.3 returned truth_1 here
    with pytest.raises(ValueError, match="other data"):
        value(_loader(1), cache_dir=cache, cache="strict")  # the cache now holds dataset 2's features
    assert value(_loader(2), cache_dir=cache, cache="strict") == pytest.approx(truth_2, abs=1e-12)


def test_a_retrained_checkpoint_at_the_same_path_is_not_served_from_cache(tmp_path):
    path = repsim.save_state_dict(seeded(TinyConvNet, 0).state_dict(), tmp_path / "m.pt")
    other = repsim.save_state_dict(seeded(TinyConvNet, 5).state_dict(), tmp_path / "other.pt")
    cache = tmp_path / "cache"
    first = repsim.compare_many([path, other], _loader(1), layers=["block1"], arch=ARCH, cache_dir=cache,
                                progress=False).matrix("linear_cka")
    stat = os.stat(path)
    repsim.save_state_dict(seeded(TinyConvNet, 3).state_dict(), tmp_path / "new.pt")
    shutil.move(tmp_path / "new.pt", path)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same name, size and mtime: only the bytes differ
    cached = repsim.compare_many([path, other], _loader(1), layers=["block1"], arch=ARCH, cache_dir=cache,
                                 progress=False).matrix("linear_cka")
    fresh = repsim.compare_many([path, other], _loader(1), layers=["block1"], arch=ARCH,
                                progress=False).matrix("linear_cka")
    assert np.abs(cached.to_numpy() - fresh.to_numpy()).max() < 1e-12
    assert abs(cached.iloc[0, 1] - first.iloc[0, 1]) > 1e-6


def test_compare_many_takes_registry_measures(tmp_path):
    models = [seeded(TinyConvNet, s) for s in (0, 1)]
    with pytest.warns(DeprecationWarning):
        m = repsim.compare_many(models, digits_batches(60, 20), "block2", measure="kernel_cka", progress=False)
    assert m.shape == (2, 2) and abs(m.iloc[0, 0] - 1) < 1e-10
    with pytest.raises(ValueError, match="unknown measure"):
        repsim.compare_many(models, digits_batches(60, 20), layers=["block2"], measures=["nope"], progress=False)
