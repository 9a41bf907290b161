"""Scan-folder discovery: walk a folder once, return the scans in it and why everything else was skipped.

:func:`find_cases` turns "a path" into :class:`Case` records before any weights are loaded:

* NIfTI files (``.nii``, ``.nii.gz``) and, optionally, NRRD/MetaImage files (``.nrrd``, ``.nhdr``,
  ``.mha``, ``.mhd``) are one case each (header read only);
* zip archives (``.zip``, or any file that starts like one) are extracted to a temporary folder and
  walked as if they were folders (:mod:`medfcn.data.archives`); the report removes the folder on
  :meth:`DiscoveryReport.close` (and at garbage collection or exit);
* enhanced multi-frame CT/MR/PET files are one series each, their frames placed by the per-frame
  functional groups (:mod:`medfcn.data.enhanced`);
* DICOM files (with or without extension, with or without the 128-byte preamble) are read up to the
  pixel data and grouped into series by ``SeriesInstanceUID`` -- several series may share a folder and
  one series may be spread over several folders. A ``DICOMDIR`` is ignored: the files it indexes are
  found by the walk itself.

Everything that is not a usable scan becomes a :class:`Skipped` record with a one-line, specific
reason (junk, truncated files, non-image objects such as SR/RTSTRUCT/SEG, localisers, colour images,
multi-frame secondary captures, missing or duplicate slices, gantry tilt, undecodable compression,
permission problems, symbolic-link loops, filters). Hidden files and folders (names starting with
``.``) are ignored. Nothing is ever written under the input folder.

The geometry rules for a DICOM series (:func:`_validate_series`) are shared with
:class:`medfcn.data.readers.DicomSeriesReader`, so a series discovery accepts is one the reader loads.

Case ids are PHI-free and stable across runs: ``s-`` + the first 12 hex digits of the SHA-1 of the
``SeriesInstanceUID`` for DICOM, the file stem made ASCII and filesystem-safe for NIfTI/images (with
``-`` + a short hash of the relative path appended when two files would get the same id).

Example:
    >>> report = find_cases("SCANS/")  # doctest: +SKIP
    >>> [(c.id, c.kind, c.n_slices) for c in report.cases]  # doctest: +SKIP
    [('s-1f0c3a9b2d4e', 'dicom', 120), ('ct_01', 'nifti', 98)]
    >>> [(s.path, s.reason) for s in report.skipped]  # doctest: +SKIP
    [('notes.txt', 'not a DICOM or image file')]
"""

from __future__ import annotations

import errno
import hashlib
import math
import os
import re
import stat
import struct
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medfcn.data.archives import ArchiveError, TemporaryTree, extract_zip, looks_like_zip
from medfcn.data.enhanced import ENHANCED_VOLUME_SOP_CLASSES, FrameGeometry, expand_frames, frame_geometries
from medfcn.data.labelmaps import label_folder_reason, label_map_reason
from medfcn.errors import InputError

if TYPE_CHECKING:  # pragma: no cover
    from pydicom.dataset import Dataset

__all__ = ["MIN_SLICES", "Case", "DiscoveryReport", "Skipped", "find_cases"]

MIN_SLICES = 5
"""Default minimum number of slices of a DICOM series: localisers and key images have 1-3."""

CaseKind = Literal["dicom", "nifti", "image"]

_NIFTI_SUFFIXES = (".nii.gz", ".nii")
_IMAGE_SUFFIXES = (".nrrd", ".nhdr", ".mha", ".mhd")
_DICOMDIR_SOP_CLASS = "1.2.840.10008.1.3.10"
# Objects that carry no image (or no image of the patient's anatomy to segment).
_NON_IMAGE_MODALITIES = {
    "SR",
    "RTSTRUCT",
    "RTPLAN",
    "RTDOSE",
    "RTRECORD",
    "SEG",
    "PR",
    "KO",
    "REG",
    "DOC",
    "RWV",
    "PLAN",
    "FID",
    "RAW",
    "AU",
    "ECG",
    "HD",
}
_NON_IMAGE_SOP_PREFIXES = (
    "1.2.840.10008.5.1.4.1.1.88.",  # structured reports, key object selection
    "1.2.840.10008.5.1.4.1.1.481.2",  # RT dose
    "1.2.840.10008.5.1.4.1.1.481.3",  # RT structure set
    "1.2.840.10008.5.1.4.1.1.481.5",  # RT plan
    "1.2.840.10008.5.1.4.1.1.66",  # raw data, SEG, registrations, surfaces
    "1.2.840.10008.5.1.4.1.1.11.",  # presentation states
    "1.2.840.10008.5.1.4.1.1.104.",  # encapsulated PDF/CDA/STL
    "1.2.840.10008.5.1.4.1.1.9.",  # waveforms
)
_SECONDARY_CAPTURE_PREFIX = "1.2.840.10008.5.1.4.1.1.7"
# pydicom 3.0 does not name the Label Map class yet (DICOM 2024c).
_SEGMENTATION_SOP_CLASSES = {
    "1.2.840.10008.5.1.4.1.1.66.4": "DICOM SEG",
    "1.2.840.10008.5.1.4.1.1.66.7": "Label Map Segmentation",
}
_LOCALISER_TYPES = {"LOCALIZER", "LOCALISER", "SCOUT", "TOPOGRAM", "SURVIEW"}
_LOCALISER_DESCRIPTION = re.compile(r"\b(locali[sz]er|scout|topogram|surview|scanogram)\b", re.IGNORECASE)
_WINDOWS_RESERVED = {
    "CON",
    "PRN",
    "AUX",
    "NUL",
    *(f"COM{i}" for i in range(10)),
    *(f"LPT{i}" for i in range(10)),
}

# Geometry tolerances (mm unless stated). Positions in real exports are rounded to ~0.01 mm and
# orientations to ~1e-6, so tolerances sit well above rounding and well below one voxel.
_ORIENTATION_ATOL = 1e-4  # cosines: same orientation within the series
_DUPLICATE_MM = 1e-3  # two slices closer than this along the normal are at the same position
_SPACING_REL, _SPACING_ABS = 0.05, 0.02  # a gap may differ from the median by 5% (at least 0.02 mm)
_TILT_TAN, _TILT_DRIFT_MM = 1e-3, 0.02  # slice stack leaning off the normal by >0.06 deg and >0.02 mm


# ----------------------------------------------------------------------------------------------- records


