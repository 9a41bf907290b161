"""medfcn evaluate with DICOM SEG labels: the same scores as NIfTI labels of the same voxels; bad SEGs fail alone."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from _inference_support import ThresholdNet, copy_bundle, hu_to_input
from monai.transforms import LoadImage

from medfcn.data.dicom_seg import write_dicom_seg
from medfcn.data.readers import DicomSeriesReader
from medfcn.data.synthetic import make_phantom, write_dicom_series
from medfcn.engine.evaluation import evaluate
from medfcn.engine.inference import Segmenter


@pytest.fixture(scope="module")
def segmenter(tmp_path_factory: pytest.TempPathFactory) -> Segmenter:
    bundle = copy_bundle(tmp_path_factory.mktemp("bundle") / "liver")
    probe = Segmenter(bundle, device="cpu", network=ThresholdNet(0.0, 1.0))
    return Segmenter(
        bundle,
        device="cpu",
        network=ThresholdNet(hu_to_input(probe, 30.0), hu_to_input(probe, 200.0)),
        keep_probabilities=False,
    )


def _on_grid(
    values: np.ndarray, src_affine: np.ndarray, shape: tuple[int, ...], affine: np.ndarray
) -> np.ndarray:
    ijk = np.indices(shape).reshape(3, -1)
    src = np.linalg.inv(src_affine) @ affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    idx = np.rint(src[:3]).astype(int)
    return values[idx[0], idx[1], idx[2]].reshape(shape)


def test_seg_labels_score_like_nifti_labels(segmenter: Segmenter, tmp_path: Path) -> None:
    seg_root, nii_root = tmp_path / "SEG", tmp_path / "NII"
    load = LoadImage(reader=DicomSeriesReader(), image_only=True)
    seg_items, nii_items = [], []
    for k in range(2):
        ph = make_phantom((36, 32, 12), seed=40 + k, orientation="lps", noise_hu=0.0)
        series = seg_root / "imagesTr" / f"case{k}"
        write_dicom_series(ph.image, ph.affine, series, seed=40 + k)
        img = load(str(series))
        affine = np.asarray(img.affine)
        truth = _on_grid(ph.label.astype(np.uint8), ph.affine, tuple(img.shape), affine)
        assert truth.max() == 2  # liver and tumour present
        (seg_root / "labelsTr").mkdir(exist_ok=True)
        write_dicom_seg(
            truth,
            affine,
            sorted(series.iterdir()),
            seg_root / "labelsTr" / f"case{k}.dcm",
            class_names={1: "Liver", 2: "Tumor"},  # another tool's spelling: matched by the SNOMED codes
            algorithm_name="reference",
            algorithm_version="1",
        )
        seg_items.append({"image": f"./imagesTr/case{k}", "label": f"./labelsTr/case{k}.dcm"})
        (nii_root / "labelsTr").mkdir(parents=True, exist_ok=True)
        nib.save(nib.Nifti1Image(truth, affine), nii_root / "labelsTr" / f"case{k}.nii.gz")
        nii_items.append({"image": str(series), "label": f"./labelsTr/case{k}.nii.gz"})
    # a SEG of case 0 listed as the label of case 1: the case fails with one line, the other is scored
    bad_items = [seg_items[0], {"image": seg_items[1]["image"], "label": seg_items[0]["label"]}]
    for root, items in ((seg_root, seg_items), (nii_root, nii_items), (tmp_path / "BAD", bad_items)):
        root.mkdir(exist_ok=True)
        data = {
            "labels": {"0": "background", "1": "liver", "2": "tumour"},
            "modality": {"0": "CT"},
            "training": items,
        }
        (root / "dataset.json").write_text(json.dumps(data))
    (tmp_path / "BAD" / "imagesTr").symlink_to(seg_root / "imagesTr")
    (tmp_path / "BAD" / "labelsTr").symlink_to(seg_root / "labelsTr")

    by_seg = evaluate(segmenter, seg_root, split="all", progress=False)
    by_nii = evaluate(segmenter, nii_root, split="all", progress=False)
    assert by_seg.failed == [] and by_nii.failed == []
    assert [(r.case, r.class_name) for r in by_seg.rows] == [(r.case, r.class_name) for r in by_nii.rows]
    np.testing.assert_allclose([r.dice for r in by_seg.rows], [r.dice for r in by_nii.rows])
    assert min(r.dice for r in by_seg.rows if r.class_name == "liver") > 0.3  # a real overlap, not 0 vs 0
    bad = evaluate(segmenter, tmp_path / "BAD", split="all", progress=False)
    assert len(bad.failed) == 1
    case, reason = bad.failed[0]
    assert (
        case == "case1"
        and "case0.dcm: the SEG references another series (s-" in reason
        and "\n" not in reason
    )
