"""Hostile input through ``medfcn infer`` and ``medfcn data check``.

For every entry of the corpus (see ``_corpus.py``): the run finishes (no crash, no hang), the entry is in
the summary with a specific reason when it is refused, nothing partial is left in the output, and the
input tree is byte-for-byte unchanged (permissions included).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pytest
from _corpus import SHAPE, Entry, build_corpus, build_hostile_msd, is_root, tree_digest  # type: ignore[import-not-found]

_CORPUS_ENTRIES = [
    "scan with spaces ü.nii.gz",
    "série dicom ä",
    "truncated.nii.gz",
    "truncated_dicom",
    "zero_slope.nii",
    "nan_slope.nii",
    "nonfinite.nii.gz",
    "one_slice.nii.gz",
    "four_d.nii.gz",
    "uint8.nii.gz",
    "huge_dims.nii",
    "rgb_dicom",
    "no_position_dicom",
    "duplicate_dicom",
    "mixed_orientation_dicom",
    "loop",
    "locked.nii.gz",
]


@dataclass
class InferRun:
    corpus: Path
    output: Path
    entries: dict[str, Entry]
    before: dict[str, str]
    after: dict[str, str]
    proc: subprocess.CompletedProcess[str]
    rows: list[dict[str, Any]]


def _run_cli(args: list[str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """The real command in a child process: a crash (segfault, OOM kill) or a hang cannot hide."""
    # One thread: under `pytest -n 2` the other worker has the second core (oversubscribed OpenMP
    # threads spin and make the whole suite ~2x slower).
    env = {**os.environ, "PYTHONIOENCODING": "utf-8", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "medfcn", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.fixture(scope="module")
def infer_run(trained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> InferRun:
    base = tmp_path_factory.mktemp("hostile")
    corpus = base / "in put ü"
    entries = {e.name: e for e in build_corpus(corpus)}
    assert sorted(entries) == sorted(_CORPUS_ENTRIES)
    before = tree_digest(corpus)
    output = base / "results"
    try:
        proc = _run_cli(
            [
                "infer",
                "--bundle",
                str(trained_bundle),
                "--input",
                str(corpus),
                "--output",
                str(output),
                "--device",
                "cpu",
                "--quiet",
            ]
        )
        after = tree_digest(corpus)
    finally:
        (corpus / "locked.nii.gz").chmod(0o644)  # let pytest clean up
    summary = output / "summary.json"
    rows = json.loads(summary.read_text(encoding="utf-8"))["cases"] if summary.is_file() else []
    return InferRun(corpus, output, entries, before, after, proc, rows)


def _rows_of(run: InferRun, name: str) -> list[dict[str, Any]]:
    return [r for r in run.rows if r["source"] == name or r["source"].startswith(name + "/")]


def test_infer_run_finishes_with_partial_exit_code_and_summaries(infer_run: InferRun) -> None:
    proc = infer_run.proc
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 3, (
        f"expected 3 (some cases failed), got {proc.returncode}: {proc.stderr[-2000:]}"
    )
    for name in ("summary.csv", "summary.json", "run.json"):
        assert (infer_run.output / name).is_file()
    # every error line on stderr is a single line starting with "error:" (no multi-line dumps)
    assert [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]


def test_input_tree_is_unchanged(infer_run: InferRun) -> None:
    assert infer_run.after == infer_run.before


def test_no_partial_output_left_behind(infer_run: InferRun) -> None:
    out = infer_run.output
    ok_ids = {r["id"] for r in infer_run.rows if r["status"] == "ok"}
    for r in infer_run.rows:
        if r["status"] != "ok" and r["id"] and r["id"] not in ok_ids:
            assert not (out / r["id"]).exists(), (
                f"failed case {r['source']} left {sorted((out / r['id']).iterdir())}"
            )
    leftovers = [
        str(p.relative_to(out))
        for p in out.rglob("*")
        if p.name.startswith(".") or p.name.endswith((".tmp", ".part", ".partial"))
    ]
    assert not leftovers
    for case_id in ok_ids:
        assert (out / case_id / "done.json").is_file() and (out / case_id / "mask.nii.gz").is_file()


def test_no_row_walks_through_the_symlink_loop(infer_run: InferRun) -> None:
    sources = [r["source"] for r in infer_run.rows if r["source"]]
    assert not [
        # reporting the link itself is fine; a path *through* it means discovery followed it
        s
        for s in sources
        if any(f"{link}/" in s for link in ("back_to_root", "loop_a", "loop_b"))
    ]
    ids = [r["id"] for r in infer_run.rows if r["id"] and r["status"] == "ok"]
    assert len(ids) == len(set(ids)), "a scan was segmented twice (followed a symlink loop?)"


@pytest.mark.parametrize("name", _CORPUS_ENTRIES)
def test_each_hostile_entry_is_handled(infer_run: InferRun, name: str) -> None:
    entry = infer_run.entries[name]
    rows = _rows_of(infer_run, name)
    if name == "loop":
        # Symlinks that lead nowhere (or back up) may be ignored silently or reported; either is fine
        # as long as they were not followed (see test_no_row_walks_through_the_symlink_loop).
        for r in rows:
            assert r["status"] != "ok" and re.search(entry.reason, r["reason"], re.I), r
        return
    assert rows, f"{name} is not in the summary at all: {[r['source'] for r in infer_run.rows]}"
    statuses = {r["status"] for r in rows}
    if entry.expect == "ok":
        assert statuses == {"ok"}, f"{name}: {rows}"
    elif entry.expect == "reject":
        assert "ok" not in statuses, f"{name} was segmented although it is not a usable scan: {rows}"
    for r in rows:
        if r["status"] != "ok":
            assert r["reason"].strip(), f"{name}: refused without a reason: {r}"
            assert re.search(entry.reason, r["reason"], re.I), f"{name}: unspecific reason {r['reason']!r}"
            assert "Traceback" not in r["reason"] and "\n" not in r["reason"]
        else:
            mask = infer_run.output / r["id"] / "mask.nii.gz"
            assert mask.is_file()
            if r["kind"] == "nifti":
                src = nib.load(infer_run.corpus / r["source"])
                got = nib.load(mask)
                assert got.shape[:3] == src.shape[:3]


def _mask(run: InferRun, name: str) -> np.ndarray:
    [row] = _rows_of(run, name)
    assert row["status"] == "ok", row
    return np.asarray(nib.load(run.output / row["id"] / "mask.nii.gz").dataobj)


@pytest.mark.parametrize("name", ["zero_slope.nii", "nan_slope.nii"])
def test_zero_or_nan_scale_means_unscaled(infer_run: InferRun, name: str) -> None:
    """NIfTI-1: scl_slope 0 (or not finite) means "no scaling"; same voxels as the reference scan, same mask."""
    np.testing.assert_array_equal(_mask(infer_run, name), _mask(infer_run, "scan with spaces ü.nii.gz"))


def test_a_few_non_finite_voxels_do_not_silently_destroy_the_mask(infer_run: InferRun) -> None:
    """Three lines of NaN/inf voxels in an otherwise normal scan: either the case is refused with a reason,
    or the mask matches the clean scan's away from those lines. Status ok with a mask wiped out by NaN
    propagating through the convolutions and the window blending is a silent wrong result."""
    [row] = _rows_of(infer_run, "nonfinite.nii.gz")
    if row["status"] != "ok":
        assert re.search(r"finite|nan|inf", row["reason"], re.I), row
        return
    got = _mask(infer_run, "nonfinite.nii.gz")
    ref = _mask(infer_run, "scan with spaces ü.nii.gz")
    away = np.ones(ref.shape, bool)
    away[:4, :4, :] = False
    agreement = float((got[away] == ref[away]).mean())
    assert agreement > 0.9, f"mask agrees with the clean scan's on only {agreement:.1%} of voxels"
    # segmented anyway: the repair must be visible to whoever reads the results
    stats = json.loads((infer_run.output / row["id"] / "stats.json").read_text(encoding="utf-8"))
    assert "non_finite_voxels" in stats["flags"] and stats["input"]["non_finite_voxels"] == 3 * SHAPE[2]
    assert "non_finite_voxels" in row["flags"]


def test_locked_file_without_root(infer_run: InferRun) -> None:
    """Permission bits only stop non-root users; as root the file is readable and must be segmented."""
    rows = _rows_of(infer_run, "locked.nii.gz")
    assert rows
    if is_root():
        assert {r["status"] for r in rows} == {"ok"}
    else:
        assert all(re.search(r"permission|denied|readable", r["reason"], re.I) for r in rows)


# ----------------------------------------------------------------------------------------------- data check


def test_data_check_reports_every_hostile_case_by_name(tmp_path: Path) -> None:
    root = tmp_path / "Task ü"
    bad = build_hostile_msd(root)
    before = tree_digest(root)
    proc = _run_cli(["data", "check", str(root)], timeout=120)
    assert tree_digest(root) == before
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    problems = [ln for ln in proc.stdout.splitlines() if ln.startswith("problem:")]
    assert not [p for p in problems if "/good.nii.gz" in p], problems
    missing = []
    for name, reason in bad.items():
        mine = [p for p in problems if f"/{name}.nii.gz" in p]
        if not mine or not any(re.search(reason, p, re.I) for p in mine):
            missing.append(name)
    assert not missing, f"not reported (or without a specific reason): {missing}; problems: {problems}"


def test_data_check_json_is_valid_with_hostile_cases(tmp_path: Path) -> None:
    root = tmp_path / "ds"
    build_hostile_msd(root)
    proc = _run_cli(["data", "check", str(root), "--json"], timeout=120)
    assert proc.returncode == 1
    json.loads(proc.stdout)  # machine-readable even when problems are found (no table mixed in)
