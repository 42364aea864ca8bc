import os
import pickle

import pytest
import torch
import torchvision

import repsim
from repsim.cli import main
from repsim.networks.checkpoints import CheckpointError, load_state_dict
from tests.models import TinyConvNet, seeded


def _same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


LAYOUTS = {
    "plain": lambda s: s,
    "state_dict": lambda s: {"state_dict": s, "epoch": 3},
    "model": lambda s: {"model": s, "optimizer": {"lr": 0.1}},
    "MODEL_STATE": lambda s: {"MODEL_STATE": s},
    "nested": lambda s: {"checkpoint": 1, "model": {"state_dict": s}},
    "module_prefix": lambda s: {f"module.{k}": v for k, v in s.items()},
    "compiled_ddp": lambda s: {"state_dict": {f"module._orig_mod.{k}": v for k, v in s.items()}},
    "backbone_prefix": lambda s: {f"backbone.{k}": v for k, v in s.items()},
}


FLAT = ("plain", "module_prefix", "backbone_prefix")  # safetensors files hold flat tensor dicts only
CASES = [
    (s, layout) for s in (".pt", ".pth", ".safetensors") for layout in LAYOUTS if s != ".safetensors" or layout in FLAT
]


@pytest.mark.parametrize(("suffix", "layout"), CASES)
def test_round_trip_every_format_and_layout(tmp_path, suffix, layout):
    model = seeded(TinyConvNet, 3)
    obj = LAYOUTS[layout](model.state_dict())
    path = tmp_path / f"ckpt{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in obj.items()}, str(path))
    else:
        torch.save(obj, path)
    loaded = repsim.load_model(path, TinyConvNet)
    assert _same_weights(loaded, model)
    assert not loaded.training


def test_torchvision_name_and_head_size_from_checkpoint(tmp_path):
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7)
    repsim.save_state_dict(model.state_dict(), tmp_path / "r.safetensors")
    loaded = repsim.load_model(tmp_path / "r.safetensors", "resnet18")
    assert loaded.fc.out_features == 7 and _same_weights(loaded, model)


def test_timm_name(tmp_path):
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    torch.save({"model": model.state_dict()}, tmp_path / "t.pt")
    assert _same_weights(repsim.load_model(tmp_path / "t.pt", "resnet18.a1_in1k"), model)


def test_encoder_part_of_a_larger_checkpoint(tmp_path):
    model = seeded(TinyConvNet, 1)
    state = {f"encoder.{k}": v for k, v in model.state_dict().items()}
    state["projector.weight"] = torch.randn(3, 3)
    torch.save(state, tmp_path / "zoo.pt")
    assert _same_weights(repsim.load_model(tmp_path / "zoo.pt", TinyConvNet), model)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_without_side_effect(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": TinyConvNet().state_dict(), "payload": _Evil(marker)}, path)
    # the file really is malicious: an unrestricted unpickler runs the payload
    with pytest.raises(CheckpointError, match=r"refused to load .*code in a checkpoint never runs"):
        repsim.load_model(path, TinyConvNet)
    with pytest.raises(CheckpointError):
        load_state_dict(path)
    assert not marker.exists()
    with open(path, "rb") as f:
        import zipfile

        assert zipfile.is_zipfile(f)
    plain = tmp_path / "evil.pkl"
    plain.write_bytes(pickle.dumps(_Evil(marker)))
    with pytest.raises(CheckpointError):
        load_state_dict(plain)
    assert not marker.exists()


def test_clear_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        repsim.load_model(tmp_path / "missing.pt", "resnet18")
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pt")
    with pytest.raises(CheckpointError, match=r"does not fit ResNet: \d+ missing keys"):
        repsim.load_model(tmp_path / "r18.pt", "resnet34")
    with pytest.raises(CheckpointError, match="unknown architecture"):
        repsim.load_model(tmp_path / "r18.pt", "no_such_net")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable"):
        load_state_dict(tmp_path / "junk.pt")
    torch.save({"epoch": 1, "note": "x"}, tmp_path / "empty.pt")
    with pytest.raises(CheckpointError, match="no state dict"):
        load_state_dict(tmp_path / "empty.pt")


def test_save_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "w.pt"
    repsim.save_state_dict({"a": torch.ones(2)}, path)

    def crash(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        repsim.save_state_dict({"a": torch.zeros(2)}, path)
    assert torch.equal(load_state_dict(path)["a"], torch.ones(2))  # old file intact
    assert [p.name for p in tmp_path.iterdir()] == ["w.pt"]  # no temp file left behind


# Issue 32, defect 6: damaged checkpoints loaded silently.
def _flip_inside_record(path, record_suffix, n_bytes=64, at=100):
    """Flip ``n_bytes`` bytes of the zip record whose name ends with ``record_suffix`` (its payload, not its header)."""
    import struct
    import zipfile

    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(record_suffix))
    raw = bytearray(path.read_bytes())
    name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26 : info.header_offset + 30])
    start = info.header_offset + 30 + name_len + extra_len + at
    assert at + n_bytes <= info.file_size
    raw[start : start + n_bytes] = bytes(b ^ 0xFF for b in raw[start : start + n_bytes])
    path.write_bytes(bytes(raw))


