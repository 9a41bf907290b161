"""The DICOM wing of medfcn: headers in, geometry checked once, derived objects out.

=====================  ====================================================================
module                 what it holds
=====================  ====================================================================
``headers``            :class:`DicomHeader`, :func:`read_header` (one open per file)
``rawscan``            the fast raw-element header scan (pydicom for anything unusual)
``headerpass``         the header pass of discovery, on worker processes for large trees
``objects``            what a file holds: image, or a non-image object skipped with its reason
``geometry``           :class:`SeriesGeometry`, :func:`validate_series` (sort, checks, affine)
``series``             grouping by SeriesInstanceUID, the series checks, :func:`series_geometry`
``enhanced``           enhanced multi-frame CT/MR/PET: per-frame functional groups
``sources``            source datasets of derived objects, built from a geometry without re-reading
``seg``                DICOM SEG writing (highdicom), frame by frame on the source frames
``rtstruct``           RT Structure Sets: closed planar contours along the mask's pixel edges
``seg_labels``         a DICOM SEG as a ground-truth label map of its series
``segment_codes``      the one segment-coding table (bundle classes -> names and SNOMED codes)
``values``             DS/IS values as numbers
=====================  ====================================================================

Discovery (:mod:`medfcn.data.discovery`) is the only caller that groups headers into cases; the reader
(:mod:`medfcn.data.readers`) and the writers take the :class:`SeriesGeometry` a case carries. Names are
imported lazily so that ``import medfcn.data.dicom`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "DicomHeader": "medfcn.data.dicom.headers",
    "NotDicom": "medfcn.data.dicom.headers",
    "read_header": "medfcn.data.dicom.headers",
    "SeriesGeometry": "medfcn.data.dicom.geometry",
    "validate_series": "medfcn.data.dicom.geometry",
    "series_geometry": "medfcn.data.dicom.series",
    "write_dicom_seg": "medfcn.data.dicom.seg",
    "write_rtstruct": "medfcn.data.dicom.rtstruct",
    "read_seg_label": "medfcn.data.dicom.seg_labels",
    "class_table": "medfcn.data.dicom.segment_codes",
}

__all__ = list(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'medfcn.data.dicom' has no attribute {name!r}")
