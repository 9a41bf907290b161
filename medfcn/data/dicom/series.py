"""DICOM series: headers grouped by SeriesInstanceUID, the checks that make a series a case, and the
geometry of a series given as a folder or a list of files.

:func:`group_series` and :func:`series_problem` are discovery's DICOM half (which series, and why a
series is skipped); :func:`series_geometry` is the same result for a caller holding only paths
(:class:`~medfcn.data.readers.DicomSeriesReader` without a discovered case, the SEG label reader).

Example:
    >>> series, skipped = group_series(headers)  # doctest: +SKIP
    >>> geom = series_geometry("study/series_a")  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from medfcn.data.dicom.decoding import decode_problem
from medfcn.data.dicom.geometry import SeriesGeometry, validate_series
from medfcn.data.dicom.headers import DicomHeader, NotDicom, read_header
from medfcn.data.dicom.objects import (
    LOCALISER_DESCRIPTION,
    LOCALISER_TYPES,
    NATIVE_SYNTAXES,
    SECONDARY_CAPTURE_PREFIX,
    non_image_reason,
)
from medfcn.errors import InputError

__all__ = [
    "common_folder",
    "file_headers",
    "folder_headers",
    "group_path",
    "group_series",
    "location",
    "series_geometry",
    "series_problem",
]

_IMAGE_FILE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def group_series(headers: Sequence[DicomHeader]) -> tuple[dict[str, list[DicomHeader]], list[tuple[str, str]]]:
    """Image files by SeriesInstanceUID (one copy per SOPInstanceUID); non-image objects as skips.

    Returns:
        ``(series, skipped)``: UID -> headers, and ``(path, reason)`` for non-image objects (one line per
        damaged file, one per series otherwise).
    """
    series: dict[str, list[DicomHeader]] = {}
    non_image: dict[tuple[str, str], list[DicomHeader]] = {}
    skipped: list[tuple[str, str]] = []
    for h in headers:
        reason = non_image_reason(h)
        if reason is None and not h.series_uid:
            reason = "DICOM image without SeriesInstanceUID (truncated or incomplete header?)"
        if reason is not None:
            non_image.setdefault((h.series_uid or h.rel, reason), []).append(h)
            continue
        series.setdefault(h.series_uid, []).append(h)
    for (_, reason), group in non_image.items():
        if reason.startswith("truncated") or not group[0].series_uid:
            skipped.extend((h.rel, reason) for h in group)
        else:
            skipped.append((group_path(group), reason))
    for uid, group in series.items():
        seen: dict[str, DicomHeader] = {}
        for h in group:  # the same instance twice (a copy elsewhere in the tree): keep one intact copy
            instance = h.sop_instance_uid or h.rel
            if instance in seen and not (seen[instance].pixel_problem and not h.pixel_problem):
                continue
            seen[instance] = h
        kept = list(seen.values())
        template = next((h.template for h in group if h.template), None)
        if template is not None and not any(h.template for h in kept):
            kept[0].template = template  # the copy that kept the raw header was a duplicate
        series[uid] = kept
    return series, skipped


def common_folder(rels: Sequence[str] | list[str]) -> str:
    """The deepest folder (POSIX, relative) holding all of ``rels``; ``"."`` if none."""
    from pathlib import PurePosixPath

    parents = [PurePosixPath(r).parent.parts for r in rels]
    common: list[str] = []
    for parts in zip(*parents, strict=False):
        if all(p == parts[0] for p in parts):
            common.append(parts[0])
        else:
            break
    return "/".join(common) if common else "."


def group_path(headers: Sequence[DicomHeader]) -> str:
    """Where a group of headers is, for reports: the file, or the files' common folder."""
    return headers[0].rel if len(headers) == 1 else common_folder([h.rel for h in headers])


def series_problem(
    group: Sequence[DicomHeader],
    *,
    modality: str | None,
    min_slices: int,
    description_re: re.Pattern[str] | None,
) -> SeriesGeometry | str:
    """The checked geometry of one series, or the one-line reason discovery skips it."""
    first = group[0]
    frames = max(h.n_frames for h in group)
    if first.sop_class_uid.startswith(SECONDARY_CAPTURE_PREFIX):
        kind = "multi-frame secondary capture" if frames > 1 else "secondary capture"
        return f"{kind} (not an acquired CT/MR volume)"
    localiser = sorted(LOCALISER_TYPES.intersection(first.image_type))
    if localiser:
        return f"localiser/scout (ImageType {localiser[0]})"
    if first.series_description and LOCALISER_DESCRIPTION.search(first.series_description):
        return f"localiser/scout (SeriesDescription {first.series_description!r})"
    if modality is not None and (first.modality or "") != modality:
        return f"modality {first.modality or '(none)'} filtered out (--modality {modality})"
    if description_re is not None and not description_re.search(first.series_description or ""):
        return (
            f"series description {first.series_description or ''!r} does not match "
            f"--series-description {description_re.pattern!r}"
        )
    try:
        geom = validate_series(group)
    except InputError as err:
        return str(err)
    n = len(geom.headers)  # slices: files, or the frames of an enhanced image
    if n < min_slices:
        return f"only {n} slice{'s' if n != 1 else ''} (< min_slices {min_slices})"
    if geom.headers[0].transfer_syntax not in NATIVE_SYNTAXES:
        checked = next((h for h in group if h.decode_checked), None)  # decoded in the header pass
        problem = checked.decode_problem if checked is not None else decode_problem(geom.headers[0])
        if problem:
            return problem
    return geom


