"""Atomic file writes: readers see the old file or the new one, never half of one.

Every report, description and generated source the package writes goes through
here (temp file in the same folder, then ``os.replace``).
"""
from __future__ import annotations

import os
import tempfile

__all__ = ["atomic_write", "atomic_write_text", "atomic_save_npy", "umask_mode"]


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` less the process umask: what ``open()``/``mkdir()`` would have created."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def atomic_write(path, write) -> None:
    """Call ``write(tmp_path)`` then rename the temp file over ``path``; on error the
    temp file is removed and ``path`` is untouched. The file gets the mode a plain
    ``open(path, "w")`` would give it (umask honoured; an existing file keeps its mode)."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    os.close(fd)
    try:
        write(tmp)
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = umask_mode(0o666)
        os.chmod(tmp, mode)
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


def atomic_save_npy(path, array) -> None:
    """Write ``array`` as ``.npy`` at exactly ``path`` (no suffix appended), atomically."""
    import numpy as np

    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)
    atomic_write(path, write)
