"""Checks for numeric arguments, shared by the sampler and the pipeline so both apply the same rules."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from minidalle.errors import ArgumentError

MAX_BATCH_SIZE = 1 << 16  # examples per forward pass; more is a typo (it would not fit in memory)


def is_number(value) -> bool:
    """A finite int or float (numpy scalars included); booleans are not numbers here."""
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) and math.isfinite(value)


def check_int(name: str, value, low: int, high: int | None, note: str = "") -> int:
    """``value`` as an int in [low, high] (``high`` None: no upper bound), else a ValueError naming it.

    Integral floats pass (e.g. 4.0 from a UI number box); other floats and booleans do not.
    """
    in_range = f"in [{low}, {high}]" if high is not None else f">= {low}"
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, bool)
    ok = ok or (isinstance(value, float) and value.is_integer())
    if not ok or value < low or (high is not None and value > high):
        extra = f" ({note})" if note else ""
        raise ArgumentError(f"{name} must be an integer {in_range}{extra}, got {value!r}.")
    return int(value)


def check_writable_file(flag: str, path: str | Path) -> Path:
    """Fail before any work if ``path`` cannot be written: a folder there, or a parent that is not a
    writable folder (the nearest existing ancestor is checked, for parents still to be made)."""
    path = Path(path)
    if path.is_dir():
        raise ArgumentError(f"{flag} {str(path)!r} is a folder; give a file name.")
    parent = nearest_existing(path.parent)
    if not parent.is_dir():
        raise ArgumentError(f"{flag} {str(path)!r}: {str(parent)!r} is a file, not a folder.")
    if not os.access(parent, os.W_OK):
        raise ArgumentError(f"{flag} {str(path)!r}: the folder {str(parent)!r} is not writable.")
    return path


def nearest_existing(path: Path) -> Path:
    """``path`` if it exists, else its nearest existing ancestor: where making it would write."""
    while not path.exists() and path != path.parent:
        path = path.parent
    return path
