"""bundles/hippocampus: a real-MR MONAI bundle that ships trained weights (MSD Task04, 200 cases).

The shipped ``models/model.pt`` is committed: every test here reads it, none trains. The real cases come from
``../shared/data/msd-hippocampus`` (tests skip, naming that folder, where it is missing).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from medfcn.cli.main import app

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _hippocampus_support import HIPPOCAMPUS_BUNDLE, require_hippocampus_data

runner = CliRunner()
CONFIGS = HIPPOCAMPUS_BUNDLE / "configs"
WEIGHTS = HIPPOCAMPUS_BUNDLE / "models" / "model.pt"
REPO = HIPPOCAMPUS_BUNDLE.parents[1]


def _json(name: str) -> dict:
    return json.loads((CONFIGS / name).read_text(encoding="utf-8"))


def _network() -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    return parser.get_parsed_content("network_def")


def test_layout_licences_and_class_table() -> None:
    for name in ("inference.json", "train.json", "evaluate.json", "multi_gpu_train.json", "metadata.json", "logging.conf"):
        assert (CONFIGS / name).is_file(), name
    assert (HIPPOCAMPUS_BUNDLE / "LICENSE").is_file() and (HIPPOCAMPUS_BUNDLE / "docs" / "README.md").is_file()
    licence = (HIPPOCAMPUS_BUNDLE / "docs" / "data_license.txt").read_text(encoding="utf-8")
    assert "CC BY-SA 4.0" in licence and "Vanderbilt" in licence
    meta = _json("metadata.json")
    channels = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
    assert channels == {"0": "background", "1": "anterior", "2": "posterior"}
    assert _json("train.json")["class_names"] == ["anterior", "posterior"]
    classes = meta["medfcn"]["classes"]
    for value, name in (("1", "anterior"), ("2", "posterior")):
        entry = classes[value]
        assert entry["name"] == name
        assert entry["type"] == ["SCT", "5366008", "Hippocampus"]  # SNOMED CT hippocampus
        low, high = entry["volume_ml"]
        assert 0 < low < high < 10
    assert meta["network_data_format"]["inputs"]["image"]["modality"] == "MR"


def test_mr_preprocessing_has_no_hu_window_and_normalises_per_image() -> None:
    infer = _json("inference.json")
    targets = [t["_target_"] for t in infer["preprocessing"]["transforms"]]
    assert "ScaleIntensityRanged" not in targets and "hu_window" not in infer
    assert "NormalizeIntensityd" in targets
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    norm = next(t for t in parser.get_parsed_content("preprocessing").transforms if type(t).__name__ == "NormalizeIntensityd")
    # scale invariance: the same anatomy at uint8 scale and at a 1000x larger float scale gives the same input
    x = torch.rand(1, 9, 10, 11)
    a = norm({"image": (x * 255).round()})["image"]
    b = norm({"image": (x * 255).round() * 1000.0})["image"]
    torch.testing.assert_close(torch.as_tensor(a), torch.as_tensor(b), rtol=1e-4, atol=1e-4)


def test_shipped_weights_are_small_and_load_strictly() -> None:
    assert WEIGHTS.is_file(), f"{WEIGHTS} must be committed (the bundle ships its weights)"
    assert WEIGHTS.stat().st_size <= 5 * 1024 * 1024
    state = torch.load(WEIGHTS, map_location="cpu", weights_only=True)
    net = _network()
    net.load_state_dict(state, strict=True)
    out = net.eval()(torch.zeros(1, 1, 37, 50, 33))
    assert out.shape == (1, 3, 37, 50, 33)


def test_eval_metrics_hold_cross_validated_figures() -> None:
    meta = _json("metadata.json")
    metrics = meta["eval_metrics"]
    assert metrics, "eval_metrics must hold the cross-validated figures"
    assert all(v is not None for v in metrics.values())
    for key in ("cv_anterior_dice", "cv_posterior_dice"):
        assert 0.8 < float(metrics[key]) <= 1.0, key
    # the figures are the recorded cross-validation of the shipped configuration, not typed in by hand
    cv = json.loads((REPO / "benchmarks" / "results" / "hippocampus" / "fcn" / "cv.json").read_text())
    assert cv["complete"] and cv["folds_scored"] == [0, 1, 2, 3, 4]
    for name in ("anterior", "posterior"):
        assert metrics[f"cv_{name}_dice"] == round(cv["mean_over_folds"][name]["dice"], 4)
        assert metrics[f"cv_{name}_hd95_mm"] == round(cv["mean_over_folds"][name]["hd95_mm"], 2)


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three real hippocampus MR images (one uint8, the rest float32) in a scan folder."""
    data = require_hippocampus_data()
    folder = tmp_path_factory.mktemp("hippo-scans")
    for name in ("hippocampus_001", "hippocampus_003", "hippocampus_004"):
        img = nib.load(data / "imagesTr" / f"{name}.nii.gz")
        nib.save(img, folder / f"{name}.nii.gz")
    return folder


