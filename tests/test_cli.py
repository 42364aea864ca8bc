import subprocess
import sys

import pandas as pd
import pytest
import torch

import repsim
from repsim.cli import main
from tests.models import TinyConvNet, seeded


def _save(tmp_path):
    a, b = seeded(TinyConvNet, 0), seeded(TinyConvNet, 1)
    pa = repsim.save_state_dict(a.state_dict(), tmp_path / "a.pt")
    pb = repsim.save_state_dict(b.state_dict(), tmp_path / "b.safetensors")
    return pa, pb


ARCH = "tests.models:TinyConvNet"


def test_compare_end_to_end(tmp_path, capsys):
    pa, pb = _save(tmp_path)
    out = tmp_path / "out"
    assert (
        main(
            [
                "compare",
                str(pa),
                str(pb),
                "--arch",
                ARCH,
                "--data",
                "digits",
                "--out",
                str(out),
                "--layers",
                "block1,block2",
                "--max-samples",
                "200",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    assert "linear_cka" in printed and str(out / "comparison.csv") in printed
    table = pd.read_csv(out / "comparison.csv")
    assert set(table["measure"]) == {"linear_cka", "debiased_cka", "rsa"} and len(table) == 12
    for m in ("linear_cka", "debiased_cka", "rsa"):
        assert (out / f"heatmap_{m}.png").stat().st_size > 1000


def test_many_end_to_end(tmp_path, capsys):
    pa, pb = _save(tmp_path)
    pc = repsim.save_state_dict(seeded(TinyConvNet, 2).state_dict(), tmp_path / "c.pt")
    out = tmp_path / "out"
    args = ["many", str(pa), str(pb), str(pc), "--arch", ARCH, "--layer", "block2", "--out", str(out), "--cache",
            str(tmp_path / "cache")]  # fmt: skip
    with pytest.warns(DeprecationWarning):  # --layer: the 0.3 form, kept until 0.5
        assert main(args) == 0
    m = pd.read_csv(out / "many_linear_cka.csv", index_col=0)
    assert m.shape == (3, 3) and abs(m.loc["a", "a"] - 1) < 1e-9
    assert "many_linear_cka.png" in capsys.readouterr().out


def test_layers_command(capsys):
    assert main(["layers", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "layer4" in out and "(default)" in out


def test_errors_are_one_line(tmp_path):
    pa, pb = _save(tmp_path)
    cases = [
        ["compare", str(pa), str(tmp_path / "missing.pt"), "--arch", ARCH],
        ["compare", str(pa), str(pb), "--arch", ARCH, "--layers", "block1,nope"],
        ["compare", str(pa), str(pb), "--arch", "resnet18"],
        ["compare", str(pa), str(pb), "--arch", ARCH, "--data", "cifar10:" + str(tmp_path)],
    ]
    for args in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "repsim", *args],
            capture_output=True,
            text=True,
            env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": "."},
        )
        assert proc.returncode == 2, proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip() and "it/s" not in ln]
        assert len(lines) == 1 and lines[0].startswith("repsim: error:"), proc.stderr
        assert "Traceback" not in proc.stderr
    assert torch.load(pa, weights_only=True)


def test_help_lists_the_measure_names_once(capsys):
    """Issue 32: `repsim compare --help` printed the 43 names in the usage line and again in the options."""
    import pytest

    from repsim.pipeline.routes import available_measures

    for command in ("compare", "many"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = capsys.readouterr().out
        assert text.count("uniformity_difference") == 1, command
        assert "NAME" in text
    assert all(name in text for name in available_measures() if name != "minibatch_cka")  # many: the registry
