"""medfcn's SEG and RTSTRUCT for the real 20-slice TotalSegmentator CT: valid DICOM, same voxels as the mask.

Validators: ``dciodvfy`` (Debian ``dicom3tools``) and dcmqi's ``segimage2itkimage`` (PyPI ``dcmqi``).
The TotalSegmentator series was de-identified by blanking its Study/Series/SOP Instance UIDs and SOP
Class UID (discovery skips such files); the fixture copies it and fills them in (instance and class from
the file meta, fixed study and series UIDs), which is what a PACS import does.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from monai.transforms import LoadImage

from medfcn.bundle import load_bundle
from medfcn.data.cases import Case
from medfcn.data.dicom.rtstruct import mask_contours, rasterise_contours, write_rtstruct
from medfcn.data.dicom.seg import label_to_frames, write_dicom_seg
from medfcn.data.dicom.segment_codes import class_table
from medfcn.data.discovery import find_cases
from medfcn.data.readers import DicomSeriesReader

REAL = Path(__file__).resolve().parents[3] / "shared" / "data" / "real-ct" / "totalsegmentator"
LIVER = Path(__file__).resolve().parents[2] / "bundles" / "liver"
needs_real = pytest.mark.skipif(not (REAL / "ct_dicom").is_dir(), reason=f"real CT missing: {REAL}")
needs_dciodvfy = pytest.mark.skipif(
    shutil.which("dciodvfy") is None, reason="dciodvfy not installed (Debian package dicom3tools)"
)
needs_dcmqi = pytest.mark.skipif(
    shutil.which("segimage2itkimage") is None, reason="segimage2itkimage not installed (PyPI package dcmqi)"
)
load = LoadImage(reader=DicomSeriesReader(), image_only=True)


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    if not (REAL / "ct_dicom").is_dir():
        pytest.skip(f"real CT missing: {REAL}")
    root = tmp_path_factory.mktemp("tsct")
    ct = root / "ct"
    ct.mkdir()
    study = pydicom.uid.generate_uid(entropy_srcs=["medfcn-test-study"])
    series = pydicom.uid.generate_uid(entropy_srcs=["medfcn-test-series"])
    for f in sorted((REAL / "ct_dicom").iterdir()):
        ds = pydicom.dcmread(f)
        ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SeriesNumber = study, series, 1
        ds.save_as(ct / f.name)
    [case] = find_cases(ct).cases
    image = load(case.load_input())
    affine = np.asarray(image.affine)
    # TotalSegmentator's label (liver = 5) on another voxel order of the same grid: map by world position
    ts = load(REAL / "ct_dicom_seg_totalsegmentator.nii.gz")
    ijk = np.indices(tuple(image.shape)).reshape(3, -1)
    src = np.linalg.inv(np.asarray(ts.affine)) @ affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    idx = np.rint(src[:3]).astype(int)
    label = (np.asarray(ts)[idx[0], idx[1], idx[2]].reshape(tuple(image.shape)) == 5).astype(np.uint8)
    table = class_table(load_bundle(LIVER).metadata)
    seg = write_dicom_seg(
        label,
        affine,
        case.paths,
        root / "seg.dcm",
        class_names=table,
        algorithm_name="liver",
        algorithm_version="0.2.0",
    )
    rt = write_rtstruct(
        label,
        affine,
        case.paths,
        root / "rtstruct.dcm",
        classes=table,
        algorithm_name="liver",
        algorithm_version="0.2.0",
    )
    return {"root": root, "case": case, "label": label, "affine": affine, "seg": seg, "rt": rt}


def _dciodvfy_errors(path: Path) -> list[str]:
    result = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=120)
    lines = (result.stdout + result.stderr).splitlines()
    assert any(ln.strip() in ("Segmentation", "RTStructureSet") for ln in lines), lines[:5]  # it read the IOD
    return [ln for ln in lines if ln.startswith("Error")]


@needs_real
@needs_dciodvfy
def test_seg_and_rtstruct_pass_dciodvfy(written: dict[str, object]) -> None:
    assert _dciodvfy_errors(written["seg"]) == []  # type: ignore[arg-type]
    assert _dciodvfy_errors(written["rt"]) == []  # type: ignore[arg-type]


@needs_real
@needs_dcmqi
def test_dcmqi_reads_the_seg_back_to_the_mask(written: dict[str, object], tmp_path: Path) -> None:
    subprocess.run(
        [
            "segimage2itkimage",
            "--inputDICOM",
            str(written["seg"]),
            "--outputDirectory",
            str(tmp_path),
            "--outputType",
            "nii",
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    liver = nib.load(tmp_path / "1.nii.gz")  # segment 1 = liver
    label, affine = written["label"], written["affine"]
    assert isinstance(label, np.ndarray) and isinstance(affine, np.ndarray)
    # compare through world positions: dcmqi writes ITK's LPS grid, medfcn's mask is RAS
    ijk = np.indices(label.shape).reshape(3, -1)
    src = np.linalg.inv(liver.affine) @ affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    idx = np.rint(src[:3]).astype(int)
    theirs = np.asarray(liver.dataobj)[idx[0], idx[1], idx[2]].reshape(label.shape)
    assert int((label == 1).sum()) == 366_708  # TotalSegmentator's liver in these 20 slices
    np.testing.assert_array_equal(theirs > 0, label == 1)


@needs_real
def test_rtstruct_geometry_roi_names_and_codes(written: dict[str, object]) -> None:
    rt = pydicom.dcmread(written["rt"])  # type: ignore[arg-type]
    case = written["case"]
    assert isinstance(case, Case)
    sources = [pydicom.dcmread(p, stop_before_pixels=True) for p in case.paths]
    assert rt.Modality == "RTSTRUCT" and rt.SOPClassUID == pydicom.uid.RTStructureSetStorage
    assert [r.ROIName for r in rt.StructureSetROISequence] == ["liver", "tumour"]
    codes = [o.RTROIIdentificationCodeSequence[0].CodeValue for o in rt.RTROIObservationsSequence]
    assert codes == ["10200004", "108369006"]
    assert rt.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID == sources[0].FrameOfReferenceUID
    assert rt.PatientID == sources[0].PatientID and rt.StudyInstanceUID == sources[0].StudyInstanceUID
    # Every contour, filled by the even-odd rule at pixel centres on its referenced slice, gives the mask.
    by_uid = {ds.SOPInstanceUID: i for i, ds in enumerate(sources)}
    frames = label_to_frames(written["label"], written["affine"], sources)  # type: ignore[arg-type]
    rebuilt = np.zeros_like(frames, dtype=bool)
    liver_roi = rt.ROIContourSequence[0]
    assert "ContourSequence" not in rt.ROIContourSequence[1]  # no tumour in this label
    for item in liver_roi.ContourSequence:
        assert item.ContourGeometricType == "CLOSED_PLANAR"
        k = by_uid[item.ContourImageSequence[0].ReferencedSOPInstanceUID]
        ds = sources[k]
        pts = np.asarray(item.ContourData, dtype=np.float64).reshape(-1, 3)
        assert len(pts) == item.NumberOfContourPoints
        origin = np.asarray(ds.ImagePositionPatient, dtype=np.float64)
        iop = np.asarray(ds.ImageOrientationPatient, dtype=np.float64)
        dr, dc = (float(v) for v in ds.PixelSpacing)
        rel = pts - origin
        np.testing.assert_allclose(rel @ np.cross(iop[:3], iop[3:]), 0.0, atol=1e-3)  # in the slice plane
        rc = np.stack([rel @ iop[3:] / dr, rel @ iop[:3] / dc], axis=1)
        rebuilt[k] ^= rasterise_contours([rc], frames.shape[1:])
    np.testing.assert_array_equal(rebuilt, frames == 1)


def test_mask_contours_round_trip_with_holes_and_diagonals() -> None:
    rng = np.random.default_rng(7)
    for _ in range(25):
        mask = rng.random((23, 31)) > 0.5
        assert np.array_equal(rasterise_contours(mask_contours(mask), mask.shape), mask)
    ring = np.zeros((12, 12), bool)
    ring[2:10, 2:10] = True
    ring[4:7, 4:7] = False
    contours = mask_contours(ring)
    assert sorted(len(c) for c in contours) == [4, 4]  # outer square and the hole, corners only
    outer = max(contours, key=lambda c: np.ptp(c[:, 0]))
    assert outer[:, 0].min() == 1.5 and outer[:, 0].max() == 9.5  # along pixel edges
