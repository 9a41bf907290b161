"""Dataset checks: every problem at once, and the fingerprint (medfcn.data.dataset_check)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medfcn.data.dataset_check import check_dataset
from medfcn.data.synthetic import write_msd_dataset
from medfcn.errors import DataError


def test_check_passes_on_a_good_dataset_and_fingerprints_it(synthetic_dataset: Path) -> None:
    result = check_dataset(synthetic_dataset)
    assert result.ok, result.problems
    assert (result.num_training, result.num_test) == (6, 2)
    assert result.labels == {0: "background", 1: "liver", 2: "tumour"} and result.modality == {"0": "CT"}
    fp = result.fingerprint
    assert fp is not None
    assert fp.median_shape == (48, 48, 32)
    assert 0.7 <= fp.median_spacing[0] <= 1.0 and 1.5 <= fp.median_spacing[2] <= 5.0
    assert all(
        lo <= med <= hi for lo, med, hi in zip(fp.min_spacing, fp.median_spacing, fp.max_spacing, strict=True)
    )
    stats = fp.intensity["0"]
    assert stats["p0.5"] < stats["p50"] < stats["p99.5"]
    assert 30 <= stats["p50"] <= 90  # foreground is mostly liver, ~+60 HU
    assert set(fp.label_voxels) == {0, 1, 2} and fp.label_voxels[1] > fp.label_voxels[2] > 0
    expected = sum(
        int(np.count_nonzero(np.asanyarray(nib.load(p).dataobj) == 1))
        for p in sorted((synthetic_dataset / "labelsTr").glob("*.nii.gz"))
    )
    assert fp.label_voxels[1] == expected


@pytest.fixture
def small_dataset(tmp_path: Path) -> Path:
    return write_msd_dataset(tmp_path / "ds", num_train=5, num_test=1, shape=(20, 22, 10), seed=1)


def test_check_lists_every_problem_at_once(small_dataset: Path) -> None:
    root = small_dataset
    # liver_000: label with a shifted affine; liver_001: label missing; liver_002: undeclared value 5;
    # liver_003: label of another shape; imagesTs/liver_005: missing test image.
    lab = nib.load(root / "labelsTr" / "liver_000.nii.gz")
    shifted = lab.affine.copy()
    shifted[:3, 3] += [0.0, 2.5, 0.0]
    nib.save(nib.Nifti1Image(np.asanyarray(lab.dataobj), shifted), root / "labelsTr" / "liver_000.nii.gz")
    (root / "labelsTr" / "liver_001.nii.gz").unlink()
    lab2 = nib.load(root / "labelsTr" / "liver_002.nii.gz")
    data = np.asanyarray(lab2.dataobj).copy()
    data[0, 0, 0] = 5
    nib.save(nib.Nifti1Image(data, lab2.affine), root / "labelsTr" / "liver_002.nii.gz")
    lab3 = nib.load(root / "labelsTr" / "liver_003.nii.gz")
    nib.save(
        nib.Nifti1Image(np.asanyarray(lab3.dataobj)[:, :, :-1], lab3.affine),
        root / "labelsTr" / "liver_003.nii.gz",
    )
    (root / "imagesTs" / "liver_005.nii.gz").unlink()

    result = check_dataset(root)
    assert not result.ok
    by_file = {p.path: p.message for p in result.problems}
    assert set(by_file) == {
        "labelsTr/liver_000.nii.gz",
        "labelsTr/liver_001.nii.gz",
        "labelsTr/liver_002.nii.gz",
        "labelsTr/liver_003.nii.gz",
        "imagesTs/liver_005.nii.gz",
    }
    assert (
        "affine differs" in by_file["labelsTr/liver_000.nii.gz"]
        and "2.5" in by_file["labelsTr/liver_000.nii.gz"]
    )
    assert "missing" in by_file["labelsTr/liver_001.nii.gz"]
    assert (
        "[5]" in by_file["labelsTr/liver_002.nii.gz"]
        and "not declared" in by_file["labelsTr/liver_002.nii.gz"]
    )
    assert "shape (20, 22, 9) differs from its image (20, 22, 10)" in by_file["labelsTr/liver_003.nii.gz"]
    assert "missing" in by_file["imagesTs/liver_005.nii.gz"]
    assert result.fingerprint is not None  # the readable cases are still summarised


def test_check_reports_json_level_problems(small_dataset: Path) -> None:
    meta = json.loads((small_dataset / "dataset.json").read_text())
    meta["numTraining"] = 9
    meta["labels"] = {"0": "background", "1": "liver"}  # tumour (2) is no longer declared
    (small_dataset / "dataset.json").write_text(json.dumps(meta))
    (small_dataset / "imagesTr" / "liver_004.nii.gz").write_bytes(b"not a nifti file")
    result = check_dataset(small_dataset)
    messages = [str(p) for p in result.problems]
    assert "dataset.json: numTraining is 9 but 5 entries are listed" in messages
    assert any(m.startswith("imagesTr/liver_004.nii.gz: cannot be read as NIfTI") for m in messages)
    assert sum("not declared" in m for m in messages) == 5  # every label holds tumour voxels


def test_check_missing_dataset_raises(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="medfcn data synth"):
        check_dataset(tmp_path / "nothing")


