"""Memory budgets: parsing a budget, the memory available now, formatting bytes, and the refusal error.

The helpers every wing uses to estimate before it allocates; the memory *plans* of a comparison
(which route each measure takes) live in :mod:`repsim.pipeline.plans`.
"""

from __future__ import annotations

import os
import re

import torch

DEFAULT_FRACTION = 0.6  # of the memory available when the plan is made
_UNITS = {"": 1, "b": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30,
          "ti": 2**40}  # fmt: skip


class MemoryBudgetError(ValueError):
    """No exact route of a requested measure fits the memory budget (raised before any batch is accumulated)."""


def parse_memory(memory, device: torch.device | None = None) -> int:
    """A memory budget in bytes: an int (bytes), a string such as ``"8GB"``/``"512MiB"``, or None
    (``DEFAULT_FRACTION`` of the memory available now: free device memory on a GPU, else RAM)."""
    if memory is None:
        return int(DEFAULT_FRACTION * available_memory(device))
    if isinstance(memory, bool):
        raise ValueError(f"memory must be a number of bytes or a string like '8GB', got {memory!r}")
    if isinstance(memory, (int, float)):
        if not memory > 0:
            raise ValueError(f"memory must be positive, got {memory}")
        return int(memory)
    if isinstance(memory, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?i?)[bB]?\s*", memory)
        if m is None:
            raise ValueError(f"memory must look like '8GB', '512MiB' or '2e9', got {memory!r}")
        value = float(m.group(1)) * _UNITS[m.group(2).lower()]
        if not value > 0:
            raise ValueError(f"memory must be positive, got {memory!r}")
        return int(value)
    raise ValueError(f"memory must be a number of bytes or a string like '8GB', got {type(memory).__name__}")


def available_memory(device: torch.device | None = None) -> int:
    """Bytes available now: free device memory on CUDA; else the kernel's MemAvailable (and the cgroup limit)."""
    if device is not None and torch.device(device).type == "cuda":
        free, _ = torch.cuda.mem_get_info(torch.device(device))
        return int(free)
    avail = None
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    avail = int(line.split()[1]) * 1024
                    break
    except OSError:
        pass
    if avail is None:
        avail = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
    try:  # a container's limit can be far below the machine's
        with open("/sys/fs/cgroup/memory.max") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current") as f:
            used = int(f.read().strip())
        if limit != "max":
            avail = min(avail, int(limit) - used)
    except (OSError, ValueError):
        pass
    return int(avail)


def format_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
