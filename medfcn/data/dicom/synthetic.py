"""Synthetic DICOM series: a phantom volume (or any volume) written as single-frame CT or MR slices.

:func:`write_dicom_series` is what the tests, ``medfcn data synth --dicom`` and the discovery benchmark
use to make DICOM with a known geometry (oblique, anisotropic, reversed instance numbers, compressed
transfer syntaxes). :mod:`medfcn.data.synthetic` re-exports it beside the phantom generator.

Example:
    >>> paths = write_dicom_series(ph.image, ph.affine, "scans/series_a", seed=1)  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydicom import uid

from medfcn._io import atomic_write

__all__ = ["CT_IMAGE_STORAGE", "MR_IMAGE_STORAGE", "write_dicom_series"]

CT_IMAGE_STORAGE = uid.CTImageStorage
"""SOP Class UID of CT Image Storage."""

MR_IMAGE_STORAGE = uid.MRImageStorage
"""SOP Class UID of MR Image Storage."""


def _ds(value: float) -> Any:
    """A decimal string that fits DICOM's 16 characters with as much precision as possible."""
    from pydicom.valuerep import DSfloat

    shortest = repr(float(value))  # "2.54" rather than "2.54000000000000" when it fits exactly
    if len(shortest) <= 16 and "e" not in shortest:
        return DSfloat(shortest)
    return DSfloat(float(value), auto_format=True)


def _save_dicom(ds: Any, path: Path) -> None:
    # The encoding (explicit VR little endian, deflated or encapsulated) follows file_meta.TransferSyntaxUID.
    ds.save_as(path, enforce_file_format=True)


def write_dicom_series(
    image_hu: np.ndarray,
    affine: np.ndarray,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    series_description: str = "medfcn synthetic CT",
    modality: Literal["CT", "MR"] = "CT",
    series_number: int = 1,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    signed: bool = False,
    reverse_instance_numbers: bool = False,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
) -> list[Path]:
    """Write a volume as a single-frame DICOM series, one file per slice.

    Slice ``k`` of the array (axis 2) becomes one file. Geometry follows the affine: the RAS affine is
    converted to DICOM's LPS patient coordinates, array axis 0 runs along a row (DICOM column index),
    axis 1 down the columns (row index). ``ImagePositionPatient`` is the centre of voxel ``(0, 0, k)``.
    ``modality="CT"`` writes CT Image Storage with stored values ``round((HU - intercept) / slope)``;
    ``"MR"`` writes MR Image Storage with the values rounded and no rescale tags (as MR scanners do).
    Pixels are uint16 (``signed=False``) or int16. UIDs are derived from ``seed`` (deterministic);
    the patient module is synthetic (``SYNTHETIC^PHANTOM``) and holds no real data.

    Args:
        image_hu: ``(X, Y, Z)`` Hounsfield units (CT) or signal intensity (MR).
        affine: ``(4, 4)`` voxel-to-world matrix, RAS mm.
        out_dir: folder for the files (created); files are ``IM0001.dcm``...
        seed: source of every UID.
        series_description: SeriesDescription.
        modality: ``"CT"`` or ``"MR"`` (sets Modality and the SOP class).
        series_number: SeriesNumber.
        rescale_slope: RescaleSlope (CT only).
        rescale_intercept: RescaleIntercept (CT only).
        signed: store int16 (PixelRepresentation 1) instead of uint16.
        reverse_instance_numbers: number instances against the slice order (some scanners do), to test
            readers that must sort by position.
        transfer_syntax: Transfer Syntax UID. Explicit VR little endian by default; deflated and the
            lossless compressed syntaxes pydicom can encode (RLE Lossless; JPEG-LS and JPEG 2000
            lossless with pyjpegls / pylibjpeg-openjpeg installed; JPEG 2000 needs slices of at least
            32x32 pixels) are written compressed.

    Returns:
        The written files, in slice order (array axis 2).

    Raises:
        ValueError: ``image_hu`` is not 3D, ``affine`` is not 4x4, an unknown modality, or a transfer
            syntax pydicom cannot encode.
    """
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, generate_uid

    image_hu = np.asarray(image_hu)
    affine = np.asarray(affine, dtype=float)
    if image_hu.ndim != 3:
        raise ValueError(f"image_hu must be 3D (X, Y, Z), got shape {image_hu.shape}")
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax:
        raise ValueError(f"{transfer_syntax} is not a DICOM transfer syntax UID")
    is_ct = modality == "CT"
    sop_class = UID(CT_IMAGE_STORAGE if is_ct else MR_IMAGE_STORAGE)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir = lps[:3, 0] / spacing[0]  # direction of increasing column index = array axis 0
    col_dir = lps[:3, 1] / spacing[1]  # direction of increasing row index = array axis 1
    normal = np.cross(row_dir, col_dir)

    def uid(*parts: object) -> UID:
        return generate_uid(entropy_srcs=["medfcn-synthetic", str(seed), *map(str, parts)])

    study_uid, series_uid, frame_uid = uid("study"), uid("series", series_number), uid("frame")
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    values = image_hu.astype(np.float64)
    if is_ct:
        values = (values - rescale_intercept) / rescale_slope
    stored = np.clip(np.rint(values), info.min, info.max).astype(dtype)
    n_slices = image_hu.shape[2]

    paths: list[Path] = []
    for k in range(n_slices):
        position = lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + lps[:3, 3]
        instance = n_slices - k if reverse_instance_numbers else k + 1
        sop_uid = uid("instance", series_number, k)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = syntax if not syntax.is_compressed else UID("1.2.840.10008.1.2.1")
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = DicomDataset()
        ds.file_meta = meta
        # SOP common
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        # Patient: synthetic only; no real names, IDs or birth dates.
        ds.PatientName = "SYNTHETIC^PHANTOM"
        ds.PatientID = f"SYNTH{seed % 10**8:08d}"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        # Study / series / frame of reference / equipment
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = "20000101"
        ds.StudyTime = "000000"
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "medfcn synthetic abdomen"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        ds.Modality = modality
        ds.BodyPartExamined = "ABDOMEN"
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "medfcn"
        ds.ManufacturerModelName = "synthetic phantom"
        # Image
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if is_ct else "OTHER"]
        ds.InstanceNumber = instance
        ds.AcquisitionNumber = 1
        if is_ct:
            ds.KVP = _ds(120)
        else:  # the MR Image module's type-1 attributes
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.RepetitionTime = _ds(5.0)
            ds.EchoTime = _ds(2.0)
            ds.MagneticFieldStrength = _ds(1.5)
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.SliceLocation = _ds(float(position @ normal))
        ds.SliceThickness = _ds(spacing[2])
        ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # (between rows, between columns)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = int(image_hu.shape[1])
        ds.Columns = int(image_hu.shape[0])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        if is_ct:
            ds.RescaleIntercept = _ds(rescale_intercept)
            ds.RescaleSlope = _ds(rescale_slope)
            ds.RescaleType = "HU"
            ds.WindowCenter = _ds(40)
            ds.WindowWidth = _ds(400)
        pixels = np.ascontiguousarray(stored[:, :, k].T)  # (rows, columns) = array axes (1, 0)
        ds.PixelData = pixels.tobytes()
        if syntax.is_compressed:
            try:
                ds.compress(syntax, pixels, generate_instance_uid=False)
            except (RuntimeError, ValueError, NotImplementedError) as err:
                raise ValueError(f"pydicom cannot encode transfer syntax {syntax.name} ({err})") from err

        path = out / f"IM{k + 1:04d}.dcm"
        atomic_write(path, functools.partial(_save_dicom, ds))
        paths.append(path)
    return paths
