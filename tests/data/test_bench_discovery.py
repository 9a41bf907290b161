"""benchmarks/bench_discovery.py runs end to end on a tiny tree and prints its table (no timing asserted)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.xdist_group("benchmarks")
def test_bench_discovery_prints_files_per_second_for_scan_pydicom_and_gdcm() -> None:
    proc = subprocess.run(
        [sys.executable, "benchmarks/bench_discovery.py", "--series", "3", "--slices", "5", "--size", "8"],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "15 DICOM files in 3 series folders" in out and "load average" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "files/s" not in line]
    assert [r.split("|")[1].strip() for r in rows] == [
        "medfcn data scan (find_cases)",
        "pydicom header pass (1 process)",
        "SimpleITK GDCM series lookup",
    ]
    assert "3 cases, 15 files" in rows[0] and "3 series, 15 files" in rows[2]
    assert all(float(r.split("|")[3]) > 0 for r in rows)
    assert "Target discovery >= GDCM files/s:" in out
