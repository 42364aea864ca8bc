"""compare_many's chunked safetensors cache: a killed extraction resumes with nothing run twice."""

import os
import subprocess
import sys
import textwrap

import repsim
from tests.models import TinyConvNet, digits_batches, seeded

ARCH = "tests.models:TinyConvNet"


def test_killed_extraction_resumes_from_last_finished_chunk(tmp_path):
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
            if calls[0] == 6:  # the 6th batch of the first model: chunks of 2 batches, so 2 chunks are finished
                os.kill(os.getpid(), signal.SIGKILL)
            return forward(self, x)
        TinyConvNet.forward = dying
        repsim.compare_many({[str(p) for p in paths]!r}, digits_batches(80, 10), "block2", arch="{ARCH}",
                            cache_dir={str(cache)!r}, chunk_batches=2, max_samples=None, progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    chunks = sorted(p.name for p in cache.rglob("chunk*.safetensors"))
    assert chunks == ["chunk000000.safetensors", "chunk000001.safetensors"]
    assert not list(cache.rglob("*.tmp*"))  # atomic writes leave no partial file

    calls = [0]
    forward = TinyConvNet.forward

    def counting(self, x):
        calls[0] += 1
        return forward(self, x)

    TinyConvNet.forward = counting
    try:
        resumed = repsim.compare_many(
            paths,
            digits_batches(80, 10),
            "block2",
            arch=ARCH,
            cache_dir=cache,
            chunk_batches=2,
            max_samples=None,
            progress=False,
        )
    finally:
        TinyConvNet.forward = forward
    assert calls[0] == (8 - 4) + 8  # model 0: only its 4 unfinished batches; model 1: all 8
    fresh = repsim.compare_many(paths, digits_batches(80, 10), "block2", arch=ARCH, max_samples=None, progress=False)
    assert (resumed - fresh).abs().to_numpy().max() < 1e-12
    calls[0] = 0
    TinyConvNet.forward = counting
    try:
        again = repsim.compare_many(
            paths,
            digits_batches(80, 10),
            "block2",
            arch=ARCH,
            cache_dir=cache,
            chunk_batches=2,
            max_samples=None,
            progress=False,
        )
    finally:
        TinyConvNet.forward = forward
    assert calls[0] == 0 and (again - fresh).abs().to_numpy().max() < 1e-12


def test_compare_many_takes_registry_measures(tmp_path):
    models = [seeded(TinyConvNet, s) for s in (0, 1)]
    m = repsim.compare_many(models, digits_batches(60, 20), "block2", measure="kernel_cka", progress=False)
    assert m.shape == (2, 2) and abs(m.iloc[0, 0] - 1) < 1e-10
    import pytest

    with pytest.raises(ValueError, match="unknown measure"):
        repsim.compare_many(models, digits_batches(60, 20), "block2", measure="nope", progress=False)
