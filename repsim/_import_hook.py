"""Run the torchvision guard automatically, just before torchvision is first imported.

``scripts/setup.sh`` writes a one-line ``repsim_torchvision_guard.pth`` into the environment's
site-packages that calls :func:`install`. Without it, ``import repsim`` (or ``probes``/``zoo``)
before ``import torchvision``/``import timm`` does the same job. Only a finder is installed at
start-up; torch is imported only when torchvision itself is being imported.
"""

from __future__ import annotations

import sys


class _GuardFinder:
    @classmethod
    def find_spec(cls, name, path=None, target=None):
        if name == "torchvision":
            if cls in sys.meta_path:
                sys.meta_path.remove(cls)  # once is enough
            from repsim.core.compat import ensure_torchvision_importable

            ensure_torchvision_importable()
        return None  # let the normal finders import it


def install() -> None:
    installed = any(getattr(f, "__name__", "") == "_GuardFinder" for f in sys.meta_path)
    if "torchvision" not in sys.modules and not installed:
        sys.meta_path.insert(0, _GuardFinder)
