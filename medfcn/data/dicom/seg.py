"""DICOM Segmentation (SEG) objects aligned frame by frame with their source CT/MR series (highdicom).

The predicted label map lives on the voxel grid of the series as loaded (array axes ``(X, Y, Z)`` with a
RAS affine, MONAI's convention). DICOM SEG frames, however, must sit on the source images: frame ``i``
covers the pixels of source instance ``i``. Rather than assume an axis order or slice direction, every
source pixel's patient position (from ImagePositionPatient, ImageOrientationPatient and PixelSpacing)
is mapped through the inverse affine to a voxel of the label map. A slice that does not fall on the
label grid is an error, not a silent shift.

Segments come from the bundle's classes (:func:`medfcn.data.dicom.segment_codes.class_table`: names and codes
from ``metadata.json``'s ``medfcn.classes``, else the name table, else a local ``99MEDFCN`` code).
Source series may be single-frame slices or one enhanced multi-frame image (frames placed by their
per-frame functional groups).

Example:
    >>> write_dicom_seg(label, affine, case.geometry, "RESULTS/abc/seg.dcm",
    ...                 class_names={1: "liver", 2: "tumour"}, algorithm_name="liver", algorithm_version="0.1.0")
    ...  # doctest: +SKIP
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medfcn._io import atomic_write
from medfcn._version import __version__
from medfcn.data.dicom.segment_codes import (
    ClassInfo,
    algorithm_title,
    apply_modifier,
    as_class_table,
    to_code,
)
from medfcn.data.dicom.sources import Sources, read_sources, source_datasets
from medfcn.errors import InputError

__all__ = [
    "label_to_frames",
    "medfcn_version",
    "read_sources",
    "segment_descriptions",
    "source_planes",
    "write_dicom_seg",
]

_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS (its own inverse)
_OFF_GRID_TOL = 0.2  # voxels: how far a source pixel centre may sit from a label voxel centre


def segment_descriptions(
    classes: Mapping[int, ClassInfo] | Mapping[int, str], *, algorithm_name: str, algorithm_version: str
) -> list[Any]:
    """One ``highdicom.seg.SegmentDescription`` per foreground class (label value = segment number).

    Args:
        classes: label value -> :class:`~medfcn.data.dicom.segment_codes.ClassInfo` (the bundle's
            :func:`~medfcn.data.dicom.segment_codes.class_table`), or label value -> class name (coded from the
            name table); value 0 (background) is skipped.
        algorithm_name: the bundle name; SegmentAlgorithmName/AlgorithmName become
            :func:`~medfcn.data.dicom.segment_codes.algorithm_title` (``"medfcn liver bundle 0.2.0"``).
        algorithm_version: AlgorithmVersion (the bundle version).

    Returns:
        The descriptions, ordered by segment number.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    table = as_class_table(classes)
    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_title(algorithm_name, algorithm_version),
        version=algorithm_version[:64],
        family=codes.cid7162.ArtificialIntelligence,
    )
    out = []
    for value, info in sorted(table.items()):
        out.append(
            hd.seg.SegmentDescription(
                segment_number=int(value),
                segment_label=info.name[:64],
                segmented_property_category=to_code(info.category),
                segmented_property_type=to_code(info.type),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=hd.UID(),
                tracking_id=info.name[:64],
                anatomic_regions=[to_code(info.anatomic_region)] if info.anatomic_region else None,
                primary_anatomic_structures=None,
            )
        )
        apply_modifier(out[-1], info.modifier)
    return out


def source_planes(
    datasets: Sequence[Any],
) -> list[tuple[Any, int | None, np.ndarray, np.ndarray, np.ndarray]]:
    """Every source frame: ``(dataset, frame number or None, origin, step along a row, step down a column)``.

    Positions are patient LPS mm. Single-frame images give one plane each (frame ``None``); an enhanced
    multi-frame image gives one per frame from its functional groups (frame 1..N), in file order.

    Raises:
        InputError: the plane geometry tags are missing.
    """
    from medfcn.data.dicom.enhanced import frame_planes

    out = []
    for ds in datasets:
        planes = frame_planes(ds)
        multi = len(planes) > 1 or "PerFrameFunctionalGroupsSequence" in ds
        for number, (position, iop, spacing) in enumerate(planes, start=1):
            row_spacing, col_spacing = spacing
            o = np.asarray(iop, dtype=np.float64)
            out.append(
                (
                    ds,
                    number if multi else None,
                    np.asarray(position, dtype=np.float64),
                    o[:3] * col_spacing,
                    o[3:] * row_spacing,
                )
            )
    return out