@dataclass
class Case:
    """One scan found by :func:`find_cases`.

    Attributes:
        id: stable, PHI-free, filesystem-safe identifier (used as the output folder name): ``s-`` + 12
            hex digits of SHA-1(SeriesInstanceUID) for DICOM, the safe file stem for NIfTI/images.
        source: where it is, relative to the discovery root (POSIX, ``"."`` for the root itself): the
            file for NIfTI/images, the folder holding the series (their common folder) for DICOM.
        kind: ``"dicom"``, ``"nifti"`` or ``"image"`` (NRRD/MetaImage).
        paths: the files; for DICOM sorted by slice position along the slice normal (ascending), which
            is also the order of array axis 2 when loaded (an enhanced multi-frame image: its one file,
            the frames being sorted the same way when loaded). DICOM SEG writers take these as sources.
        modality: DICOM Modality (``"CT"``, ``"MR"``...), ``None`` for NIfTI/images.
        n_slices: slices along the slice axis (array axis 2).
        shape: ``(X, Y, Z)`` voxels as loaded (DICOM: columns, rows, slices).
        spacing: ``(X, Y, Z)`` voxel size in mm (DICOM: column spacing, row spacing, slice spacing).
        series_description: DICOM SeriesDescription (not patient data), ``None`` otherwise.
        transfer_syntax: DICOM Transfer Syntax UID of the first file, ``None`` otherwise.
    """

    id: str
    source: str
    kind: CaseKind
    paths: list[Path]
    modality: str | None = None
    n_slices: int | None = None
    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None
    series_description: str | None = None
    transfer_syntax: str | None = None

    def load_input(self) -> str | list[str]:
        """What MONAI ``LoadImaged`` receives: the file path (NIfTI/image) or the DICOM files in slice order."""
        if self.kind == "dicom":
            return [str(p) for p in self.paths]
        return str(self.paths[0])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (no absolute paths, no patient data)."""
        return {
            "id": self.id,
            "source": self.source,
            "kind": self.kind,
            "modality": self.modality,
            "n_slices": self.n_slices,
            "shape": list(self.shape) if self.shape is not None else None,
            "spacing": [round(s, 6) for s in self.spacing] if self.spacing is not None else None,
            "series_description": self.series_description,
            "transfer_syntax": self.transfer_syntax,
            "n_files": len(self.paths),
        }


@dataclass(frozen=True)
class Skipped:
    """Something under the root that is not a usable scan.

    Attributes:
        path: relative to the discovery root (POSIX): a file, or a series' folder.
        reason: one specific line, e.g. ``"RTSTRUCT object (not an image)"``.
    """

    path: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        return {"path": self.path, "reason": self.reason}


@dataclass
class DiscoveryReport:
    """What :func:`find_cases` found under ``root``: cases (sorted by source, then id) and skips."""

    root: Path
    cases: list[Case] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    temporary: list[TemporaryTree] = field(default_factory=list, repr=False, compare=False)
    """Folders zip archives were extracted to; the cases' paths point into them until :meth:`close`."""

    def close(self) -> None:
        """Remove the folders zip archives were extracted to (also done at garbage collection and exit)."""
        for tree in self.temporary:
            tree.close()

    def __enter__(self) -> DiscoveryReport:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form: ``{"root", "cases": [...], "skipped": [...]}``."""
        return {
            "root": str(self.root),
            "cases": [c.to_dict() for c in self.cases],
            "skipped": [s.to_dict() for s in self.skipped],
        }


# ----------------------------------------------------------------------------------------------- DICOM headers


@dataclass
class _DicomHeader:
    """What discovery and the reader need from one DICOM file (never patient data)."""

    path: Path
    rel: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    modality: str | None
    image_type: tuple[str, ...]
    series_description: str | None
    series_number: int | None
    instance_number: int | None
    position: tuple[float, float, float] | None
    orientation: tuple[float, float, float, float, float, float] | None
    pixel_spacing: tuple[float, float] | None
    slice_thickness: float | None
    spacing_between_slices: float | None
    rows: int
    columns: int
    samples_per_pixel: int
    photometric: str
    n_frames: int
    transfer_syntax: str
    has_pixels: bool
    pixel_problem: str | None
    at_eof: bool = False  # the header read consumed the whole file
    # Enhanced (multi-frame) volumes: the per-frame geometry, or why it cannot be read. After
    # expand_frames() each frame is a header of its own with its 1-based ``frame`` number and rescale.
    frames: tuple[FrameGeometry, ...] | None = None
    frame_problem: str | None = None
    frame: int | None = None
    rescale: tuple[float, float] | None = None


class _NotDicom(Exception):
    """The file is not DICOM (the message is the skip reason)."""


def _floats(value: Any, n: int) -> tuple[float, ...] | None:
    try:
        out = tuple(float(v) for v in value)
    except (TypeError, ValueError):
        return None
    return out if len(out) == n and all(math.isfinite(v) for v in out) else None


def _number(value: Any) -> float | None:
    try:
        out = float(value)
    except (TypeError, ValueError):
        return None
    return out if math.isfinite(out) else None


def _int(value: Any, default: int | None = None) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _one_line(err: BaseException, limit: int = 160) -> str:
    """An exception's message on one line (multi-line plugin reports joined), at most ``limit`` chars."""
    text = " ".join(ln.strip() for ln in str(err).splitlines() if ln.strip()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3].rstrip() + "..."


def _looks_like_raw_dataset(head: bytes) -> bool:
    """A DICOM data set without preamble starts with a group 0x0002 or 0x0008 element (little endian)."""
    if len(head) < 8:
        return False
    group, element = struct.unpack("<HH", head[:4])
    return group in (0x0002, 0x0008) and element < 0x1000


