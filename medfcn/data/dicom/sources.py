"""The source images of a derived object (SEG, RTSTRUCT), as the pydicom datasets highdicom takes.

A :class:`~medfcn.data.dicom.geometry.SeriesGeometry` from discovery already holds what the writers need
from every source file (SOP class and instance, position, orientation, pixel spacing, size) and the raw
header of one file of the series (its patient, study, frame-of-reference and equipment modules), so
:func:`source_datasets` builds the datasets without opening a source file again. Given paths instead (or
a geometry without a raw header: deflated files keep none), it reads the headers (no pixel data).

Example:
    >>> datasets = source_datasets(case.geometry, "SEG")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from medfcn.data.dicom.geometry import SeriesGeometry
from medfcn.data.dicom.headers import parse_template
from medfcn.data.dicom.values import to_float
from medfcn.errors import InputError

__all__ = ["Sources", "read_sources", "source_datasets"]

Sources = SeriesGeometry | Sequence[str | os.PathLike[str]]
"""What the writers take: the case's checked geometry, or the files of the source series."""


def read_sources(source_files: Sequence[str | os.PathLike[str]], what: str) -> list[Any]:
    """The headers of the source images of a derived object (no pixel data), in the given order.

    Raises:
        InputError: a file cannot be read as DICOM, or no file was given.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        datasets = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in source_files]
    except (OSError, InvalidDicomError) as err:
        raise InputError(f"cannot read a source DICOM file for the {what}: {err}") from err
    if not datasets:
        raise InputError(f"no source DICOM files given for the {what}")
    return datasets


def source_datasets(sources: Sources, what: str) -> list[Any]:
    """The source datasets of a derived object, in slice order (an enhanced image: its one dataset).

    Raises:
        InputError: as :func:`read_sources`.
    """
    if isinstance(sources, SeriesGeometry):
        built = _from_geometry(sources)
        return built if built is not None else read_sources(sources.paths, what)
    return read_sources(sources, what)


def _from_geometry(geometry: SeriesGeometry) -> list[Any] | None:
    from pydicom.dataset import Dataset

    holder = next((h for h in geometry.headers if h.template is not None), None)
    template = parse_template(holder) if holder is not None else None
    if template is None:
        return None
    if any(h.frame is not None for h in geometry.headers):  # enhanced: the template is the whole header
        return [template] if len(geometry.paths) == 1 else None
    out = []
    for h in geometry.headers:
        if h.position is None or h.orientation is None or h.pixel_spacing is None:
            return None
        ds = Dataset(dict(template.items()))  # its own element table over the shared series elements
        ds.file_meta = template.file_meta
        ds.SOPClassUID = h.sop_class_uid
        ds.SOPInstanceUID = h.sop_instance_uid
        position, orientation, spacing = h.plane_text or ("", "", "")
        ds.ImagePositionPatient = position.split("\\") if position else list(h.position)
        ds.ImageOrientationPatient = orientation.split("\\") if orientation else list(h.orientation)
        ds.PixelSpacing = spacing.split("\\") if spacing else list(h.pixel_spacing)
        ds.Rows, ds.Columns = h.rows, h.columns
        if h.instance_number is not None:
            ds.InstanceNumber = h.instance_number
        for keyword, value in (
            ("SliceThickness", h.slice_thickness),
            ("SpacingBetweenSlices", h.spacing_between_slices),
        ):  # series values, as the template spells them unless this file differs
            if value is None:
                if keyword in ds:
                    del ds[keyword]
            elif to_float(template.get(keyword)) != value:
                setattr(ds, keyword, value)
        out.append(ds)
    return out
