"""Data for medfcn: scan-folder discovery, DICOM/NIfTI reading, MSD datasets, synthetic CT phantoms.

``discovery`` (with ``walk``, ``images``, ``archives``, ``labelmaps`` and the records in ``cases``) finds
the cases; ``dicom/`` is the DICOM wing (headers, series geometry, SEG/RTSTRUCT, segment codes);
``readers`` is the MONAI image reader; ``msd``/``datasets`` read MSD datasets; ``synthetic`` makes phantoms.

Names are imported lazily so that ``import medfcn.data`` stays light.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

_LAZY = {
    # readers.py
    "DicomSeriesReader": "medfcn.data.readers",
    # cases.py (discovery's records) and discovery.py
    "Case": "medfcn.data.cases",
    "Skipped": "medfcn.data.cases",
    "DiscoveryReport": "medfcn.data.cases",
    "find_cases": "medfcn.data.discovery",
    # synthetic.py
    "make_phantom": "medfcn.data.synthetic",
    "write_msd_dataset": "medfcn.data.synthetic",
    "write_dicom_series": "medfcn.data.synthetic",
    # msd.py
    "load_datalist": "medfcn.data.msd",
    "split_datalist": "medfcn.data.msd",
    # dataset_check.py, msd_download.py
    "check_dataset": "medfcn.data.dataset_check",
    "download_msd": "medfcn.data.msd_download",
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
