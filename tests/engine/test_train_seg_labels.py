"""``medfcn train`` on DICOM series whose labels are DICOM SEG objects (as 3D Slicer or OHIF export them).

The same cases are trained twice from the same seed: once with each label as a DICOM SEG, once with the
same label map as NIfTI. The SEG is matched to its series by the referenced SeriesInstanceUID and its
segments to the dataset's classes by name, so both runs must see the same voxels and learn the same
numbers.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from medfcn.cli.main import app
from medfcn.data.dicom_seg import write_dicom_seg
from medfcn.data.synthetic import make_phantom, write_dicom_series

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _liver_support import TINY_TRAINING, copy_liver_bundle

runner = CliRunner()
CLASSES = {1: "liver", 2: "tumour"}


def _dataset(root: Path, labels: str, cases: int = 3) -> Path:
    """An MSD dataset of DICOM series (``imagesTr/<case>/``) labelled by SEG (``.dcm``) or NIfTI files."""
    from monai.transforms import LoadImage

    load = LoadImage(image_only=True, reader="medfcn.data.readers.DicomSeriesReader")
    training = []
    for i in range(cases):
        case = f"liver_{i:03d}"
        ph = make_phantom((40, 40, 24), spacing=(1.5, 1.5, 2.0), seed=100 + i, orientation="lps")
        series = root / "imagesTr" / case
        files = write_dicom_series(ph.image, ph.affine, series, seed=100 + i)
        img = load(str(series))  # the grid the reader gives the image, which the label must share
        truth = make_phantom((40, 40, 24), spacing=(1.5, 1.5, 2.0), seed=100 + i, orientation="lps").label
        truth = truth.astype(np.uint8)
        assert truth.shape == tuple(img.shape) and truth.max() == 2
        (root / "labelsTr").mkdir(parents=True, exist_ok=True)
        if labels == "seg":
            label = root / "labelsTr" / f"{case}.dcm"
            write_dicom_seg(
                truth, np.asarray(img.affine), sorted(files), label,
                class_names=CLASSES, algorithm_name="annotator", algorithm_version="1",
            )
        else:
            label = root / "labelsTr" / f"{case}.nii.gz"
            nib.save(nib.Nifti1Image(truth, np.asarray(img.affine)), label)
        training.append({"image": f"./imagesTr/{case}", "label": f"./labelsTr/{label.name}"})
    (root / "dataset.json").write_text(json.dumps({
        "name": "seg-labels", "labels": {"0": "background", "1": "liver", "2": "tumour"},
        "modality": {"0": "CT"}, "numTraining": cases, "training": training, "test": [],
    }))
    return root


@pytest.mark.slow
def test_train_on_dicom_seg_labels_equals_training_on_the_same_nifti_labels(tmp_path: Path) -> None:
    from medfcn.engine.training import train

    seg_data = _dataset(tmp_path / "seg" / "Task", "seg")
    nii_data = _dataset(tmp_path / "nii" / "Task", "nifti")
    overrides = [a for k, v in {**TINY_TRAINING, "val_fraction": 0.34}.items() for a in ("--override", f"{k}={v}")]

    bundle = copy_liver_bundle(tmp_path / "liver")
    out = tmp_path / "run_seg"
    result = runner.invoke(app, [
        "train", "--bundle", str(bundle), "--data", str(seg_data), "--epochs", "2", "--val-interval", "1",
        "--device", "cpu", "--no-tracking", "--output", str(out), *overrides, "-q",
    ])
    assert result.exit_code == 0, result.output
    seg_metrics = json.loads((out / "metrics.json").read_text())
    assert (out / "models" / "model.pt").is_file()
    # The SEG label was read, not skipped: 2 training cases and 1 validation case, as with NIfTI labels.
    split = json.loads((out / "split.json").read_text())
    assert (len(split["train"]), len(split["val"])) == (2, 1)

    nii = train(
        copy_liver_bundle(tmp_path / "liver2"), data_dir=nii_data, epochs=2, val_interval=1, device="cpu",
        tracking=False, quiet=True, output_dir=tmp_path / "run_nii", overrides={**TINY_TRAINING, "val_fraction": 0.34},
    )
    for a, b in zip(seg_metrics["history"], nii.metrics["history"], strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["val_liver_dice"] == pytest.approx(b["val_liver_dice"], abs=1e-6)
        assert a["val_liver_dice"] > 0.0  # the validation label has liver voxels: the SEG was decoded


def test_train_refuses_a_seg_label_of_another_series_in_one_line(tmp_path: Path) -> None:
    data = _dataset(tmp_path / "Task", "seg", cases=2)
    # Swap the two labels: each SEG now references the other case's series.
    a, b = (data / "labelsTr" / "liver_000.dcm"), (data / "labelsTr" / "liver_001.dcm")
    tmp = a.with_suffix(".x")
    a.rename(tmp), b.rename(a), tmp.rename(b)
    meta = json.loads((data / "dataset.json").read_text())
    meta["training"] = meta["training"][:1] * 2  # image liver_000 with the SEG of liver_001's series
    meta["training"][1] = {"image": "./imagesTr/liver_001", "label": "./labelsTr/liver_001.dcm"}
    (data / "dataset.json").write_text(json.dumps(meta))
    result = runner.invoke(app, [
        "train", "--bundle", str(copy_liver_bundle(tmp_path / "liver")), "--data", str(data), "--epochs", "1",
        "--device", "cpu", "--no-tracking", "--output", str(tmp_path / "run"),
        *[a for k, v in {**TINY_TRAINING, "val_fraction": 0.5}.items() for a in ("--override", f"{k}={v}")], "-q",
    ])
    assert result.exit_code != 0
    lines = [ln for ln in result.output.strip().splitlines() if ln.strip()]
    assert "Traceback" not in result.output
    assert any("liver_000.dcm" in ln and "series" in ln for ln in lines), result.output
