"""The run-level records of a results folder: one :class:`CaseResult` row per case, the
:class:`RunSummary`, and the files ``summary.csv``, ``summary.json``, ``labels.json`` and ``run.json``.

``run.json`` follows TotalSegmentator's run report: the model and its settings
(:meth:`medfcn.engine.segmenter.Segmenter.describe`), the versions, the options, counts and timings.
``labels.json`` lets every output of the run be read without the bundle (class value -> name and codes).

Example:
    >>> write_summaries(Path("results"), summary.cases, {1: "liver"}, run_info)  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import platform
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from medfcn._io import atomic_write_json, atomic_write_text

if TYPE_CHECKING:  # pragma: no cover
    from medfcn.data.segment_codes import ClassInfo
    from medfcn.engine.segmenter import Segmenter

__all__ = ["CaseResult", "RunSummary", "run_record", "write_labels", "write_summaries"]


@dataclass
class CaseResult:
    """One row of ``summary.csv`` / ``summary.json``.

    Attributes:
        id: PHI-free case id (the output folder name); empty for discovery skips.
        source: path of the scan relative to the input.
        kind: ``dicom``, ``nifti``, ``image`` (or ``""`` for discovery skips).
        status: ``ok``, ``failed`` or ``skipped``.
        reason: why it failed or was skipped (or that an earlier run's output was kept).
        volumes_ml: class name -> predicted volume in mL.
        flags: advisory flags from :func:`medfcn.outputs.stats.case_stats`.
        seconds: time spent on the case in this run (or the earlier run that produced it).
        kept: an ``ok`` case whose complete outputs an earlier run wrote (nothing was recomputed).
    """

    id: str
    source: str
    kind: str
    status: Literal["ok", "failed", "skipped"]
    reason: str = ""
    volumes_ml: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    seconds: float = 0.0
    kept: bool = False


@dataclass
class RunSummary:
    """What :func:`medfcn.engine.inference.segment_folder` did (also written as ``summary.csv``,
    ``summary.json``, ``run.json``).

    Attributes:
        output: the results folder.
        cases: one row per case and per discovery skip, in discovery order.
        seconds: wall-clock time of the run.
    """

    output: Path
    cases: list[CaseResult]
    seconds: float = 0.0

    def count(self, status: str) -> int:
        """Number of rows with ``status`` (``ok``, ``failed``, ``skipped``)."""
        return sum(1 for c in self.cases if c.status == status)

    @property
    def ok(self) -> int:
        """Cases with complete outputs (done in this run or kept from an earlier one)."""
        return self.count("ok")

    @property
    def failed(self) -> int:
        """Cases that failed in this run."""
        return self.count("failed")

    @property
    def skipped(self) -> int:
        """Inputs discovery did not accept as scans."""
        return self.count("skipped")

    @property
    def already_done(self) -> int:
        """``ok`` cases kept from an earlier run (counted in :attr:`ok` too)."""
        return sum(1 for c in self.cases if c.status == "ok" and c.kept)


_SUMMARY_FIELDS = ["id", "source", "kind", "status", "reason", "seconds", "flags"]


def write_summaries(
    output: Path, rows: list[CaseResult], class_names: Mapping[int, str], run_info: Mapping[str, Any]
) -> None:
    """Write ``summary.csv`` (one ``<class>_ml`` column per class), ``summary.json`` and ``run.json``."""
    classes = [n for v, n in sorted(class_names.items()) if int(v) != 0]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*_SUMMARY_FIELDS, *(f"{c}_ml" for c in classes)])
    for r in rows:
        writer.writerow(
            [r.id, r.source, r.kind, r.status, r.reason, f"{r.seconds:.2f}", ";".join(r.flags)]
            + [("" if c not in r.volumes_ml else f"{r.volumes_ml[c]:.3f}") for c in classes]
        )
    atomic_write_text(output / "summary.csv", buf.getvalue())
    atomic_write_json(output / "summary.json", {"cases": [asdict(r) for r in rows]})
    atomic_write_json(output / "run.json", dict(run_info))


def write_labels(output: Path, classes: Mapping[int, ClassInfo], *, bundle: str, version: str) -> None:
    """Write ``labels.json`` (:func:`medfcn.data.segment_codes.labels_document`)."""
    from medfcn.data.segment_codes import labels_document

    atomic_write_json(output / "labels.json", labels_document(classes, bundle=bundle, version=version))


def run_record(
    segmenter: Segmenter,
    *,
    summary: RunSummary,
    input_path: Path,
    options: Mapping[str, Any],
    cases: int,
    timings: Mapping[str, float],
    started: datetime,
) -> dict[str, Any]:
    """The content of ``run.json``: model and settings, versions, options, counts and timings.

    Args:
        segmenter: the model the run used.
        summary: the run's rows (the counts and the mean time per computed case come from it).
        input_path: what was segmented.
        options: the run's options, as given.
        cases: the number of cases discovery found.
        timings: seconds of the run's phases (``discovery_s``, ``load_model_s``, ``total_s``).
        started: when the run started (UTC).
    """
    import torch

    from medfcn._version import __version__

    monai = sys.modules.get("monai")  # imported by the Segmenter: its face or medfcn._monai's stand-in

    done_times = [r.seconds for r in summary.cases if r.status == "ok" and not r.reason]
    return {
        **segmenter.describe(),
        "versions": {
            "medfcn": __version__,
            "monai": str(getattr(monai, "__version__", "unknown")),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "input": str(input_path.resolve()),
        "output": str(summary.output.resolve()),
        "options": dict(options),
        "counts": {"cases": cases, "ok": summary.ok, "failed": summary.failed, "skipped": summary.skipped},
        "timings": {
            **{k: round(v, 3) for k, v in timings.items()},
            "cases_run": len(done_times),
            "mean_case_s": round(sum(done_times) / len(done_times), 3) if done_times else None,
        },
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
