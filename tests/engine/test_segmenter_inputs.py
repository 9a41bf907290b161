"""Segmenter inputs in memory (nibabel, SimpleITK, (array, affine)) and a finished rerun that loads no model."""

from __future__ import annotations

import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bundle"))
from _zoo import spleen_like

from medfcn.bundle import weights as weights_mod
from medfcn.cli.main import app
from medfcn.data.synthetic import make_phantom
from medfcn.engine.inference import Segmenter, segment_folder
from medfcn.errors import BundleError, InputError

runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return spleen_like(tmp_path_factory.mktemp("zoo") / "spleen_ct_segmentation", seed=3)


@pytest.fixture(scope="module")
def scan(tmp_path_factory: pytest.TempPathFactory) -> Path:
    ph = make_phantom((26, 24, 10), spacing=(1.4, 1.7, 3.2), seed=5, orientation="random",
                      max_oblique_deg=8.0, noise_hu=0.0)
    path = tmp_path_factory.mktemp("scan") / "ct.nii.gz"
    nib.save(nib.Nifti1Image(ph.image, ph.affine), str(path))
    return path


def test_nibabel_simpleitk_and_array_affine_give_the_files_result(bundle: Path, scan: Path) -> None:
    seg = Segmenter(bundle, device="cpu")
    ref = seg(scan)
    img = nib.load(str(scan))
    sources = {
        "nibabel": img,
        "simpleitk": sitk.ReadImage(str(scan)),
        "array": (np.asanyarray(img.dataobj), img.affine),
        "tensor": (torch.as_tensor(np.asanyarray(img.dataobj)), torch.as_tensor(img.affine)),
    }
    for kind, source in sources.items():
        pred = seg(source)
        assert np.allclose(pred.affine, ref.affine, atol=1e-4), kind
        assert torch.equal(pred.label, ref.label), kind
        assert torch.allclose(pred.probabilities, ref.probabilities, atol=1e-5), kind
    assert np.asanyarray(img.dataobj).shape == (26, 24, 10), "the nibabel image is not modified"


def test_unusable_objects_are_named_not_dumped(bundle: Path) -> None:
    seg = Segmenter(bundle, device="cpu")
    big = {"patient": "x" * 5000}
    with pytest.raises(InputError, match=r"cannot segment a builtins.dict; pass a file path") as err:
        seg(big)
    assert len(str(err.value)) < 300 and "xxxx" not in str(err.value)
    with pytest.raises(InputError, match=r"affine must be a 4x4 matrix"):
        seg((np.zeros((8, 8, 8), np.float32), np.eye(3)))


def test_a_finished_rerun_loads_no_model_and_says_already_done(
    bundle: Path, scan: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scans = tmp_path / "scans"
    scans.mkdir()
    for name in ("a", "b"):
        (scans / f"{name}.nii.gz").write_bytes(scan.read_bytes())
    out = tmp_path / "out"
    first = segment_folder(bundle, scans, out, device="cpu", progress=False)
    assert first.ok == 2 and first.already_done == 0

    def no_loading(*args: object, **kwargs: object) -> None:
        raise AssertionError("a rerun with nothing to do must not load the model")

    monkeypatch.setattr(weights_mod, "load_network", no_loading)
    again = segment_folder(bundle, scans, out, device="cpu", progress=False)
    assert again.ok == 2 and again.already_done == 2 and again.failed == 0
    result = runner.invoke(app, ["infer", "--bundle", str(bundle), "--input", str(scans), "--output", str(out),
                                 "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert "0 ok, 2 already done, 0 failed" in result.output

    (scans / "c.nii.gz").write_bytes(scan.read_bytes())  # one new case: now the weights must load
    with pytest.raises(AssertionError, match="must not load"):
        segment_folder(bundle, scans, out, device="cpu", progress=False)


def test_lazy_segmenter_still_checks_for_weights_up_front(tmp_path: Path) -> None:
    bare = spleen_like(tmp_path / "b", form="none")
    with pytest.raises(BundleError, match="has no weights"):
        Segmenter(bare, device="cpu", lazy=True)
