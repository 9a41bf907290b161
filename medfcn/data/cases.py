"""The records of discovery: :class:`Case` (a scan to segment), :class:`Skipped` (and why not), and the
:class:`DiscoveryReport` that :func:`medfcn.data.discovery.find_cases` returns.

A DICOM case carries what discovery learnt: its files in slice order and the checked
:class:`~medfcn.data.dicom.geometry.SeriesGeometry`, so no later stage reads the headers again.
``to_dict`` forms hold no absolute paths and no patient data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from medfcn.data.archives import TemporaryTree
from medfcn.data.dicom.geometry import SeriesGeometry

__all__ = ["MIN_SLICES", "Case", "CaseKind", "DiscoveryReport", "Skipped"]

MIN_SLICES = 5
"""Default minimum number of slices of a DICOM series: localisers and key images have 1-3."""

CaseKind = Literal["dicom", "nifti", "image"]


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
        geometry: DICOM: the checked geometry (headers in slice order, affine), which
            :class:`~medfcn.data.readers.DicomSeriesReader` and the SEG/RTSTRUCT writers take instead of
            reading the headers again; ``None`` otherwise.
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
    geometry: SeriesGeometry | None = field(default=None, repr=False, compare=False)

    def load_input(self) -> str | list[str]:
        """What MONAI ``LoadImaged`` receives: the file path (NIfTI/image) or the DICOM files in slice order.

        For a DICOM case :class:`~medfcn.data.readers.DicomSeriesReader` recognises these files as the
        series discovery checked (:func:`~medfcn.data.dicom.geometry.known_geometry`) and reads only their
        pixels.
        """
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
        path: relative to the discovery root (POSIX): a file, or a series' folder (a list file's
            entries: under the entry's path).
        reason: one specific line, e.g. ``"RTSTRUCT object (not an image)"``.
        case_id, kind: set when a scan was found but not taken (a case id met twice in a list file).
    """

    path: str
    reason: str
    case_id: str = ""
    kind: str = ""

    def to_dict(self) -> dict[str, str]:
        """JSON-ready form."""
        out = {"path": self.path, "reason": self.reason}
        if self.case_id:
            out.update(id=self.case_id, kind=self.kind)
        return out


@dataclass
class DiscoveryReport:
    """What :func:`~medfcn.data.discovery.find_cases` found under ``root``: cases (sorted by source, then
    id) and skips."""

    root: Path
    cases: list[Case] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    temporary: list[TemporaryTree] = field(default_factory=list, repr=False, compare=False)
    """Folders zip archives were extracted to; the cases' paths point into them until :meth:`close`."""
    inputs: list[Path] = field(default_factory=list, compare=False)
    """What was discovered: ``root``, or the existing entries of a list file (a DICOMDIR: its folder)."""

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
