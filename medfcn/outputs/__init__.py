"""What a run of :func:`medfcn.engine.inference.segment_folder` leaves in its results folder.

* :mod:`medfcn.outputs.case`: the files of one case folder (``mask.nii.gz``, ``seg.dcm``, ``rtstruct.dcm``,
  ``preview.png``, ``stats.json``, ``done.json`` last) and how a rerun reads a finished one.
* :mod:`medfcn.outputs.run`: :class:`CaseResult`, :class:`RunSummary` and the run-level files
  (``summary.csv``, ``summary.json``, ``labels.json``, ``run.json``).
* :mod:`medfcn.outputs.stats`: per-case volumes, intensities and advisory flags.
* :mod:`medfcn.outputs.preview`: the PNG contact sheet of a mask over its scan.

Every file is written atomically (:mod:`medfcn._io`).
"""

from __future__ import annotations

from medfcn.outputs.case import CASE_FILES, PER_CLASS_PATTERN, OutputOptions, output_options, write_case
from medfcn.outputs.run import CaseResult, RunSummary, write_summaries

__all__ = [
    "CASE_FILES",
    "PER_CLASS_PATTERN",
    "CaseResult",
    "OutputOptions",
    "RunSummary",
    "output_options",
    "write_case",
    "write_summaries",
]
