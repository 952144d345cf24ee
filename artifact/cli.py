"""The command-line conventions every tool of the package shares (NumPy-free, stdlib only).

Contract for every CLI (``python -m artifact``, ``model.*``, ``hw.generate``, ``sim``,
``deploy.*``, ``bench/*``):

* Bad input (a usage error, a bad option value, a bad or damaged file) is **one line** on
  stderr, ``PROG: error: WHAT IS WRONG; WHAT TO DO``, exit status **2**, no traceback,
  and nothing written: every path and option is checked before work starts.
* Numeric options are parsed by the typed converters below, which refuse NaN, inf and
  values outside the option's range (argparse reports their ``ArgumentTypeError`` as
  ``PROG: error: argument --x: ...`` in one line through :class:`Parser`).
* Output folders are checked with :func:`check_out_dir` (an existing file in the way,
  a read-only or missing parent is an error before anything is written).

Use::

    ap = Parser(prog="python -m tool", description=...)
    ap.add_argument("--clock-mhz", type=positive_float)
    ap.add_argument("--multipliers", type=int_range(1, 100_000))
    args = ap.parse_args(argv)
    try:
        out = check_out_dir(args.out)
        ...
    except (UsageError, ArtifactError, OSError) as e:
        return fail(ap.prog, e)
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

__all__ = [
    "Parser", "UsageError", "fail", "one_line",
    "int_range", "positive_int", "nonneg_int", "float_range", "positive_float", "unit_float",
    "check_out_dir", "check_out_file", "check_in_file", "check_number", "load_npy",
]

USAGE_EXIT = 2


class UsageError(ValueError):
    """Bad user input; the message is one line that says what is wrong and what to do."""


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors are one line (no usage block), exit 2."""

    def error(self, message):
        sys.stderr.write(f"{self.prog}: error: {one_line(message)}\n")
        sys.exit(USAGE_EXIT)


def one_line(e) -> str:
    """The first line of an exception's (or a string's) message, never empty."""
    text = str(e).strip()
    if not text:
        return type(e).__name__ if isinstance(e, BaseException) else "error"
    first = text.splitlines()[0]
    if isinstance(e, OSError) and e.filename is not None and str(e.filename) not in first:
        first = f"{e.filename}: {first}"
    return first


def fail(prog: str, e, code: int = USAGE_EXIT) -> int:
    """Print ``PROG: error: <one line>`` to stderr and return ``code`` (2 by default)."""
    sys.stderr.write(f"{prog}: error: {one_line(e)}\n")
    return code


# ----------------------------------------------------------------------------- numbers

def int_range(lo: int | None = None, hi: int | None = None):
    """argparse type: an integer in ``[lo, hi]`` (either bound may be None)."""
    def parse(text: str) -> int:
        try:
            value = int(str(text).strip(), 10)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if _outside(value, lo, hi):
            raise argparse.ArgumentTypeError(f"{value} is outside {_describe(lo, hi)}")
        return value
    parse.__name__ = "integer"
    return parse


def float_range(lo: float | None = None, hi: float | None = None, lo_open: bool = False):
    """argparse type: a finite float in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``)."""
    def parse(text: str) -> float:
        try:
            value = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text} is not a finite number")
        if _outside(value, lo, hi, lo_open):
            raise argparse.ArgumentTypeError(f"{value:g} is outside {_describe(lo, hi, lo_open)}")
        return value
    parse.__name__ = "number"
    return parse


def _outside(value, lo, hi, lo_open: bool = False) -> bool:
    """Whether ``value`` lies outside ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``; None: unbounded)."""
    return (lo is not None and (value < lo or (lo_open and value == lo))) or (hi is not None and value > hi)


def _describe(lo, hi, lo_open: bool = False) -> str:
    left = "(" if lo_open else "["
    if lo is not None and hi is not None:
        return f"the allowed range {left}{lo:g}, {hi:g}]"
    if lo is not None:
        return f"the allowed range: {'>' if lo_open else '>='} {lo:g}"
    return f"the allowed range: <= {hi:g}"


