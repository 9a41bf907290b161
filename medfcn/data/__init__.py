"""Data for medfcn: DICOM/NIfTI reading, scan-folder discovery, MSD datasets, synthetic CT phantoms.

Names are imported lazily so that ``import medfcn.data`` stays light.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

_LAZY = {
    # readers.py
    "DicomSeriesReader": "medfcn.data.readers",
    # discovery.py
    "Case": "medfcn.data.discovery",
    "Skipped": "medfcn.data.discovery",
    "DiscoveryReport": "medfcn.data.discovery",
    "find_cases": "medfcn.data.discovery",
    # synthetic.py
    "make_phantom": "medfcn.data.synthetic",
    "write_msd_dataset": "medfcn.data.synthetic",
    "write_dicom_series": "medfcn.data.synthetic",
    # msd.py
    "load_datalist": "medfcn.data.msd",
    "split_datalist": "medfcn.data.msd",
    "check_dataset": "medfcn.data.msd",
    "download_msd": "medfcn.data.msd",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # submodules: `from medfcn.data import msd`
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'medfcn.data' has no attribute {name!r}")
