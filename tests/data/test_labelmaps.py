"""Label folders and label maps are not scans: discovery skips them with a reason (issue 17, item 4)."""

from __future__ import annotations

import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medfcn.data.discovery import find_cases
from medfcn.data.labelmaps import label_folder_reason, label_map_reason
from medfcn.data.synthetic import make_phantom

HIPPO = Path(__file__).resolve().parents[3] / "shared" / "data" / "msd-hippocampus"
needs_hippo = pytest.mark.skipif(
    not (HIPPO / "dataset.json").is_file(), reason=f"MSD hippocampus missing: {HIPPO}"
)


@needs_hippo
def test_msd_dataset_folder_gives_only_the_images() -> None:
    report = find_cases(HIPPO)
    assert len(report.cases) == 200
    assert all(c.source.startswith("imagesTr/") for c in report.cases)
    labels = [s for s in report.skipped if s.path.startswith("labelsTr/")]
    assert len(labels) == 200
    assert {s.reason for s in labels} == {
        "in the label folder labelsTr of an MSD-style dataset (a label map, not a scan)"
    }


@needs_hippo
def test_label_maps_outside_label_folders_by_content(tmp_path: Path) -> None:
    # the uint8 label, the float32 one (hippocampus_003), and a uint8 image of the same task
    shutil.copy(HIPPO / "labelsTr" / "hippocampus_001.nii.gz", tmp_path / "a.nii.gz")
    shutil.copy(HIPPO / "labelsTr" / "hippocampus_003.nii.gz", tmp_path / "b.nii.gz")
    uint8_images = [
        p for p in sorted((HIPPO / "imagesTr").glob("*.nii.gz")) if nib.load(p).get_data_dtype() == np.uint8
    ]
    assert uint8_images, "the data README says about a fifth of the images are uint8"
    shutil.copy(uint8_images[0], tmp_path / "scan.nii.gz")
    assert nib.load(tmp_path / "b.nii.gz").get_data_dtype() == np.float32
    report = find_cases(tmp_path)
    assert [c.source for c in report.cases] == ["scan.nii.gz"]
    assert [(s.path, s.reason) for s in report.skipped] == [
        ("a.nii.gz", "label map (3 integer values: 0, 1, 2), not a scan to segment"),
        ("b.nii.gz", "label map (3 integer values: 0, 1, 2), not a scan to segment"),
    ]


def test_ct_with_few_values_and_binary_masks(tmp_path: Path) -> None:
    ph = make_phantom((30, 28, 12), seed=3, noise_hu=0.0)  # a noiseless phantom: few distinct HU values
    nib.save(nib.Nifti1Image(np.rint(ph.image).astype(np.int16), ph.affine), tmp_path / "ct.nii.gz")
    nib.save(nib.Nifti1Image(ph.label.astype(np.int16), ph.affine), tmp_path / "ct_mask.nii.gz")
    report = find_cases(tmp_path)
    assert [c.source for c in report.cases] == ["ct.nii.gz"]  # air at -1000 HU: never a label map
    assert [s.path for s in report.skipped] == ["ct_mask.nii.gz"]
    kept = find_cases(tmp_path, skip_label_maps=False)
    assert [c.source for c in kept.cases] == ["ct.nii.gz", "ct_mask.nii.gz"]


def test_rules() -> None:
    folders = {"Task", "Task/imagesTr", "Task/labelsTr", "other", "other/labels"}
    assert label_folder_reason("Task/labelsTr/x.nii.gz", folders) is not None
    assert label_folder_reason("other/labels/x.nii.gz", folders) is None  # no images/ beside it
    assert label_folder_reason("Task/imagesTr/x.nii.gz", folders) is None
    many = np.arange(40, dtype=np.uint8).reshape(2, 4, 5)
    assert label_map_reason(many, many.shape, many.dtype, "x.nii.gz") is None  # 40 values, plain name
    assert label_map_reason(many, many.shape, many.dtype, "x_seg.nii.gz") is not None  # a multilabel seg
    fractional = np.array([[[0.0, 0.5, 1.0]]], np.float32)
    assert label_map_reason(fractional, fractional.shape, fractional.dtype, "mask.nii.gz") is None
    big = np.zeros((1,), np.int16)  # a large int16 volume with a plain name is not read
    assert label_map_reason(big, (512, 512, 300), np.dtype(np.int16), "scan.nii.gz") is None