def _pixel_problem(fp: Any, ds: Dataset, size: int) -> tuple[bool, str | None]:
    """Check the pixel data element after a ``stop_before_pixels`` read, without reading the pixels.

    pydicom leaves ``fp`` at the start of the pixel data element. Native data must hold at least the
    declared length and what Rows x Columns x frames x BitsAllocated require; encapsulated (compressed)
    data must run to its sequence delimiter.

    Returns:
        ``(has_pixel_data, problem or None)``.
    """
    implicit, little = getattr(ds, "original_encoding", (False, True))
    end = "<" if little is not False else ">"
    pos = fp.tell()
    head = fp.read(12)
    if len(head) < 8:
        return False, None
    group, element = struct.unpack(end + "HH", head[:4])
    if group != 0x7FE0:
        return False, None
    if element != 0x0010:
        return True, "float pixel data (parametric map): a CT/MR image expected"
    if implicit:
        length, header_len = struct.unpack(end + "I", head[4:8])[0], 8
    elif head[4:6] in (b"OB", b"OW", b"UN", b"OF", b"OD", b"OL", b"OV"):
        if len(head) < 12:
            return True, "truncated DICOM file (pixel data element cut short)"
        length, header_len = struct.unpack(end + "I", head[8:12])[0], 12
    else:
        length, header_len = struct.unpack(end + "H", head[6:8])[0], 8
    start = pos + header_len
    if length != 0xFFFFFFFF:
        available = size - start
        if available < length:
            return (
                True,
                f"truncated DICOM file (pixel data shorter than declared: {available} of {length} bytes)",
            )
        frames = _int(ds.get("NumberOfFrames"), 1) or 1
        bits = _int(ds.get("BitsAllocated"), 16) or 16
        need = (
            (_int(ds.get("Rows"), 0) or 0)
            * (_int(ds.get("Columns"), 0) or 0)
            * (_int(ds.get("SamplesPerPixel"), 1) or 1)
            * frames
            * bits
            + 7
        ) // 8
        if length < need:
            return True, (
                f"pixel data shorter than Rows x Columns x BitsAllocated require ({length} < {need} bytes)"
            )
        return True, None
    # Encapsulated: walk the items (a handful per frame) up to the sequence delimiter.
    offset, fragments = start, 0
    while True:
        fp.seek(offset)
        item = fp.read(8)
        if len(item) < 8:
            return True, "truncated DICOM file (compressed pixel data ends early)"
        group, element, item_len = struct.unpack(end + "HHI", item)
        if (group, element) == (0xFFFE, 0xE0DD):
            break
        if (group, element) != (0xFFFE, 0xE000) or item_len == 0xFFFFFFFF:
            return True, "corrupt compressed pixel data (invalid item in the encapsulated pixel data)"
        offset += 8 + item_len
        fragments += 1
        if offset > size:
            return True, "truncated DICOM file (compressed pixel data ends early)"
    if fragments < 2:  # the basic offset table item plus at least one fragment
        return True, "corrupt compressed pixel data (no compressed frame)"
    return True, None


def _read_dicom_header(path: Path, rel: str) -> _DicomHeader | None:
    """Read one file's DICOM header (up to the pixel data).

    Returns:
        The header, or ``None`` for a DICOMDIR (ignored: the walk finds the files it indexes).

    Raises:
        _NotDicom: not DICOM, unreadable, truncated or corrupt header (message: the skip reason).
    """
    try:
        return _parse_dicom_header(path, rel)
    except _NotDicom:
        raise
    except Exception as err:  # pydicom raises many types on damaged values: one bad file must not stop a scan
        raise _NotDicom(f"corrupt DICOM header ({type(err).__name__}: {_one_line(err, 120)})") from err


def _parse_dicom_header(path: Path, rel: str) -> _DicomHeader | None:
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        size = path.stat().st_size
        with open(path, "rb") as fp:
            head = fp.read(132)
            if not head:
                raise _NotDicom("empty file (0 bytes)")
            preamble = len(head) == 132 and head[128:132] == b"DICM"
            if not preamble and not _looks_like_raw_dataset(head):
                raise _NotDicom("not a DICOM or image file")
            fp.seek(0)
            try:
                # force=True only for files that start like a raw data set (checked above): pydicom
                # would otherwise "parse" any junk into garbage elements.
                ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not preamble)
            except (
                InvalidDicomError,
                EOFError,
                ValueError,
                KeyError,
                TypeError,
                struct.error,
                OverflowError,
            ) as err:
                first = _one_line(err, 120)
                if preamble:
                    raise _NotDicom(
                        f"truncated or corrupt DICOM header ({type(err).__name__}: {first})"
                    ) from err
                raise _NotDicom("not a DICOM or image file") from err
            meta = getattr(ds, "file_meta", None)
            sop_class = str(
                ds.get("SOPClassUID", "") or (meta.get("MediaStorageSOPClassUID", "") if meta else "")
            )
            if sop_class == _DICOMDIR_SOP_CLASS or path.name.upper() == "DICOMDIR":
                return None
            syntax = str(meta.get("TransferSyntaxUID", "")) if meta is not None else ""
            if not syntax:  # a raw data set: pydicom found the encoding itself
                implicit, little = getattr(ds, "original_encoding", (True, True))
                syntax = (
                    "1.2.840.10008.1.2"
                    if implicit
                    else ("1.2.840.10008.1.2.1" if little is not False else "1.2.840.10008.1.2.2")
                )
            deflated = syntax == "1.2.840.10008.1.2.1.99"
            at_eof = fp.tell() >= size and not deflated
            if deflated:  # the body is a zlib stream: positions in the file mean nothing; the
                has_pixels, problem = True, None  # decoding test of discovery checks these files
            else:
                has_pixels, problem = _pixel_problem(fp, ds, size)
    except PermissionError as err:
        raise _NotDicom("permission denied") from err
    except IsADirectoryError as err:  # pragma: no cover - the walk only passes files
        raise _NotDicom("not a regular file") from err
    except OSError as err:
        raise _NotDicom(f"cannot read file ({err.strerror or type(err).__name__})") from err

    if not preamble and not (ds.get("SOPClassUID") or ds.get("SeriesInstanceUID")):
        raise _NotDicom("not a DICOM or image file")
    image_type = tuple(str(v).upper() for v in (ds.get("ImageType") or ()))
    n_frames = _int(ds.get("NumberOfFrames"), 1) or 1
    frames: tuple[FrameGeometry, ...] | None = None
    frame_problem: str | None = None
    if sop_class in ENHANCED_VOLUME_SOP_CLASSES:
        try:
            frames = tuple(frame_geometries(ds))
        except InputError as err:
            frame_problem = str(err)
        if frames and not image_type:  # enhanced objects put ImageType in the frame type groups
            image_type = tuple(str(v).upper() for v in (ds.get("FrameType") or ()))
    return _DicomHeader(
        path=path,
        rel=rel,
        series_uid=str(ds.get("SeriesInstanceUID", "") or ""),
        sop_instance_uid=str(ds.get("SOPInstanceUID", "") or ""),
        sop_class_uid=sop_class,
        modality=str(ds.get("Modality") or "").upper() or None,
        image_type=image_type,
        series_description=str(ds.get("SeriesDescription") or "") or None,
        series_number=_int(ds.get("SeriesNumber")),
        instance_number=_int(ds.get("InstanceNumber")),
        position=_floats(ds.get("ImagePositionPatient"), 3),  # type: ignore[arg-type]
        orientation=_floats(ds.get("ImageOrientationPatient"), 6),  # type: ignore[arg-type]
        pixel_spacing=_floats(ds.get("PixelSpacing"), 2),  # type: ignore[arg-type]
        slice_thickness=_number(ds.get("SliceThickness")),
        spacing_between_slices=_number(ds.get("SpacingBetweenSlices")),
        rows=_int(ds.get("Rows"), 0) or 0,
        columns=_int(ds.get("Columns"), 0) or 0,
        samples_per_pixel=_int(ds.get("SamplesPerPixel"), 1) or 1,
        photometric=str(ds.get("PhotometricInterpretation") or "").upper(),
        n_frames=n_frames,
        transfer_syntax=syntax,
        has_pixels=has_pixels,
        pixel_problem=problem,
        at_eof=at_eof,
        frames=frames,
        frame_problem=frame_problem,
    )


