"""Scoreboard: every received element against the golden model, first mismatch explained.

Pure NumPy (usable without a simulator). A mismatch message names the frame, the
pixel (row, column, beat index), the channel, the stage and both values, e.g.::

    frame 0 pixel (y=1, x=3) beat 9 channel 5 stage u2: RTL -7, golden -6
"""
from __future__ import annotations

import numpy as np

from .vectors import unpack_beat

__all__ = ["Mismatch", "compare_stream"]


class Mismatch(AssertionError):
    """The RTL and the golden model disagree (the message says where and how)."""


def compare_stream(words, expected: np.ndarray, spec: dict, stage: str, *, frame_offset: int = 0) -> int:
    """Compare a stream of payload words with expected frames (N, C, H, W).

    ``spec`` is the stream's tensor record (bits, signed). Raises :class:`Mismatch` at
    the first differing element, or when beats are missing or extra. Returns the number
    of elements compared.
    """
    n, c, h, w = expected.shape
    per_frame = h * w
    bits, signed = spec["bits"], spec["signed"]
    compared = 0
    for i, word in enumerate(words[: n * per_frame]):
        f, px = divmod(i, per_frame)
        y, x = divmod(px, w)
        got = unpack_beat(word, c, bits, signed)
        want = expected[f, :, y, x]
        bad = np.nonzero(got != want)[0]
        if bad.size:
            ch = int(bad[0])
            raise Mismatch(f"frame {f + frame_offset} pixel (y={y}, x={x}) beat {px} channel {ch} stage {stage}: "
                           f"RTL {int(got[ch])}, golden {int(want[ch])} "
                           f"({bad.size} of {c} channels differ in this pixel)")
        compared += c
    if len(words) < n * per_frame:
        i = len(words)
        f, px = divmod(i, per_frame)
        y, x = divmod(px, w)
        raise Mismatch(f"stage {stage}: only {len(words)} of {n * per_frame} beats arrived; first missing is "
                       f"frame {f + frame_offset} pixel (y={y}, x={x}) beat {px}")
    if len(words) > n * per_frame:
        raise Mismatch(f"stage {stage}: {len(words) - n * per_frame} extra beat(s) after the last expected pixel "
                       f"(first extra payload 0x{int(words[n * per_frame]):x})")
    return compared
