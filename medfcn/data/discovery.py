"""Scan-folder discovery: walk a folder once, return the scans in it and why everything else was skipped.

:func:`find_cases` turns "a path" into :class:`~medfcn.data.cases.Case` records before any weights are
loaded; ``medfcn data scan`` prints them and ``medfcn infer`` segments them, so both always agree:

* NIfTI files (``.nii``, ``.nii.gz``) and, optionally, NRRD/MetaImage files (``.nrrd``, ``.nhdr``,
  ``.mha``, ``.mhd``) are one case each (header read only; :mod:`medfcn.data.images`);
* zip archives (``.zip``, or any file that starts like one) are extracted to a temporary folder and
  walked as if they were folders (:mod:`medfcn.data.archives`); the report removes the folder on
  :meth:`~medfcn.data.cases.DiscoveryReport.close` (and at garbage collection or exit);
* DICOM files (with or without extension, with or without the 128-byte preamble) have their header read
  once (:mod:`medfcn.data.dicom.headerpass`, one process, or several on request) and are grouped into
  series by ``SeriesInstanceUID`` -- several series may share a folder and one series may be spread over
  several folders; each series' geometry is checked (:mod:`medfcn.data.dicom.geometry`) and the case
  carries it, so the reader and the SEG/RTSTRUCT writers read no header again. Enhanced multi-frame
  CT/MR/PET files are one series each (:mod:`medfcn.data.dicom.enhanced`). A ``DICOMDIR`` is ignored:
  the files it indexes are found by the walk itself (:mod:`medfcn.data.walk`);
* a list file (``.txt``, ``.lst``, ``.list``) names the paths to discover, one per line.

Everything that is not a usable scan becomes a :class:`~medfcn.data.cases.Skipped` record with a
one-line, specific reason (junk, truncated files, non-image objects such as SR/RTSTRUCT/SEG, localisers,
colour images, multi-frame secondary captures, missing or duplicate slices, gantry tilt, undecodable
compression, permission problems, symbolic-link loops, filters). Hidden files and folders (names
starting with ``.``) are ignored. Nothing is ever written under the input folder.

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

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from medfcn.data.archives import ArchiveError, TemporaryTree, extract_zip, looks_like_zip
from medfcn.data.cases import MIN_SLICES, Case, DiscoveryReport, Skipped
from medfcn.data.dicom.geometry import remember_geometry
from medfcn.data.dicom.headerpass import read_headers
from medfcn.data.dicom.headers import DicomHeader, NotDicom
from medfcn.data.dicom.series import common_folder, group_path, group_series, series_problem
from medfcn.data.images import IMAGE_SUFFIXES, NIFTI_SUFFIXES, image_case, nifti_case
from medfcn.data.labelmaps import label_folder_reason
from medfcn.data.walk import FoundFile, companion_files, link_problem, safe_id, short_hash, suffix, walk
from medfcn.errors import InputError

__all__ = [
    "LIST_SUFFIXES",
    "MIN_SLICES",
    "Case",
    "DiscoveryReport",
    "Skipped",
    "find_cases",
    "is_list_file",
    "read_list_file",
]


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
            a zip archive, a ``DICOMDIR`` file (its folder is scanned), or a list file (``.txt``,
            ``.lst``, ``.list``: one path per line, relative to the list file, ``#`` comments): each
            entry is discovered in turn, sources and skips are shown under the entry's path, an entry
            that does not exist or a case id met twice is a skip. Zip archives anywhere in the
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
        A :class:`DiscoveryReport`: cases sorted by ``(source, id)``, skipped sorted by path (a list
        file: entry by entry, in the list's order).

    Raises:
        InputError: ``root`` does not exist or cannot be listed, ``min_slices < 1``, an invalid
            ``series_description`` pattern, or an unreadable or empty list file.
    """
    if min_slices < 1:
        raise InputError(f"min_slices must be >= 1, got {min_slices}")
    try:
        description_re = re.compile(series_description, re.IGNORECASE) if series_description else None
    except re.error as err:
        raise InputError(f"invalid series description pattern {series_description!r}: {err}") from err
    options = _Options(
        modality=modality.strip().upper() if modality else None,
        min_slices=min_slices,
        description_re=description_re,
        include_images=include_images,
        progress=progress,
        skip_label_maps=skip_label_maps,
    )
    root_path = Path(root)
    if is_list_file(root_path):
        return _find_listed(root_path, options)
    return _find_one(root_path, options)