def _non_image_reason(h: _DicomHeader) -> str | None:
    """Why a DICOM object is not an image to segment (``None`` if it is one)."""
    if h.sop_class_uid in _SEGMENTATION_SOP_CLASSES or h.modality == "SEG":
        name = _SEGMENTATION_SOP_CLASSES.get(h.sop_class_uid, "DICOM SEG")
        return f"{name} object (a segmentation, not an image; medfcn evaluate/train read it as a label)"
    if h.modality in _NON_IMAGE_MODALITIES:
        return f"{h.modality} object (not an image)"
    if h.sop_class_uid.startswith(_NON_IMAGE_SOP_PREFIXES):
        return f"{_sop_name(h.sop_class_uid)} object (not an image)"
    if not h.has_pixels:
        if (h.rows and h.columns) or "Image Storage" in _sop_name(h.sop_class_uid, full=True):
            # an image object without its pixels: the file ended early (pydicom stops quietly at EOF)
            if h.at_eof:
                return "truncated or corrupt DICOM file (header ends before the pixel data)"
            return "DICOM image without pixel data"
        return f"{h.modality or _sop_name(h.sop_class_uid)} object without pixel data (not an image)"
    return None


def _sop_name(uid: str, *, full: bool = False) -> str:
    """pydicom's name of a SOP class (``"CT Image"``; with ``full``, ``"CT Image Storage"``)."""
    from pydicom.uid import UID

    name = UID(uid).name if uid else ""
    if not name or name == uid:
        return uid or "DICOM"
    return name if full else name.removesuffix(" Storage")


# ----------------------------------------------------------------------------------------------- geometry


