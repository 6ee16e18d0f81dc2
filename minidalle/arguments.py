"""Checks for numeric arguments, shared by the sampler and the pipeline so both apply the same rules."""

from __future__ import annotations

import math

import numpy as np


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
        raise ValueError(f"{name} must be an integer {in_range}{extra}, got {value!r}.")
    return int(value)
