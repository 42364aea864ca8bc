"""Fashion-MNIST on small idx files written in the real format (gzipped and raw), the width-scaled ResNet,
training subsets, and the Fashion-MNIST study's determinism and resume at a tiny scale."""

import dataclasses
import gzip
import shutil
import struct

import numpy as np
import pandas as pd
import pytest
import torch

from repsim.networks.data import (
    ArrayImages,
    DatasetNotFoundError,
    fashion_mnist_root,
    in_channels,
    parse_spec,
    read_fashion_mnist,
    reference_dataset,
)
from zoo.config import TrainConfig
from zoo.data import LabelledSubset, augmentation, load_split, stratified_indices
from zoo.models import cifar_resnet, count_parameters, create_model
from zoo.train import Trainer

FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def write_idx(folder, n_train=120, n_test=60, gz=True, seed=0, size=28):
    """The four Fashion-MNIST files in the idx format: a big-endian header (magic 0x00000803 and the sizes
    N, rows, cols for images; magic 0x00000801 and N for labels), then unsigned bytes."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    written = {}
    for train, n in ((True, n_train), (False, n_test)):
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        blobs = {
            FILES[train][0]: struct.pack(">IIII", 0x00000803, n, size, size) + images.tobytes(),
            FILES[train][1]: struct.pack(">II", 0x00000801, n) + labels.tobytes(),
        }
        for name, blob in blobs.items():
            if gz:
                with gzip.open(folder / f"{name}.gz", "wb") as f:
                    f.write(blob)
            else:
                (folder / name).write_bytes(blob)
        written[train] = (images, labels.astype(np.int64))
    return written


@pytest.mark.parametrize("gz", [True, False], ids=["gzipped", "raw"])
def test_reader_returns_the_written_arrays(tmp_path, gz):
    written = write_idx(tmp_path / "fm", gz=gz)
    for train in (True, False):
        images, labels = read_fashion_mnist(tmp_path / "fm", train)
        assert images.dtype == np.uint8 and labels.dtype == np.int64
        np.testing.assert_array_equal(images, written[train][0])
        np.testing.assert_array_equal(labels, written[train][1])
    images[:] = 0  # the reader's cache must not hand out this array again
    assert read_fashion_mnist(tmp_path / "fm", True)[0].any()


def test_specs_locations_and_errors(tmp_path, monkeypatch):
    assert parse_spec("fashion-mnist") == ("fashion-mnist", None)
    assert parse_spec("fashion-mnist:/data/fm") == ("fashion-mnist", "/data/fm")
    assert in_channels("fashion-mnist") == 1 and in_channels("cifar10") == 3
    with pytest.raises(ValueError, match="fashion-mnist"):
        parse_spec("fashion")
    # torchvision's own layout (ROOT/FashionMNIST/raw) is found under ROOT too
    write_idx(tmp_path / "tv" / "FashionMNIST" / "raw", gz=False)
    assert fashion_mnist_root(tmp_path / "tv") == tmp_path / "tv" / "FashionMNIST" / "raw"
    # the environment variable stands in for the package's location
    write_idx(tmp_path / "env")
    monkeypatch.setenv("REPSIM_FASHION_MNIST", str(tmp_path / "env"))
    assert fashion_mnist_root() == tmp_path / "env"
    with pytest.raises(DatasetNotFoundError, match="apt-get install dataset-fashion-mnist"):
        fashion_mnist_root(tmp_path / "nothing")
    (tmp_path / "half").mkdir()
    shutil.copy(tmp_path / "env" / "train-images-idx3-ubyte.gz", tmp_path / "half")
    with pytest.raises(DatasetNotFoundError, match="t10k-images-idx3-ubyte"):
        read_fashion_mnist(tmp_path / "half")
    bad = tmp_path / "bad"
    write_idx(bad, gz=False)
    (bad / "t10k-labels-idx1-ubyte").write_bytes(struct.pack(">II", 0x00000D01, 3) + bytes(3))  # not an idx type
    with pytest.raises(ValueError, match="damaged or non-idx"):
        read_fashion_mnist(bad, train=False)


def test_reference_view_training_split_and_augmentation(tmp_path):
    written = write_idx(tmp_path / "fm")
    spec = f"fashion-mnist:{tmp_path / 'fm'}"
    ds = reference_dataset(spec)
    x, y = ds[3]
    assert len(ds) == 60 and x.shape == (1, 28, 28) and x.dtype == torch.float32
    expected = (written[False][0][3] / 255.0 - 0.2860) / 0.3530
    np.testing.assert_allclose(x[0].numpy(), expected, atol=1e-6)
    assert int(y) == written[False][1][3]
    raw, n_classes = load_split(spec, True, augment=True)
    assert n_classes == 10 and raw[0][0].dtype == torch.uint8
    augment = augmentation("fashion-mnist", 28)
    torch.manual_seed(0)
    a = augment(raw[0][0])
    torch.manual_seed(0)
    assert a.shape == (1, 28, 28) and torch.equal(a, augment(raw[0][0]))


def test_stratified_subset():
    labels = np.repeat(np.arange(4), [40, 30, 20, 10])
    keep = stratified_indices(labels, 50, seed=1)
    assert len(keep) == 50 and np.all(np.diff(keep) > 0)
    assert np.bincount(labels[keep]).tolist() == [20, 15, 10, 5]
    assert np.array_equal(stratified_indices(labels, 500), np.arange(100))
    assert not np.array_equal(keep, stratified_indices(labels, 50, seed=2))
    with pytest.raises(ValueError, match="smaller than the number of classes"):
        stratified_indices(labels, 3)
    ds = LabelledSubset(ArrayImages(np.zeros((100, 2, 2), np.uint8), labels), keep)
    assert len(ds) == 50 and np.array_equal(ds.labels, labels[keep]) and int(ds[0][1]) == labels[keep[0]]


def test_width_scaled_resnet():
    full = cifar_resnet(18, in_channels=1)
    # torchvision ResNet-18 (11 689 512) less its fc (513 000), its 7x7 RGB stem (9 408) plus a 3x3 grey one (576)
    assert count_parameters(full) == 11_167_680 and full.num_features == 512
    narrow = create_model(backbone="resnet18", num_classes=10, in_channels=1, proj_hidden=64, proj_out=32, width=8)
    assert narrow.num_features == 64
    assert [narrow.encoder.layer1[0].conv1.out_channels, narrow.encoder.layer4[0].conv1.out_channels] == [8, 64]
    out = narrow(torch.randn(3, 1, 28, 28))
    assert out["features"].shape == (3, 64) and out["projection"].shape == (3, 32)
    # the ResNet-18 convs scale with width squared (the 1-channel stem and the fc-less head aside)
    assert 50 < count_parameters(full) / count_parameters(cifar_resnet(18, 1, width=8)) < 70
    assert cifar_resnet(50, 3, width=16).num_features == 512
    with pytest.raises(ValueError, match="width"):
        cifar_resnet(18, 1, width=0)


def tiny_study(tmp_path, root, **kw) -> TrainConfig:
    """The study's five objectives on the tiny idx files, a width-4 ResNet-18."""
    values = dict(
        data=f"fashion-mnist:{root}",
        objectives=["cl", "nscl", "supcon", "ce", "balanced"],
        control=False,
        backbone="resnet18",
        width=4,
        proj_hidden=32,
        proj_out=16,
        train_samples=100,
        reference_samples=60,
        epochs=2,
        batch_size=50,
        warmup_epochs=1,
        eval_every=1,
        checkpoint_every=1,
        final_probes=False,
        progress=False,
        out=str(tmp_path / "full"),
    )
    values.update(kw)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """The tiny study trained for 3 epochs without interruption."""
    tmp_path = tmp_path_factory.mktemp("study")
    write_idx(tmp_path / "fm")
    full = Trainer(tiny_study(tmp_path, tmp_path / "fm", epochs=3))
    full.run()
    return full


