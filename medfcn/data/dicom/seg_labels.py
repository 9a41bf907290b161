"""DICOM SEG objects (3D Slicer, OHIF, highdicom, dcmqi) as ground-truth label maps of a DICOM series.

:func:`read_seg_label` turns a SEG into an ``(X, Y, Z)`` integer label map on the grid of the series it
annotates (the grid :class:`medfcn.data.readers.DicomSeriesReader` loads, so it compares voxel for voxel
with a prediction), in three steps:

1. **Which series.** The SEG must reference the image's SeriesInstanceUID (ReferencedSeriesSequence);
   a SEG drawn on another series is refused.
2. **Which class.** Each segment gets a bundle class value, in this order: the explicit ``mapping``
   (segment label, segment number, or ``SCHEME:VALUE`` code -> class name or value), else the segment
   label equal to a class name (case-insensitive), else the segment's SegmentedPropertyType code (and
   modifier, where the class has one) equal to the class's code from the bundle metadata
   (:func:`medfcn.data.dicom.segment_codes.class_table`). Unmatched segments are ignored and listed; a SEG
   with no matching segment is refused.
3. **Which voxels.** Each SEG frame is placed by its own Plane Position and the shared orientation and
   pixel spacing, and must lie on the image grid (nearest voxel within 0.2 voxel). Binary and label-map
   SEGs are taken as they are; **fractional** segments are binarised at half the maximum fractional
   value (probability or occupancy >= 0.5). Where segments of **different classes overlap**, the
   default ``overlap="error"`` refuses the SEG with the voxel count; ``overlap="higher"`` gives the voxel
   to the higher class value (e.g. tumour over liver). Segments mapped to the same class are merged.

For training, :class:`~medfcn.data.readers.DicomSeriesReader` reads a SEG listed as the ``label`` of an
MSD ``dataset.json``: the referenced series is looked up under the dataset folder (the nearest folder
above the SEG holding ``dataset.json``) and classes come from the dataset's ``labels``, with an optional
``"segment_map"`` object of the same form as ``mapping`` (:func:`read_seg_label_for_dataset`).

Example:
    >>> label, report = read_seg_label("liver.dcm", "ct-3slice/", {1: "liver", 2: "tumour"})  # doctest: +SKIP
    >>> report.mapped  # doctest: +SKIP
    {1: 1}
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medfcn.data.dicom.geometry import SeriesGeometry
from medfcn.data.dicom.objects import SEGMENTATION_SOP_CLASSES as _SEG_CLASSES
from medfcn.data.dicom.segment_codes import ClassInfo, as_class_table
from medfcn.errors import InputError

__all__ = [
    "SEGMENTATION_SOP_CLASSES",
    "SegLabelReport",
    "is_dicom_seg",
    "parse_segment_map",
    "read_seg_label",
    "read_seg_label_for_dataset",
    "seg_pairing_error",
]

SEGMENTATION_SOP_CLASSES = frozenset(_SEG_CLASSES)
"""Segmentation Storage and Label Map Segmentation Storage."""

Overlap = Literal["error", "higher"]
_OFF_GRID_TOL = 0.2  # voxels
_LPS = np.diag([-1.0, -1.0, 1.0])


@dataclass
class SegLabelReport:
    """How a SEG became a label map.

    Attributes:
        mapped: segment number -> class value.
        ignored: ``"<number> '<label>'"`` of the segments that match no class.
        fractional: the SEG was fractional (binarised at 0.5).
        overlap_voxels: voxels claimed by segments of two classes (resolved by ``overlap="higher"``).
    """

    mapped: dict[int, int] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    fractional: bool = False
    overlap_voxels: int = 0


def _short(uid: str) -> str:
    """A series UID as medfcn's case id (``s-`` + 12 hex of its SHA-1): no raw identifiers in messages."""
    return "s-" + hashlib.sha1(uid.encode("utf-8")).hexdigest()[:12]


def is_dicom_seg(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a DICOM file of a Segmentation SOP class (header only)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    p = Path(path)
    if not p.is_file():
        return False
    try:
        ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["SOPClassUID", "Modality"])
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError):
        return False
    return str(ds.get("SOPClassUID", "")) in SEGMENTATION_SOP_CLASSES or ds.get("Modality") == "SEG"


def _reference_problem(seg: Any, series_uid: str, where: str) -> str | None:
    """Why ``seg`` does not annotate the series ``series_uid`` (its ReferencedSeriesSequence), or ``None``."""
    referenced = [str(r.SeriesInstanceUID) for r in seg.get("ReferencedSeriesSequence", [])]
    if series_uid in referenced:
        return None
    refs = ", ".join(_short(u) for u in referenced) or "none"
    return f"{where}: the SEG references another series ({refs}), not the image series {_short(series_uid)}"


