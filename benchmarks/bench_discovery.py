"""Discovery at archive scale: files/s of ``medfcn data scan`` against a bare pydicom pass and GDCM.

Usage::

    python benchmarks/bench_discovery.py                          # 9,600 files in 200 series, temp dir
    python benchmarks/bench_discovery.py --series 20 --slices 8   # a small tree
    python benchmarks/bench_discovery.py --tree /tmp/tree --keep  # generate once, reuse on later runs

The tree is generated into a temporary folder (``--tree`` keeps it where you say): ``--series`` series
of ``--slices`` single-frame CT slices of ``--size`` x ``--size`` pixels (tiny pixel data: discovery reads
headers), every UID unique, nested ``patient/study/series`` folders (``--series-per-study`` series per
study, two studies per patient). Every file is read once first, so that all three passes find the tree
in the page cache; one run then times, in that order and each once over the same files:

* ``medfcn data scan``'s discovery: :func:`medfcn.data.discovery.find_cases` of the root (the header
  pass, grouping, geometry checks; ``--workers`` as ``MEDFCN_DISCOVERY_WORKERS``);
* a bare pydicom header pass: ``pydicom.dcmread(path, stop_before_pixels=True)`` of every file, one
  process, nothing else;
* SimpleITK's GDCM series lookup: ``ImageSeriesReader.GetGDCMSeriesIDs`` on every series folder and
  ``GetGDCMSeriesFileNames`` for each series found (GDCM's scanner sorts the files too).

It prints files/s for each, the ratios to GDCM and the load average (``os.getloadavg``) before and
after: the machine may be shared, so compare the ratios of one run rather than figures across runs.
Target (issue 15): discovery >= GDCM's files/s.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

__all__ = ["main", "make_tree"]


def make_tree(root: Path, *, series: int, slices: int, size: int, series_per_study: int = 2) -> int:
    """Write the benchmark tree under ``root``; returns the number of files."""
    from medfcn.data.synthetic import write_dicom_series

    rng = np.random.default_rng(0)
    n = 0
    for s in range(series):
        study, serie = divmod(s, series_per_study)
        patient = study // 2
        folder = root / f"patient{patient:04d}" / f"study{study % 2}" / f"series{serie}"
        spacing = (0.7, 0.7, 2.5)
        affine = np.diag([-spacing[0], -spacing[1], spacing[2], 1.0])
        affine[:3, 3] = (100.0, 120.0, -200.0 + s)
        image = rng.integers(-1000, 1000, size=(size, size, slices)).astype(np.float64)
        n += len(write_dicom_series(image, affine, folder, seed=1000 + s, series_number=serie + 1))
    return n


def _scan(root: Path) -> tuple[float, int, int]:
    from medfcn.data.discovery import find_cases

    t0 = time.perf_counter()
    with find_cases(root) as report:
        seconds = time.perf_counter() - t0
        files = sum(len(c.paths) for c in report.cases)
        return seconds, len(report.cases), files


def _pydicom_pass(files: list[Path]) -> float:
    import pydicom

    t0 = time.perf_counter()
    for path in files:
        pydicom.dcmread(path, stop_before_pixels=True)
    return time.perf_counter() - t0


def _gdcm_lookup(folders: list[Path]) -> tuple[float, int, int]:
    import SimpleITK as sitk

    t0 = time.perf_counter()
    n_series = n_files = 0
    for folder in folders:
        for uid in sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)):
            n_series += 1
            n_files += len(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), uid))
    return time.perf_counter() - t0, n_series, n_files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--series", type=int, default=200, help="series in the tree (default 200)")
    parser.add_argument("--slices", type=int, default=48, help="slices (files) per series (default 48)")
    parser.add_argument("--size", type=int, default=16, help="rows = columns of each slice (default 16)")
    parser.add_argument("--series-per-study", type=int, default=2)
    parser.add_argument("--tree", type=Path, default=None, help="where to write the tree (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the tree (and reuse it if it exists)")
    parser.add_argument("--workers", type=int, default=None, help="discovery worker processes (default: auto)")
    args = parser.parse_args(argv)
    if args.workers is not None:
        os.environ["MEDFCN_DISCOVERY_WORKERS"] = str(args.workers)

    root = args.tree or Path(tempfile.mkdtemp(prefix="bench-discovery-"))
    try:
        t0 = time.perf_counter()
        if args.keep and root.is_dir() and any(root.iterdir()):
            made = "reused"
        else:
            root.mkdir(parents=True, exist_ok=True)
            n = make_tree(
                root, series=args.series, slices=args.slices, size=args.size,
                series_per_study=args.series_per_study,
            )  # fmt: skip
            made = f"generated {n} files in {time.perf_counter() - t0:.1f} s"
        files = sorted(p for p in root.rglob("*.dcm") if p.is_file())
        folders = sorted({p.parent for p in files})
        for p in files:  # warm the page cache: no pass pays for the disk
            p.read_bytes()
        load_before = os.getloadavg()
        scan_s, n_cases, scan_files = _scan(root)
        pydicom_s = _pydicom_pass(files)
        gdcm_s, gdcm_series, gdcm_files = _gdcm_lookup(folders)
        load_after = os.getloadavg()
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)

    n = len(files)
    rows = [
        ("medfcn data scan (find_cases)", scan_s, f"{n_cases} cases, {scan_files} files"),
        ("pydicom header pass (1 process)", pydicom_s, f"{n} files"),
        ("SimpleITK GDCM series lookup", gdcm_s, f"{gdcm_series} series, {gdcm_files} files"),
    ]
    print(f"# Discovery: {n} DICOM files in {len(folders)} series folders ({made})")
    print(
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, load average "
        f"{' '.join(f'{v:.2f}' for v in load_before)} before, {' '.join(f'{v:.2f}' for v in load_after)} after"
    )
    print()
    print("| what | seconds | files/s | vs GDCM | found |")
    print("|---|---:|---:|---:|---|")
    for name, seconds, found in rows:
        rate = n / seconds if seconds > 0 else float("inf")
        print(f"| {name} | {seconds:.3f} | {rate:.0f} | {gdcm_s / seconds:.2f}x | {found} |")
    print()
    target = scan_s <= gdcm_s
    print(f"Target discovery >= GDCM files/s: {'met' if target else 'not met'} ({gdcm_s / scan_s:.2f}x GDCM)")
    if n_cases != args.series and made != "reused":
        print(f"warning: discovery found {n_cases} cases, {args.series} series were written", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
