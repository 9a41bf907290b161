"""Segment a whole folder: :func:`segment_folder` (and the loader thread that reads ahead).

One run goes: discovery (:func:`medfcn.data.discovery.find_cases`, over a folder, a file, a series
folder or every entry of a list file) → one :class:`~medfcn.engine.segmenter.Segmenter` (weights read
only when a case is left to do) → a background thread that loads and preprocesses the next case while the
current one is computed → per-case outputs (:mod:`medfcn.outputs.case`, ``done.json`` last, so reruns
skip finished cases) → run-level records (:mod:`medfcn.outputs.run`). Under ``torchrun`` rank ``r`` of
``N`` takes cases ``r::N`` and rank 0 writes the merged summary (:mod:`medfcn.runtime` holds the rank
helpers).

:class:`Segmenter` and the output records are re-exported here, where they used to live.

Example:
    >>> summary = segment_folder("bundles/liver", "SCANS/", "RESULTS/")  # doctest: +SKIP
    >>> summary.ok, summary.failed, summary.output / "summary.csv"  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medfcn.bundle import load_bundle
from medfcn.data import ahead
from medfcn.engine.segmenter import Prediction, Segmenter, _Loaded, _reason
from medfcn.errors import InputError
from medfcn.outputs.case import (
    CASE_FILES,
    OutputOptions,
    clear_case,
    is_done,
    output_options,
    remove_case_outputs,
    result_from_done,
    select_classes,
    write_case,
    write_done,
)
from medfcn.outputs.run import CaseResult, RunSummary, run_record, write_labels, write_summaries
from medfcn.runtime import AmpSetting, cpu_bf16_units, cpu_has_bf16, process_group, rank_and_world

if TYPE_CHECKING:  # pragma: no cover
    from medfcn.data.cases import DiscoveryReport
    from medfcn.data.discovery import Case

__all__ = [
    "CASE_FILES",
    "CaseResult",
    "Prediction",
    "RunSummary",
    "Segmenter",
    "check_classes",
    "cpu_bf16_units",
    "cpu_has_bf16",
    "discover",
    "read_ahead",
    "segment_folder",
]

logger = logging.getLogger(__name__)

def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


@dataclass
class _Found:
    cases: list[Case]
    sources: dict[str, str]  # case id -> source shown in the summary
    skipped: list[CaseResult]
    roots: list[Path]
    reports: list[Any] = field(default_factory=list)  # DiscoveryReports: own the zip extractions

    def close(self) -> None:
        """Remove the folders zip archives were extracted to."""
        for report in self.reports:
            report.close()


def discover(input: str | os.PathLike[str], *, modality: str | None = None, min_slices: int | None = None) -> DiscoveryReport:
    """The cases :func:`segment_folder` would find under ``input`` (discovery decides; no PyTorch imported).

    ``medfcn infer`` runs it before the model's libraries are imported and hands the report over
    (``segment_folder(..., discovered=report)``), so that the first case is read during the start-up.

    Raises:
        InputError: ``input`` cannot be discovered (see :func:`medfcn.data.discovery.find_cases`).
    """
    from medfcn.data.discovery import find_cases

    kwargs: dict[str, Any] = {"modality": modality}
    if min_slices is not None:
        kwargs["min_slices"] = min_slices
    return find_cases(input, **kwargs)


def read_ahead(cases: Sequence[Case], output: str | os.PathLike[str], *, overwrite: bool = False) -> Case | None:
    """Start reading the first case :func:`segment_folder` will segment, in a background thread.

    A ``.nii.gz`` is inflated by ISA-L and its voxels cast to C-ordered float32 by numpy, both of which
    release the GIL (:func:`medfcn.data.nifti_io.read_nifti_ahead`): during the start-up of ``medfcn
    infer`` (importing PyTorch and MONAI, building the network: one core busy) the other core reads the
    scan, and the case's load takes the result. Other cases are left alone. Returns the case read ahead,
    or ``None``.
    """
    from medfcn.data.nifti_io import read_nifti_ahead

    out = Path(output)
    first = next((c for c in cases if overwrite or not is_done(out / c.id)), None)
    if first is None or first.kind != "nifti" or len(first.paths) != 1:
        return None
    return first if read_nifti_ahead(first.paths[0]) else None


def check_classes(bundle: str | os.PathLike[str], classes: Sequence[str] | None) -> None:
    """Check that the bundle has every class of ``classes`` (``None``: all classes, nothing to check).

    Raises:
        InputError: an unknown class name (one line listing the bundle's classes).
        BundleError: the bundle cannot be read.
    """
    if classes is None:
        return
    described = load_bundle(bundle)
    if table := described.segment_codes():
        select_classes(table, classes, described.name)


def _discover(
    input_path: Path, *, modality: str | None, min_slices: int | None, report: DiscoveryReport | None = None
) -> _Found:
    """Find the cases of a folder/file/series folder or of every entry of a list file (discovery decides)."""
    if report is None:
        report = discover(input_path, modality=modality, min_slices=min_slices)
    sources = {case.id: case.source for case in report.cases}
    skipped = [CaseResult(s.case_id, s.path, s.kind, "skipped", s.reason) for s in report.skipped]
    # What "inside the input" means for the output check: a folder's tree, a DICOMDIR's folder (discovery
    # scans it), but a single scan file only itself, so results may go beside it (`--input ct.nii.gz
    # --output results/` in the folder that holds the scan).
    return _Found(list(report.cases), sources, skipped, list(report.inputs), [report])


_END = object()


def _prefetch(
    segmenter: Segmenter, cases: Sequence[Case], out: queue.Queue[Any], stop: threading.Event
) -> None:
    """Loader thread: read and preprocess cases in order, handing (case, loaded|None, error|None) over."""
    for case in cases:
        if stop.is_set():
            return
        try:
            item: tuple[Any, ...] = (case, segmenter.load(case.load_input()), None)
        except Exception as err:  # reported per case by the consumer; the loader carries on
            item = (case, None, err)
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                break
            except queue.Full:
                continue
    while not stop.is_set():
        try:
            out.put(_END, timeout=0.2)
            return
        except queue.Full:
            continue


@contextlib.contextmanager
def _loader(segmenter: Segmenter, cases: Sequence[Case], depth: int) -> Iterator[Iterator[tuple[Any, ...]]]:
    """Iterate over loaded cases while a background thread reads ahead (``depth`` cases buffered)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    thread = threading.Thread(
        target=_prefetch, args=(segmenter, cases, q, stop), name="medfcn-loader", daemon=True
    )
    thread.start()

    def items() -> Iterator[tuple[Any, ...]]:
        while True:
            item = q.get()
            if item is _END:
                return
            yield item

    try:
        yield items()
    finally:
        stop.set()
        thread.join(timeout=30)


def segment_folder(
    bundle: str | os.PathLike[str] | Segmenter,
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    save_probabilities: bool = False,
    previews: bool = True,
    device: str = "auto",
    amp: AmpSetting = None,
    sw_batch_size: int | None = None,
    overlap: float | None = None,
    tta: bool = False,
    modality: str | None = None,
    min_slices: int | None = None,
    volume_ranges_ml: Mapping[str, tuple[float, float]] | None = None,
    max_entropy: float | None = None,
    progress: bool = True,
    prefetch: int = 1,
    rtstruct: bool = True,
    per_class: bool = False,
    classes: Sequence[str] | None = None,
    discovered: DiscoveryReport | None = None,
) -> RunSummary:
    """Segment every scan found under ``input`` and write per-case and run-level results to ``output``.

    ``input`` may be a folder tree (DICOM series and NIfTI files, found by
    :func:`medfcn.data.discovery.find_cases`), one file, one DICOM series folder, or a list file
    (``.txt``/``.lst``/``.list``, one path per line, relative to the list file). The model is loaded
    once; a background thread reads and preprocesses the next case while the current one is computed.

    Per case, in ``output/<case-id>/`` (see :data:`CASE_FILES`): ``mask.nii.gz`` (uint8 labels, the
    scan's shape and affine), ``mask_<class>.nii.gz`` (``per_class``), ``seg.dcm`` and ``rtstruct.dcm``
    (DICOM input: DICOM SEG on the source instances, RT Structure Set contours on the source slices),
    ``probabilities.nii.gz`` (optional, ``(X, Y, Z, C)`` float32), ``preview.png``, ``stats.json``
    (:func:`medfcn.outputs.stats.case_stats`) and ``done.json``, written last. Each file is written to a
    temp name and renamed. A rerun skips cases with ``done.json`` unless ``overwrite``; a failed case
    leaves no files and is reported. Run level: ``summary.csv``, ``summary.json``, ``run.json`` and
    ``labels.json`` (class value -> name and codes, :func:`medfcn.data.segment_codes.labels_document`).
    Nothing is ever written under ``input``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) rank ``r`` segments cases ``r::WORLD_SIZE`` (on
    ``cuda:LOCAL_RANK`` with CUDA) and rank 0 writes the merged summaries (gloo process group).

    Args:
        bundle: bundle folder, or a ready :class:`Segmenter` (then ``device``/``amp``/``sw_batch_size``/
            ``overlap``/``tta`` are its own).
        input: what to segment (see above).
        output: results folder (created); must not be inside ``input``.
        overwrite: redo cases an earlier run completed.
        save_probabilities: also write ``probabilities.nii.gz`` (large: 4 bytes x classes per voxel).
        previews: write ``preview.png``.
        device, amp, sw_batch_size, overlap, tta: see :class:`Segmenter`.
        modality: only scans of this DICOM Modality (e.g. ``CT``); passed to discovery.
        min_slices: DICOM series with fewer slices are skipped (discovery's default if ``None``).
        volume_ranges_ml: plausible volumes per class name for the advisory flags (default: the bundle
            metadata's ``medfcn.classes.<value>.volume_ml``; classes listed are also flagged when empty).
        max_entropy: mean normalised entropy above which a case is flagged low-confidence.
        progress: show a progress bar (rank 0 only).
        prefetch: cases the loader thread may read ahead (1-2; each costs one volume of memory).
        rtstruct: DICOM input: also write ``rtstruct.dcm`` (RT Structure Set, one ROI per class).
        per_class: also write ``mask_<class>.nii.gz`` (0/1) per class beside ``mask.nii.gz``.
        classes: keep only these classes (names from the bundle): other labels become 0 in every
            output (mask, SEG, RTSTRUCT, stats, summaries, ``labels.json``). ``None`` keeps all.
        discovered: :func:`discover` of ``input`` with the same ``modality`` and ``min_slices``, run
            already (``medfcn infer`` runs it before importing PyTorch); used on rank 0 instead of
            discovering again, and closed (its extracted archives removed) at the end.

    Returns:
        A :class:`RunSummary` (every rank gets the merged one under torchrun).

    Raises:
        InputError: ``input`` missing, ``output`` inside ``input``, an unreadable list file.
        BundleError: the bundle cannot be loaded.
    """
    t_start = time.perf_counter()
    started = datetime.now(timezone.utc)
    input_path = Path(input)
    out = Path(output)
    if not input_path.exists():
        raise InputError(f"input {input_path} does not exist")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    if not isinstance(bundle, Segmenter):
        check_classes(bundle, classes)  # a wrong --classes is reported before any scan or weight is read
    rank, world = rank_and_world()
    with process_group(world), _found_cases(input_path, out, rank, world, modality, min_slices, discovered) as found:
        t_discovered = time.perf_counter()
        mine = found.cases[rank::world]
        rows: dict[str, CaseResult] = {}
        todo: list[Case] = []
        for case in mine:
            if is_done(out / case.id) and not overwrite:
                rows[case.id] = result_from_done(case, found.sources[case.id], out / case.id)
            else:
                todo.append(case)
        read_ahead(todo, out, overwrite=True)  # the first scan left to do is read while the model is built
        t_checked = time.perf_counter()
        segmenter = (
            bundle
            if isinstance(bundle, Segmenter)
            else Segmenter(
                bundle, device=device, amp=amp, sw_batch_size=sw_batch_size, overlap=overlap, tta=tta, lazy=True
            )
        )
        t_model = time.perf_counter()
        opts = output_options(
            segmenter,
            classes=classes,
            save_probabilities=save_probabilities,
            previews=previews,
            rtstruct=rtstruct,
            per_class=per_class,
            volume_ranges_ml=volume_ranges_ml,
            max_entropy=max_entropy,
        )
        out.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            write_labels(out, opts.classes, bundle=segmenter.name, version=segmenter.version)

        if todo:  # the weights are read only when there is something to segment: a finished rerun reads none
            t_weights = time.perf_counter()
            segmenter.load_weights()
            t_model += time.perf_counter() - t_weights
        rows.update(_run_cases(segmenter, todo, found.sources, out, opts, prefetch, progress and rank == 0, len(mine)))

        all_rows = [rows[c.id] for c in mine]
        if world > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, all_rows)
            by_id = {r.id: r for part in gathered for r in part}
            all_rows = [by_id[c.id] for c in found.cases]
        rows_out = all_rows + found.skipped
        summary = RunSummary(output=out, cases=rows_out, seconds=time.perf_counter() - t_start)
        if rank == 0:
            run_info = run_record(
                segmenter,
                summary=summary,
                input_path=input_path,
                options={
                    "overwrite": overwrite,
                    "save_probabilities": save_probabilities,
                    "previews": previews,
                    "modality": modality,
                    "min_slices": min_slices,
                    "prefetch": prefetch,
                    "world_size": world,
                    "volume_ranges_ml": {k: list(v) for k, v in (opts.volume_ranges_ml or {}).items()} or None,
                    "rtstruct": rtstruct,
                    "per_class": per_class,
                    "classes": [c.name for _, c in sorted(opts.classes.items())],
                    "max_entropy": max_entropy,
                },
                cases=len(found.cases),
                timings={
                    "discovery_s": t_discovered - t_start,
                    "load_model_s": t_model - t_checked,
                    "total_s": time.perf_counter() - t_start,
                },
                started=started,
            )
            write_summaries(out, rows_out, {v: c.name for v, c in opts.classes.items()}, run_info)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()  # the summary exists before any rank returns
        return summary


