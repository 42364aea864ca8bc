"""Backbones with a projector and a classifier head, under stable module names.

Every zoo model is a :class:`ContrastiveModel` with three children:

* ``encoder``: the backbone, whose output (B, num_features) is "the representation";
* ``projector``: the MLP the contrastive losses act on (d -> hidden -> out with BN, as SimCLR's; Chen et al. 2020);
* ``classifier``: a linear head on the encoder output, used by the CE objective.

All objectives share this one architecture, so one initial model deep-copied per objective gives
every run the same starting weights. ``repsim.compare(..., layers_a=["encoder", "projector"])``
hooks the two outputs by name.
"""

from __future__ import annotations

from torch import nn

from repsim.core.deprecation import deprecated_arguments


class SmallCNN(nn.Module):
    """A small conv net for 8x8 digits: 3 conv-BN-ReLU stages and global average pooling."""

    def __init__(self, in_channels: int = 1, width: int = 32) -> None:
        super().__init__()

        def stage(cin, cout, stride):
            return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

        self.layer1 = stage(in_channels, width, 1)
        self.layer2 = stage(width, 2 * width, 2)
        self.layer3 = stage(2 * width, 4 * width, 1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.num_features = 4 * width

    def forward(self, x):
        return self.pool(self.layer3(self.layer2(self.layer1(x)))).flatten(1)


def cifar_resnet(depth: int = 18, in_channels: int = 3, width: int = 64) -> nn.Module:
    """ResNet-18/34/50 with the CIFAR stem (3x3 conv1, stride 1, no max-pool), no fc.

    ``width`` 64 is torchvision's network; another width rebuilds its stem and stages at widths
    (w, 2w, 4w, 8w) (times 4 at the output of a bottleneck), e.g. 16 for a quarter-width ResNet-18 of
    ~1/16 the multiply-adds, for CPU budgets.
    """
    if width < 1:
        raise ValueError(f"width must be >= 1, got {width}")
    import torchvision
    from torchvision.models.resnet import BasicBlock, Bottleneck

    factory = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34, 50: torchvision.models.resnet50}
    if depth not in factory:
        raise ValueError(f"depth must be one of {sorted(factory)}, got {depth}")
    net = factory[depth](weights=None)
    if width != 64:
        layers = {18: (2, 2, 2, 2), 34: (3, 4, 6, 3), 50: (3, 4, 6, 3)}[depth]
        net = _narrow(net, Bottleneck if depth == 50 else BasicBlock, layers, width)
    net.conv1 = nn.Conv2d(in_channels, width, 3, 1, 1, bias=False)
    net.maxpool = nn.Identity()
    net.num_features = net.fc.in_features
    net.fc = nn.Identity()
    return net


def _narrow(net: nn.Module, block, layers: tuple[int, ...], width: int) -> nn.Module:
    """Rebuild a torchvision ResNet's stem and four stages at base width ``width`` (stages w, 2w, 4w, 8w) with
    torchvision's own block builder, initialised as torchvision initialises them (He fan-out convs, BN 1/0)."""
    net.inplanes = width  # conv1 (the CIFAR stem) is replaced by the caller
    net.bn1 = nn.BatchNorm2d(width)
    for i, blocks in enumerate(layers):
        setattr(net, f"layer{i + 1}", net._make_layer(block, width * 2**i, blocks, stride=1 if i == 0 else 2))
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    net.fc = nn.Linear(width * 8 * block.expansion, 1)
    return net


def timm_backbone(name: str, in_channels: int = 3) -> nn.Module:
    """Any timm model by name as a headless backbone (``num_classes=0``); weights never from a hub."""
    import timm

    if not timm.is_model(name):
        raise ValueError(f"{name!r} is not a timm model name (see timm.list_models())")
    return timm.create_model(name, pretrained=False, num_classes=0, in_chans=in_channels)


def projector(in_features: int, hidden: int = 2048, out: int = 128, layers: int = 2) -> nn.Sequential:
    """SimCLR's MLP projector: (Linear-BN-ReLU) x (layers-1), then Linear-BN (2048->2048->128 in Chen et al. 2020)."""
    dims = [in_features] + [hidden] * (layers - 1) + [out]
    blocks: list[nn.Module] = []
    for i in range(layers):
        blocks += [nn.Linear(dims[i], dims[i + 1], bias=False), nn.BatchNorm1d(dims[i + 1])]
        if i < layers - 1:
            blocks.append(nn.ReLU())
    return nn.Sequential(*blocks)


class ContrastiveModel(nn.Module):
    @deprecated_arguments(positional=("proj_hidden", "proj_out"))
    def __init__(
        self, encoder: nn.Module, num_features: int, num_classes: int, *, proj_hidden: int = 2048, proj_out: int = 128
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector(num_features, proj_hidden, proj_out)
        self.classifier = nn.Linear(num_features, num_classes)
        self.num_features = num_features

    def forward(self, x):
        """Encoder output, projector output and class logits, as a dict."""
        h = self.encoder(x)
        return {"features": h, "projection": self.projector(h), "logits": self.classifier(h)}


BACKBONES = ("small_cnn", "resnet18", "resnet50")


@deprecated_arguments(positional=("backbone", "num_classes", "in_channels", "proj_hidden", "proj_out", "width"))
def create_model(
    *,
    backbone: str = "small_cnn",
    num_classes: int = 10,
    in_channels: int = 3,
    proj_hidden: int = 2048,
    proj_out: int = 128,
    width: int | None = None,
) -> ContrastiveModel:
    """A :class:`ContrastiveModel`: ``small_cnn``, ``resnet18``/``resnet50`` (CIFAR stem) or ``timm:NAME``.

    ``width``: base channels (default 32 for small_cnn, 64 for the ResNets; timm models ignore it).
    """
    if backbone == "small_cnn":
        enc = SmallCNN(in_channels, width or 32)
        dims = enc.num_features
    elif backbone in ("resnet18", "resnet34", "resnet50"):
        enc = cifar_resnet(int(backbone[6:]), in_channels, width or 64)
        dims = enc.num_features
    elif backbone.startswith("timm:"):
        enc = timm_backbone(backbone[5:], in_channels)
        dims = enc.num_features
    else:
        raise ValueError(f"backbone must be one of {BACKBONES} or 'timm:NAME', got {backbone!r}")
    return ContrastiveModel(enc, dims, num_classes, proj_hidden=proj_hidden, proj_out=proj_out)


@deprecated_arguments(positional=("num_classes",))
def digits_model(*, num_classes: int = 10) -> ContrastiveModel:
    """The default digits architecture (also an import path for ``repsim compare --arch zoo.models:digits_model``)."""
    return create_model(backbone="small_cnn", num_classes=num_classes, in_channels=1, proj_hidden=128, proj_out=64)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
