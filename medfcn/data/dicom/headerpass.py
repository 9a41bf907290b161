"""The header pass of discovery: every candidate file's header read once, on one or several processes.

Parsing headers is Python work (the GIL rules out threads), so a tree can be split over worker
processes: ``MEDFCN_DISCOVERY_WORKERS=N`` starts N (``forkserver``/``spawn``: a parent that has started
threads must not ``fork``). The default is this process alone: :func:`workers` gives the measurement
that decided it (``benchmarks/bench_discovery.py --workers N`` repeats it).

Each worker keeps the raw header of the first file of each series it meets
(:attr:`~medfcn.data.dicom.headers.DicomHeader.template`); :func:`~medfcn.data.dicom.series.group_series`
keeps one per series.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

from medfcn.data.dicom.headers import DicomHeader, NotDicom, read_header

__all__ = ["read_headers", "workers"]


class _Located(Protocol):
    path: Path
    rel: str


def workers(n_files: int) -> int:
    """Worker processes for ``n_files`` headers: ``MEDFCN_DISCOVERY_WORKERS``, else 1 (this process).

    Measured with ``benchmarks/bench_discovery.py`` on 2 shared cores (9,600 files, warm page cache, load
    average ~11): one process 4,692 files/s (1.18x GDCM's series lookup), two workers 2,413 files/s
    (0.78x: starting them and pickling the headers back, with no idle core). A pool pays only with idle
    cores and a tree much larger than the start-up.
    """
    text = os.environ.get("MEDFCN_DISCOVERY_WORKERS", "").strip()
    try:
        n = int(text) if text else 1
    except ValueError:
        return 1
    return max(1, n) if n_files >= 2 else 1


def _read_one(path: Path, rel: str, seen: set[str]) -> DicomHeader | NotDicom | None:
    try:
        return read_header(path, rel, seen)
    except NotDicom as err:
        return err


def _read_chunk(items: list[tuple[Path, str]]) -> list[DicomHeader | NotDicom | None]:
    seen: set[str] = set()  # per chunk: each chunk keeps a template for each series it meets
    return [_read_one(path, rel, seen) for path, rel in items]


def read_headers(
    files: Sequence[_Located], seen_series: set[str], bar: Any = None
) -> Iterator[tuple[Any, DicomHeader | NotDicom | None]]:
    """``(file, header | NotDicom | None)`` for each file, in order (``None``: a DICOMDIR).

    Args:
        files: the candidates (anything with ``path`` and ``rel``).
        seen_series: series already met (templates are kept for new ones); updated.
        bar: a progress bar (``update(n)``), or ``None``.
    """
    n = workers(len(files))
    if n <= 1 or len(files) < 2 * n:
        for f in files:
            yield f, _read_one(f.path, f.rel, seen_series)
            if bar is not None:
                bar.update(1)
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    size = max(64, len(files) // (n * 8))
    chunks = [[(f.path, f.rel) for f in files[i : i + size]] for i in range(0, len(files), size)]
    with ProcessPoolExecutor(max_workers=n, mp_context=multiprocessing.get_context(method)) as pool:
        start = 0
        for results in pool.map(_read_chunk, chunks):
            for f, result in zip(files[start : start + len(results)], results, strict=True):
                if isinstance(result, DicomHeader):
                    if result.template is not None and result.series_uid in seen_series:
                        result.template = None
                    seen_series.add(result.series_uid)
                yield f, result
            start += len(results)
            if bar is not None:
                bar.update(len(results))