positive_int = int_range(1)
nonneg_int = int_range(0)
positive_float = float_range(0.0, None, lo_open=True)
unit_float = float_range(0.0, 1.0)


def check_number(value, what: str, lo=None, hi=None, *, lo_open: bool = False, integer: bool = False,
                 error=ValueError):
    """An API-level option value: a real number (an integer with ``integer``; never a bool or
    a string), finite, in ``[lo, hi]`` (``(lo, hi]`` with ``lo_open``). Returns it as
    int/float; raises ``error`` with a one-line message naming ``what`` otherwise."""
    import numbers
    kind = numbers.Integral if integer else numbers.Real
    if isinstance(value, bool) or not isinstance(value, kind):
        raise error(f"{what} must be {'an integer' if integer else 'a number'}, got {value!r}")
    value = int(value) if integer else float(value)
    if not math.isfinite(value):
        raise error(f"{what} {value!r} is not a finite number")
    if _outside(value, lo, hi, lo_open):
        raise error(f"{what} {value:g} is outside {_describe(lo, hi, lo_open)}")
    return value


# ----------------------------------------------------------------------------- paths

def check_in_file(path, what: str = "input") -> Path:
    """An existing readable regular file, else UsageError."""
    p = Path(path)
    if not p.exists():
        raise UsageError(f"{what} {p} does not exist")
    if not p.is_file():
        raise UsageError(f"{what} {p} is not a file")
    if not os.access(p, os.R_OK):
        raise UsageError(f"{what} {p} is not readable")
    return p


def _writable_parent(p: Path, what: str) -> None:
    parent = p.parent if str(p.parent) else Path(".")
    probe = parent
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise UsageError(f"{what} {p}: {probe} is a file, not a folder; choose another path")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{what} {p}: {probe} is not writable; choose another path")


def check_out_dir(path, what: str = "--out") -> Path:
    """Validate an output folder before any work starts (nothing is created).

    It may exist (as a folder we can write into) or not (then its nearest existing
    ancestor must be a writable folder). A file in its place is an error.
    """
    p = Path(path)
    if str(path).strip() == "":
        raise UsageError(f"{what} is empty; give a folder")
    if p.exists():
        if not p.is_dir():
            raise UsageError(f"{what} {p} exists and is not a folder; choose another path")
        if not os.access(p, os.W_OK | os.X_OK):
            raise UsageError(f"{what} {p} is not writable; choose another folder")
        return p
    _writable_parent(p, what)
    return p


def check_out_file(path, suffix: str | None = None, what: str = "--output") -> Path:
    """Validate an output file path (not written yet): not a folder, parent writable,
    and, when ``suffix`` is given, ending in it (nothing is appended silently)."""
    p = Path(path)
    if str(path).strip() == "":
        raise UsageError(f"{what} is empty; give a file name")
    if suffix and p.suffix != suffix:
        raise UsageError(f"{what} {p} must end in {suffix}")
    if p.is_dir():
        raise UsageError(f"{what} {p} is a folder; give a file name")
    if p.exists() and not p.is_file():
        raise UsageError(f"{what} {p} exists and is not a regular file (a device or socket?); give a file name")
    if p.exists() and not os.access(p, os.W_OK):
        raise UsageError(f"{what} {p} is not writable")
    _writable_parent(p, what)
    return p


def load_npy(path, what: str = "--input"):
    """One array from a ``.npy`` file, never unpickling: UsageError (one line) when the file
    is missing, damaged (truncated, an object array) or an ``.npz`` archive."""
    import numpy as np
    p = check_in_file(path, what)
    try:
        x = np.load(p, allow_pickle=False)
    except Exception as e:  # truncated (EOFError/ValueError), pickled objects (ValueError), not .npy
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise UsageError(f"{what} {p}: not a readable .npy array ({msg}); save it with numpy.save") from None
    if not isinstance(x, np.ndarray):
        x.close()
        raise UsageError(f"{what} {p}: a .npz archive, not one .npy array")
    return x
