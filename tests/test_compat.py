"""The torchvision guard: active only when torchvision's compiled ops fail to load."""

import subprocess
import sys
import textwrap

import torch

import repsim.core.compat as compat


def test_torchvision_and_timm_import_and_build_models():
    import timm
    import torchvision

    model = torchvision.models.resnet18(num_classes=3)
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 3)
    assert timm.create_model("resnet18", pretrained=False, num_classes=0)(torch.randn(2, 3, 32, 32)).shape == (
        2,
        512,
    )


def test_guard_matches_whether_the_extension_loads():
    script = textwrap.dedent(
        """
        import torch, repsim.core.compat as c
        path = c._extension_path()
        try:
            torch.ops.load_library(str(path)); loads = True
        except (OSError, RuntimeError):
            loads = False
        print(loads)
        """
    )
    loads = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    assert compat.torchvision_guard_active() == (loads == "False")


def test_guard_defines_nothing_when_extension_loads():
    script = f"PATH = {compat.__file__!r}\n" + textwrap.dedent(
        """
        import importlib.util, torch
        # load the module alone: importing the repsim package would run the guard already
        spec = importlib.util.spec_from_file_location("compat_alone", PATH)
        c = importlib.util.module_from_spec(spec); spec.loader.exec_module(c)
        torch.ops.load_library = lambda path: None     # simulate a working CUDA/CPU install
        assert c.ensure_torchvision_importable() is False
        try:
            torch.ops.torchvision.nms
        except (AttributeError, RuntimeError):
            print("undefined")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout
    assert "undefined" in out


def test_stand_in_ops_raise_a_clear_error():
    if not compat.torchvision_guard_active():
        return  # a real install: the real nms runs
    import pytest

    with pytest.raises(RuntimeError, match="compiled operators are unavailable"):
        torch.ops.torchvision.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)
