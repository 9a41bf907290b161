"""Series geometry: do a DICOM series' slices form one regular 3D grid, and what is its affine?

:func:`validate_series` checks the headers of one series (pixel format, pixel data, geometry tags, no
duplicate positions, no gantry tilt, positions on one line, uniform spacing: each failure has its own
one-line reason) and returns a :class:`SeriesGeometry`: the headers sorted along the slice normal and the
voxel-to-RAS affine. Discovery, :class:`~medfcn.data.readers.DicomSeriesReader`, the SEG label reader
and the SEG/RTSTRUCT writers all use this one result. The affine comes from highdicom
(``highdicom.spatial.create_affine_matrix_from_attributes``); the checks stay medfcn's because
highdicom's ``get_volume_positions`` answers "regular or not" without saying why.

Why not sort by InstanceNumber, as MONAI's ``PydicomReader`` does: scanners number slices against the
slice direction too; the position along the normal is the order, InstanceNumber only breaks exact ties.

Example:
    >>> geom = validate_series(headers)  # doctest: +SKIP
    >>> geom.shape, geom.spacing, geom.affine  # (X, Y, Z), mm, (4, 4) RAS  # doctest: +SKIP
"""

from __future__ import annotations

import math
import os
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medfcn.data.dicom.enhanced import expand_frames
from medfcn.data.dicom.headers import DicomHeader
from medfcn.data.dicom.objects import sop_name
from medfcn.errors import InputError

__all__ = ["SeriesGeometry", "known_geometry", "remember_geometry", "validate_series"]

# Geometry tolerances (mm unless stated). Positions in real exports are rounded to ~0.01 mm and
# orientations to ~1e-6, so tolerances sit well above rounding and well below one voxel.
_ORIENTATION_ATOL = 1e-4  # cosines: same orientation within the series
_DUPLICATE_MM = 1e-3  # two slices closer than this along the normal are at the same position
_SPACING_REL, _SPACING_ABS = 0.05, 0.02  # a gap may differ from the median by 5% (at least 0.02 mm)
_TILT_TAN, _TILT_DRIFT_MM = 1e-3, 0.02  # slice stack leaning off the normal by >0.06 deg and >0.02 mm



@dataclass
class SeriesGeometry:
    """A validated series: headers sorted along the slice normal and its voxel-to-world matrix.

    Discovery computes it once and :class:`~medfcn.data.cases.Case` carries it, so the reader and the
    writers take the files, their order and the grid from here instead of reading the headers again.
    """

    headers: list[DicomHeader]
    affine: np.ndarray  # (4, 4) RAS mm
    shape: tuple[int, int, int]  # (X, Y, Z) = (columns, rows, slices)
    spacing: tuple[float, float, float]  # mm along X, Y, Z

    @property
    def affine_lps(self) -> np.ndarray:
        """``(4, 4)`` voxel-to-LPS (DICOM patient coordinates) matrix."""
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine

    @property
    def paths(self) -> list[Path]:
        """The files in slice order (an enhanced image's one file once)."""
        return list(dict.fromkeys(h.path for h in self.headers))

    @property
    def series_uid(self) -> str:
        """The SeriesInstanceUID (never shown: reports use its hash)."""
        return self.headers[0].series_uid


# Geometries discovery handed out, by their files: MONAI's LoadImage turns its input into path strings,
# so the reader recognises a discovered series by them. Weak values: an entry lives as long as its Case.
_KNOWN: weakref.WeakValueDictionary[tuple[str, ...], SeriesGeometry] = weakref.WeakValueDictionary()


def _key(paths: Sequence[str | os.PathLike[str]]) -> tuple[str, ...]:
    return tuple(str(Path(os.fspath(p)).expanduser()) for p in paths)  # as LoadImage spells them


def remember_geometry(geometry: SeriesGeometry) -> None:
    """Let :func:`known_geometry` find ``geometry`` by its files (discovery calls it for each case)."""
    _KNOWN[_key(geometry.paths)] = geometry


def known_geometry(paths: Sequence[str | os.PathLike[str]]) -> SeriesGeometry | None:
    """The geometry discovery checked for exactly these files, in this order, if its case is alive.

    A file changed since discovery (size or modification time) makes the entry stale: ``None``.
    """
    geometry = _KNOWN.get(_key(paths))
    if geometry is None:
        return None
    read = {h.path: h.stamp for h in geometry.headers}
    if _stamps(list(read)) != tuple(read.values()):
        return None
    return geometry


def _stamps(paths: Sequence[Path]) -> tuple[tuple[int, int], ...]:
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            return ()
        out.append((st.st_size, st.st_mtime_ns))
    return tuple(out)


def _in_files(count: int, total: int) -> str:
    return (
        "" if total == 1 else (f" (all {total} files)" if count == total else f" ({count} of {total} files)")
    )


def validate_series(headers: Sequence[DicomHeader]) -> SeriesGeometry:
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
            f"multi-frame {sop_name(headers[0].sop_class_uid)} ({frames} frames in one file): only single-frame "
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

    from highdicom.spatial import create_affine_matrix_from_attributes

    # highdicom's affine of (column, row, slice) indices: the same matrix DICOM PS3.3 C.7.6.2.1.1 defines
    lps = create_affine_matrix_from_attributes(
        positions[0], (*row, *col), (col_mm, row_mm), float(dz), index_convention="RD"
    )
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps  # DICOM LPS -> RAS (NIfTI/MONAI convention)
    h0 = sorted_headers[0]
    return SeriesGeometry(
        headers=sorted_headers,
        affine=affine,
        shape=(h0.columns, h0.rows, n),
        spacing=(row_mm, col_mm, float(dz)),
    )