def test_infer_segments_real_mr_with_the_shipped_weights(scans: Path, tmp_path: Path) -> None:
    data = require_hippocampus_data()
    out = tmp_path / "out"
    before = {p.name: p.read_bytes() for p in scans.iterdir()}
    result = runner.invoke(
        app, ["infer", "--bundle", str(HIPPOCAMPUS_BUNDLE), "--input", str(scans), "--output", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert {p.name: p.read_bytes() for p in scans.iterdir()} == before  # input untouched
    case_dirs = sorted(p for p in out.iterdir() if p.is_dir())
    assert len(case_dirs) == 3
    for case_dir in case_dirs:
        source = nib.load(scans / f"{case_dir.name}.nii.gz")
        mask = nib.load(case_dir / "mask.nii.gz")
        labels = np.asarray(mask.dataobj)
        assert labels.shape == source.shape
        np.testing.assert_allclose(mask.affine, source.affine, atol=1e-5)
        assert set(np.unique(labels)) <= {0, 1, 2}
        truth = np.asarray(nib.load(data / "labelsTr" / f"{case_dir.name}.nii.gz").dataobj).round()
        for c in (1, 2):  # the shipped model really segments the hippocampus
            inter = np.logical_and(labels == c, truth == c).sum()
            assert 2 * inter / ((labels == c).sum() + (truth == c).sum()) > 0.7, (case_dir.name, c)
        stats = json.loads((case_dir / "stats.json").read_text())
        for name in ("anterior", "posterior"):
            volume = stats["classes"][name]["volume_ml"]
            assert volume == pytest.approx(float((labels == (1 if name == "anterior" else 2)).sum()) / 1000.0)
            assert 0.5 < volume < 4.0
        assert (case_dir / "preview.png").is_file()
    header = (out / "summary.csv").read_text().splitlines()[0].split(",")
    assert "anterior_ml" in header and "posterior_ml" in header


@pytest.mark.slow
def test_shipped_weights_score_mean_dice_above_085_on_ten_real_cases(tmp_path: Path) -> None:
    from medfcn.engine.evaluation import evaluate

    data = require_hippocampus_data()
    meta = json.loads((data / "dataset.json").read_text(encoding="utf-8"))
    items = meta["training"][::20][:10]  # spread over the folder
    meta["training"] = [{k: str((data / v).resolve()) for k, v in i.items()} for i in items]
    (tmp_path / "dataset.json").write_text(json.dumps(meta), encoding="utf-8")
    result = evaluate(HIPPOCAMPUS_BUNDLE, tmp_path, split="all", device="cpu", progress=False)
    assert not result.failed and len({r.case for r in result.rows}) == 10
    dice = {s.class_name: s.dice_mean for s in result.summary}
    assert np.mean(list(dice.values())) >= 0.85, dice


@pytest.mark.slow
def test_monai_bundle_run_segments_with_the_shipped_weights(scans: Path, tmp_path: Path) -> None:
    scan = scans / "hippocampus_004.nii.gz"
    out = tmp_path / "out"
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", "configs/inference.json",
        "--meta_file", "configs/metadata.json",
        "--bundle_root", str(HIPPOCAMPUS_BUNDLE),
        "--output_dir", str(out),
        "--dataset#data", f"[{{'image': '{scan}'}}]",
        "--device", "$torch.device('cpu')",
    ]  # fmt: skip
    result = subprocess.run(cmd, cwd=HIPPOCAMPUS_BUNDLE, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-6000:]
    written = sorted(out.rglob("*.nii*"))
    assert len(written) == 1
    mask = nib.load(written[0])
    assert np.asarray(mask.dataobj).squeeze().shape == nib.load(scan).shape
    assert set(np.unique(np.asarray(mask.dataobj))) == {0, 1, 2}
