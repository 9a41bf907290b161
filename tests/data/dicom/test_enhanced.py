"""Enhanced (multi-frame) CT: dcmqi's real twin files, malformed headers, other multi-frame objects."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _dicom_refs import DCMQI, needs_dcmqi
from monai.transforms import LoadImage

from medfcn.data.dicom.seg import write_dicom_seg
from medfcn.data.discovery import find_cases
from medfcn.data.readers import DicomSeriesReader


def _load(case_input: object) -> tuple[np.ndarray, np.ndarray]:
    img = LoadImage(reader=DicomSeriesReader(), image_only=True)(case_input)
    return np.asarray(img), np.asarray(img.affine)


@needs_dcmqi
@pytest.mark.parametrize("twin", ["24x38x3", "23x38x3"])
def test_enhanced_ct_equals_its_single_frame_twin(twin: str) -> None:
    mf = find_cases(DCMQI / twin / "multiframe", min_slices=1)
    sf = find_cases(DCMQI / twin / "image", min_slices=1)
    assert mf.skipped == [] and sf.skipped == []
    [enhanced], [single] = mf.cases, sf.cases
    assert enhanced.kind == single.kind == "dicom"
    assert enhanced.paths == [DCMQI / twin / "multiframe" / "mf.dcm"]  # the file once, frames inside
    assert (enhanced.n_slices, enhanced.shape, enhanced.spacing) == (
        single.n_slices,
        single.shape,
        single.spacing,
    )
    assert enhanced.n_slices == 3 and enhanced.spacing == pytest.approx((0.7, 0.7, 2.5))
    a, a_affine = _load(enhanced.load_input())
    b, b_affine = _load(single.load_input())
    assert a.shape == b.shape == single.shape
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a_affine, b_affine, atol=1e-6)
    assert np.ptp(a) > 0  # real pixel data, not an empty frame


def _copy_mf(tmp_path: Path) -> Path:
    dst = tmp_path / "mf" / "mf.dcm"
    dst.parent.mkdir(parents=True)
    shutil.copy(DCMQI / "24x38x3" / "multiframe" / "mf.dcm", dst)
    return dst


@needs_dcmqi
def test_enhanced_without_per_frame_position_is_skipped_with_reason(tmp_path: Path) -> None:
    path = _copy_mf(tmp_path)
    ds = pydicom.dcmread(path)
    del ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence
    ds.save_as(path)
    report = find_cases(tmp_path, min_slices=1)
    assert report.cases == []
    assert [(s.path, s.reason) for s in report.skipped] == [
        (
            "mf/mf.dcm",
            "enhanced image without per-frame positions: 1 of 3 frames lack "
            "PlanePositionSequence/ImagePositionPatient (frame 2)",
        )
    ]


@needs_dcmqi
def test_enhanced_with_two_frames_at_one_position_is_skipped(tmp_path: Path) -> None:
    path = _copy_mf(tmp_path)
    ds = pydicom.dcmread(path)
    pos = ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence[0].ImagePositionPatient
    ds.PerFrameFunctionalGroupsSequence[1].PlanePositionSequence[0].ImagePositionPatient = pos
    ds.save_as(path)
    [skip] = find_cases(tmp_path, min_slices=1).skipped
    assert skip.path == "mf/mf.dcm" and skip.reason.startswith("duplicate slice positions")


@needs_dcmqi
def test_other_multiframe_objects_are_skipped_with_their_class(tmp_path: Path) -> None:
    path = _copy_mf(tmp_path)
    ds = pydicom.dcmread(path)
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID = pydicom.uid.XRayAngiographicImageStorage
    ds.Modality = "XA"
    ds.save_as(path)
    [skip] = find_cases(tmp_path, min_slices=1).skipped
    assert skip.reason == (
        "multi-frame X-Ray Angiographic Image (3 frames in one file): only single-frame slices and enhanced "
        "CT/MR/PET volumes are read"
    )


@needs_dcmqi
def test_seg_on_enhanced_source_matches_seg_on_the_twin(tmp_path: Path) -> None:
    import highdicom as hd

    [enhanced] = find_cases(DCMQI / "24x38x3" / "multiframe", min_slices=1).cases
    [single] = find_cases(DCMQI / "24x38x3" / "image", min_slices=1).cases
    _, affine = _load(single.load_input())
    label = np.zeros(single.shape, np.uint8)
    label[3:15, 5:30, 0] = 1
    label[10:20, 2:9, 2] = 1
    out = {}
    for name, case in (("mf", enhanced), ("sf", single)):
        path = write_dicom_seg(
            label,
            affine,
            case.paths,
            tmp_path / f"{name}.dcm",
            class_names={1: "liver"},
            algorithm_name="test",
            algorithm_version="1",
        )
        seg = hd.seg.segread(path)
        # voxels by patient position of each frame, whatever the frame order of either SEG
        by_z = {}
        for i, frame in enumerate(seg.PerFrameFunctionalGroupsSequence):
            z = float(frame.PlanePositionSequence[0].ImagePositionPatient[2])
            by_z[round(z, 3)] = seg.pixel_array[i] if seg.pixel_array.ndim == 3 else seg.pixel_array
        out[name] = (seg, by_z)
    assert sorted(out["mf"][1]) == sorted(out["sf"][1]) and len(out["mf"][1]) == 2  # empty frame omitted
    for z in out["mf"][1]:
        np.testing.assert_array_equal(out["mf"][1][z], out["sf"][1][z])
    mf_seg = out["mf"][0]
    refs = mf_seg.ReferencedSeriesSequence[0].ReferencedInstanceSequence
    assert [r.ReferencedSOPInstanceUID for r in refs] == [pydicom.dcmread(enhanced.paths[0]).SOPInstanceUID]
    derivation = mf_seg.PerFrameFunctionalGroupsSequence[0].DerivationImageSequence[0].SourceImageSequence[0]
    assert int(derivation.ReferencedFrameNumber) in (1, 2, 3)
