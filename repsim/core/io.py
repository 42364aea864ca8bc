"""Atomic file writes, for every file the project writes (tables, figures, configs, checkpoints, caches).

Each writer goes to a temporary file in the destination's own folder, which ``os.replace`` then
moves onto the destination: a rename within one file system is atomic, so a reader (or a resumed run
after a crash or Ctrl-C) sees either the old complete file or the new complete file, never half a
file, and the temporary file is removed if the write fails. Public so that ``probes``, ``zoo``, the
examples and the benchmarks share the same writers.

* :func:`atomic_write`: any writer given the temporary path;
* :func:`atomic_write_text`: a string;
* :func:`atomic_save_figure`: a matplotlib figure (format from the suffix, ``png`` by default).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def _umask() -> int:
    # Linux reports the umask in /proc without changing it; elsewhere os.umask can only be read by
    # setting it, so set it back at once (another thread creating a file in between is the only risk).
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then atomically move the result to ``path``; returns ``path``.

    The file gets the mode any other tool would give a new file (``0o666 & ~umask``: 0644 under umask
    022), not the 0600 of the private temporary file it is written to.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(Path(tmp))
        # chmod before the rename, so the file never appears under its name with the wrong mode.
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically; returns ``path``."""
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def atomic_save_figure(fig, path, **kwargs) -> Path:
    """``fig.savefig`` to ``path`` atomically, in the format its suffix names (``png`` without one)."""
    suffix = Path(path).suffix.lstrip(".") or "png"
    return atomic_write(path, lambda tmp: fig.savefig(tmp, format=suffix, **kwargs))
