"""Zoo-shaped bundles through ``medfcn evaluate`` and ``medfcn export`` (UNet, SegResNet, two-channel)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _datasets_support import write_msd, write_nnunet_raw
from _zoo import segresnet_like, spleen_like, two_channel

from medfcn.bundle.export import export_bundle
from medfcn.cli.main import app
from medfcn.engine.evaluation import evaluate
from medfcn.engine.inference import Segmenter

runner = CliRunner()

CASES = {
    # bundle maker, dataset maker, foreground class names the evaluation must report
    "spleen": (spleen_like, lambda p: write_msd(p, binary=True), {"spleen"}),
    "segresnet": (segresnet_like, lambda p: write_msd(p), {"class_1", "class_2"}),
    "two_channel": (two_channel, lambda p: write_nnunet_raw(p, cases=2, test=0, binary=True), {"lesion"}),
}


@pytest.mark.parametrize("kind", sorted(CASES))
def test_evaluate_and_export_a_zoo_bundle(kind: str, tmp_path: Path) -> None:
    make_bundle, make_data, classes = CASES[kind]
    bundle = make_bundle(tmp_path / kind)
    data = make_data(tmp_path / "data")

    result = evaluate(bundle, data, split="all", device="cpu", progress=False)
    assert not result.failed, result.failed
    assert {r.class_name for r in result.rows} == classes
    assert len(result.rows) == 2 * len(classes) and all(0.0 <= r.dice <= 1.0 for r in result.rows)

    cli = runner.invoke(app, ["export", "--bundle", str(bundle)])
    assert cli.exit_code == 0, cli.output
    assert (bundle / "models" / "model.ts").is_file()
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert meta["name"] == json.loads((bundle / "configs" / "metadata.json").read_text())["name"]

    # The TorchScript file alone (as a zoo bundle may ship it) predicts what the checkpoint predicts.
    image = data / "imagesTr" / ("case_000_0000.nii.gz" if kind == "two_channel" else "ph_0.nii.gz")
    source = [image, image.with_name("case_000_0001.nii.gz")] if kind == "two_channel" else image
    eager = Segmenter(bundle, device="cpu")(source).probabilities
    (bundle / "models" / "model.pt").unlink()
    scripted = Segmenter(bundle, device="cpu")
    assert scripted.weights == "models/model.ts"
    assert torch.allclose(scripted(source).probabilities, eager, atol=1e-4)


def test_export_result_is_checked_against_the_checkpoint(tmp_path: Path) -> None:
    bundle = spleen_like(tmp_path / "spleen", form="model_key")  # {"model": state_dict}, UNet: sizes / 4
    result = export_bundle(bundle)
    [ts] = result.exports
    assert ts.format == "torchscript" and ts.max_abs_diff is not None and ts.tolerance is not None and ts.max_abs_diff <= ts.tolerance
    assert ts.input_shape is not None and all(s % 4 == 0 for s in ts.input_shape[2:])
