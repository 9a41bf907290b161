"""DICOM Segmentation (SEG) objects aligned frame by frame with their source CT/MR series (highdicom).

The predicted label map lives on the voxel grid of the series as loaded (array axes ``(X, Y, Z)`` with a
RAS affine, MONAI's convention). DICOM SEG frames, however, must sit on the source images: frame ``i``
covers the pixels of source instance ``i``. Rather than assume an axis order or slice direction, every
source pixel's patient position (from ImagePositionPatient, ImageOrientationPatient and PixelSpacing)
is mapped through the inverse affine to a voxel of the label map. A slice that does not fall on the
label grid is an error, not a silent shift.

Segments come from the bundle's class names (``channel_def``); standard SNOMED-CT codes are used where
they exist (liver; tumour/lesion/neoplasm as a morphologically abnormal structure in the liver).

Example:
    >>> write_dicom_seg(label, affine, case.paths, "RESULTS/abc/seg.dcm",
    ...                 class_names={1: "liver", 2: "tumour"}, algorithm_name="liver", algorithm_version="0.1.0")
    ...  # doctest: +SKIP
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medfcn.errors import InputError

__all__ = ["label_to_frames", "segment_descriptions", "write_dicom_seg"]

_LPS = np.diag([-1.0, -1.0, 1.0])  # RAS <-> LPS (its own inverse)
_OFF_GRID_TOL = 0.2  # voxels: how far a source pixel centre may sit from a label voxel centre


def _codes_for(name: str, has_liver: bool) -> tuple[Any, Any, list[Any] | None]:
    """(category, type, anatomic regions) codes for a class name; ad-hoc codes when SNOMED has none."""
    from highdicom.sr import CodedConcept
    from pydicom.sr.codedict import codes

    key = name.strip().lower()
    if key == "liver":
        return codes.SCT.AnatomicalStructure, codes.SCT.Liver, None
    if key in {"spleen", "kidney", "pancreas", "lung", "heart", "brain", "prostate"}:
        return codes.SCT.AnatomicalStructure, getattr(codes.SCT, key.capitalize()), None
    if key in {"tumour", "tumor", "neoplasm", "lesion", "cancer", "mass"}:
        region = [codes.SCT.Liver] if has_liver else None
        return codes.SCT.MorphologicallyAbnormalStructure, codes.SCT.Neoplasm, region
    # No standard code: a local coding scheme ("99" prefix, DICOM PS3.16 8.2) that still names the class.
    return (
        codes.SCT.Tissue,
        CodedConcept(value=key[:16] or "class", scheme_designator="99MEDFCN", meaning=name),
        None,
    )


def segment_descriptions(
    class_names: Mapping[int, str], *, algorithm_name: str, algorithm_version: str
) -> list[Any]:
    """One ``highdicom.seg.SegmentDescription`` per foreground class (label value = segment number).

    Args:
        class_names: label value -> class name; value 0 (background) is skipped.
        algorithm_name: AlgorithmName (e.g. the bundle name).
        algorithm_version: AlgorithmVersion (e.g. the bundle version).

    Returns:
        The descriptions, ordered by segment number.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name[:64], version=algorithm_version[:64], family=codes.cid7162.ArtificialIntelligence
    )
    has_liver = any(n.strip().lower() == "liver" for n in class_names.values())
    out = []
    for value, name in sorted(class_names.items()):
        if int(value) == 0:
            continue
        category, prop, regions = _codes_for(name, has_liver)
        out.append(
            hd.seg.SegmentDescription(
                segment_number=int(value),
                segment_label=name[:64],
                segmented_property_category=category,
                segmented_property_type=prop,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=algorithm,
                tracking_uid=hd.UID(),
                tracking_id=name[:64],
                anatomic_regions=regions,
            )
        )
    return out


