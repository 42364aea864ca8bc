"""Smoke runs of the example scripts (one seed, one epoch, the ends of each sweep) so they cannot rot."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

# every numbered example on the common CLI (--seeds/--epochs/--smoke); the text example has its own test below
EXAMPLES = sorted(
    p for p in Path(__file__).resolve().parents[1].glob("examples/[0-9][0-9]_*.py") if p.stem != "11_text_layers"
)


@pytest.mark.parametrize("script", EXAMPLES, ids=lambda p: p.stem)
def test_example_runs(script, tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), "--seeds", "1", "--epochs", "1", "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert list(tmp_path.glob("*.csv")) and list(tmp_path.glob("*.png"))
    assert "wrote:" in proc.stdout
    if script.stem == "07_grounding":  # the integrator's path: rescore from the cached features (every measure
        # went through the same scoring above; two here keep the rerun cheap)
        again = subprocess.run(
            [sys.executable, str(script), "--seeds", "1", "--smoke", "--out", str(tmp_path), "--rescore",
             "--measures", "linear_cka", "rsa"],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert again.returncode == 0, again.stderr[-2000:]
        assert "training and features" not in again.stdout and "wrote:" in again.stdout
        assert list((tmp_path / "features").glob("*.safetensors"))
    if script.stem == "10_fashion_resnet":  # run again: the finished seed is skipped, the report rewritten
        again = subprocess.run(
            [sys.executable, str(script), "--seeds", "1", "--epochs", "1", "--smoke", "--out", str(tmp_path)],
            capture_output=True,
            text=True,
            env=env,
            timeout=600,
        )
        assert again.returncode == 0, again.stderr[-2000:]
        assert "seed 0: already finished" in again.stdout and "trained" not in again.stdout
        assert (tmp_path / "fashion_summary.md").exists() and "wrote:" in again.stdout


TEXT_EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "11_text_layers.py"


def test_text_example_runs(tmp_path):
    """all-MiniLM-L6-v2 (the text-example extra) on Debian's fortunes (scripts/setup.sh installs both)."""
    env = {**os.environ, "MPLBACKEND": "Agg", "HF_HUB_OFFLINE": "1", "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = subprocess.run(
        [sys.executable, str(TEXT_EXAMPLE), "--smoke", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert (tmp_path / "text_layers.csv").is_file() and (tmp_path / "text_layers.png").is_file()
    assert "wrote:" in proc.stdout
    missing = subprocess.run(
        [sys.executable, str(TEXT_EXAMPLE), "--smoke", "--out", str(tmp_path), "--corpus", str(tmp_path / "none")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert missing.returncode != 0 and "apt-get install fortunes" in missing.stderr