def same_run(a: Trainer, b: Trainer) -> None:
    pd.testing.assert_frame_equal(pd.DataFrame(a.log), pd.DataFrame(b.log), rtol=0, atol=1e-9)
    assert all(torch.equal(a.models[r].state_dict()[k], v) for r in a.models
               for k, v in b.models[r].state_dict().items())  # fmt: skip


def test_rerun_and_resume_reproduce_the_log(tmp_path, uninterrupted):
    full = uninterrupted
    assert full.cfg.image_size == 28 and full.models["cl"].encoder.conv1.in_channels == 1
    assert len(full.train_set) == 100 and full.epochs_trained == 3
    cka = pd.DataFrame(full.log).query("measure == 'linear_cka'")
    assert set(cka["epoch"]) == {0, 1, 2, 3} and cka.query("epoch > 0")["value"].lt(1).all()

    # interrupted after its first epoch (max_epochs=1: checkpoint, no final files), then resumed
    cut_cfg = dataclasses.replace(full.cfg, out=str(tmp_path / "cut"))
    cut = Trainer(cut_cfg)
    cut.run(max_epochs=1)
    assert not cut.finished and cut.epochs_trained == 1 and not (tmp_path / "cut" / "models").exists()
    resumed = Trainer(cut_cfg)
    resumed.run(resume=True)
    assert resumed.finished and resumed.epochs_trained == 2  # epoch 1 was not trained again
    assert (tmp_path / "cut" / "models" / "nscl.safetensors").exists()
    same_run(full, resumed)  # re-running epochs 2 and 3 reproduces the logged CKA (to 1e-9) and the weights
    # a finished run trains nothing more
    again = Trainer(cut_cfg)
    again.run(resume=True)
    assert again.epochs_trained == 0 and again.epoch == 3


def test_resume_after_a_kill_retrains_nothing_finished(tmp_path, uninterrupted):
    """A training process killed (SIGKILL) after its first epoch's checkpoint resumes from it: no finished
    epoch is trained again and the log and weights equal an uninterrupted run's."""
    import os
    import signal
    import subprocess
    import sys
    import time

    full = uninterrupted
    cfg = dataclasses.replace(full.cfg, out=str(tmp_path / "killed"))
    cfg.save(tmp_path / "killed.json")
    code = "import sys, repsim; from zoo.config import TrainConfig; from zoo.train import Trainer; "
    code += "Trainer(TrainConfig.load(sys.argv[1])).run()"
    proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path / "killed.json")], env=dict(os.environ))
    first = tmp_path / "killed" / "checkpoints" / "epoch_0001.pt"
    deadline = time.monotonic() + 120
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert first.exists()
    resumed = Trainer(cfg)
    resumed.run(resume=True)
    assert resumed.finished and resumed.epochs_trained <= 2  # the checkpointed epochs were not trained again
    same_run(full, resumed)