@contextlib.contextmanager
def _found_cases(
    input_path: Path,
    out: Path,
    rank: int,
    world: int,
    modality: str | None,
    min_slices: int | None,
    report: DiscoveryReport | None = None,
) -> Iterator[_Found]:
    """Discovery on rank 0 (``report`` if given), shared with every rank; the output is checked not to lie
    inside the input."""
    found = _Found([], {}, [], [], [report] if report is not None else [])
    try:
        if rank == 0:
            found = _discover(input_path, modality=modality, min_slices=min_slices, report=report)
        if world > 1:
            import torch.distributed as dist

            # the extracted zip folders stay with rank 0, which removes them (same machine under torchrun)
            box: list[Any] = [_Found(found.cases, found.sources, found.skipped, found.roots)]
            dist.broadcast_object_list(box, src=0)
            box[0].reports = found.reports
            found = box[0]
        for root in found.roots:
            if _is_within(out, root):
                raise InputError(
                    f"output {out} is inside the input {root}; choose an output folder outside the scans "
                    "(inputs are never written)"
                )
        yield found
    finally:
        found.close()
        ahead.forget()  # a read-ahead no case took (a failed start) frees its memory


def _run_cases(
    segmenter: Segmenter,
    todo: Sequence[Case],
    sources: Mapping[str, str],
    out: Path,
    opts: OutputOptions,
    prefetch: int,
    show: bool,
    total: int,
) -> dict[str, CaseResult]:
    """Segment ``todo`` in order, the loader thread reading ahead; one row per case, a progress line each."""
    from medfcn._progress import progress as progress_bar

    rows: dict[str, CaseResult] = {}
    bar = progress_bar(  # without a terminal, the write() below is the one line per case
        total=total, initial=total - len(todo), unit="case", enabled=show, desc="segmenting", lines="none"
    )
    with bar, _loader(segmenter, todo, prefetch) as loaded_cases:
        for case, loaded, load_error in loaded_cases:
            r = rows[case.id] = _run_case(segmenter, case, loaded, load_error, sources[case.id], out / case.id, opts)
            bar.set_postfix_str(f"{case.id} {r.status} {r.seconds:.1f}s")
            bar.update(1)
            if show:
                bar.write(
                    f"{case.id}: {r.status} in {r.seconds:.1f} s"
                    + (f" ({r.reason})" if r.reason and r.status == "failed" else "")
                )
    return rows