def _where(paths: Sequence[Path]) -> str:
    """The series' folder (or the common folder of its files) for messages."""
    if len(paths) == 1:
        return str(paths[0])
    try:
        return os.path.commonpath([str(p.parent) for p in paths]) or "."
    except ValueError:  # relative and absolute paths mixed
        return str(paths[0].parent)


def _one_series(headers: list[DicomHeader], where: str) -> list[DicomHeader]:
    by_uid: dict[str, list[DicomHeader]] = {}
    for h in headers:
        by_uid.setdefault(h.series_uid, []).append(h)
    if len(by_uid) > 1:
        names = ", ".join(
            f"#{g[0].series_number if g[0].series_number is not None else '?'}"
            + (f" {g[0].series_description!r}" if g[0].series_description else "")
            + f" ({len(g)} files)"
            for g in by_uid.values()
        )
        raise InputError(
            f"{where} holds {len(by_uid)} DICOM series ({names}); pass the files of one series "
            "(medfcn data scan lists them)"
        )
    return headers


def folder_headers(folder: Path) -> list[DicomHeader]:
    """Headers of the DICOM image files directly in ``folder``; junk and non-image objects are ignored.

    Raises:
        InputError: no image series in the folder, several series, or a damaged slice.
    """
    headers: list[DicomHeader] = []
    ignored: Counter[str] = Counter()
    try:
        entries = sorted(p for p in folder.iterdir() if not p.name.startswith("."))
    except OSError as err:
        raise InputError(f"cannot list {folder}: {err.strerror or err}") from err
    for p in entries:
        if not p.is_file():
            continue
        if p.name.lower().endswith(_IMAGE_FILE_SUFFIXES):
            ignored["NIfTI/image file"] += 1
            continue
        try:
            h = read_header(p, p.name)
        except NotDicom as err:
            reason = str(err)
            if reason.startswith(("truncated", "corrupt", "permission", "cannot read")):
                raise InputError(f"{p}: {reason}") from err  # a damaged slice, not a stray file
            ignored[reason] += 1
            continue
        if h is None:
            continue
        reason_or_none = non_image_reason(h)
        if reason_or_none is not None:
            if reason_or_none.startswith("truncated"):
                raise InputError(f"{p}: {reason_or_none}")
            ignored[reason_or_none] += 1
            continue
        headers.append(h)
    if not headers:
        found = "; ".join(f"{n} x {r}" for r, n in ignored.most_common(3))
        raise InputError(f"no DICOM image series in {folder}" + (f" (found: {found})" if found else " (empty)"))
    return _one_series(headers, str(folder))


def file_headers(paths: Sequence[Path]) -> list[DicomHeader]:
    """Headers of an explicit list of DICOM files of one series.

    Raises:
        InputError: a folder, a missing or non-DICOM file, a non-image object, or several series.
    """
    headers: list[DicomHeader] = []
    for p in paths:
        if p.is_dir():
            raise InputError(f"{p} is a folder; pass either one series folder or a list of DICOM files")
        if not p.exists():
            raise InputError(f"{p} does not exist")
        try:
            h = read_header(p, p.name)
        except NotDicom as err:
            raise InputError(f"{p}: {err}") from err
        if h is None:
            continue  # a DICOMDIR in the list
        reason = non_image_reason(h)
        if reason is not None:
            raise InputError(f"{p}: {reason}")
        headers.append(h)
    if not headers:
        raise InputError(f"no DICOM image files in {_where(list(paths))}")
    return _one_series(headers, _where(list(paths)))


def location(paths: Sequence[Path]) -> str:
    """How messages name a series given by its files: the file, or the files' common folder."""
    return _where(paths)


def series_geometry(data: Sequence[str | os.PathLike[str]] | str | os.PathLike[str]) -> SeriesGeometry:
    """The validated geometry of a DICOM series (a folder or its files), from the headers alone.

    The same checks and slice order as discovery and :meth:`~medfcn.data.readers.DicomSeriesReader.read`;
    derived objects (SEG labels, RTSTRUCT) use it to place their voxels on the grid the reader loads.

    Raises:
        InputError: not one valid DICOM image series (one line naming the folder or file).
    """
    items = [data] if isinstance(data, (str, os.PathLike)) else list(data)
    paths = [Path(os.fspath(p)) for p in items]
    if not paths:
        raise InputError("no DICOM series given")
    shown = _where(paths)
    headers = folder_headers(paths[0]) if len(paths) == 1 and paths[0].is_dir() else file_headers(paths)
    try:
        return validate_series(headers)
    except InputError as err:
        raise InputError(f"DICOM series {shown}: {err}") from err