@dataclass(frozen=True)
class _Options:
    modality: str | None
    min_slices: int
    description_re: re.Pattern[str] | None
    include_images: bool
    progress: bool
    skip_label_maps: bool


LIST_SUFFIXES = (".txt", ".lst", ".list")
"""Names of list files: one scan path per line."""


def is_list_file(path: Path) -> bool:
    """Whether ``path`` is a list file (an existing ``.txt``/``.lst``/``.list`` file)."""
    return path.suffix.lower() in LIST_SUFFIXES and path.is_file()


def read_list_file(path: Path) -> list[Path]:
    """Paths of a list file: one per line, relative to the list file's folder; ``#`` comments, blanks ok.

    Raises:
        InputError: the file cannot be read, or names no path.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise InputError(f"cannot read the list file {path}: {err}") from err
    out = []
    for line in lines:
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        p = Path(text).expanduser()
        out.append(p if p.is_absolute() else path.parent / p)
    if not out:
        raise InputError(f"the list file {path} names no scans (one path per line expected)")
    return out


def _find_listed(list_file: Path, options: _Options) -> DiscoveryReport:
    """Each entry of a list file discovered in turn; sources and skips shown under the entry's path."""
    report = DiscoveryReport(root=list_file)
    ids: set[str] = set()
    for entry in read_list_file(list_file):
        if not entry.exists():
            report.skipped.append(Skipped(str(entry), f"{entry} does not exist"))
            continue
        found = _find_one(entry, options)
        report.temporary.extend(found.temporary)
        report.inputs.extend(found.inputs)
        for case in found.cases:
            case.source = str(entry / case.source) if case.source not in ("", ".") else str(entry)
            if case.id in ids:  # the same scan listed twice, or two entries with same-named files
                report.skipped.append(
                    Skipped(case.source, f"duplicate case id {case.id}; listed twice?", case.id, case.kind)
                )
                continue
            ids.add(case.id)
            report.cases.append(case)
        report.skipped.extend(Skipped(str(entry / s.path), s.reason, s.case_id, s.kind) for s in found.skipped)
    return report


def _find_one(root_path: Path, options: _Options) -> DiscoveryReport:
    """Discovery of one folder, file or archive (see :func:`find_cases`)."""
    from medfcn._progress import progress as progress_bar

    if not root_path.exists():
        problem = link_problem(str(root_path)) if root_path.is_symlink() else None
        raise InputError(f"{root_path} does not exist" + (f" ({problem})" if problem else ""))

    if root_path.is_file() and root_path.name.upper() == "DICOMDIR":
        root_path = root_path.parent  # the index of a DICOM media folder: scan the folder it indexes
    skipped: list[Skipped] = []
    if root_path.is_dir():
        if not os.access(root_path, os.R_OK | os.X_OK):
            raise InputError(f"{root_path}: permission denied (the folder cannot be listed)")
        files = walk(root_path, skipped)
    else:
        # a zip archive given directly reports its members as "study.zip/..." (a scan file as ".")
        rel = root_path.name if looks_like_zip(root_path) else "."
        files = [FoundFile(root_path, rel, os.path.realpath(root_path), False)]

    companions: set[str] = set()
    for f in files:
        if suffix(f.rel, (".mhd", ".nhdr")):
            companions |= companion_files(f.path)

    cases: list[Case] = []
    headers: list[DicomHeader] = []
    temporary: list[TemporaryTree] = []
    folders = {str(parent) for f in files for parent in PurePosixPath(f.rel).parents if str(parent) != "."}
    bar = progress_bar(
        total=len(files), desc="scanning", unit="file", enabled=options.progress, leave=False, lines="end"
    )
    seen_series: set[str] = set()
    queue = list(reversed(files))
    while queue:
        candidates: list[FoundFile] = []  # DICOM or junk: their headers are read together below
        while queue:
            f = queue.pop()
            if suffix(f.rel, (".zip",)):
                bar.update(1)
                inner = _open_zip(f, skipped, temporary)
                for g in inner:
                    folders.update(str(p) for p in PurePosixPath(g.rel).parents if str(p) != ".")
                    if suffix(g.rel, (".mhd", ".nhdr")):
                        companions |= companion_files(g.path)
                bar.total += len(inner)
                queue.extend(reversed(inner))
                continue
            result = _image_file(f, folders, companions, options.include_images, options.skip_label_maps)
            if result is _DICOM:
                candidates.append(f)
                continue
            bar.update(1)
            if isinstance(result, Skipped):
                skipped.append(result)
            elif isinstance(result, Case):
                cases.append(result)
        for f, header in read_headers(candidates, seen_series, bar):
            if isinstance(header, NotDicom):
                if str(header) == "not a DICOM or image file" and looks_like_zip(f.path):
                    queue.append(FoundFile(f.path, f.rel + ".zip", f.real, f.is_link, f.zip_depth, f.rel))
                    bar.total += 1
                    continue  # a zip archive without the .zip name: opened as one
                skipped.append(Skipped(f.rel, str(header)))
            elif header is not None:
                headers.append(header)
    bar.close()

    found, dicom_skips = _dicom_cases(headers, options)
    cases.extend(found)
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
    for case in cases:
        if case.geometry is not None:
            remember_geometry(case.geometry)
    inputs = [root_path]
    return DiscoveryReport(
        root=root_path,
        cases=cases,
        skipped=skipped,
        temporary=[t for t in temporary if not t.closed],
        inputs=inputs,
    )



