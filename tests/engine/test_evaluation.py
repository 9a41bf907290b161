"""Evaluation: Dice/HD95 against known predictions, held-out split selection, CSV, end-to-end on a bundle."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from medfcn.engine.evaluation import (
    CaseMetrics,
    EvaluationResult,
    case_metrics,
    evaluate,
    format_summary,
    select_cases,
    summarise,
    write_csv,
)
from medfcn.errors import DataError, InputError


def _cube(shape: tuple[int, int, int], lo: tuple[int, int, int], size: int, value: int = 1) -> np.ndarray:
    out = np.zeros(shape, dtype=np.int64)
    out[lo[0] : lo[0] + size, lo[1] : lo[1] + size, lo[2] : lo[2] + size] = value
    return out


def test_perfect_prediction_scores_dice_one_and_zero_distance() -> None:
    truth = _cube((20, 20, 20), (5, 5, 5), 6) + _cube((20, 20, 20), (7, 7, 7), 2)  # tumour (2) inside liver
    [(c1, d1, h1), (c2, d2, h2)] = case_metrics(truth, truth, (1.0, 1.0, 1.0), 3)
    assert (c1, c2) == (1, 2)
    assert d1 == pytest.approx(1.0) and d2 == pytest.approx(1.0)
    assert h1 == pytest.approx(0.0) and h2 == pytest.approx(0.0)


@pytest.mark.parametrize(
    ("axis", "spacing", "expected_mm"),
    [(0, (1.0, 1.0, 1.0), 2.0), (0, (2.5, 1.0, 1.0), 5.0), (2, (0.7, 0.7, 3.0), 6.0)],
)
def test_shifted_cube_has_known_dice_and_hd95_in_mm(
    axis: int, spacing: tuple[float, float, float], expected_mm: float
) -> None:
    # A 10-voxel cube shifted by 2 voxels along one axis: overlap 8/10, so Dice = 2*8/(10+10) = 0.8.
    # Every surface point moves by at most 2 voxels along that axis; the 95th percentile of the surface
    # distances is that shift in mm (the faces perpendicular to the shift dominate the distribution).
    truth = _cube((24, 24, 24), (6, 6, 6), 10)
    lo = [6, 6, 6]
    lo[axis] += 2
    pred = _cube((24, 24, 24), (lo[0], lo[1], lo[2]), 10)
    [(_, dice, hd95)] = case_metrics(pred, truth, spacing, 2)
    assert dice == pytest.approx(0.8)
    assert hd95 == pytest.approx(expected_mm, rel=1e-6)


def test_empty_structures_follow_the_documented_convention() -> None:
    truth = _cube((12, 12, 12), (2, 2, 2), 4)
    empty = np.zeros_like(truth)
    # class 1 missed entirely, class 2 absent from both
    [(_, d1, h1), (_, d2, h2)] = case_metrics(empty, truth, (1.0, 1.0, 1.0), 3)
    assert d1 == 0.0 and math.isinf(h1)
    assert d2 == 1.0 and h2 == 0.0
    # class 1 predicted where there is none: also Dice 0 and infinite distance
    [(_, d1b, h1b)] = case_metrics(truth, empty, (1.0, 1.0, 1.0), 2)
    assert d1b == 0.0 and math.isinf(h1b)


def test_mismatched_shapes_and_out_of_range_labels_are_input_errors() -> None:
    with pytest.raises(InputError, match="shape"):
        case_metrics(np.zeros((4, 4, 4)), np.zeros((4, 4, 5)), (1.0, 1.0, 1.0), 2)
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        case_metrics(np.full((4, 4, 4), 2), np.zeros((4, 4, 4)), (1.0, 1.0, 1.0), 2)


def test_summary_statistics_csv_and_table(tmp_path: Path) -> None:
    rows = [
        CaseMetrics("a", "liver", 0.9, 2.0),
        CaseMetrics("b", "liver", 0.7, 4.0),
        CaseMetrics("a", "tumour", 0.0, math.inf),
        CaseMetrics("b", "tumour", 0.5, 3.0),
    ]
    liver, tumour = summarise(rows, ["liver", "tumour"])
    assert (liver.n, liver.dice_mean, liver.dice_sd) == (2, pytest.approx(0.8), pytest.approx(0.1))
    assert (liver.hd95_mean, liver.hd95_sd, liver.n_inf) == (pytest.approx(3.0), pytest.approx(1.0), 0)
    assert tumour.hd95_mean == pytest.approx(3.0) and tumour.n_inf == 1
    path = write_csv(rows, tmp_path / "sub" / "m.csv")
    with path.open() as fh:
        read = list(csv.DictReader(fh))
    assert [r["case"] for r in read] == ["a", "b", "a", "b"]
    assert list(read[0]) == ["case", "class", "dice", "hd95_mm"]
    assert float(read[1]["dice"]) == pytest.approx(0.7) and read[2]["hd95_mm"] == "inf"
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    table = format_summary(EvaluationResult("val", rows, [liver, tumour]))
    assert "liver" in table and "0.8000 ± 0.1000" in table and "3.00 ± 1.00" in table


def _write_msd(root: Path, n_train: int, with_labels_ts: bool) -> Path:
    """A tiny MSD folder of cubes (no network needed), optionally with labelsTs."""
    affine = np.diag([1.5, 1.5, 3.0, 1.0])
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    training, test = [], []
    for i in range(n_train):
        lab = _cube((12, 12, 8), (2 + i % 3, 2, 2), 4).astype(np.uint8)
        nib.save(nib.Nifti1Image(lab.astype(np.int16) * 100, affine), root / "imagesTr" / f"c{i}.nii.gz")
        nib.save(nib.Nifti1Image(lab, affine), root / "labelsTr" / f"c{i}.nii.gz")
        training.append({"image": f"./imagesTr/c{i}.nii.gz", "label": f"./labelsTr/c{i}.nii.gz"})
    lab = _cube((12, 12, 8), (3, 3, 2), 4).astype(np.uint8)
    nib.save(nib.Nifti1Image(lab.astype(np.int16) * 100, affine), root / "imagesTs" / "t0.nii.gz")
    if with_labels_ts:
        nib.save(nib.Nifti1Image(lab, affine), root / "labelsTs" / "t0.nii.gz")
    test.append("./imagesTs/t0.nii.gz")
    meta = {"name": "cubes", "labels": {"0": "background", "1": "liver"}, "modality": {"0": "CT"}}
    (root / "dataset.json").write_text(json.dumps({**meta, "training": training, "test": test}))
    return root


def test_split_selection_matches_the_training_split(tmp_path: Path) -> None:
    from medfcn.data.msd import load_datalist, split_datalist

    root = _write_msd(tmp_path / "ds", 10, with_labels_ts=True)
    val = select_cases(root, "val", seed=3)
    expected = split_datalist(load_datalist(root)["training"], val_fraction=0.2, seed=3)[1]
    assert [v["image"] for v in val] == [e["image"] for e in expected] and len(val) == 2
    assert len(select_cases(root, "all")) == 10
    [test] = select_cases(root, "test")
    assert test["label"].endswith("labelsTs/t0.nii.gz")
    with pytest.raises(InputError, match="unknown split"):
        select_cases(root, "train")  # type: ignore[arg-type]
    bare = _write_msd(tmp_path / "bare", 3, with_labels_ts=False)
    with pytest.raises(DataError, match="no labelled held-out"):
        select_cases(bare, "test")


def test_evaluate_end_to_end_on_the_trained_bundle(
    trained_bundle: Path, synthetic_dataset: Path, tmp_path: Path
) -> None:
    """The real pipeline: the trained bundle segments the held-out cases; metrics are sane and consistent."""
    from medfcn.engine.inference import Segmenter

    seg = Segmenter(trained_bundle, device="cpu", keep_probabilities=False)
    result = evaluate(seg, synthetic_dataset, split="val", output=tmp_path / "m.csv", progress=False)
    n_val = len(select_cases(synthetic_dataset, "val"))
    fg = [n for k, n in sorted(seg.class_names.items()) if k != 0]
    assert not result.failed
    assert len(result.rows) == n_val * len(fg)
    assert {r.class_name for r in result.rows} == set(fg)
    assert all(0.0 <= r.dice <= 1.0 and (r.hd95_mm >= 0.0) for r in result.rows)
    with (tmp_path / "m.csv").open() as fh:
        assert len(list(csv.DictReader(fh))) == len(result.rows)
    # Recompute one case by hand from the segmenter's own output: evaluate adds nothing of its own.
    item = select_cases(synthetic_dataset, "val")[0]
    pred = seg(item["image"])
    truth = np.asarray(nib.load(item["label"]).dataobj).astype(np.int64)
    spacing = np.sqrt((pred.affine[:3, :3] ** 2).sum(axis=0))
    again = case_metrics(pred.label[0].numpy(), truth, spacing.tolist(), len(fg) + 1)
    first = [r for r in result.rows if item["image"].endswith(r.case + ".nii.gz")]
    assert [round(r.dice, 6) for r in first] == [round(d, 6) for _, d, _ in again]
