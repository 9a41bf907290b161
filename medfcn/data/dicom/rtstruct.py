"""DICOM RT Structure Sets (RTSTRUCT) from a label map: closed planar contours on the source slices.

Radiotherapy planning systems read structures as polygons, one or more per slice, in patient
coordinates. The contours here are placed exactly as the DICOM SEG is: each source frame's pixel grid
comes from its own ImagePositionPatient, ImageOrientationPatient and PixelSpacing (or the functional
groups of an enhanced image), and the label map is resampled onto it by
:func:`medfcn.data.dicom.seg.label_to_frames`, so SEG, RTSTRUCT and the NIfTI mask describe the same
voxels.

Each contour follows the **pixel edges** of a connected region (the boundary between pixels in and
out of the structure), with collinear points dropped. A planning system that fills a contour by the
usual even-odd rule at pixel centres therefore gets back exactly the pixels of the mask; holes are
contours of their own inside the outer one (the even-odd rule, as DICOM PS3.3 C.8.8.6 describes for
nested contours). rt-utils, the maintained RTSTRUCT library, traces pixel *centres* with OpenCV (which
shrinks every structure by half a pixel and would add ``opencv-python`` as a dependency) and loads
series by folder, which mixes series that share one; pydicom writes the object here.

ROI names are the bundle's class names; each ROI carries its SNOMED code in the RT ROI Identification
Code Sequence (:mod:`medfcn.data.dicom.segment_codes`).

Example:
    >>> write_rtstruct(label, affine, case.geometry, "out/rtstruct.dcm", classes=class_table(meta),
    ...                algorithm_name="liver", algorithm_version="0.2.0")  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from medfcn._io import atomic_write
from medfcn.data.dicom.seg import label_to_frames, medfcn_version, source_planes
from medfcn.data.dicom.segment_codes import ClassInfo, algorithm_title, as_class_table
from medfcn.data.dicom.sources import Sources, source_datasets
from medfcn.errors import InputError

__all__ = ["mask_contours", "rasterise_contours", "write_rtstruct"]

_COLOURS = [[0, 200, 80], [230, 40, 40], [40, 120, 255], [250, 200, 0], [200, 60, 220], [0, 210, 210]]
_PATIENT_STUDY = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyInstanceUID",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed polygons along the pixel edges of a 2D mask.

    Args:
        mask: ``(rows, cols)`` boolean.

    Returns:
        One ``(N, 2)`` float array of ``(row, col)`` vertices per closed contour (outer boundaries and
        holes), in pixel-index units: pixel ``(r, c)`` spans ``[r - 0.5, r + 0.5] x [c - 0.5, c + 0.5]``.
        The last vertex is not repeated.
    """
    m = np.pad(np.asarray(mask, dtype=bool), 1)
    inside = m[1:-1, 1:-1]
    # Boundary edges as directed segments between pixel corners (corner (R, C) = top-left of pixel (R, C)).
    # Walking every edge of an inside pixel clockwise (rows down, columns right) leaves only the
    # boundary once edges shared by two inside pixels are dropped.
    edges: dict[tuple[int, int], list[tuple[int, int]]] = {}
    sides = (
        (~m[:-2, 1:-1], (0, 0), (0, 1)),  # top: neighbour above is out
        (~m[1:-1, 2:], (0, 1), (1, 1)),  # right
        (~m[2:, 1:-1], (1, 1), (1, 0)),  # bottom
        (~m[1:-1, :-2], (1, 0), (0, 0)),  # left
    )
    for out, a, b in sides:
        rr, cc = np.nonzero(inside & out)
        for r, c in zip(rr.tolist(), cc.tolist(), strict=True):
            edges.setdefault((r + a[0], c + a[1]), []).append((r + b[0], c + b[1]))
    contours: list[np.ndarray] = []
    while edges:
        start = next(iter(edges))
        loop = [start]
        current = start
        while True:
            ends = edges[current]
            nxt = ends.pop()
            if not ends:
                del edges[current]
            if nxt == start:
                break
            loop.append(nxt)
            current = nxt
        pts = np.asarray(loop, dtype=np.float64)
        # drop corners where the direction does not change
        prev = np.roll(pts, 1, axis=0)
        nxt_pts = np.roll(pts, -1, axis=0)
        d1, d2 = pts - prev, nxt_pts - pts
        turn = d1[:, 0] * d2[:, 1] - d1[:, 1] * d2[:, 0] != 0
        contours.append(pts[turn] - 0.5)
    return contours


def rasterise_contours(contours: Sequence[np.ndarray], shape: tuple[int, int]) -> np.ndarray:
    """Fill ``(row, col)`` polygons by the even-odd rule at pixel centres (what a planning system does).

    Returns:
        ``shape`` boolean mask.
    """
    rows, cols = shape
    out = np.zeros(shape, dtype=bool)
    centres_c = np.arange(cols, dtype=np.float64)
    for poly in contours:
        r0, c0 = poly[:, 0], poly[:, 1]
        r1, c1 = np.roll(r0, -1), np.roll(c0, -1)
        for r in range(rows):
            crossing = (r0 <= r) != (r1 <= r)
            if not crossing.any():
                continue
            t = (r - r0[crossing]) / (r1[crossing] - r0[crossing])
            xs = np.sort(c0[crossing] + t * (c1[crossing] - c0[crossing]))
            count = (centres_c[:, None] > xs[None, :]).sum(axis=1)
            out[r] ^= count % 2 == 1
    return out


def _ds_number(value: float) -> str:
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _code_item(code: tuple[str, str, str]) -> Any:
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code[1], code[0], code[2]
    return item