def seg_pairing_error(seg_path: str | os.PathLike[str], image: Any) -> str | None:
    """Why the SEG ``seg_path`` cannot label ``image`` (a DICOM series folder or its files), or ``None``.

    Headers only (the SEG's ReferencedSeriesSequence and one image file's SeriesInstanceUID), so that a
    dataset pairing each image with the SEG of another series is refused before training starts, not
    trained on. An image that is not a DICOM series cannot be labelled by a SEG.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    paths = [Path(p) for p in image] if isinstance(image, (list, tuple)) else [Path(image)]
    first: Path | None = None
    for p in paths:
        if p.is_dir():
            first = next((f for f in sorted(p.rglob("*")) if f.is_file() and not f.name.startswith(".")), None)
        elif p.is_file():
            first = p
        if first is not None:
            break
    try:
        seg = pydicom.dcmread(seg_path, stop_before_pixels=True, specific_tags=["ReferencedSeriesSequence"])
        ref = pydicom.dcmread(first, stop_before_pixels=True, specific_tags=["SeriesInstanceUID"]) if first else None
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError, AttributeError) as err:
        return f"{seg_path}: cannot read the SEG or its image's header ({type(err).__name__})"
    series = str(ref.get("SeriesInstanceUID", "")) if ref is not None else ""
    if not series:
        return f"{seg_path}: a DICOM SEG labels a DICOM series, but its image is not one"
    return _reference_problem(seg, series, str(seg_path))


def parse_segment_map(text: str | Mapping[str, Any] | None) -> dict[str, str]:
    """``"Liver=liver,2=tumour,SCT:108369006=tumour"`` (or a mapping) as ``{segment key: class}``.

    Raises:
        InputError: an item without ``=``.
    """
    if text is None:
        return {}
    if isinstance(text, Mapping):
        return {str(k).strip(): str(v).strip() for k, v in text.items()}
    out: dict[str, str] = {}
    for item in (t.strip() for t in text.split(",")):
        if not item:
            continue
        if "=" not in item:
            raise InputError(f"segment map item {item!r} is not SEGMENT=CLASS (e.g. 'Liver=liver,2=tumour')")
        key, value = item.rsplit("=", 1)
        out[key.strip()] = value.strip()
    return out


def _class_value(target: str, table: Mapping[int, ClassInfo], where: str) -> int:
    by_name = {c.name.strip().lower(): v for v, c in table.items()}
    if target.strip().lower() in by_name:
        return by_name[target.strip().lower()]
    try:
        value = int(target)
    except ValueError:
        value = -1
    if value in table:
        return value
    names = ", ".join(f"{v} {c.name}" for v, c in sorted(table.items()))
    raise InputError(
        f"{where}: segment map names class {target!r}, which the bundle lacks (classes: {names})"
    )


def _code_key(item: Any) -> str:
    return f"{item.CodingSchemeDesignator}:{item.CodeValue}"


def _map_segments(
    ds: Any, table: Mapping[int, ClassInfo], mapping: Mapping[str, str], where: str
) -> tuple[dict[int, int], list[str]]:
    explicit = {k.strip().lower(): v for k, v in mapping.items()}
    mapped: dict[int, int] = {}
    ignored: list[str] = []
    described: list[str] = []
    for seg in ds.SegmentSequence:
        number = int(seg.SegmentNumber)
        label = str(seg.get("SegmentLabel", "") or "")
        types = seg.get("SegmentedPropertyTypeCodeSequence") or []
        code = _code_key(types[0]) if types else ""
        modifiers = types[0].get("SegmentedPropertyTypeModifierCodeSequence") or [] if types else []
        modifier = _code_key(modifiers[0]) if modifiers else ""
        described.append(f"{number} {label!r} [{code}]")
        if number == 0 or (label.lower() == "background" and code.endswith(":125040")):
            continue  # a label map's background segment
        target = next(
            (explicit[k] for k in (label.lower(), str(number), code.lower()) if k and k in explicit), None
        )
        if target is not None:
            mapped[number] = _class_value(target, table, where)
            continue
        by_name = [v for v, c in table.items() if c.name.strip().lower() == label.strip().lower()]
        by_code = [
            v
            for v, c in table.items()
            if code == f"{c.type[0]}:{c.type[1]}"
            and (c.modifier is None or modifier == f"{c.modifier[0]}:{c.modifier[1]}")
        ]
        match = by_name or by_code
        if match:
            mapped[number] = match[0]
        else:
            ignored.append(f"{number} {label!r}")
    if not mapped:
        names = ", ".join(c.name for _, c in sorted(table.items()))
        raise InputError(
            f"{where}: no segment matches the bundle's classes ({names}); segments: {'; '.join(described)}. "
            "Map them explicitly, e.g. --segment-map 'Liver=liver'"
        )
    return mapped, ignored


def _reference_geometry(reference: Any) -> SeriesGeometry:
    """The validated geometry (:func:`medfcn.data.dicom.geometry.validate_series`) of the image series."""
    from medfcn.data.dicom.series import series_geometry

    return reference if isinstance(reference, SeriesGeometry) else series_geometry(reference)


def read_seg_label(
    seg_path: str | os.PathLike[str],
    reference: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | SeriesGeometry,
    classes: Mapping[int, ClassInfo] | Mapping[int, str],
    *,
    mapping: Mapping[str, str] | str | None = None,
    overlap: Overlap = "error",
) -> tuple[np.ndarray, SegLabelReport]:
    """A DICOM SEG as an ``(X, Y, Z)`` label map on the grid of the series it annotates.

    Args:
        seg_path: the SEG file.
        reference: the image series: its folder or its files (as :class:`~medfcn.data.readers.DicomSeriesReader`
            takes them), or its checked geometry (a discovered case's).
        classes: the bundle's classes: label value -> :class:`~medfcn.data.dicom.segment_codes.ClassInfo`
            or label value -> name (background 0 ignored).
        mapping: explicit segment -> class (see :func:`parse_segment_map`).
        overlap: ``"error"`` (default) or ``"higher"`` (see the module docstring).

    Returns:
        ``(label, report)``: uint8 label map (class values, 0 elsewhere) and a :class:`SegLabelReport`.

    Raises:
        InputError: not a SEG, a SEG of another series, no segment matching a class, frames off the
            image grid, or overlapping classes with ``overlap="error"``. One line naming the SEG file.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    from medfcn.data.dicom.enhanced import frame_geometries

    path = Path(seg_path)
    where = str(path)
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError, TypeError) as err:
        raise InputError(f"{where}: not a readable DICOM file ({type(err).__name__}: {err})") from err
    if str(ds.get("SOPClassUID", "")) not in SEGMENTATION_SOP_CLASSES:
        raise InputError(f"{where}: not a DICOM SEG (SOP class {ds.get('SOPClassUID', '?')})")
    table = as_class_table(classes)
    geom = _reference_geometry(reference)
    series_uid = geom.headers[0].series_uid
    problem = _reference_problem(ds, series_uid, where)
    if problem:
        raise InputError(problem)
    mapped, ignored = _map_segments(ds, table, parse_segment_map(mapping), where)
    seg_type = str(ds.get("SegmentationType", "BINARY")).upper()
    report = SegLabelReport(mapped=mapped, ignored=ignored, fractional=seg_type == "FRACTIONAL")

    try:
        frames = frame_geometries(ds)
    except InputError as err:
        raise InputError(f"{where}: {err}") from err
    pixels = ds.pixel_array
    if pixels.ndim == 2:
        pixels = pixels[None]
    threshold = 0.5 * float(ds.get("MaximumFractionalValue", 255) or 255) if seg_type == "FRACTIONAL" else 0.5
    per_frame = ds.PerFrameFunctionalGroupsSequence
    inv = np.linalg.inv(geom.affine)
    shape = np.asarray(geom.shape)
    # per voxel: the classes claimed (bit c set for class c), so overlaps of classes can be counted
    claims = np.zeros(geom.shape, dtype=np.uint64)
    rows, cols = int(ds.Rows), int(ds.Columns)
    for i, f in enumerate(frames):
        frame = pixels[i]
        if seg_type == "LABELMAP":
            masks = [(mapped[int(n)], frame == n) for n in np.unique(frame) if int(n) in mapped]
        else:
            ident = per_frame[i].get("SegmentIdentificationSequence")
            number = int(ident[0].ReferencedSegmentNumber) if ident else 1
            if number not in mapped:
                continue
            on = frame >= threshold
            masks = [(mapped[number], on)]
        masks = [(c, m) for c, m in masks if m.any()]
        if not masks:
            continue
        iop = np.asarray(f.orientation)
        row_mm, col_mm = f.pixel_spacing
        base = inv[:3, :3] @ (_LPS @ np.asarray(f.position)) + inv[:3, 3]
        dc = inv[:3, :3] @ (_LPS @ (iop[:3] * col_mm))
        dr = inv[:3, :3] @ (_LPS @ (iop[3:] * row_mm))
        corners = np.array([base + r * dr + c * dc for r in (0, rows - 1) for c in (0, cols - 1)])
        nearest = np.rint(corners)
        if (
            np.abs(corners - nearest).max() > _OFF_GRID_TOL
            or np.abs(dr - np.rint(dr)).max() > 1e-3
            or np.abs(dc - np.rint(dc)).max() > 1e-3
        ):
            raise InputError(
                f"{where}: SEG frame {i + 1} is not on the image grid (off by "
                f"{np.abs(corners - nearest).max():.2f} voxels, or another pixel spacing/orientation)"
            )
        for value, mask in masks:
            r, c = np.nonzero(mask)
            ijk = np.rint(base + r[:, None] * dr + c[:, None] * dc).astype(np.int64)
            inside = np.all((ijk >= 0) & (ijk < shape), axis=1)
            if not inside.all():
                raise InputError(
                    f"{where}: SEG frame {i + 1} has {int((~inside).sum())} segment pixels outside the image "
                    f"volume {tuple(int(s) for s in shape)}"
                )
            claims[ijk[:, 0], ijk[:, 1], ijk[:, 2]] |= np.uint64(1) << np.uint64(value)
    multi = (claims & (claims - np.uint64(1))) != 0  # more than one bit: several classes claim it
    report.overlap_voxels = int(np.count_nonzero(multi))
    if report.overlap_voxels and overlap == "error":
        pairs = sorted({int(b) for b in np.unique(claims[multi])})
        names = " / ".join("+".join(table[v].name for v in sorted(table) if b >> v & 1) for b in pairs[:3])
        raise InputError(
            f"{where}: segments of different classes overlap in {report.overlap_voxels} voxels ({names}); "
            "a label map holds one class per voxel: pass overlap='higher' (--segment-overlap higher) to give "
            "such voxels the higher class value"
        )
    label = np.zeros(geom.shape, dtype=np.uint8)
    for value in sorted(table):  # ascending: the higher class value wins where classes overlap
        label[(claims >> np.uint64(value)) & np.uint64(1) == 1] = value
    return label, report


