"""`torchrun --nproc_per_node 2 -m repsim compare ...` writes the same table as one process."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from repsim.cli import main
from tests.test_cli import ARCH, _save


@pytest.mark.skipif(shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None, reason="no torchrun")
def test_cli_under_torchrun_equals_one_process(tmp_path):
    pa, pb = _save(tmp_path)
    common = [
        "compare",
        str(pa),
        str(pb),
        "--arch",
        ARCH,
        "--data",
        "digits",
        "--layers",
        "block1,block2",
        "--max-samples",
        "101",
        "--sample-cap",
        "50",
        "--measures",
        "linear_cka",
        "debiased_cka",
        "rsa",
        "--device",
        "cpu",
    ]
    assert main([*common, "--out", str(tmp_path / "one")]) == 0
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            torchrun,
            "--nproc_per_node",
            "2",
            "--master_port",
            "29517",
            "-m",
            "repsim",
            *common,
            "--out",
            str(tmp_path / "two"),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    one = pd.read_csv(tmp_path / "one" / "comparison.csv")
    two = pd.read_csv(tmp_path / "two" / "comparison.csv")
    assert list(one["n"]) == list(two["n"]) and set(one["n"]) == {101, 50}
    assert (one["value"] - two["value"]).abs().max() < 1e-10
