"""Atomic file writes: readers see the old file or the new one, never half of one.

Every report, description and generated source the package writes goes through
here (temp file in the same folder, then ``os.replace``).
"""
from __future__ import annotations

import os
import tempfile

__all__ = ["atomic_write", "atomic_write_text"]


def atomic_write(path, write) -> None:
    """Call ``write(tmp_path)`` then rename the temp file over ``path``; on error the
    temp file is removed and ``path`` is untouched."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    def write(tmp):
        with open(tmp, "w") as f:
            f.write(text)
    atomic_write(path, write)