def _dataset_root(seg: Path) -> Path:
    for parent in seg.resolve().parents:
        if (parent / "dataset.json").is_file():
            return parent
    return seg.resolve().parent.parent


_INDEX: dict[tuple[str, float], dict[str, SeriesGeometry]] = {}


def read_seg_label_for_dataset(seg_path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """A SEG listed as the ``label`` of an MSD dataset: its label map and the affine of its series.

    The referenced series is found under the dataset folder (the nearest folder above the SEG that holds
    ``dataset.json``, else the SEG's grandparent), classes are the dataset's ``labels`` and an optional
    ``"segment_map"`` object maps segments explicitly (see :func:`read_seg_label`). The series index of
    a dataset folder is built once per process.

    Returns:
        ``(label (X, Y, Z) uint8, affine (4, 4) RAS)``.

    Raises:
        InputError: the referenced series is not under the dataset folder, or :func:`read_seg_label`'s errors.
    """
    import pydicom

    from medfcn.data.discovery import find_cases

    path = Path(seg_path)
    root = _dataset_root(path)
    meta_file = root / "dataset.json"
    meta: dict[str, Any] = {}
    if meta_file.is_file():
        try:
            meta = json.loads(meta_file.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise InputError(f"cannot read {meta_file}: {err}") from err
    names = {int(k): str(v) for k, v in (meta.get("labels") or {}).items() if str(k).lstrip("-").isdigit()}
    if not names:
        raise InputError(f"{path}: a SEG label needs class names: {meta_file} has no 'labels'")
    key = (str(root), meta_file.stat().st_mtime if meta_file.is_file() else 0.0)
    if key not in _INDEX:
        with find_cases(root, min_slices=1) as report:  # zip extractions are not kept for an index
            _INDEX[key] = {c.id: c.geometry for c in report.cases if c.geometry is not None}
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    refs = [str(r.SeriesInstanceUID) for r in ds.get("ReferencedSeriesSequence", [])]
    geometry = next((_INDEX[key][_short(u)] for u in refs if _short(u) in _INDEX[key]), None)
    if geometry is None:
        shown = ", ".join(_short(u) for u in refs) or "none"
        raise InputError(f"{path}: the series this SEG references ({shown}) is not under {root}")
    label, _ = read_seg_label(path, geometry, names, mapping=meta.get("segment_map"))
    return label, geometry.affine