def test_flipped_bytes_in_a_tensor_record_are_refused(tmp_path, capsys):
    state = seeded(TinyConvNet, 0).state_dict()
    path = repsim.save_state_dict(state, tmp_path / "a.pt")
    victim = max(state, key=lambda k: state[k].numel())  # the largest tensor, so 64 bytes fit inside it
    index = list(state).index(victim)  # torch.save numbers storage records in the state dict's order
    _flip_inside_record(path, f"/data/{index}")
    # The premise: torch.load alone reads the damaged file without a word, and the weights are wrong.
    silently = torch.load(path, weights_only=True)
    assert not torch.equal(silently[victim], state[victim])
    with pytest.raises(CheckpointError, match=rf"damaged: record '[^']*/data/{index}' \(tensor '{victim}'\).*CRC"):
        load_state_dict(path)
    with pytest.raises(CheckpointError, match="damaged"):
        repsim.load_model(path, "tests.models:TinyConvNet")
    good = repsim.save_state_dict(seeded(TinyConvNet, 1).state_dict(), tmp_path / "b.pt")
    argv = ["compare", str(path), str(good), "--arch", "tests.models:TinyConvNet", "--data", "digits"]
    assert main([*argv, "--out", str(tmp_path / "out"), "--max-samples", "50"]) == 2
    assert "damaged" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_truncated_or_inconsistent_safetensors_are_refused(tmp_path):
    import json

    state = seeded(TinyConvNet, 0).state_dict()
    path = repsim.save_state_dict(state, tmp_path / "a.safetensors")
    raw = path.read_bytes()
    assert load_state_dict(path).keys() == state.keys()  # the intact file loads
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(raw[:-10])
    with pytest.raises(CheckpointError, match=r"damaged: the file has \d+ bytes but its record '[^']+' ends at byte"):
        load_state_dict(cut)
    padded = tmp_path / "padded.safetensors"
    padded.write_bytes(raw + b"\0" * 8)
    with pytest.raises(CheckpointError, match="damaged"):
        load_state_dict(padded)
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__" and header[k]["data_offsets"][0] > 0)
    header[name]["shape"] = [*header[name]["shape"][:-1], header[name]["shape"][-1] + 1]  # shape and bytes disagree
    text = json.dumps(header).encode()
    bad_shape = tmp_path / "shape.safetensors"
    bad_shape.write_bytes(len(text).to_bytes(8, "little") + text + raw[8 + n :])
    with pytest.raises(CheckpointError, match=rf"damaged: record '{name}' spans bytes"):
        load_state_dict(bad_shape)
    short_header = tmp_path / "header.safetensors"
    short_header.write_bytes((10**9).to_bytes(8, "little") + raw[8:100])
    with pytest.raises(CheckpointError, match="header length"):
        load_state_dict(short_header)


def test_empty_file_message_says_what_is_wrong(tmp_path):
    for suffix in (".pt", ".safetensors"):
        (tmp_path / f"empty{suffix}").write_bytes(b"")
        with pytest.raises(CheckpointError, match=r"is empty \(0 bytes\).*interrupted"):
            load_state_dict(tmp_path / f"empty{suffix}")
    cut = tmp_path / "cut.pt"
    torch.save(seeded(TinyConvNet, 0).state_dict(), cut)
    cut.write_bytes(cut.read_bytes()[:40])  # a truncated zip: every message ends with its cause
    with pytest.raises(CheckpointError) as err:
        load_state_dict(cut)
    assert not str(err.value).rstrip().endswith(":")
