"""DICOM SEG as ground truth: real SEGs from 3D Slicer/dcmqi, mapping rules, overlap/fractional, training reader."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pydicom
import pytest
from _dicom_refs import DCMQI, needs_dcmqi
from monai.transforms import LoadImage, LoadImaged

from medfcn.data.dicom.seg import write_dicom_seg
from medfcn.data.dicom.seg_labels import is_dicom_seg, parse_segment_map, read_seg_label
from medfcn.data.dicom.segment_codes import class_table
from medfcn.data.readers import DicomSeriesReader
from medfcn.data.synthetic import make_phantom, write_dicom_series
from medfcn.errors import InputError

load = LoadImage(reader=DicomSeriesReader(), image_only=True)


@needs_dcmqi
def test_slicer_liver_seg_equals_liver_seg_nrrd() -> None:
    label, report = read_seg_label(DCMQI / "liver.dcm", DCMQI / "ct-3slice", {1: "liver", 2: "tumour"})
    nrrd = load(DCMQI / "liver_seg.nrrd")
    ct = load(DCMQI / "ct-3slice")
    np.testing.assert_allclose(np.asarray(nrrd.affine), np.asarray(ct.affine), atol=1e-4)  # same grid
    assert label.shape == tuple(ct.shape) == (512, 512, 3)
    assert report.mapped == {1: 1} and report.ignored == [] and not report.fractional
    expected = (np.asarray(nrrd) > 0).astype(np.uint8)
    assert int(expected.sum()) == 107098
    np.testing.assert_array_equal(label, expected)


@needs_dcmqi
def test_label_map_seg_equals_its_nrrd_and_maps_by_code() -> None:
    # class named differently from the segment ("Liver"): matched by the SNOMED type code
    table = class_table(
        {"medfcn": {"classes": {"1": {"name": "hepar", "type": ["SCT", "10200004", "Liver"]}}}}
    )
    label, report = read_seg_label(DCMQI / "sparse-labelmap-noppv.dcm", DCMQI / "24x38x3" / "image", table)
    assert report.mapped == {1: 1}
    np.testing.assert_array_equal(
        label, np.asarray(load(DCMQI / "sparse_labelmap_noppv_seg.nrrd")).astype(np.uint8)
    )


@needs_dcmqi
def test_overlapping_segments_error_or_higher_class_wins() -> None:
    classes = {1: "green", 2: "orange", 3: "purple"}
    with pytest.raises(
        InputError, match=r"partial_overlaps\.dcm: segments of different classes overlap in 3106 voxels"
    ):
        read_seg_label(DCMQI / "partial_overlaps.dcm", DCMQI / "ct-3slice", classes)
    label, report = read_seg_label(
        DCMQI / "partial_overlaps.dcm", DCMQI / "ct-3slice", classes, overlap="higher"
    )
    assert report.overlap_voxels == 3106 and report.ignored == ["4 'LIGHT_BLUE'", "5 'DARK_BLUE'"]
    single = {
        v: read_seg_label(DCMQI / "partial_overlaps.dcm", DCMQI / "ct-3slice", {v: name})[0] > 0
        for v, name in classes.items()
    }
    both = single[1] & single[2] & ~single[3]
    assert both.any() and (label[both] == 2).all()  # orange (2) over green (1)
    assert (label[single[3]] == 3).all()
    np.testing.assert_array_equal(label > 0, single[1] | single[2] | single[3])


@needs_dcmqi
def test_explicit_mapping_and_no_match_and_other_series() -> None:
    label, report = read_seg_label(
        DCMQI / "partial_overlaps.dcm", DCMQI / "ct-3slice", {1: "liver"}, mapping="GREEN=liver"
    )
    assert report.mapped == {1: 1} and label.any()
    with pytest.raises(
        InputError, match=r"partial_overlaps\.dcm: no segment matches the bundle's classes \(liver\)"
    ):
        read_seg_label(DCMQI / "partial_overlaps.dcm", DCMQI / "ct-3slice", {1: "liver"})
    with pytest.raises(
        InputError, match=r"liver\.dcm: the SEG references another series \(s-[0-9a-f]{12}\), not the image"
    ):
        read_seg_label(DCMQI / "liver.dcm", DCMQI / "24x38x3" / "image", {1: "liver"})
    with pytest.raises(InputError, match="which the bundle lacks"):
        read_seg_label(DCMQI / "liver.dcm", DCMQI / "ct-3slice", {1: "liver"}, mapping="Liver=spleen")
    assert parse_segment_map("Liver=liver, 2=tumour,SCT:108369006=tumour") == {
        "Liver": "liver",
        "2": "tumour",
        "SCT:108369006": "tumour",
    }
    with pytest.raises(InputError, match="SEGMENT=CLASS"):
        parse_segment_map("Liver")
    assert is_dicom_seg(DCMQI / "liver.dcm") and not is_dicom_seg(DCMQI / "liver_seg.nrrd")


def _series(folder: Path, seed: int = 4) -> tuple[object, list[Path]]:
    ph = make_phantom((22, 20, 7), spacing=(1.2, 1.2, 2.5), seed=seed, orientation="lps", noise_hu=0.0)
    return ph, write_dicom_series(ph.image, ph.affine, folder, seed=seed)


def test_fractional_seg_binarised_at_half(tmp_path: Path) -> None:
    import highdicom as hd

    from medfcn.data.dicom.seg import label_to_frames, segment_descriptions

    _, files = _series(tmp_path / "ct")
    img = load([str(f) for f in sorted(files)])
    sources = [pydicom.dcmread(f) for f in files]
    prob = np.zeros(tuple(img.shape), np.float32)
    prob[2:9, 3:12, 1:5] = 0.7
    prob[12:18, 3:12, 1:5] = 0.3  # below one half: not liver
    frames = label_to_frames(prob, np.asarray(img.affine), sources)
    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL,
        segment_descriptions=segment_descriptions({1: "liver"}, algorithm_name="t", algorithm_version="1"),
        series_instance_uid=hd.UID(),
        series_number=5,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="0",
    )
    seg.save_as(tmp_path / "frac.dcm")
    label, report = read_seg_label(tmp_path / "frac.dcm", tmp_path / "ct", {1: "liver"})
    assert report.fractional
    np.testing.assert_array_equal(label, (prob >= 0.5).astype(np.uint8))


def test_seg_label_in_an_msd_dataset_trains_through_the_reader(tmp_path: Path) -> None:
    root = tmp_path / "Task"
    _series(root / "imagesTr" / "case1")
    img = load(str(root / "imagesTr" / "case1"))
    truth = np.zeros(tuple(img.shape), np.uint8)
    truth[3:10, 4:15, 1:6] = 1
    truth[5:8, 6:9, 2:4] = 2
    (root / "labelsTr").mkdir()
    write_dicom_seg(
        truth,
        np.asarray(img.affine),
        sorted((root / "imagesTr" / "case1").iterdir()),
        root / "labelsTr" / "case1.dcm",
        class_names={1: "liver", 2: "tumour"},
        algorithm_name="ref",
        algorithm_version="1",
    )
    (root / "dataset.json").write_text(
        json.dumps(
            {
                "labels": {"0": "background", "1": "liver", "2": "tumour"},
                "modality": {"0": "CT"},
                "training": [{"image": "./imagesTr/case1", "label": "./labelsTr/case1.dcm"}],
            }
        )
    )
    loader = LoadImaged(["image", "label"], reader="medfcn.data.readers.DicomSeriesReader", image_only=True)
    data = loader({"image": str(root / "imagesTr" / "case1"), "label": str(root / "labelsTr" / "case1.dcm")})
    assert tuple(data["label"].shape) == tuple(data["image"].shape)
    np.testing.assert_allclose(np.asarray(data["label"].affine), np.asarray(data["image"].affine), atol=1e-6)
    np.testing.assert_array_equal(np.asarray(data["label"]).astype(np.uint8), truth)
