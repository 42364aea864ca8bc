"""zoo: CL, NSCL, SupCon, CE and balanced-loss models trained in lockstep under shared randomness."""

import repsim  # noqa: F401  (runs the torchvision guard before anything imports torchvision)
from repsim.core.deprecation import deprecated_arguments

from .config import TrainConfig
from .losses import balanced, contrastive, cross_entropy, dcl, nscl, nt_xent, supcon
from .models import ContrastiveModel, create_model, digits_model

__all__ = [
    "ContrastiveModel",
    "TrainConfig",
    "balanced",
    "contrastive",
    "create_model",
    "cross_entropy",
    "dcl",
    "digits_model",
    "nscl",
    "nt_xent",
    "supcon",
    "train",
]


@deprecated_arguments(positional=("resume",))
def train(config, *, resume: bool = False):
    """Train a coupled family; see :class:`zoo.train.Trainer`."""
    from .train import train as _train

    return _train(config, resume=resume)
