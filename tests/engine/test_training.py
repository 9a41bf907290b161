"""Training: the bundle's train.json through medfcn.engine.training.train and the ``medfcn train`` CLI."""

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
from medfcn.engine.training import (
    ClassDice,
    FCNTrainer,
    MetricsWriter,
    autocast_dtype,
    parse_overrides,
    train,
)
from medfcn.errors import DataError, InputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _liver_support import TINY_TRAINING, copy_liver_bundle

runner = CliRunner()


def _net_from_bundle(bundle: Path) -> torch.nn.Module:
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    return parser.get_parsed_content("network_def")


# ------------------------------------------------------------------------------------------ unit pieces


def test_parse_overrides_json_and_strings() -> None:
    got = parse_overrides(["lr=0.01", "patch_size=[64, 64, 32]", "name=abc", "flag=true", "a#b=$@x + 1"])
    assert got == {"lr": 0.01, "patch_size": [64, 64, 32], "name": "abc", "flag": True, "a#b": "$@x + 1"}
    with pytest.raises(InputError, match="key=value"):
        parse_overrides(["no_equals_sign"])


def test_autocast_dtype_rules() -> None:
    assert autocast_dtype("cpu", False) is None
    assert autocast_dtype("cpu", True) == torch.bfloat16
    assert autocast_dtype("cpu", True, "bf16") == torch.bfloat16
    with pytest.raises(InputError, match=r"fp16.*CUDA"):
        autocast_dtype("cpu", True, "fp16")
    with pytest.raises(InputError, match="amp_dtype"):
        autocast_dtype("cpu", True, "int8")


def test_class_dice_counts_empty_class_as_perfect() -> None:
    metric = ClassDice(channel=1, output_transform=lambda x: x)
    metric.reset()
    pred = torch.zeros(3, 4, 4, 4)
    label = torch.zeros(3, 4, 4, 4)
    pred[1, :2] = 1  # 32 voxels predicted
    label[1, :1] = 1  # 16 voxels true, all inside the prediction
    empty = torch.zeros(3, 4, 4, 4)
    metric.update(([pred, empty], [label, empty]))
    assert metric.compute() == pytest.approx((2 * 16 / 48 + 1.0) / 2)


def _tiny_trainer(**kwargs: object) -> FCNTrainer:
    net = torch.nn.Conv3d(1, 2, 1)
    data = [{"image": torch.randn(1, 1, 4, 4, 4), "label": torch.randint(0, 2, (1, 1, 4, 4, 4))}]

    def loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        # A huge loss, so clipping has something to clip.
        return 1e6 * torch.nn.functional.cross_entropy(pred, target[:, 0].long())

    return FCNTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.0),
        loss_function=loss,
        **kwargs,  # type: ignore[arg-type]
    )


def test_gradients_are_clipped_after_the_backward_pass() -> None:
    trainer = _tiny_trainer(grad_clip_norm=1.0)
    trainer.run()
    norm = torch.norm(torch.stack([p.grad.norm() for p in trainer.network.parameters()]))
    assert float(norm) == pytest.approx(1.0, rel=1e-4)
    unclipped = _tiny_trainer(grad_clip_norm=None)
    unclipped.run()
    norm = torch.norm(torch.stack([p.grad.norm() for p in unclipped.network.parameters()]))
    assert float(norm) > 10.0


def test_cpu_bf16_autocast_runs_the_forward_pass_in_bf16() -> None:
    trainer = _tiny_trainer(amp=True, grad_clip_norm=1.0)
    seen: list[torch.dtype] = []
    trainer.network.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.run()
    assert trainer.scaler is None  # bf16 needs no loss scaling
    assert seen == [torch.bfloat16]
    assert all(torch.isfinite(p.grad).all() for p in trainer.network.parameters())


@pytest.mark.cuda
def test_cuda_fp16_uses_a_grad_scaler_and_unscales_before_clipping() -> None:
    net = torch.nn.Conv3d(1, 2, 1).cuda()
    data = [{"image": torch.randn(1, 1, 4, 4, 4), "label": torch.randint(0, 2, (1, 1, 4, 4, 4))}]
    trainer = FCNTrainer(
        device=torch.device("cuda"),
        max_epochs=2,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=lambda p, t: torch.nn.functional.cross_entropy(p.float(), t[:, 0].long()),
        amp=True,
        amp_dtype="fp16",
        grad_clip_norm=0.5,
    )
    seen: list[torch.dtype] = []
    net.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    trainer.run()
    assert isinstance(trainer.scaler, torch.amp.GradScaler)
    assert set(seen) == {torch.float16}
    norm = torch.norm(torch.stack([p.grad.norm() for p in net.parameters()]))
    assert float(norm) <= 0.5 * 1.001 * trainer.scaler.get_scale() or float(norm) <= 0.5 * 1.001


@pytest.mark.cuda
def test_cuda_training_of_the_bundle_with_amp(tmp_path: Path, synthetic_dataset: Path) -> None:
    bundle = copy_liver_bundle(tmp_path / "liver")
    result = train(
        bundle, data_dir=synthetic_dataset, epochs=2, device="cuda", amp=True, tracking=False, quiet=True,
        overrides=TINY_TRAINING,
    )  # fmt: skip
    assert result.metrics["epochs"] == 2 and result.model_path.is_file()


def test_metrics_writer_keeps_history_of_a_resumed_run(tmp_path: Path) -> None:
    from ignite.engine import Engine

    trainer, evaluator = Engine(lambda e, b: {"loss": 0.5}), Engine(lambda e, b: None)
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"history": [{"epoch": 1, "val_mean_dice": 0.2}, {"epoch": 9, "val_mean_dice": 0.9}]}))
    writer = MetricsWriter(path, evaluator, class_names=["liver"], resume=True)
    writer.attach(trainer)
    trainer.state.epoch = 2  # a run resumed after epoch 2: the stale epoch-9 row goes
    writer._started(trainer)
    assert [r["epoch"] for r in writer.history] == [1]


# ------------------------------------------------------------------------------------------ train()


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


def test_a_non_finite_gradient_skips_the_step_instead_of_poisoning_the_weights() -> None:
    net = torch.nn.Conv3d(1, 2, 1)
    before = [p.detach().clone() for p in net.parameters()]
    data = [{"image": torch.randn(1, 1, 4, 4, 4), "label": torch.zeros(1, 1, 4, 4, 4)}]
    trainer = FCNTrainer(
        device=torch.device("cpu"),
        max_epochs=1,
        train_data_loader=data,
        network=net,
        optimizer=torch.optim.SGD(net.parameters(), lr=0.1),
        loss_function=lambda p, t: (p * float("nan")).sum(),
        grad_clip_norm=12.0,
    )
    trainer.run()
    assert trainer.skipped_steps == 1
    for p, b in zip(net.parameters(), before, strict=True):
        assert torch.equal(p.detach(), b)
