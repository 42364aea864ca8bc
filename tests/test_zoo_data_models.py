import numpy as np
import pytest
import torch

import repsim
from tests.test_data import write_cifar, write_image_folder
from zoo.data import BalancedBatchSampler, TwoViews, augmentation, class_subset, dataset_labels, load_split
from zoo.models import create_model, digits_model, projector


def test_two_views_differ_and_have_the_right_shapes(tmp_path):
    write_cifar(tmp_path)
    raw, n_classes = load_split(f"cifar10:{tmp_path}", True, augment=True)
    views = TwoViews(raw, augmentation("cifar10", 32))
    v1, v2, _ = views[0]
    assert v1.shape == v2.shape == (3, 32, 32) and v1.dtype == torch.float32 and not torch.equal(v1, v2)
    assert n_classes == len(np.unique(dataset_labels(raw)))
    write_image_folder(tmp_path / "tiny", split="train", size=72)
    raw, n = load_split(f"folder:{tmp_path / 'tiny'}", True, augment=True)
    v1, _, _ = TwoViews(raw, augmentation("folder", 64))[0]
    assert v1.shape == (3, 64, 64) and n == 2
    digits, _ = load_split("digits", True, augment=True)
    v1, v2, _ = TwoViews(digits, augmentation("digits", 8))[0]
    assert v1.shape == (1, 8, 8) and not torch.equal(v1, v2)


def test_views_are_reproducible_under_a_seed():
    digits, _ = load_split("digits", True, augment=True)
    views = TwoViews(digits, augmentation("digits", 8))
    torch.manual_seed(5)
    a = views[3]
    torch.manual_seed(5)
    b = views[3]
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_class_subsets_relabel(tmp_path):
    labels = np.array([5, 3, 9, 3, 5, 1])
    index, mapping = class_subset(labels, [3, 5])
    assert index.tolist() == [0, 1, 3, 4] and mapping == {3: 0, 5: 1}
    assert class_subset(labels, 2)[1] == {1: 0, 3: 1}
    with pytest.raises(ValueError, match="not in the dataset"):
        class_subset(labels, [3, 7])
    ds, n = load_split("digits", True, classes=4)
    assert n == 4 and set(dataset_labels(ds).tolist()) == {0, 1, 2, 3}


def test_balanced_batches():
    labels = np.repeat(np.arange(4), [30, 25, 40, 21])
    sampler = BalancedBatchSampler(labels, batch_size=20, seed=0)
    batches = list(sampler)
    assert len(batches) == len(sampler) == 21 // 5
    for b in batches:
        assert np.bincount(labels[b], minlength=4).tolist() == [5, 5, 5, 5]
    assert len({i for b in batches for i in b}) == sum(len(b) for b in batches)  # no repeats within an epoch
    sampler.set_epoch(1)
    assert list(sampler) != batches
    with pytest.raises(ValueError, match="smaller than the number of classes"):
        BalancedBatchSampler(labels, batch_size=3)


def test_models_have_stable_hookable_names():
    model = digits_model()
    assert repsim.default_layers(model) == ["encoder", "projector"]
    out = model(torch.randn(4, 1, 8, 8))
    assert out["features"].shape == (4, 128) and out["projection"].shape == (4, 64) and out["logits"].shape == (4, 10)
    r18 = create_model(backbone="resnet18", num_classes=100)
    assert r18.encoder.conv1.kernel_size == (3, 3) and r18.encoder.conv1.stride == (1, 1)
    assert isinstance(r18.encoder.maxpool, torch.nn.Identity) and r18.num_features == 512
    assert create_model(backbone="resnet50", num_classes=10).num_features == 2048
    timm_model = create_model(backbone="timm:resnet18", num_classes=10)
    assert timm_model(torch.randn(2, 3, 32, 32))["features"].shape == (2, 512)
    with pytest.raises(ValueError, match="backbone must be"):
        create_model(backbone="vgg")


def test_projector_matches_design():
    p = projector(2048, 2048, 128)
    kinds = [type(m).__name__ for m in p]
    assert kinds == ["Linear", "BatchNorm1d", "ReLU", "Linear", "BatchNorm1d"]
    assert p[0].in_features == 2048 and p[3].out_features == 128
