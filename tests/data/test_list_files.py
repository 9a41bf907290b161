"""A list file gives the same cases to ``medfcn data scan`` and to ``medfcn infer``: discovery decides."""

from __future__ import annotations

import json
from pathlib import Path

import monai.apps.utils  # noqa: F401  (MONAI binds its loggers to sys.stdout on import: do it outside CliRunner)
import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medfcn.cli.main import app
from medfcn.data.discovery import find_cases, read_list_file
from medfcn.data.synthetic import make_phantom, write_dicom_series
from medfcn.engine import inference
from medfcn.errors import InputError


@pytest.fixture
def listing(tmp_path: Path) -> Path:
    ph = make_phantom((16, 14, 6), seed=9, noise_hu=0.0)
    nifti = tmp_path / "scans" / "ct_one.nii.gz"
    nifti.parent.mkdir(parents=True)
    nib.save(nib.Nifti1Image(ph.image.astype(np.float32), ph.affine), str(nifti))
    write_dicom_series(ph.image, ph.affine, tmp_path / "study" / "series a", seed=9)
    (tmp_path / "study" / "notes.txt").write_text("not a scan")
    path = tmp_path / "lists" / "cases.txt"
    path.parent.mkdir()
    path.write_text(
        "# three entries, one missing, one twice\n"
        f"{nifti}\n\n../study\n{tmp_path / 'gone.nii.gz'}\n../scans/ct_one.nii.gz\n"
    )
    return path


def test_scan_and_infer_find_the_same_cases_in_a_list_file(listing: Path) -> None:
    result = CliRunner().invoke(app, ["data", "scan", "--json", str(listing)])
    assert result.exit_code == 0, result.output
    scanned = json.loads(result.stdout)
    found = inference._discover(listing, modality=None, min_slices=None)
    try:
        assert [(c["id"], c["source"]) for c in scanned["cases"]] == [(c.id, found.sources[c.id]) for c in found.cases]
        assert [(s["path"], s["reason"]) for s in scanned["skipped"]] == [(r.source, r.reason) for r in found.skipped]
    finally:
        found.close()
    kinds = sorted(c["kind"] for c in scanned["cases"])
    assert kinds == ["dicom", "nifti"]
    reasons = [s["reason"] for s in scanned["skipped"]]
    assert any(r.endswith("gone.nii.gz does not exist") for r in reasons)
    assert any(r.startswith("duplicate case id ct_one") for r in reasons)
    assert any("notes.txt" in s["path"] and s["reason"] == "not a DICOM or image file" for s in scanned["skipped"])


def test_list_file_entries_are_relative_to_the_list_and_keep_their_geometry(listing: Path) -> None:
    entries = read_list_file(listing)
    assert entries[1] == listing.parent / "../study"
    with find_cases(listing) as report:
        dicom = next(c for c in report.cases if c.kind == "dicom")
        assert dicom.geometry is not None and dicom.source.endswith("study/series a")
        assert report.inputs == [e for e in entries if e.exists()]
    empty = listing.with_name("empty.lst")
    empty.write_text("# nothing\n")
    with pytest.raises(InputError, match="names no scans"):
        find_cases(empty)
