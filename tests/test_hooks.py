import pytest
import torch
import torchvision

import repsim
from repsim.networks.hooks import FeatureHooks, default_layers, pool_features
from tests.models import Broken, TinyConvNet, Twice


def _n_hooks(model):
    return sum(len(m._forward_hooks) for m in model.modules())


def test_hooks_removed_after_exception():
    model = Broken()
    with pytest.raises(RuntimeError, match="boom"), FeatureHooks(model, ["block1"]):
        assert _n_hooks(model) == 1
        model(torch.randn(2, 4))
    assert _n_hooks(model) == 0


def test_compare_removes_hooks_and_restores_training_flag_on_error():
    a, b = Broken(), Broken()
    a.train()
    with pytest.raises(RuntimeError, match="boom"):
        repsim.compare(a, b, [torch.randn(8, 4)], layers_a=["block1"], layers_b=["block1"], progress=False)
    assert _n_hooks(a) == 0 and _n_hooks(b) == 0
    assert a.training


def test_module_called_twice_is_refused():
    with pytest.raises(ValueError, match="more than once"):
        repsim.compare(Twice(), Twice(), [torch.randn(8, 4)], layers_a=["shared"], layers_b=["other"], progress=False)


def test_unknown_layer_lists_valid_names():
    with pytest.raises(ValueError, match=r"unknown layer name\(s\) \['nope'\].*block1"):
        FeatureHooks(TinyConvNet(), ["nope"])


def test_default_layers():
    assert default_layers(torchvision.models.resnet18()) == ["layer1", "layer2", "layer3", "layer4"]
    assert default_layers(TinyConvNet()) == ["block1", "block2", "head"]
    import timm

    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    assert default_layers(model) == [f["module"] for f in model.feature_info]


def test_list_layers_matches_named_modules():
    model = TinyConvNet()
    assert repsim.list_layers(model) == [n for n, _ in model.named_modules() if n]
    assert "block1.0" in repsim.list_layers(model, leaves_only=True)


def test_pooling():
    t = torch.randn(5, 3, 4, 4)
    assert torch.allclose(pool_features(t, "mean"), t.mean(dim=(2, 3)))
    assert pool_features(t, "flatten").shape == (5, 48)
    seq = torch.randn(5, 7, 6)
    assert torch.allclose(pool_features(seq, "mean"), seq.mean(1))
    assert pool_features(t, lambda z: z.amax(dim=(2, 3))).shape == (5, 3)
    with pytest.raises(ValueError, match="pool must be one of"):
        pool_features(t, "median")
    with pytest.raises(ValueError, match="2-D outputs only"):
        pool_features(t, "none")


def test_default_layers_of_torchvision_models_go_into_their_blocks():
    """Issue 32: torchvision models other than ResNet got two coarse layers (``features``, ``classifier``)."""
    mobilenet = torchvision.models.mobilenet_v3_small(weights=None)
    layers = default_layers(mobilenet)
    stage_ends = ["features.1", "features.3", "features.6", "features.8", "features.11", "features.12"]
    assert layers == [*stage_ends, "classifier"]
    x = torch.randn(2, 3, 64, 64)
    feats, _ = repsim.extract_features(mobilenet, [(x, torch.zeros(2))], layers, progress=False)
    assert [feats[name].shape[1] for name in layers] == [16, 24, 40, 48, 96, 576, 1000]  # every stage's width
    vit = torchvision.models.vit_b_16(weights=None)
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(12)]
    assert default_layers(vit) == [*blocks, "encoder.ln", "heads"]
    convnext = torchvision.models.convnext_tiny(weights=None)
    assert default_layers(convnext) == [f"features.{i}" for i in range(8)] + ["classifier"]
    assert default_layers(torchvision.models.resnet18()) == ["layer1", "layer2", "layer3", "layer4"]  # unchanged
