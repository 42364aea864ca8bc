"""The full configuration of a coupled training run, saved beside its outputs."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

OBJECTIVES = ("cl", "nscl", "supcon", "ce", "balanced", "dcl")
LR_SCALINGS = ("linear", "sqrt", "fourth_root", "constant")


@dataclass
class TrainConfig:
    # data
    data: str = "digits"
    """digits | fashion-mnist[:ROOT] | cifar10:ROOT | cifar100:ROOT | folder:ROOT"""
    classes: int | list[int] | None = None
    """Train on a subset: the first C classes, or an explicit list (relabelled 0..C'-1)."""
    image_size: int | None = None
    """Training crop size (default: 32 for CIFAR, 28 for Fashion-MNIST (no padding), 64 for folders; digits 8x8)."""
    train_samples: int | None = None
    """Train on a class-stratified subset of this many training samples (drawn with ``seed``; the kNN bank and
    the final probes use the same subset); None: the whole training split."""
    balanced_batches: bool = False
    reference_samples: int | None = 2000
    """Samples of the un-augmented test split on which alignment is tracked."""
    num_workers: int = 0
    # models
    objectives: list[str] = field(default_factory=lambda: ["cl", "nscl", "supcon", "ce", "balanced"])
    control: bool = True
    """Also train a second CL model ("cl_control"): it must end identical to "cl" (CKA exactly 1)."""
    backbone: str | None = None
    """small_cnn | resnet18 | resnet50 | timm:NAME (default: small_cnn for digits, resnet18 otherwise)."""
    width: int | None = None
    """Base width (channels of the first stage): small_cnn 32, ResNets 64 (torchvision); another ResNet width
    scales every stage (w, 2w, 4w, 8w)."""
    proj_hidden: int | None = None
    proj_out: int | None = None
    # objectives
    tau: float = 0.5
    include_positive: bool = True
    """Keep p(i) in the denominator of CL and NSCL alike (CL = NT-Xent; NSCL as the authors' code)."""
    supcon_tau: float | None = None
    balanced_alpha: float | None = None
    """Default 1/tau: with balanced_lam = 1 the balanced loss is then tau * DCL."""
    balanced_lam: float = 1.0
    # optimisation
    epochs: int = 60
    batch_size: int = 256
    optimizer: str = "sgd"
    """sgd (momentum 0.9) | lars (timm's LARS, as the papers use at scale)"""
    lr: float = 0.3
    """Learning rate at batch size 256; scaled to batch_size by lr_scaling."""
    lr_scaling: str = "linear"
    weight_decay: float = 1e-4
    warmup_epochs: int = 5
    amp: bool = False
    channels_last: bool = False
    # bookkeeping
    eval_every: int = 5
    checkpoint_every: int = 10
    seed: int = 0
    device: str | None = None
    out: str = "runs/digits"
    progress: bool = True
    final_probes: bool = True
    """Linear probe, kNN and NCCC of every encoder at the end, plus the plots and report.md."""
    probe_l2_grid: list[float] | None = None
    """L2 strengths the final linear probe cross-validates (None: the probes' half-decade grid 1e-5..1e-1)."""
    inference_resamples: int = 200
    """Half-sample resamples for the final alignment intervals and the paired claim intervals (0: off)."""

    def __post_init__(self) -> None:
        unknown = [o for o in self.objectives if o not in OBJECTIVES]
        if unknown or not self.objectives:
            raise ValueError(f"unknown objective(s) {unknown}; choose from {OBJECTIVES}")
        if "cl" not in self.objectives:
            raise ValueError("objectives must include 'cl': alignment is measured against the CL model")
        if self.lr_scaling not in LR_SCALINGS:
            raise ValueError(f"lr_scaling must be one of {LR_SCALINGS}, got {self.lr_scaling!r}")
        if self.optimizer not in ("sgd", "lars"):
            raise ValueError(f"optimizer must be 'sgd' or 'lars', got {self.optimizer!r}")
        if self.train_samples is not None and self.train_samples < 2:
            raise ValueError(f"train_samples must be >= 2 or None (the whole split), got {self.train_samples}")
        if self.width is not None and self.width < 1:
            raise ValueError(f"width must be >= 1 or None (the backbone's default), got {self.width}")
        for name in ("epochs", "batch_size", "eval_every", "checkpoint_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.tau > 0:
            raise ValueError(f"tau must be positive, got {self.tau}")

    @property
    def kind(self) -> str:
        return self.data.partition(":")[0]

    @property
    def run_names(self) -> list[str]:
        return list(dict.fromkeys(self.objectives)) + (["cl_control"] if self.control else [])

    def scaled_lr(self) -> float:
        ratio = self.batch_size / 256
        factor = {"linear": ratio, "sqrt": math.sqrt(ratio), "fourth_root": ratio**0.25, "constant": 1.0}
        return self.lr * factor[self.lr_scaling]

    def resolved(self) -> TrainConfig:
        """A copy with every data-dependent default filled in."""
        digits = self.kind == "digits"
        values = asdict(self)
        values["backbone"] = self.backbone or ("small_cnn" if digits else "resnet18")
        values["proj_hidden"] = self.proj_hidden or (128 if digits else 2048)
        values["proj_out"] = self.proj_out or (64 if digits else 128)
        sizes = {"digits": 8, "fashion-mnist": 28, "folder": 64}
        values["image_size"] = self.image_size or sizes.get(self.kind, 32)
        values["supcon_tau"] = self.supcon_tau or self.tau
        values["balanced_alpha"] = self.balanced_alpha or 1.0 / self.tau
        return TrainConfig(**values)

    def save(self, path) -> Path:
        from repsim.core.io import atomic_write_text

        return atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path) -> TrainConfig:
        """From a JSON or TOML file; unknown keys are an error."""
        path = Path(path)
        if path.suffix == ".toml":
            import tomllib

            values = tomllib.loads(path.read_text())
        else:
            values = json.loads(path.read_text())
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown config key(s) {unknown} in {path}")
        return cls(**values)