def label_to_frames(label: np.ndarray, affine: np.ndarray, datasets: Sequence[Any]) -> np.ndarray:
    """Resample a label map onto the pixel grids of the source frames (nearest voxel).

    Args:
        label: ``(X, Y, Z)`` integer labels.
        affine: ``(4, 4)`` voxel-to-world matrix of ``label``, RAS mm.
        datasets: the source images (pydicom datasets with Rows, Columns and the plane geometry tags:
            single-frame slices, or enhanced multi-frame images with per-frame functional groups).

    Returns:
        ``(frames, Rows, Columns)`` array of ``label``'s dtype; frame ``i`` lies on source frame ``i``
        (:func:`source_planes` order: datasets in order, the frames of a multi-frame one in file order).

    Raises:
        InputError: a source pixel centre that is not on the label grid (the series and the label do not
            share a geometry) or images of different sizes.
    """
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    frames: list[np.ndarray] = []
    shape = np.asarray(label.shape)
    for ds, number, origin, step_c, step_r in source_planes(datasets):
        rows, cols = int(ds.Rows), int(ds.Columns)
        where = f"frame {number}" if number is not None else f"instance {getattr(ds, 'InstanceNumber', '?')}"
        # voxel index = inv @ RAS(world); world is linear in (r, c), so only 3 points are transformed
        base = inv[:3, :3] @ (_LPS @ origin) + inv[:3, 3]
        dc = inv[:3, :3] @ (_LPS @ step_c)
        dr = inv[:3, :3] @ (_LPS @ step_r)
        r = np.arange(rows, dtype=np.float64)[:, None, None]
        c = np.arange(cols, dtype=np.float64)[None, :, None]
        ijk = base + r * dr + c * dc  # (rows, cols, 3)
        nearest = np.rint(ijk)
        if np.abs(ijk - nearest).max() > _OFF_GRID_TOL:
            raise InputError(
                f"source image ({where}) is not on the label grid "
                f"(off by {np.abs(ijk - nearest).max():.2f} voxels); the mask and the series disagree in geometry"
            )
        idx = nearest.astype(np.int64)
        inside = np.all((idx >= 0) & (idx < shape), axis=-1)
        if not inside.all():
            raise InputError(
                f"source image ({where}) lies outside the label volume "
                f"{tuple(int(s) for s in shape)}; the mask and the series disagree in geometry"
            )
        frames.append(label[idx[..., 0], idx[..., 1], idx[..., 2]])
    if len({f.shape for f in frames}) > 1:
        raise InputError("the source images of one series have different sizes; cannot build one DICOM SEG")
    return np.stack(frames)


def medfcn_version() -> str:
    """The medfcn version (SoftwareVersions of what medfcn writes)."""
    return __version__


def write_dicom_seg(
    label: np.ndarray,
    affine: np.ndarray,
    source_files: Sources,
    out_path: str | os.PathLike[str],
    *,
    class_names: Mapping[int, ClassInfo] | Mapping[int, str],
    algorithm_name: str,
    algorithm_version: str,
    series_description: str = "medfcn segmentation",
    software_version: str | None = None,
) -> Path:
    """Write a binary DICOM SEG for ``label`` that references the source series, atomically.

    Args:
        label: ``(X, Y, Z)`` integer label map on the grid of the series as loaded.
        affine: ``(4, 4)`` RAS voxel-to-world matrix of ``label`` (mm).
        source_files: the source series: the case's checked geometry
            (:attr:`~medfcn.data.cases.Case.geometry`: no source file is read again), or its files
            (single-frame images of one series, or one enhanced multi-frame image).
        out_path: the ``.dcm`` file to write (its folder must exist); written to a temp name first.
        class_names: label value -> :class:`~medfcn.data.dicom.segment_codes.ClassInfo` (names and codes from
            the bundle), or label value -> class name (coded from the name table); one segment per
            foreground value, in this order.
        algorithm_name: the bundle name (the algorithm recorded is ``"medfcn <name> bundle <version>"``).
        algorithm_version: AlgorithmVersion recorded in every segment.
        series_description: SeriesDescription of the new SEG series.
        software_version: SoftwareVersions (default: the medfcn version).

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: unreadable source files, or a geometry that does not match the label.
    """
    import highdicom as hd

    out = Path(out_path)
    datasets = source_datasets(source_files, "SEG")
    frames = label_to_frames(np.asarray(label), affine, datasets).astype(np.uint8)
    table = as_class_table(class_names)
    present = set(table)
    # Values the bundle does not declare would make highdicom fail with a less clear message.
    stray = {int(v) for v in np.unique(frames)} - present - {0}
    if stray:
        raise InputError(f"label values {sorted(stray)} are not among the bundle's classes {sorted(present)}")
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(
            table, algorithm_name=algorithm_name, algorithm_version=algorithm_version
        ),
        series_instance_uid=hd.UID(),
        series_number=int(getattr(datasets[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medfcn",
        manufacturer_model_name=algorithm_name[:64],
        software_versions=software_version or medfcn_version(),
        device_serial_number="0",
        series_description=series_description,
        # Empty frames are left out (smaller files); an all-empty mask keeps them, as highdicom needs a frame.
        omit_empty_frames=bool(frames.any()),
    )
    atomic_write(out, lambda tmp: seg.save_as(tmp))
    return out