def _pixel_grid(ds: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Patient (LPS, mm) position of pixel (0, 0) and the steps along a row (+column) and a column (+row)."""
    try:
        origin = np.asarray([float(v) for v in ds.ImagePositionPatient])
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient])
        row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    except (AttributeError, TypeError, ValueError) as err:
        raise InputError(
            "a source DICOM image lacks ImagePositionPatient/ImageOrientationPatient/PixelSpacing; "
            "a DICOM SEG cannot be placed on it"
        ) from err
    return origin, iop[:3] * col_spacing, iop[3:] * row_spacing


def label_to_frames(label: np.ndarray, affine: np.ndarray, datasets: Sequence[Any]) -> np.ndarray:
    """Resample a label map onto the pixel grids of single-frame source images (nearest voxel).

    Args:
        label: ``(X, Y, Z)`` integer labels.
        affine: ``(4, 4)`` voxel-to-world matrix of ``label``, RAS mm.
        datasets: the source images (pydicom datasets with Rows, Columns and the plane geometry tags).

    Returns:
        ``(len(datasets), Rows, Columns)`` array of ``label``'s dtype; frame ``i`` lies on ``datasets[i]``.

    Raises:
        InputError: a source pixel centre that is not on the label grid (the series and the label do not
            share a geometry) or images of different sizes.
    """
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    frames: list[np.ndarray] = []
    shape = np.asarray(label.shape)
    for ds in datasets:
        rows, cols = int(ds.Rows), int(ds.Columns)
        origin, step_c, step_r = _pixel_grid(ds)
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
                f"source image (instance {getattr(ds, 'InstanceNumber', '?')}) is not on the label grid "
                f"(off by {np.abs(ijk - nearest).max():.2f} voxels); the mask and the series disagree in geometry"
            )
        idx = nearest.astype(np.int64)
        inside = np.all((idx >= 0) & (idx < shape), axis=-1)
        if not inside.all():
            raise InputError(
                f"source image (instance {getattr(ds, 'InstanceNumber', '?')}) lies outside the label volume "
                f"{tuple(int(s) for s in shape)}; the mask and the series disagree in geometry"
            )
        frames.append(label[idx[..., 0], idx[..., 1], idx[..., 2]])
    if len({f.shape for f in frames}) > 1:
        raise InputError("the source images of one series have different sizes; cannot build one DICOM SEG")
    return np.stack(frames)


def write_dicom_seg(
    label: np.ndarray,
    affine: np.ndarray,
    source_files: Sequence[str | os.PathLike[str]],
    out_path: str | os.PathLike[str],
    *,
    class_names: Mapping[int, str],
    algorithm_name: str,
    algorithm_version: str,
    series_description: str = "medfcn segmentation",
    software_version: str | None = None,
) -> Path:
    """Write a binary DICOM SEG for ``label`` that references the source series, atomically.

    Args:
        label: ``(X, Y, Z)`` integer label map on the grid of the series as loaded.
        affine: ``(4, 4)`` RAS voxel-to-world matrix of ``label`` (mm).
        source_files: the files of the source series (single-frame images of one series).
        out_path: the ``.dcm`` file to write (its folder must exist); written to a temp name first.
        class_names: label value -> class name (one segment per foreground value, in this order).
        algorithm_name: AlgorithmName recorded in every segment.
        algorithm_version: AlgorithmVersion recorded in every segment.
        series_description: SeriesDescription of the new SEG series.
        software_version: SoftwareVersions (default: the medfcn version).

    Returns:
        ``out_path`` as a :class:`~pathlib.Path`.

    Raises:
        InputError: unreadable source files, or a geometry that does not match the label.
    """
    import highdicom as hd
    import pydicom
    from pydicom.errors import InvalidDicomError

    from medfcn import __version__

    out = Path(out_path)
    try:
        datasets = [pydicom.dcmread(str(p), stop_before_pixels=True) for p in source_files]
    except (OSError, InvalidDicomError) as err:
        raise InputError(f"cannot read a source DICOM file for the SEG: {err}") from err
    if not datasets:
        raise InputError("no source DICOM files given for the SEG")
    frames = label_to_frames(np.asarray(label), affine, datasets).astype(np.uint8)
    present = {int(v) for v in class_names if int(v) != 0}
    # Values the bundle does not declare would make highdicom fail with a less clear message.
    stray = {int(v) for v in np.unique(frames)} - present - {0}
    if stray:
        raise InputError(f"label values {sorted(stray)} are not among the bundle's classes {sorted(present)}")
    seg = hd.seg.Segmentation(
        source_images=datasets,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=segment_descriptions(
            class_names, algorithm_name=algorithm_name, algorithm_version=algorithm_version
        ),
        series_instance_uid=hd.UID(),
        series_number=int(getattr(datasets[0], "SeriesNumber", 0) or 0) + 1000,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medfcn",
        manufacturer_model_name=algorithm_name[:64],
        software_versions=software_version or __version__,
        device_serial_number="0",
        series_description=series_description,
        # Empty frames are left out (smaller files); an all-empty mask keeps them, as highdicom needs a frame.
        omit_empty_frames=bool(frames.any()),
    )
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.stem}.", suffix=".tmp.dcm")
    os.close(fd)
    try:
        seg.save_as(tmp_name)
        umask = os.umask(0o022)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)  # mkstemp makes 0600; results are ordinary files
        os.replace(tmp_name, out)
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    return out
