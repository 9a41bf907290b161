"""segment_folder on hospital inputs: zipped studies, enhanced CT, label folders; per-class, --classes,
labels.json, RTSTRUCT; bad inputs skipped with one line, failed cases leave nothing behind."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from _dicom_refs import DCMQI
from _inference_support import ThresholdNet, copy_bundle, hu_to_input

from medfcn.data.synthetic import make_phantom, write_dicom_series
from medfcn.engine import inference
from medfcn.engine.inference import Segmenter, segment_folder
from medfcn.errors import InputError


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Segmenter:
    bundle = copy_bundle(tmp_path_factory.mktemp("bundle") / "liver")
    probe = Segmenter(bundle, device="cpu", network=ThresholdNet(0.0, 1.0))
    return Segmenter(
        bundle, device="cpu", network=ThresholdNet(hu_to_input(probe, 30.0), hu_to_input(probe, 200.0))
    )


@pytest.fixture(scope="module")
def hospital(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("in") / "IN"
    staging = root.parent / "staging"
    ph = make_phantom((34, 30, 10), seed=21, orientation="lps", noise_hu=0.0)
    files = write_dicom_series(ph.image, ph.affine, staging / "series", seed=21)
    root.mkdir()
    with zipfile.ZipFile(root / "study.zip", "w", zipfile.ZIP_DEFLATED) as z:
        for f in files:
            z.write(f, f"DICOM/{f.name}")
    (root / "fake.zip").write_bytes(b"not a zip")
    # an MSD-like dataset: the image is a scan, its label is not
    ph2 = make_phantom((30, 28, 12), seed=22, noise_hu=0.0)
    (root / "Task" / "imagesTr").mkdir(parents=True)
    (root / "Task" / "labelsTr").mkdir()
    nib.save(
        nib.Nifti1Image(np.rint(ph2.image).astype(np.int16), ph2.affine),
        root / "Task" / "imagesTr" / "ct_1.nii.gz",
    )
    nib.save(
        nib.Nifti1Image(ph2.label.astype(np.uint8), ph2.affine), root / "Task" / "labelsTr" / "ct_1.nii.gz"
    )
    if DCMQI.is_dir():  # the real enhanced CT, and a copy without per-frame positions
        (root / "enhanced").mkdir()
        shutil.copy(DCMQI / "24x38x3" / "multiframe" / "mf.dcm", root / "enhanced" / "mf.dcm")
        ds = pydicom.dcmread(DCMQI / "24x38x3" / "multiframe" / "mf.dcm")
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()
        del ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence
        (root / "broken_enhanced").mkdir()
        ds.save_as(root / "broken_enhanced" / "mf.dcm")
    return root


pytestmark = pytest.mark.usefixtures("private_tempdir")  # temp-folder checks see this test's files only


def _temps() -> set[str]:
    return {p for p in os.listdir(tempfile.gettempdir()) if p.startswith("medfcn-zip-")}


def test_hospital_folder_subset_per_class_rtstruct(
    segmenter: Segmenter, hospital: Path, tmp_path: Path
) -> None:
    before = _temps()
    out = tmp_path / "OUT"
    summary = segment_folder(
        segmenter,
        hospital,
        out,
        progress=False,
        previews=True,
        per_class=True,
        classes=["liver"],
        min_slices=1,
    )
    rows = {(r.source, r.status): r for r in summary.cases}
    ok = [r for r in summary.cases if r.status == "ok"]
    assert sorted(r.source for r in ok) == sorted(
        ["study.zip/DICOM", "Task/imagesTr/ct_1.nii.gz"] + (["enhanced"] if DCMQI.is_dir() else [])
    )
    assert rows[("fake.zip", "skipped")].reason == "not a zip archive (File is not a zip file)"
    assert rows[("Task/labelsTr/ct_1.nii.gz", "skipped")].reason == (
        "in the label folder Task/labelsTr of an MSD-style dataset (a label map, not a scan)"
    )
    if DCMQI.is_dir():
        assert rows[("broken_enhanced/mf.dcm", "skipped")].reason.startswith(
            "enhanced image without per-frame positions"
        )
    assert _temps() == before  # the zip's extraction is gone after the run
    labels = json.loads((out / "labels.json").read_text())
    assert labels["bundle"]["name"] == segmenter.name
    assert labels["classes"] == {
        "1": {
            "name": "liver",
            "category": ["SCT", "91723000", "Anatomical Structure"],
            "type": ["SCT", "10200004", "Liver"],
            "volume_ml": [500.0, 3500.0],
            "codes_from": "bundle",
        }
    }
    for r in ok:
        case_dir = out / r.id
        mask = nib.load(case_dir / "mask.nii.gz")
        liver = nib.load(case_dir / "mask_liver.nii.gz")
        m = np.asarray(mask.dataobj)
        assert set(np.unique(m).tolist()) <= {0, 1}  # tumour (2) dropped by --classes liver
        np.testing.assert_array_equal(np.asarray(liver.dataobj), (m == 1).astype(np.uint8))
        np.testing.assert_allclose(liver.affine, mask.affine)
        assert not (case_dir / "mask_tumour.nii.gz").exists()
        assert list(r.volumes_ml) == ["liver"]
        assert (case_dir / "preview.png").is_file()
        if r.kind == "dicom":
            seg = pydicom.dcmread(case_dir / "seg.dcm")
            assert [s.SegmentLabel for s in seg.SegmentSequence] == ["liver"]
            assert (
                seg.SegmentSequence[0].SegmentAlgorithmName
                == f"medfcn {segmenter.name} bundle {segmenter.version}"
            )
            rt = pydicom.dcmread(case_dir / "rtstruct.dcm")
            assert [roi.ROIName for roi in rt.StructureSetROISequence] == ["liver"]
            assert m.any() == ("ContourSequence" in rt.ROIContourSequence[0])
    header = (out / "summary.csv").read_text().splitlines()[0]
    assert header.endswith(",liver_ml")


def test_unknown_class_is_one_line_before_any_case(
    segmenter: Segmenter, hospital: Path, tmp_path: Path
) -> None:
    with pytest.raises(
        InputError, match=r"^--classes spleen: unknown class 'spleen'; the liver bundle has liver, tumour$"
    ):
        segment_folder(segmenter, hospital, tmp_path / "OUT", progress=False, classes=["spleen"])
    assert not any((tmp_path / "OUT").glob("*/mask.nii.gz"))


def test_failed_rtstruct_leaves_nothing_and_the_run_goes_on(
    segmenter: Segmenter, hospital: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import medfcn.data.rtstruct as rtstruct

    def broken(*args: object, **kwargs: object) -> None:
        raise InputError("the source series has no FrameOfReferenceUID; an RTSTRUCT cannot be placed on it")

    monkeypatch.setattr(rtstruct, "write_rtstruct", broken)
    out = tmp_path / "OUT"
    summary = segment_folder(
        segmenter, hospital, out, progress=False, previews=False, per_class=True, min_slices=1
    )
    failed = [r for r in summary.cases if r.status == "failed"]
    assert failed and all(r.kind == "dicom" for r in failed)
    assert all(
        r.reason == "the source series has no FrameOfReferenceUID; an RTSTRUCT cannot be placed on it"
        for r in failed
    )
    for r in failed:
        assert not (out / r.id).exists()  # not even the mask written before the RTSTRUCT
    assert [r.source for r in summary.cases if r.status == "ok"] == ["Task/imagesTr/ct_1.nii.gz"]
    # without RTSTRUCT the DICOM cases run
    summary = segment_folder(
        segmenter, hospital, out, progress=False, previews=False, rtstruct=False, min_slices=1
    )
    assert summary.failed == 0
    assert all(not (out / r.id / "rtstruct.dcm").exists() for r in summary.cases if r.status == "ok")
    assert inference.CASE_FILES["rtstruct"] == "rtstruct.dcm"
