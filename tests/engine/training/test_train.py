"""train(): the bundle's train.json through medfcn.engine.training.train and the ``medfcn train`` CLI."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medfcn.cli.main import app
from medfcn.engine.training import train
from medfcn.errors import DataError

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from _liver_support import TINY_TRAINING, copy_liver_bundle

runner = CliRunner()


def _net_from_bundle(bundle: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    return parser.get_parsed_content("network_def")


@pytest.fixture(scope="module")
def short_run(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> tuple[Path, object]:
    """Two epochs tracked in a local MLflow store, with an override and bf16 autocast on the CPU."""
    base = tmp_path_factory.mktemp("train")
    bundle = copy_liver_bundle(base / "liver")
    uri = f"sqlite:///{base / 'mlflow.db'}"
    result = train(
        bundle,
        data_dir=synthetic_dataset,
        epochs=3,
        val_interval=2,
        device="cpu",
        amp=True,
        output_dir=base / "run",
        tracking_uri=uri,
        experiment="unit",
        quiet=True,
        overrides={**TINY_TRAINING, "learning_rate": 0.003},
    )
    return bundle, result


def test_train_leaves_best_weights_metrics_and_a_resumable_checkpoint(short_run: tuple[Path, object]) -> None:
    bundle, result = short_run
    model = result.model_path  # type: ignore[attr-defined]
    assert model == result.output_dir / "models" / "model.pt"  # type: ignore[attr-defined]
    assert not (bundle / "models" / "model.pt").exists()  # --output: the bundle is not written
    state = torch.load(model, map_location="cpu", weights_only=True)
    net = _net_from_bundle(bundle)
    assert net.load_state_dict(state, strict=True)  # a plain state dict of the bundle's network_def
    metrics = json.loads((result.output_dir / "metrics.json").read_text())  # type: ignore[attr-defined]
    assert metrics["epochs"] == 3
    assert [r["epoch"] for r in metrics["history"]] == [2, 3]  # every 2 epochs and after the last
    for row in metrics["history"]:
        for key in ("val_mean_dice", "val_liver_dice", "val_tumour_dice", "train_loss", "lr"):
            assert key in row and row[key] == row[key]  # present and not NaN
        assert 0.0 <= row["val_liver_dice"] <= 1.0
        assert row["val_mean_dice"] == pytest.approx((row["val_liver_dice"] + row["val_tumour_dice"]) / 2, abs=1e-6)
    best = max(metrics["history"], key=lambda r: r["val_mean_dice"])
    assert metrics["best_epoch"] == best["epoch"] and metrics["best_mean_dice"] == best["val_mean_dice"]
    last = torch.load(result.output_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)  # type: ignore[attr-defined]
    assert set(last) == {"model", "optimizer", "lr_scheduler", "trainer", "state"}
    assert last["trainer"]["iteration"] // last["trainer"]["epoch_length"] == 3  # ignite keeps iterations
    assert last["state"]["best_metric"] == pytest.approx(metrics["best_mean_dice"])
    assert {"python", "numpy", "torch"} <= set(last["state"]["rng"])
    executed = json.loads((result.output_dir / "config_executed.json").read_text())  # type: ignore[attr-defined]
    assert executed["learning_rate"] == 0.003  # the override reached the config
    assert executed["pixdim"] == [1.5, 1.5, 2.0]  # macros from inference.json resolved
    assert not any(p.name.endswith(".tmp") for p in result.output_dir.rglob("*"))  # type: ignore[attr-defined]


def test_mlflow_run_has_params_tags_epoch_metrics_and_artifacts(short_run: tuple[Path, object]) -> None:
    from mlflow.tracking import MlflowClient

    _, result = short_run
    client = MlflowClient(tracking_uri=result.tracking_uri)  # type: ignore[attr-defined]
    run = client.get_run(result.run_id)  # type: ignore[attr-defined]
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["learning_rate"] == "0.003" and params["epochs"] == "3" and params["amp"] == "true"
    assert params["optimizer"] == "torch.optim.AdamW" and params["loss.include_background"] == "false"
    assert all(len(v) <= 500 for v in params.values())
    assert not [k for k, v in params.items() if "/" in v], "no paths in params"
    tags = run.data.tags
    for key in ("medfcn.version", "monai.version", "torch.version", "bundle.name", "dataset_fingerprint"):
        assert tags.get(key), key
    assert json.loads(tags["dataset_cases"])["imagesTr"] == 6
    history = {k: client.get_metric_history(run.info.run_id, k) for k in ("train_loss", "lr", "val_liver_dice")}
    assert [m.step for m in history["train_loss"]] == [1, 2, 3]
    assert [m.step for m in history["lr"]] == [1, 2, 3]
    assert [m.step for m in history["val_liver_dice"]] == [2, 3]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config_executed.json", "metadata.json", "metrics.json", "model.pt"} <= artifacts


def test_missing_dataset_says_how_to_get_one(tmp_path: Path) -> None:
    bundle = copy_liver_bundle(tmp_path / "liver")
    with pytest.raises(DataError, match=r"medfcn data synth.*medfcn data download Task03_Liver"):
        train(bundle, data_dir=tmp_path / "nowhere", epochs=1, tracking=False)
    result = runner.invoke(app, ["train", "--bundle", str(bundle), "--data", str(tmp_path / "nowhere")])
    assert result.exit_code == 1
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: no MSD dataset at") and "Traceback" not in result.output


def test_resume_without_checkpoint_is_a_clear_error(tmp_path: Path, synthetic_dataset: Path) -> None:
    bundle = copy_liver_bundle(tmp_path / "liver")
    result = runner.invoke(
        app, ["train", "--bundle", str(bundle), "--data", str(synthetic_dataset), "--resume", "--no-tracking"]
    )
    assert result.exit_code == 1 and "nothing to resume" in result.output


def test_cli_rejects_bad_options(tmp_path: Path, synthetic_dataset: Path) -> None:
    bundle = copy_liver_bundle(tmp_path / "liver")
    base = ["train", "--bundle", str(bundle), "--data", str(synthetic_dataset)]
    assert runner.invoke(app, [*base, "--epochs", "0"]).exit_code == 2
    result = runner.invoke(app, [*base, "--override", "oops", "--no-tracking"])
    assert result.exit_code == 1 and "key=value" in result.output
    result = runner.invoke(app, [*base, "--device", "cuda:7", "--no-tracking"])
    assert result.exit_code == 1 and ("CUDA" in result.output or "cuda" in result.output)


def test_train_help_lists_every_option() -> None:
    result = runner.invoke(app, ["train", "--help"], terminal_width=200)
    assert result.exit_code == 0
    for option in ("--bundle", "--data", "--epochs", "--device", "--amp", "--output", "--resume", "--seed",
                   "--override", "--tracking-uri", "--experiment", "--no-tracking"):  # fmt: skip
        assert option in result.output, option


# ------------------------------------------------------------------------------------------ resume


def _medfcn(*args: str, **kwargs: object) -> subprocess.Popen[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(  # type: ignore[call-overload]
        [sys.executable, "-m", "medfcn", *args], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env=env, **kwargs,
    )  # fmt: skip


def _epoch_of(checkpoint: Path) -> int:
    try:
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)["trainer"]
        return int(state["iteration"]) // int(state["epoch_length"])
    except Exception:  # being replaced right now (the rename is atomic, but the file may be absent)
        return 0


@pytest.mark.slow
def test_a_killed_run_resumes_where_it_stopped(tmp_path: Path, synthetic_dataset: Path) -> None:
    bundle = copy_liver_bundle(tmp_path / "liver")
    out = tmp_path / "run"
    overrides = [f"--override={k}={json.dumps(v)}" for k, v in TINY_TRAINING.items()]
    args = ["train", "--bundle", str(bundle), "--data", str(synthetic_dataset), "--epochs", "6",
            "--val-interval", "2", "--device", "cpu", "--output", str(out), "--no-tracking", "--quiet", *overrides]  # fmt: skip
    proc = _medfcn(*args)
    last = out / "checkpoints" / "last.pt"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None and _epoch_of(last) < 3:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be interrupted: " + (proc.stdout.read() if proc.stdout else "")
    proc.send_signal(signal.SIGKILL)  # no clean-up handlers run: a power cut
    proc.wait(timeout=30)
    killed_at = _epoch_of(last)
    assert 3 <= killed_at < 6
    resumed = subprocess.run(
        [sys.executable, "-m", "medfcn", *args, "--resume"], capture_output=True, text=True, timeout=600,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert _epoch_of(last) == 6
    log = resumed.stdout + resumed.stderr
    assert "Epoch[6]" in log and "Epoch[2]" not in log  # continued, not restarted
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 6
    assert [r["epoch"] for r in metrics["history"]] == [2, 4, 6]  # the pre-kill validation is kept
    net = _net_from_bundle(bundle)
    net.load_state_dict(torch.load(out / "models" / "model.pt", map_location="cpu", weights_only=True))
    assert metrics["best_mean_dice"] == max(r["val_mean_dice"] for r in metrics["history"])