_MAX_ZIP_DEPTH = 2  # a zip inside a zip is opened; deeper nesting is reported, not unpacked


def _open_zip(f: FoundFile, skipped: list[Skipped], temporary: list[TemporaryTree]) -> list[FoundFile]:
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
    files = walk(tree.path, inner_skips)
    skipped.extend(Skipped(f"{where}/{s.path}", s.reason) for s in inner_skips)
    out = [FoundFile(g.path, f"{where}/{g.rel}", g.real, g.is_link, f.zip_depth + 1) for g in files]
    if not out and not unsafe:
        skipped.append(Skipped(where, "empty zip archive (no files)"))
    return out


def _dicom_cases(headers: Sequence[DicomHeader], options: _Options) -> tuple[list[Case], list[Skipped]]:
    series, non_image = group_series(headers)
    skipped = [Skipped(path, reason) for path, reason in non_image]
    cases: list[Case] = []
    for uid, group in series.items():
        result = series_problem(
            group, modality=options.modality, min_slices=options.min_slices, description_re=options.description_re
        )
        if isinstance(result, str):
            skipped.append(Skipped(group_path(group), result))
            continue
        first = group[0]
        cases.append(
            Case(
                id=f"s-{short_hash(uid)}",
                source=common_folder([h.rel for h in group]),
                kind="dicom",
                paths=result.paths,  # an enhanced file once
                modality=first.modality,
                n_slices=len(result.headers),
                shape=result.shape,
                spacing=result.spacing,
                series_description=first.series_description,
                transfer_syntax=first.transfer_syntax,
                geometry=result,
            )
        )
    return cases, skipped


_DICOM = object()  # a file that is no NIfTI/image file: its header is read in the DICOM pass


def _image_file(
    f: FoundFile, folders: set[str], companions: set[str], include_images: bool, skip_label_maps: bool
) -> Case | Skipped | object | None:
    """A NIfTI/image file's case or skip; ``None`` for a detached header's data file; else ``_DICOM``."""
    is_nifti, is_image = suffix(f.path.name, NIFTI_SUFFIXES), suffix(f.path.name, IMAGE_SUFFIXES)
    if (is_nifti or is_image) and skip_label_maps:
        in_labels = label_folder_reason(f.rel, folders)
        if in_labels:
            return Skipped(f.rel, in_labels)
    if is_nifti:
        return nifti_case(f, skip_label_maps)
    if is_image:
        if not include_images:
            return Skipped(f.rel, "NRRD/MetaImage file (image files excluded)")
        return image_case(f, skip_label_maps)
    if os.path.normpath(str(f.path)) in companions:
        return None  # the voxel data of a .mhd/.nhdr header
    return _DICOM


def _assign_ids(cases: list[Case]) -> None:
    """Give NIfTI/image cases their safe-stem ids; hash-suffix any that collide (case-insensitively)."""
    for c in cases:
        if c.kind != "dicom":
            name = PurePosixPath(c.source).name if c.source != "." else c.paths[0].name
            ending = suffix(name, (*NIFTI_SUFFIXES, *IMAGE_SUFFIXES)) or ""
            c.id = safe_id(name[: len(name) - len(ending)] if ending else name)
    counts: dict[str, int] = {}
    for c in cases:
        counts[c.id.lower()] = counts.get(c.id.lower(), 0) + 1
    for c in cases:
        if c.kind != "dicom" and counts[c.id.lower()] > 1:
            c.id = f"{c.id}-{short_hash(c.source, 8)}"