@dataclass
class _Geometry:
    """A validated series: headers sorted along the slice normal and its voxel-to-world matrix."""

    headers: list[_DicomHeader]
    affine: np.ndarray  # (4, 4) RAS mm
    shape: tuple[int, int, int]  # (X, Y, Z) = (columns, rows, slices)
    spacing: tuple[float, float, float]  # mm along X, Y, Z

    @property
    def affine_lps(self) -> np.ndarray:
        """``(4, 4)`` voxel-to-LPS (DICOM patient coordinates) matrix."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine


def _in_files(count: int, total: int) -> str:
    return (
        "" if total == 1 else (f" (all {total} files)" if count == total else f" ({count} of {total} files)")
    )


def _validate_series(headers: Sequence[_DicomHeader]) -> _Geometry:
    """Check that single-frame grayscale slices form a regular 3D grid and compute its affine.

    Checks, in order: pixel format (single frame, grayscale, one image size), pixel data present and
    complete, geometry tags present and consistent, no duplicate positions, no gantry tilt (the slice
    stack must run along the slice normal), positions on one line, uniform spacing (no missing slices).

    Gantry tilt is rejected rather than handled with a sheared affine: SimpleITK images, MONAI's
    resampling and the DICOM SEG writer all assume orthogonal voxel axes, and a sheared grid would
    quietly misplace masks downstream.

    The affine maps voxel ``(i, j, k)`` (column, row, slice in sorted order) to RAS millimetres:
    column ``i`` runs along the DICOM row direction (``PixelSpacing[1]``), ``j`` along the column
    direction (``PixelSpacing[0]``), ``k`` along the normal ``row x column`` by the mean slice spacing.

    Raises:
        InputError: the one-line reason (no file or folder name: callers add where).
    """
    if not headers:
        raise InputError("no DICOM image files")
    headers = expand_frames(headers)  # an enhanced image: one pseudo-slice per frame, same rules below
    n = len(headers)
    frames = max(h.n_frames for h in headers)
    if frames > 1:
        raise InputError(
            f"multi-frame {_sop_name(headers[0].sop_class_uid)} ({frames} frames in one file): only single-frame "
            "slices and enhanced CT/MR/PET volumes are read"
        )
    colour = [
        h for h in headers if h.samples_per_pixel != 1 or h.photometric not in ("MONOCHROME1", "MONOCHROME2")
    ]
    if colour:
        pi = colour[0].photometric or f"SamplesPerPixel {colour[0].samples_per_pixel}"
        raise InputError(f"RGB/colour image (PhotometricInterpretation {pi}): grayscale CT/MR expected")
    sizes = sorted({(h.rows, h.columns) for h in headers})
    if len(sizes) > 1:
        listed = ", ".join(f"{r}x{c}" for r, c in sizes[:4])
        raise InputError(f"mixed image sizes within series ({listed} rows x columns)")
    problems = [h.pixel_problem for h in headers if h.pixel_problem]
    if problems:
        raise InputError(problems[0] + _in_files(len(problems), n))
    for attr, tag in (
        ("position", "ImagePositionPatient"),
        ("orientation", "ImageOrientationPatient"),
        ("pixel_spacing", "PixelSpacing"),
    ):
        missing = sum(getattr(h, attr) is None for h in headers)
        if missing:
            raise InputError(f"missing {tag}" + _in_files(missing, n))
    orient = np.array([h.orientation for h in headers], dtype=np.float64)
    if np.abs(orient - orient[0]).max() > _ORIENTATION_ATOL:
        raise InputError("inconsistent ImageOrientationPatient within the series")
    pix = np.array([h.pixel_spacing for h in headers], dtype=np.float64)
    if np.abs(pix - pix[0]).max() > 1e-4 * max(1.0, float(pix[0].max())):
        raise InputError("inconsistent PixelSpacing within the series")
    if pix[0].min() <= 0:
        raise InputError(f"invalid PixelSpacing {pix[0].tolist()} (must be positive)")
    row, col = orient[0, :3], orient[0, 3:]
    if abs(np.linalg.norm(row) - 1) > 1e-3 or abs(np.linalg.norm(col) - 1) > 1e-3 or abs(row @ col) > 1e-3:
        raise InputError("invalid ImageOrientationPatient (row and column are not orthogonal unit vectors)")
    row, col = row / np.linalg.norm(row), col / np.linalg.norm(col)
    normal = np.cross(row, col)
    normal /= np.linalg.norm(normal)

    positions = np.array([h.position for h in headers], dtype=np.float64)
    dist = positions @ normal
    instance = np.array([h.instance_number if h.instance_number is not None else 0 for h in headers])
    order = np.lexsort((instance, dist))  # along the normal; InstanceNumber only breaks exact ties
    dist, positions = dist[order], positions[order]
    sorted_headers = [headers[i] for i in order]
    row_mm, col_mm = float(pix[0][1]), float(pix[0][0])  # PixelSpacing = (between rows, between columns)

    if n == 1:
        h0 = sorted_headers[0]
        dz = h0.spacing_between_slices or h0.slice_thickness or 1.0
        dz = abs(dz) if dz else 1.0
    else:
        gaps = np.diff(dist)
        n_dup = int((gaps < _DUPLICATE_MM).sum())
        if n_dup:
            raise InputError(
                f"duplicate slice positions ({n_dup + 1 if n_dup == 1 else n_dup} slices share a position: "
                "several acquisitions, echoes or phases in one series?)"
            )
        extent = float(dist[-1] - dist[0])
        lean = (positions[-1] - positions[0]) / extent - normal  # perpendicular part (lean @ normal == 0)
        tan_tilt = float(np.linalg.norm(lean))
        if tan_tilt > _TILT_TAN and tan_tilt * extent > _TILT_DRIFT_MM:
            raise InputError(
                f"gantry tilt {math.degrees(math.atan(tan_tilt)):.1f} deg (not supported): resample the "
                "series to an untilted grid first"
            )
        on_line = positions[0] + np.outer(dist - dist[0], lean + normal)
        off_line = float(np.linalg.norm(positions - on_line, axis=1).max())
        if off_line > max(_SPACING_ABS, 0.1 * min(row_mm, col_mm)):
            raise InputError(f"slice positions do not lie on one line (off by up to {off_line:.2f} mm)")
        median = float(np.median(gaps))
        if np.abs(gaps - median).max() > max(_SPACING_ABS, _SPACING_REL * median):
            raise InputError(
                f"missing slices: spacing between slices varies {gaps.min():.2f}-{gaps.max():.2f} mm"
            )
        dz = extent / (n - 1)
        drift = float(np.abs(dist - (dist[0] + dz * np.arange(n))).max())
        if drift > max(_SPACING_ABS, 0.1 * dz):
            raise InputError(
                f"irregular slice spacing: positions drift up to {drift:.2f} mm from a uniform {dz:.3f} mm grid"
            )

    lps = np.eye(4)
    lps[:3, 0] = row * row_mm
    lps[:3, 1] = col * col_mm
    lps[:3, 2] = normal * dz
    lps[:3, 3] = positions[0]
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> RAS (NIfTI/MONAI convention)
    h0 = sorted_headers[0]
    return _Geometry(
        headers=sorted_headers,
        affine=affine,
        shape=(h0.columns, h0.rows, n),
        spacing=(row_mm, col_mm, float(dz)),
    )


def _decode_problem(h: _DicomHeader) -> str | None:
    """Decode one frame of a compressed or deflated file; ``None`` if pydicom or SimpleITK can.

    One frame per series keeps discovery cheap; the reader reports a damaged frame elsewhere in the
    series when it loads it.
    """
    import pydicom
    from pydicom.pixels import get_decoder
    from pydicom.uid import UID

    syntax = UID(h.transfer_syntax)
    name = syntax.name if syntax.name != str(syntax) else str(syntax)
    try:
        ds = pydicom.dcmread(h.path, force=True)
        ds.pixel_array  # noqa: B018  (decoding is the check)
        return None
    except Exception as err:  # decoder plugins raise many types; SimpleITK gets a chance below
        py_error: Exception = err
    try:
        import SimpleITK as sitk

        sitk.ReadImage(str(h.path))
        return None
    except RuntimeError:
        pass
    try:
        supported = get_decoder(syntax).is_available
    except (NotImplementedError, ValueError):
        supported = False
    if not supported:
        return f"unsupported compression {name} (no decoder installed)"
    text = _one_line(py_error)
    return f"cannot decode {name} pixel data (corrupt compressed data?): {text}"


# ----------------------------------------------------------------------------------------------- walking


def _posix(parent: str, name: str) -> str:
    return name if parent == "." else f"{parent}/{name}"


def _link_problem(path: str) -> str | None:
    """Reason a symbolic link cannot be followed, or ``None``."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop (cannot be resolved): not followed"
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return "broken symbolic link (target missing)"
        if err.errno == errno.EACCES:
            return "permission denied (symbolic link target)"
        return f"symbolic link cannot be resolved ({err.strerror})"
    return None


@dataclass
class _File:
    path: Path
    rel: str
    real: str
    is_link: bool
    zip_depth: int = 0  # archives this file was extracted from
    shown: str | None = None  # the name in reports, where ``rel`` was changed to mark an archive


def _walk(root: Path, skipped: list[Skipped]) -> list[_File]:
    """All regular files under ``root`` (hidden names ignored), each real file once.

    Real folders are walked before folders reached through symbolic links, and a folder whose real
    path was already walked is reported and not entered again: this ends symbolic-link loops and
    avoids scanning a linked folder twice.
    """
    visited = {os.path.realpath(root)}
    files: list[_File] = []
    stack: list[tuple[Path, str]] = [(root, ".")]
    linked_dirs: list[tuple[Path, str]] = []
    while stack or linked_dirs:
        if not stack:
            path, rel = linked_dirs.pop(0)
            real = os.path.realpath(path)
            if real in visited:
                skipped.append(
                    Skipped(
                        rel, "symbolic link to a folder already scanned (loop or duplicate): not followed"
                    )
                )
                continue
            visited.add(real)
            stack.append((path, rel))
        folder, rel = stack.pop()
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except PermissionError:
            skipped.append(Skipped(rel, "permission denied (folder cannot be listed)"))
            continue
        except OSError as err:
            skipped.append(Skipped(rel, f"cannot list folder ({err.strerror or type(err).__name__})"))
            continue
        subdirs: list[tuple[Path, str]] = []
        for entry in entries:
            if entry.name.startswith("."):  # hidden files and folders (.DS_Store, .git ...)
                continue
            erel = _posix(rel, entry.name)
            epath = Path(entry.path)
            try:
                is_link = entry.is_symlink()
                if is_link:
                    problem = _link_problem(entry.path)
                    if problem:
                        skipped.append(Skipped(erel, problem))
                        continue
                mode = os.stat(entry.path).st_mode  # follows links
            except PermissionError:
                skipped.append(Skipped(erel, "permission denied"))
                continue
            except OSError as err:
                skipped.append(Skipped(erel, f"cannot read ({err.strerror or type(err).__name__})"))
                continue
            if stat.S_ISDIR(mode):
                if is_link:
                    linked_dirs.append((epath, erel))
                    continue
                real = os.path.realpath(entry.path)
                if real in visited:  # reached again below a linked folder
                    skipped.append(
                        Skipped(
                            erel,
                            "folder already scanned (reached again through a symbolic link): not followed",
                        )
                    )
                    continue
                visited.add(real)
                subdirs.append((epath, erel))
            elif stat.S_ISREG(mode):
                files.append(_File(epath, erel, os.path.realpath(entry.path), is_link))
            else:
                skipped.append(Skipped(erel, "not a regular file (device, socket or pipe)"))
        stack.extend(reversed(subdirs))  # depth first, in name order
    # The same file reached twice (a link to a file): keep the real path, else the first one seen.
    by_real: dict[str, list[_File]] = {}
    for f in files:
        by_real.setdefault(f.real, []).append(f)
    unique: list[_File] = []
    for group in by_real.values():
        keep = next((f for f in group if not f.is_link), group[0])
        unique.append(keep)
        for f in group:
            if f is not keep:
                skipped.append(Skipped(f.rel, f"link to a file already found ({keep.rel})"))
    unique.sort(key=lambda f: f.rel)
    return unique