def write_rtstruct(
    label: np.ndarray,
    affine: np.ndarray,
    source_files: Sources,
    out_path: str | os.PathLike[str],
    *,
    classes: Mapping[int, ClassInfo] | Mapping[int, str],
    algorithm_name: str,
    algorithm_version: str,
    series_description: str = "medfcn structures",
) -> Path:
    """Write an RTSTRUCT for ``label`` that references the source series, atomically.

    Args:
        label: ``(X, Y, Z)`` integer label map on the grid of the series as loaded.
        affine: ``(4, 4)`` RAS voxel-to-world matrix of ``label`` (mm).
        source_files: the source series: the case's checked geometry (no source file read again), or
            its files (single-frame slices or one enhanced image).
        out_path: the ``.dcm`` file to write (its folder must exist).
        classes: label value -> :class:`~medfcn.data.dicom.segment_codes.ClassInfo` (or -> name): one ROI each.
        algorithm_name, algorithm_version: the bundle (recorded as the ROI generation algorithm).
        series_description: SeriesDescription of the new RTSTRUCT series.

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: unreadable sources, sources without a Frame of Reference, or a geometry that does
            not match the label.
    """
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, RTStructureSetStorage, generate_uid

    out = Path(out_path)
    datasets = source_datasets(source_files, "RTSTRUCT")
    table = as_class_table(classes)
    frames = label_to_frames(np.asarray(label), affine, datasets)
    planes = source_planes(datasets)
    first = datasets[0]
    frame_of_reference = str(first.get("FrameOfReferenceUID", "") or "")
    if not frame_of_reference:
        raise InputError("the source series has no FrameOfReferenceUID; an RTSTRUCT cannot be placed on it")

    now = datetime.now(timezone.utc)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = RTStructureSetStorage
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = first.get("SpecificCharacterSet", "ISO_IR 192")
    ds.SOPClassUID = RTStructureSetStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.InstanceCreationDate, ds.InstanceCreationTime = now.strftime("%Y%m%d"), now.strftime("%H%M%S")
    for keyword in _PATIENT_STUDY:  # the structure set belongs to the same patient and study
        setattr(ds, keyword, first.get(keyword, ""))
    ds.FrameOfReferenceUID = frame_of_reference  # Frame of Reference module (PS3.3 A.19, 2019 on)
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "")
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = int(first.get("SeriesNumber", 0) or 0) + 2000
    ds.SeriesDescription = series_description[:64]
    ds.OperatorsName = ""
    ds.Manufacturer = "medfcn"
    ds.ManufacturerModelName = algorithm_name[:64]
    ds.SoftwareVersions = medfcn_version()
    ds.InstanceNumber = 1
    ds.StructureSetLabel = algorithm_name[:16] or "medfcn"
    ds.StructureSetName = algorithm_title(algorithm_name, algorithm_version)
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.ApprovalStatus = "UNAPPROVED"

    def image_ref(source: Any, number: int | None) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = source.SOPClassUID
        item.ReferencedSOPInstanceUID = source.SOPInstanceUID
        if number is not None:
            item.ReferencedFrameNumber = number
        return item

    series = Dataset()
    series.SeriesInstanceUID = first.SeriesInstanceUID
    series.ContourImageSequence = [image_ref(src, number) for src, number, *_ in planes]
    study = Dataset()
    # Detached Study Management (retired, no pydicom.uid constant): what planning systems expect here
    study.ReferencedSOPClassUID = "1.2.840.10008.3.1.2.3.1"
    study.ReferencedSOPInstanceUID = first.StudyInstanceUID
    study.RTReferencedSeriesSequence = [series]
    for_item = Dataset()
    for_item.FrameOfReferenceUID = frame_of_reference
    for_item.RTReferencedStudySequence = [study]
    ds.ReferencedFrameOfReferenceSequence = [for_item]

    rois, roi_contours, observations = [], [], []
    for k, (value, info) in enumerate(sorted(table.items())):
        roi = Dataset()
        roi.ROINumber = int(value)
        roi.ReferencedFrameOfReferenceUID = frame_of_reference
        roi.ROIName = info.name[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = algorithm_title(algorithm_name, algorithm_version)
        rois.append(roi)
        contour_items = []
        for (src, number, origin, step_c, step_r), frame in zip(planes, frames, strict=True):
            mask = frame == value
            if not mask.any():
                continue
            for poly in mask_contours(mask):
                world = origin + poly[:, 0:1] * step_r + poly[:, 1:2] * step_c  # (N, 3) LPS mm
                item = Dataset()
                item.ContourImageSequence = [image_ref(src, number)]
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(world)
                item.ContourData = [_ds_number(v) for v in world.reshape(-1)]
                contour_items.append(item)
        rc = Dataset()
        rc.ReferencedROINumber = int(value)
        rc.ROIDisplayColor = _COLOURS[k % len(_COLOURS)]
        if contour_items:
            rc.ContourSequence = contour_items
        roi_contours.append(rc)
        obs = Dataset()
        obs.ObservationNumber = int(value)
        obs.ReferencedROINumber = int(value)
        obs.RTROIInterpretedType = "ORGAN" if info.category[1] == "91723000" else ""
        obs.ROIInterpreter = ""
        obs.RTROIIdentificationCodeSequence = [_code_item(info.type)]
        observations.append(obs)
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = roi_contours
    ds.RTROIObservationsSequence = observations
    pydicom.dataset.validate_file_meta(ds.file_meta, enforce_standard=True)
    atomic_write(out, lambda tmp: ds.save_as(tmp, enforce_file_format=True))
    return out
