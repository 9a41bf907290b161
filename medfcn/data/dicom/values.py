"""DICOM values as Python numbers: DS/IS strings (or pydicom's values) to floats and ints, or ``None``.

Header parsers (:mod:`medfcn.data.dicom.headers`, :mod:`~medfcn.data.dicom.rawscan`,
:mod:`~medfcn.data.dicom.enhanced`) share these, so a value means the same whoever read it.
"""

from __future__ import annotations

import math
from typing import Any

__all__ = ["to_float", "to_floats", "to_int"]


def to_floats(value: Any, n: int) -> tuple[float, ...] | None:
    """``n`` finite numbers from a DICOM multi-value (DS strings, numbers), else ``None``."""
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def to_float(value: Any) -> float | None:
    """A finite number from a DICOM value, else ``None``."""
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def to_int(value: Any, default: int | None = None) -> int | None:
    """An integer from a DICOM value, else ``default``."""
    try:
        return int(value)
    except (TypeError, ValueError):
        return default