def _common_folder(rels: Iterable[str]) -> str:
    parents = [PurePosixPath(r).parent.parts for r in rels]
    common: list[str] = []
    for parts in zip(*parents, strict=False):
        if all(p == parts[0] for p in parts):
            common.append(parts[0])
        else:
            break
    return "/".join(common) if common else "."


def _suffix(name: str, suffixes: Sequence[str]) -> str | None:
    lower = name.lower()
    return next((s for s in suffixes if lower.endswith(s)), None)


def _safe_id(stem: str) -> str:
    """ASCII, filesystem-safe, not hidden, not a Windows device name: usable as a folder name."""
    text = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    text = re.sub(r"_+", "_", text).strip("._-")[:64].rstrip("._-")
    if not text:
        text = "case"
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        text = f"{text}_"
    return text


def _short_hash(text: str, n: int = 12) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def _companion_files(path: Path) -> set[str]:
    """Data files a detached header (``.mhd``/``.nhdr``) names: part of that image, not junk."""
    out: set[str] = set()
    try:
        with open(path, encoding="latin-1") as fh:
            text = fh.read(8192)
    except OSError:
        return out
    for pattern in (r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", r"^\s*data ?file\s*:\s*(.+?)\s*$"):
        for match in re.finditer(pattern, text, re.MULTILINE | re.IGNORECASE):
            value = match.group(1)
            if value.upper() not in ("LOCAL", "LIST") and not value.upper().startswith("LIST"):
                out.add(os.path.normpath(str(path.parent / value)))
    return out


def _nifti_size_problem(img: Any, path: Path) -> str | None:
    """An uncompressed NIfTI must hold what its header declares (one ``stat``, no voxel read).

    This refuses e.g. a 2-voxel file declaring 20000x20000x5000 voxels before anything tries to
    allocate 4 TB. Compressed files cannot be checked without decompressing them.
    """
    if path.name.lower().endswith(".gz"):
        return None
    shape = tuple(int(s) for s in img.shape)
    dtype = img.get_data_dtype()
    offset = int(getattr(img.dataobj, "offset", 352))
    need = offset + int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    have = path.stat().st_size
    if have >= need:
        return None
    dims = "x".join(str(s) for s in shape)
    return f"truncated NIfTI file: header declares {dims} {dtype} voxels ({need:.3g} bytes) but the file has {have} bytes"


def _nifti_case(f: _File, skip_label_maps: bool = True) -> Case | Skipped:
    """A NIfTI file from its header (voxels are read only to tell a label map, see :mod:`.labelmaps`)."""
    import nibabel as nib

    try:
        img: Any = nib.load(str(f.path))
        shape = tuple(int(s) for s in img.shape)
        zooms = tuple(float(z) for z in img.header.get_zooms()[:3])
    except PermissionError:
        return Skipped(f.rel, "permission denied")
    except Exception as err:  # nibabel raises many unrelated types for junk; report the first line
        return Skipped(f.rel, f"not a readable NIfTI file ({type(err).__name__}: {_one_line(err, 120)})")
    problem = _nifti_size_problem(img, f.path)
    if problem:
        return Skipped(f.rel, problem)
    if skip_label_maps:
        label = label_map_reason(img.dataobj, shape, img.get_data_dtype(), f.path.name)
        if label:
            return Skipped(f.rel, label)
    while len(shape) < 3:
        shape = (*shape, 1)
    while len(zooms) < 3:
        zooms = (*zooms, 1.0)
    return Case(
        id="",
        source=f.rel,
        kind="nifti",
        paths=[f.path],
        n_slices=shape[2],
        shape=(shape[0], shape[1], shape[2]),
        spacing=(zooms[0], zooms[1], zooms[2]),
    )


def _image_case(f: _File, skip_label_maps: bool = True) -> Case | Skipped:
    """An NRRD/MetaImage file from its header (SimpleITK ``ReadImageInformation``)."""
    import SimpleITK as sitk

    if not os.access(f.path, os.R_OK):
        return Skipped(f.rel, "permission denied")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(f.path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as err:
        # SimpleITK's message starts with the C++ source location; its last line says what failed
        last = [ln.strip() for ln in str(err).splitlines() if ln.strip()][-1:] or ["RuntimeError"]
        return Skipped(f.rel, f"not a readable image file ({last[0][:120]})")
    dim, comps = reader.GetDimension(), reader.GetNumberOfComponents()
    size = tuple(int(s) for s in reader.GetSize())
    if comps != 1:
        return Skipped(f.rel, f"multi-component image ({comps} components per voxel): grayscale expected")
    if dim != 3:
        return Skipped(f.rel, f"{dim}D image (size {'x'.join(map(str, size))}): a 3D volume expected")
    spacing = tuple(float(s) for s in reader.GetSpacing())
    if skip_label_maps:
        import numpy as np

        dtype = np.dtype(sitk.GetArrayViewFromImage(sitk.Image(1, 1, reader.GetPixelID())).dtype)
        voxels = _LazyImageVoxels(f.path)
        label = label_map_reason(voxels, size, dtype, f.path.name)
        if label:
            return Skipped(f.rel, label)
    return Case(
        id="",
        source=f.rel,
        kind="image",
        paths=[f.path],
        n_slices=size[2],
        shape=(size[0], size[1], size[2]),
        spacing=(spacing[0], spacing[1], spacing[2]),
    )


class _LazyImageVoxels:
    """The voxels of an NRRD/MetaImage file, read by SimpleITK only when ``np.asarray`` asks for them."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        import SimpleITK as sitk

        array = sitk.GetArrayFromImage(sitk.ReadImage(str(self.path)))
        return array if dtype is None else array.astype(dtype)


def _assign_ids(cases: list[Case]) -> None:
    """Give NIfTI/image cases their safe-stem ids; hash-suffix any that collide (case-insensitively)."""
    for c in cases:
        if c.kind != "dicom":
            name = PurePosixPath(c.source).name if c.source != "." else c.paths[0].name
            suffix = _suffix(name, (*_NIFTI_SUFFIXES, *_IMAGE_SUFFIXES)) or ""
            c.id = _safe_id(name[: len(name) - len(suffix)] if suffix else name)
    counts: dict[str, int] = {}
    for c in cases:
        counts[c.id.lower()] = counts.get(c.id.lower(), 0) + 1
    for c in cases:
        if c.kind != "dicom" and counts[c.id.lower()] > 1:
            c.id = f"{c.id}-{_short_hash(c.source, 8)}"


# ----------------------------------------------------------------------------------------------- find_cases


def find_cases(
    root: str | os.PathLike[str],
    *,
    modality: str | None = None,
    min_slices: int = MIN_SLICES,
    series_description: str | None = None,
    include_images: bool = True,
    progress: bool = False,
    skip_label_maps: bool = True,
) -> DiscoveryReport:
    """Find the scans under ``root`` and report everything else with a reason.

    Walks the tree once (symbolic links to folders are followed once; loops and broken links are
    reported), reads NIfTI/image headers and DICOM headers up to the pixel data, groups DICOM files by
    SeriesInstanceUID, validates each series' geometry and decodes one frame of compressed series.
    Never writes anything under ``root``.

    Args:
        root: a folder tree, a single NIfTI/NRRD/MetaImage file, a single DICOM file, a series folder,
            a zip archive, or a ``DICOMDIR`` file (its folder is scanned). Zip archives anywhere in the
            tree are extracted to a temporary folder (:mod:`medfcn.data.archives`) that
            :meth:`DiscoveryReport.close` removes; their members are reported as ``study.zip/...``.
        modality: keep only DICOM series of this Modality (case-insensitive, e.g. ``"CT"``); NIfTI and
            image files carry no modality and are always kept.
        min_slices: skip DICOM series with fewer slices (localisers, key images). Default
            :data:`MIN_SLICES` (5).
        series_description: keep only DICOM series whose SeriesDescription matches this regular
            expression (case-insensitive search); NIfTI/image files are always kept.
        include_images: also take NRRD/MetaImage files (``.nrrd``, ``.nhdr``, ``.mha``, ``.mhd``).
        skip_label_maps: skip images in label folders (``labelsTr/`` beside ``imagesTr/``) and images
            whose voxels are a label map (:mod:`medfcn.data.labelmaps`), each with its reason.
        progress: show a progress bar on stderr while headers are read.

    Returns:
        A :class:`DiscoveryReport`: cases sorted by ``(source, id)``, skipped sorted by path.

    Raises:
        InputError: ``root`` does not exist or cannot be listed, ``min_slices < 1``, or an invalid
            ``series_description`` pattern.
    """
    from medfcn._progress import progress as progress_bar

    root_path = Path(root)
    if not root_path.exists():
        problem = _link_problem(str(root_path)) if root_path.is_symlink() else None
        raise InputError(f"{root_path} does not exist" + (f" ({problem})" if problem else ""))
    if min_slices < 1:
        raise InputError(f"min_slices must be >= 1, got {min_slices}")
    try:
        description_re = re.compile(series_description, re.IGNORECASE) if series_description else None
    except re.error as err:
        raise InputError(f"invalid series description pattern {series_description!r}: {err}") from err
    wanted_modality = modality.strip().upper() if modality else None

    if root_path.is_file() and root_path.name.upper() == "DICOMDIR":
        root_path = root_path.parent  # the index of a DICOM media folder: scan the folder it indexes
    skipped: list[Skipped] = []
    if root_path.is_dir():
        if not os.access(root_path, os.R_OK | os.X_OK):
            raise InputError(f"{root_path}: permission denied (the folder cannot be listed)")
        files = _walk(root_path, skipped)
    else:
        # a zip archive given directly reports its members as "study.zip/..." (a scan file as ".")
        rel = root_path.name if looks_like_zip(root_path) else "."
        files = [_File(root_path, rel, os.path.realpath(root_path), False)]

    companions: set[str] = set()
    for f in files:
        if _suffix(f.rel, (".mhd", ".nhdr")):
            companions |= _companion_files(f.path)

    cases: list[Case] = []
    headers: list[_DicomHeader] = []
    temporary: list[TemporaryTree] = []
    folders = {str(parent) for f in files for parent in PurePosixPath(f.rel).parents if str(parent) != "."}
    bar = progress_bar(
        total=len(files), desc="scanning", unit="file", enabled=progress, leave=False, lines="end"
    )
    queue = list(reversed(files))
    while queue:
        f = queue.pop()
        bar.update(1)
        if _suffix(f.rel, (".zip",)):
            inner = _open_zip(f, skipped, temporary)
            for g in inner:
                folders.update(str(parent) for parent in PurePosixPath(g.rel).parents if str(parent) != ".")
                if _suffix(g.rel, (".mhd", ".nhdr")):
                    companions |= _companion_files(g.path)
            bar.total += len(inner)
            queue.extend(reversed(inner))
            continue
        is_nifti, is_image = _suffix(f.path.name, _NIFTI_SUFFIXES), _suffix(f.path.name, _IMAGE_SUFFIXES)
        if (is_nifti or is_image) and skip_label_maps:
            in_labels = label_folder_reason(f.rel, folders)
            if in_labels:
                skipped.append(Skipped(f.rel, in_labels))
                continue
        if is_nifti:
            result = _nifti_case(f, skip_label_maps)
        elif is_image:
            if not include_images:
                skipped.append(Skipped(f.rel, "NRRD/MetaImage file (image files excluded)"))
                continue
            result = _image_case(f, skip_label_maps)
        elif os.path.normpath(str(f.path)) in companions:
            continue  # the voxel data of a .mhd/.nhdr header found above
        else:
            try:
                header = _read_dicom_header(f.path, f.rel)
            except _NotDicom as err:
                if str(err) == "not a DICOM or image file" and looks_like_zip(f.path):
                    queue.append(_File(f.path, f.rel + ".zip", f.real, f.is_link, f.zip_depth, f.rel))
                    bar.total += 1
                    continue  # a zip archive without the .zip name: opened as one
                skipped.append(Skipped(f.rel, str(err)))
                continue
            if header is not None:
                headers.append(header)
            continue
        if isinstance(result, Skipped):
            skipped.append(result)
        else:
            cases.append(result)
    bar.close()

    dicom_cases, dicom_skips = _dicom_cases(
        headers, modality=wanted_modality, min_slices=min_slices, description_re=description_re
    )
    cases.extend(dicom_cases)
    skipped.extend(dicom_skips)
    _assign_ids(cases)
    cases.sort(key=lambda c: (c.source, c.id))
    skipped.sort(key=lambda s: (s.path, s.reason))
    used = {
        str(t.path) for t in temporary if any(str(p).startswith(str(t.path)) for c in cases for p in c.paths)
    }
    for tree in temporary:  # archives that gave no case: nothing will read their files again
        if str(tree.path) not in used:
            tree.close()
    return DiscoveryReport(
        root=root_path, cases=cases, skipped=skipped, temporary=[t for t in temporary if not t.closed]
    )


_MAX_ZIP_DEPTH = 2  # a zip inside a zip is opened; deeper nesting is reported, not unpacked


def _open_zip(f: _File, skipped: list[Skipped], temporary: list[TemporaryTree]) -> list[_File]:
    """Extract an archive found by the walk; its files, with ``rel`` under the archive's own path."""
    where = f.shown or f.rel
    if f.zip_depth >= _MAX_ZIP_DEPTH:
        skipped.append(
            Skipped(
                where, f"zip archive nested {f.zip_depth} deep in zip archives: not opened (extract it first)"
            )
        )
        return []
    try:
        tree, unsafe = extract_zip(f.path)
    except ArchiveError as err:
        skipped.append(Skipped(where, str(err)))
        return []
    temporary.append(tree)
    skipped.extend(
        Skipped(f"{f.rel}/{name}", "unsafe path in zip archive (absolute or '..'): not extracted")
        for name in unsafe
    )
    inner_skips: list[Skipped] = []
    files = _walk(tree.path, inner_skips)
    skipped.extend(Skipped(f"{where}/{s.path}", s.reason) for s in inner_skips)
    out = [_File(g.path, f"{where}/{g.rel}", g.real, g.is_link, f.zip_depth + 1) for g in files]
    if not out and not unsafe:
        skipped.append(Skipped(where, "empty zip archive (no files)"))
    return out


def _group_path(headers: Sequence[_DicomHeader]) -> str:
    return headers[0].rel if len(headers) == 1 else _common_folder(h.rel for h in headers)


def _group_series(headers: Sequence[_DicomHeader]) -> tuple[dict[str, list[_DicomHeader]], list[Skipped]]:
    """Image files by SeriesInstanceUID (one copy per SOPInstanceUID); non-image objects as skips."""
    series: dict[str, list[_DicomHeader]] = {}
    non_image: dict[tuple[str, str], list[_DicomHeader]] = {}
    skipped: list[Skipped] = []
    for h in headers:
        reason = _non_image_reason(h)
        if reason is None and not h.series_uid:
            reason = "DICOM image without SeriesInstanceUID (truncated or incomplete header?)"
        if reason is not None:
            key = (h.series_uid or h.rel, reason)
            non_image.setdefault(key, []).append(h)
            continue
        series.setdefault(h.series_uid, []).append(h)
    for (_, reason), group in non_image.items():
        if reason.startswith("truncated") or not group[0].series_uid:
            skipped.extend(Skipped(h.rel, reason) for h in group)  # one line per damaged file
        else:
            skipped.append(Skipped(_group_path(group), reason))
    for uid, group in series.items():
        seen: dict[str, _DicomHeader] = {}
        for h in group:  # the same instance twice (a copy elsewhere in the tree): keep one intact copy
            instance = h.sop_instance_uid or h.rel
            if instance in seen and not (seen[instance].pixel_problem and not h.pixel_problem):
                continue
            seen[instance] = h
        series[uid] = list(seen.values())
    return series, skipped


def _dicom_cases(
    headers: Sequence[_DicomHeader],
    *,
    modality: str | None,
    min_slices: int,
    description_re: re.Pattern[str] | None,
) -> tuple[list[Case], list[Skipped]]:
    series, skipped = _group_series(headers)
    cases: list[Case] = []
    for uid, group in series.items():
        where = _group_path(group)
        first = group[0]
        frames = max(h.n_frames for h in group)
        if first.sop_class_uid.startswith(_SECONDARY_CAPTURE_PREFIX):
            kind = "multi-frame secondary capture" if frames > 1 else "secondary capture"
            skipped.append(Skipped(where, f"{kind} (not an acquired CT/MR volume)"))
            continue
        localiser = sorted(_LOCALISER_TYPES.intersection(first.image_type))
        if localiser:
            skipped.append(Skipped(where, f"localiser/scout (ImageType {localiser[0]})"))
            continue
        if first.series_description and _LOCALISER_DESCRIPTION.search(first.series_description):
            skipped.append(
                Skipped(where, f"localiser/scout (SeriesDescription {first.series_description!r})")
            )
            continue
        if modality is not None and (first.modality or "") != modality:
            skipped.append(
                Skipped(where, f"modality {first.modality or '(none)'} filtered out (--modality {modality})")
            )
            continue
        if description_re is not None and not description_re.search(first.series_description or ""):
            skipped.append(
                Skipped(
                    where,
                    f"series description {first.series_description or ''!r} does not match "
                    f"--series-description {description_re.pattern!r}",
                )
            )
            continue
        try:
            geom = _validate_series(group)
        except InputError as err:
            skipped.append(Skipped(where, str(err)))
            continue
        n = len(geom.headers)  # slices: files, or the frames of an enhanced image
        if n < min_slices:
            skipped.append(
                Skipped(where, f"only {n} slice{'s' if n != 1 else ''} (< min_slices {min_slices})")
            )
            continue
        probe = geom.headers[0]
        if probe.transfer_syntax not in _NATIVE_SYNTAXES:
            problem = _decode_problem(probe)
            if problem:
                skipped.append(Skipped(where, problem))
                continue
        cases.append(
            Case(
                id=f"s-{_short_hash(uid)}",
                source=_common_folder(h.rel for h in group),
                kind="dicom",
                paths=list(dict.fromkeys(h.path for h in geom.headers)),  # an enhanced file once
                modality=first.modality,
                n_slices=n,
                shape=geom.shape,
                spacing=geom.spacing,
                series_description=first.series_description,
                transfer_syntax=first.transfer_syntax,
            )
        )
    return cases, skipped


_NATIVE_SYNTAXES = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}