def _run_case(
    segmenter: Segmenter,
    case: Case,
    loaded: _Loaded | None,
    load_error: BaseException | None,
    source: str,
    case_dir: Path,
    opts: OutputOptions,
) -> CaseResult:
    """Predict and write one case; any error becomes a ``failed`` row and leaves no files behind."""
    t0 = time.perf_counter()
    if load_error is not None or loaded is None:
        reason = _reason(load_error or RuntimeError("not loaded"))
        logger.warning("case %s failed while loading: %s", case.id, reason)
        return CaseResult(case.id, source, case.kind, "failed", reason)
    completed = False
    # An earlier attempt may have been interrupted, or this is --overwrite: start from a clean folder.
    clear_case(case_dir)
    try:
        pred = segmenter.predict(loaded)
        stats = write_case(segmenter, case, pred, case_dir, opts)
        seconds = loaded.seconds + time.perf_counter() - t0
        write_done(case_dir, case.id, seconds, pred.seconds)
        completed = True
    except Exception as err:  # one bad scan never stops the folder; it is reported in the summary
        logger.warning("case %s failed: %s", case.id, _reason(err))
        return CaseResult(case.id, source, case.kind, "failed", _reason(err), seconds=time.perf_counter() - t0)
    finally:
        if not completed:
            remove_case_outputs(case_dir)
    return CaseResult(
        case.id,
        source,
        case.kind,
        "ok",
        "",
        {k: float(v["volume_ml"]) for k, v in stats["classes"].items()},
        list(stats["flags"]),
        seconds,
    )
