"""DICOM SEG writing: valid objects, coded segments, frames on the right source instances."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from medfcn.data.dicom.seg import label_to_frames, write_dicom_seg
from medfcn.data.synthetic import make_phantom, write_dicom_series
from medfcn.errors import InputError

CLASSES = {0: "background", 1: "liver", 2: "tumour"}


@pytest.fixture(scope="module")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[np.ndarray, np.ndarray, list[Path]]:
    """An oblique, axis-flipped, anisotropic CT series and its phantom label (array order = file order)."""
    ph = make_phantom((34, 30, 12), seed=4, orientation="random", max_oblique_deg=12.0)
    paths = write_dicom_series(
        ph.image, ph.affine, tmp_path_factory.mktemp("ct"), seed=4, reverse_instance_numbers=True
    )
    return ph.label, ph.affine, paths


def test_label_to_frames_follows_positions_not_order(
    series: tuple[np.ndarray, np.ndarray, list[Path]],
) -> None:
    import pydicom

    label, affine, paths = series
    shuffled = [paths[i] for i in np.random.default_rng(0).permutation(len(paths))]
    datasets = [pydicom.dcmread(p, stop_before_pixels=True) for p in shuffled]
    frames = label_to_frames(label, affine, datasets)
    assert frames.shape == (len(paths), 30, 34)
    for frame, path in zip(frames, shuffled, strict=True):
        k = paths.index(path)
        # write_dicom_series puts array axis 0 along a row (columns) and axis 1 down the rows
        np.testing.assert_array_equal(frame, label[:, :, k].T)


def test_label_on_another_grid_is_rejected(series: tuple[np.ndarray, np.ndarray, list[Path]]) -> None:
    import pydicom

    label, affine, paths = series
    shifted = affine.copy()
    shifted[:3, 3] += affine[:3, :3] @ np.array([0.0, 0.0, 0.5])  # half a slice off
    with pytest.raises(InputError, match="not on the label grid"):
        label_to_frames(label, shifted, [pydicom.dcmread(paths[3], stop_before_pixels=True)])
    with pytest.raises(InputError, match="outside the label volume"):
        label_to_frames(label[:, :, :5], affine, [pydicom.dcmread(paths[8], stop_before_pixels=True)])


def test_seg_round_trip(series: tuple[np.ndarray, np.ndarray, list[Path]], tmp_path: Path) -> None:
    import highdicom as hd
    import pydicom
    from pydicom.sr.codedict import codes

    label, affine, paths = series
    assert {1, 2} <= set(np.unique(label).tolist())
    out = write_dicom_seg(
        label,
        affine,
        paths,
        tmp_path / "seg.dcm",
        class_names=CLASSES,
        algorithm_name="liver",
        algorithm_version="1.2.3",
    )
    assert out.is_file() and not list(tmp_path.glob(".*tmp*"))
    seg = hd.seg.segread(out)
    assert pydicom.dcmread(out).Modality == "SEG"
    src = pydicom.dcmread(paths[0], stop_before_pixels=True)
    assert seg.FrameOfReferenceUID == src.FrameOfReferenceUID
    assert seg.ReferencedSeriesSequence[0].SeriesInstanceUID == src.SeriesInstanceUID
    assert seg.number_of_segments == 2
    liver, tumour = seg.get_segment_description(1), seg.get_segment_description(2)
    assert liver.segment_label == "liver" and liver.segmented_property_type == codes.SCT.Liver
    assert tumour.segmented_property_type == codes.SCT.Neoplasm
    assert tumour.segmented_property_category == codes.SCT.MorphologicallyAbnormalStructure
    algo = liver.algorithm_identification[0]
    assert (algo.AlgorithmName, algo.AlgorithmVersion) == ("medfcn liver bundle 1.2.3", "1.2.3")
    assert liver.SegmentAlgorithmName == "medfcn liver bundle 1.2.3" != liver.segment_label  # issue 17 item 6
    # Every frame is placed on a source instance and carries that instance's label slice.
    by_uid = {pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID: k for k, p in enumerate(paths)}
    uids = [u for _, _, u in seg.get_source_image_uids()]
    assert set(uids) <= set(by_uid)
    for segment in (1, 2):
        for uid, k in by_uid.items():
            expected = (segment == label[:, :, k].T).astype(np.uint8)
            got = (
                seg.get_pixels_by_source_instance(
                    [uid], segment_numbers=[segment], ignore_spatial_locations=True
                )[0, :, :, 0]
                if uid in uids
                else np.zeros_like(expected)
            )
            np.testing.assert_array_equal(got, expected)
    # and the frame positions are the source positions
    positions = {
        tuple(np.round(fg.PlanePositionSequence[0].ImagePositionPatient, 3))
        for fg in seg.PerFrameFunctionalGroupsSequence
    }
    src_positions = {
        tuple(np.round([float(v) for v in pydicom.dcmread(p).ImagePositionPatient], 3)) for p in paths
    }
    assert positions <= src_positions


def test_unknown_label_values_and_unreadable_sources(
    series: tuple[np.ndarray, np.ndarray, list[Path]], tmp_path: Path
) -> None:
    label, affine, paths = series
    with pytest.raises(InputError, match=r"label values \[2\]"):
        write_dicom_seg(
            label,
            affine,
            paths,
            tmp_path / "s.dcm",
            class_names={1: "liver"},
            algorithm_name="a",
            algorithm_version="1",
        )
    junk = tmp_path / "junk.dcm"
    junk.write_bytes(b"not dicom")
    with pytest.raises(InputError, match="cannot read a source DICOM"):
        write_dicom_seg(
            label,
            affine,
            [junk],
            tmp_path / "s.dcm",
            class_names=CLASSES,
            algorithm_name="a",
            algorithm_version="1",
        )
    assert not (tmp_path / "s.dcm").exists()
