"""Third-party bundles in the model zoo's shapes run through medfcn: infer (NIfTI + DICOM), weights forms."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _zoo import segresnet_like, spleen_like, two_channel

from medfcn.cli.main import app
from medfcn.data.synthetic import make_phantom, write_dicom_series
from medfcn.engine.inference import Segmenter, segment_folder
from medfcn.errors import BundleError, InputError

runner = CliRunner()


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>")
        for p in sorted(root.rglob("*"))
    }


class StepNet(torch.nn.Module):
    """Class 1 where the network input exceeds ``t``, else class 0: geometry errors are the pipeline's."""

    def __init__(self, t: float) -> None:
        super().__init__()
        self.t = t

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = 200.0 * (x[:, :1] - self.t)
        return torch.cat([torch.zeros_like(a), a], dim=1)


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("zoo")
    return {
        "spleen": spleen_like(root / "spleen_ct_segmentation"),
        "segresnet": segresnet_like(root / "segresnet"),
        "two": two_channel(root / "two_channel"),
    }


@pytest.fixture(scope="module")
def scans(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """An oblique anisotropic NIfTI and an LPS DICOM series of 12 slices (tiny)."""
    root = tmp_path_factory.mktemp("scans") / "SCANS"
    (root / "nifti").mkdir(parents=True)
    ph_n = make_phantom((30, 28, 12), spacing=(1.6, 1.6, 3.0), seed=3, orientation="random",
                        max_oblique_deg=10.0, noise_hu=0.0)
    nib.save(nib.Nifti1Image(ph_n.image, ph_n.affine), str(root / "nifti" / "ct_a.nii.gz"))
    ph_d = make_phantom((28, 30, 10), spacing=(1.5, 1.5, 3.0), seed=4, orientation="lps", noise_hu=0.0)
    write_dicom_series(ph_d.image, ph_d.affine, root / "study" / "series", seed=4)
    return {"root": root, "nifti": ph_n, "dicom": ph_d}


def test_spleen_like_bundle_segments_nifti_and_dicom_with_no_stray_files(
    zoo: dict[str, Path], scans: dict[str, object], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    bundle, root = zoo["spleen"], scans["root"]
    assert isinstance(root, Path)
    before_bundle, before_input = _digest(bundle), _digest(root)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # a SaveImaged writing relative paths would land here
    out = tmp_path / "out"
    summary = segment_folder(bundle, root, out, device="cpu", progress=False)
    assert summary.ok == 2 and summary.failed == 0, [(c.id, c.reason) for c in summary.cases]
    assert _digest(bundle) == before_bundle, "the bundle's SaveImaged wrote into the bundle (eval/)"
    assert _digest(root) == before_input and list(cwd.iterdir()) == []
    cases = {p.name: p for p in out.iterdir() if p.is_dir()}
    assert len(cases) == 2
    for case_dir in cases.values():
        done = json.loads((case_dir / "done.json").read_text())
        stats = json.loads((case_dir / "stats.json").read_text())
        assert set(stats["classes"]) == {"spleen"}, "class names come from metadata channel_def"
        assert (case_dir / "preview.png").is_file()
        mask = nib.load(str(case_dir / "mask.nii.gz"))
        ph = scans["dicom"] if stats["case"]["kind"] == "dicom" else scans["nifti"]
        assert mask.shape == ph.image.shape  # type: ignore[attr-defined]
        assert np.allclose(mask.affine, ph.affine, atol=1e-3)  # type: ignore[attr-defined]
        assert set(np.unique(np.asarray(mask.dataobj)).tolist()) <= {0, 1}
        if stats["case"]["kind"] == "dicom":
            assert "seg.dcm" in done["files"]
    run = json.loads((out / "run.json").read_text())
    assert run["bundle"]["name"] == "spleen_ct_segmentation" and run["classes"] == {"0": "background", "1": "spleen"}


def test_masks_land_on_the_source_grid_through_the_bundles_invertd(zoo: dict[str, Path], tmp_path: Path) -> None:
    """A step predictor at 50 HU, an off-centre ball in an oblique anisotropic scan: the mask is the ball."""
    ph = make_phantom((34, 30, 14), spacing=(1.3, 1.7, 3.1), seed=8, orientation="random", max_oblique_deg=12.0)
    ijk = np.indices(ph.image.shape).reshape(3, -1).astype(np.float64)
    world = (ph.affine[:3, :3] @ ijk + ph.affine[:3, 3:4]).T
    centre = ph.affine[:3, :3] @ np.array([12.0, 17.0, 8.0]) + ph.affine[:3, 3]
    ball = (np.linalg.norm(world - centre, axis=1) <= 11.0).reshape(ph.image.shape)
    nib.save(nib.Nifti1Image(np.where(ball, 150.0, -100.0).astype(np.float32), ph.affine), str(tmp_path / "b.nii.gz"))
    t = (50.0 - (-57.0)) / (164.0 - (-57.0))
    seg = Segmenter(zoo["spleen"], device="cpu", network=StepNet(t))
    pred = seg(tmp_path / "b.nii.gz")
    got = pred.label[0].numpy() > 0
    dice = 2 * (got & ball).sum() / (got.sum() + ball.sum())
    assert dice > 0.9, dice  # resampling to 3x3x4 mm and back blurs the edge only
    flipped = 2 * (got[::-1] & ball).sum() / (got.sum() + ball.sum())
    assert flipped < dice - 0.2  # the ball is off-centre: a flipped axis would show
    assert np.allclose(pred.affine, ph.affine, atol=1e-3)


def test_weight_forms_give_the_same_prediction(tmp_path: Path, scans: dict[str, object]) -> None:
    path = scans["root"] / "nifti" / "ct_a.nii.gz"  # type: ignore[operator]
    preds = {}
    for form in ("state_dict", "model_key", "ts_only"):
        seg = Segmenter(spleen_like(tmp_path / form, form=form, seed=7), device="cpu")
        assert seg.weights == ("models/model.ts" if form == "ts_only" else "models/model.pt")
        preds[form] = seg(path).probabilities
    for form in ("model_key", "ts_only"):
        assert torch.allclose(preds[form], preds["state_dict"], atol=1e-5), form


def test_ddp_prefixed_and_foreign_weights(tmp_path: Path) -> None:
    bundle = spleen_like(tmp_path / "b", seed=5)
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, bundle / "models" / "model.pt")
    seg = Segmenter(bundle, device="cpu")
    assert all(torch.equal(v, seg.network.state_dict()[k]) for k, v in state.items())
    torch.save({"optimizer": {"lr": 1.0}}, bundle / "models" / "model.pt")
    with pytest.raises(BundleError, match=r"model\.pt holds no state dict.*'model'"):
        Segmenter(bundle, device="cpu")


def test_segresnet_without_invertd_or_class_names_falls_back_with_warnings(
    zoo: dict[str, Path], scans: dict[str, object], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="medfcn"):
        seg = Segmenter(zoo["segresnet"], device="cpu")
    warned = [r.getMessage() for r in caplog.records if r.name.startswith("medfcn")]
    assert any("no Invertd" in w for w in warned) and any("channel_def" in w for w in warned)
    assert all("\n" not in w for w in warned)
    assert seg.class_names == {0: "background", 1: "class_1", 2: "class_2"}
    ph = scans["nifti"]
    pred = seg(scans["root"] / "nifti" / "ct_a.nii.gz")  # type: ignore[operator]
    assert tuple(pred.label.shape[1:]) == ph.image.shape  # type: ignore[attr-defined]
    assert np.allclose(pred.affine, ph.affine, atol=1e-3)  # type: ignore[attr-defined]
    assert set(np.unique(pred.label.numpy()).tolist()) <= {0, 1, 2}


def test_two_channel_bundle_reads_4d_nifti_and_channel_files(
    zoo: dict[str, Path], scans: dict[str, object], tmp_path: Path
) -> None:
    ph = scans["nifti"]
    image = ph.image  # type: ignore[attr-defined]
    nib.save(nib.Nifti1Image(np.stack([image, 0.5 * image], -1), ph.affine), str(tmp_path / "mr.nii.gz"))  # type: ignore[attr-defined]
    for c, scale in enumerate((1.0, 0.5)):
        nib.save(nib.Nifti1Image(scale * image, ph.affine), str(tmp_path / f"mr_{c:04d}.nii.gz"))  # type: ignore[attr-defined]
    seg = Segmenter(zoo["two"], device="cpu")
    assert seg.in_channels == 2 and seg.weights == "models/model.pt"  # {"model": state_dict}
    a = seg(tmp_path / "mr.nii.gz")
    b = seg([tmp_path / "mr_0000.nii.gz", tmp_path / "mr_0001.nii.gz"])
    assert tuple(a.label.shape[1:]) == image.shape and torch.equal(a.label, b.label)
    with pytest.raises(InputError, match=r"expects 2 input channel\(s\); ct_a.nii.gz has 1.*2-channel image"):
        seg(scans["root"] / "nifti" / "ct_a.nii.gz")  # type: ignore[operator]


def test_infer_cli_and_info_on_a_zoo_bundle(zoo: dict[str, Path], scans: dict[str, object], tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["infer", "--bundle", str(zoo["spleen"]), "--input", str(scans["root"]), "--output", str(out),
            "--device", "cpu", "--quiet"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert len(list(out.glob("*/mask.nii.gz"))) == 2
    info = runner.invoke(app, ["info", "--bundle", str(zoo["spleen"])])
    assert info.exit_code == 0, info.output
    assert "spleen_ct_segmentation 0.5.2" in info.output and "1 spleen" in info.output


def test_no_weights_is_one_line(tmp_path: Path) -> None:
    bundle = spleen_like(tmp_path / "b", form="none")
    with pytest.raises(BundleError, match=r"has no weights .*medfcn bundle download") as err:
        Segmenter(bundle, device="cpu")
    assert "\n" not in str(err.value)
    assert os.listdir(bundle / "models") == []
