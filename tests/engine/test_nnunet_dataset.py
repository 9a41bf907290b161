"""Train and evaluate on a tiny two-channel nnU-Net v2 raw dataset: channels flow through to in_channels."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _datasets_support import write_nnunet_raw
from _liver_support import TINY_TRAINING, copy_liver_bundle

from medfcn.cli.main import app
from medfcn.engine.evaluation import evaluate
from medfcn.engine.training import train

runner = CliRunner()


@pytest.mark.slow
def test_train_and_evaluate_on_nnunet_raw(tmp_path: Path) -> None:
    data = write_nnunet_raw(tmp_path / "Dataset501_Phantom", cases=3, channels=2, shape=(36, 36, 16), test=0)
    bundle = copy_liver_bundle(tmp_path / "liver")
    train(bundle, data_dir=data, epochs=1, val_interval=1, device="cpu", tracking=False, quiet=True,
          overrides=TINY_TRAINING)
    state = torch.load(bundle / "models" / "model.pt", weights_only=True)
    first = next(v for k, v in state.items() if k.endswith("weight") and v.ndim == 5)
    assert first.shape[1] == 2, "the network was trained on the dataset's two channels"
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    meta = json.loads((bundle / "configs" / "metadata.json").read_text())
    assert config["network_def"]["in_channels"] == 2
    assert meta["network_data_format"]["inputs"]["image"]["num_channels"] == 2

    result = evaluate(bundle, data, split="all", device="cpu", progress=False)
    assert not result.failed
    assert {r.case for r in result.rows} == {"case_000", "case_001", "case_002"}
    assert {r.class_name for r in result.rows} == {"liver", "tumour"}
    assert all(0.0 <= r.dice <= 1.0 for r in result.rows)

    cli = runner.invoke(app, ["evaluate", "--bundle", str(bundle), "--data", str(data), "--split", "val",
                              "--device", "cpu", "--output", str(tmp_path / "metrics.csv")])
    assert cli.exit_code == 0, cli.output
    assert (tmp_path / "metrics.csv").read_text().startswith("case,class,dice,hd95_mm")
