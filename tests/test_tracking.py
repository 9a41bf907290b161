"""MLflow tracking: helpers, and a training logged to a real ``mlflow server`` started on 127.0.0.1."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from medfcn.cli.main import app
from medfcn.tracking import (
    NoTracking,
    RunTracker,
    dataset_fingerprint,
    default_tracking_uri,
    flatten_params,
    redact_uri,
    start_tracking,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[0]))
from _liver_support import TINY_TRAINING, copy_liver_bundle


def test_flatten_params_names_and_limits() -> None:
    flat = flatten_params(
        {"optimizer": {"_target_": "torch.optim.AdamW", "lr": 0.002}, "patch": [96, 96, 96], "amp": True,
         "note": "x" * 900, "none": None}
    )
    assert flat == {
        "optimizer": "torch.optim.AdamW",
        "optimizer.lr": "0.002",
        "patch": "[96, 96, 96]",
        "amp": "true",
        "note": "x" * 500,
        "none": "null",
    }


def test_default_store_is_sqlite_in_the_working_directory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert default_tracking_uri() == f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://mlflow.example.org:5000")
    assert default_tracking_uri() == "http://mlflow.example.org:5000"


def test_credentials_never_leave_the_uri() -> None:
    assert redact_uri("https://alice:s3cret@mlflow.example.org:8443/x") == "https://mlflow.example.org:8443/x"
    assert redact_uri("sqlite:////data/mlflow.db") == "sqlite:////data/mlflow.db"


def test_dataset_fingerprint_hashes_names_without_listing_them(synthetic_dataset: Path) -> None:
    fp = dataset_fingerprint(synthetic_dataset)
    assert json.loads(fp["dataset_cases"]) == {"imagesTr": 6, "labelsTr": 6, "imagesTs": 2}
    assert len(fp["dataset_fingerprint"]) == 16
    assert "liver_" not in json.dumps(fp)
    assert dataset_fingerprint(synthetic_dataset) == fp  # stable


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real MLflow tracking server (SQLite backend, served artifacts) on a free local port."""
    root = tmp_path_factory.mktemp("mlflow-server")
    port = _free_port()
    cmd = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
           "--artifacts-destination", str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1"]  # fmt: skip
    log = (root / "server.log").open("w")
    proc = subprocess.Popen(cmd, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"mlflow server exited: {(root / 'server.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("mlflow server did not answer within 90 s")
    yield url
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.mark.slow
def test_training_logs_to_an_mlflow_server(mlflow_server: str, tmp_path: Path, synthetic_dataset: Path) -> None:
    from mlflow.tracking import MlflowClient

    bundle = copy_liver_bundle(tmp_path / "liver")
    overrides = [f"--override={k}={json.dumps(v)}" for k, v in TINY_TRAINING.items()]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    result = subprocess.run(
        [sys.executable, "-m", "medfcn", "train", "--bundle", str(bundle), "--data", str(synthetic_dataset),
         "--epochs", "2", "--val-interval", "1", "--device", "cpu", "--tracking-uri", mlflow_server,
         "--experiment", "server-test", "--quiet", *overrides],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    assert f"MLflow:       {mlflow_server}" in result.stdout
    assert not (tmp_path / "mlflow.db").exists()  # nothing went to the local default store
    client = MlflowClient(tracking_uri=mlflow_server)
    exp = client.get_experiment_by_name("server-test")
    assert exp is not None
    [run] = client.search_runs([exp.experiment_id])
    assert run.info.status == "FINISHED"
    assert run.data.params["epochs"] == "2" and run.data.tags["bundle.name"] == "liver"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_mean_dice")] == [1, 2]
    assert {"metadata.json", "metrics.json", "model.pt"} <= {a.path for a in client.list_artifacts(run.info.run_id)}


def test_no_tracking_writes_no_store(tmp_path: Path, synthetic_dataset: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    bundle = copy_liver_bundle(tmp_path / "liver")
    overrides = [f"--override={k}={json.dumps(v)}" for k, v in TINY_TRAINING.items()]
    result = CliRunner().invoke(
        app, ["train", "--bundle", str(bundle), "--data", str(synthetic_dataset), "--epochs", "1", "--device", "cpu",
              "--no-tracking", "--quiet", *overrides],
    )
    assert result.exit_code == 0, result.output
    assert "MLflow:" not in result.output and not (tmp_path / "mlflow.db").exists()
    assert not (bundle / "runs" / "train" / "tracking.json").exists()


def test_tracking_off_is_a_tracker_that_does_nothing(tmp_path: Path) -> None:
    tracker = start_tracking(
        False, tmp_path, tracking_uri=None, experiment="e", run_name=None, bundle_name="liver", resume=False
    )
    assert isinstance(tracker, NoTracking)
    assert tracker.settings(params={"epochs": 1}, metadata={}, data_dir=tmp_path, artifacts=[]) is None
    tracker.record_config({"epochs": 1})
    assert tracker.finish() is None and tracker.tracking_uri is None and tracker.run_id is None
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_tracked_run_records_its_store_without_credentials(tmp_path: Path, synthetic_dataset: Path) -> None:
    uri = f"https://user:secret@mlflow.example.org/{tmp_path.name}"
    tracker = start_tracking(
        True, tmp_path / "run", tracking_uri=uri, experiment="e", run_name="r1", bundle_name="liver", resume=False
    )
    assert isinstance(tracker, RunTracker) and tracker.tracking_uri == uri
    record = json.loads((tmp_path / "run" / "tracking.json").read_text())
    assert record == {"tracking_uri": f"https://mlflow.example.org/{tmp_path.name}", "experiment": "e", "run_name": "r1"}
    settings = tracker.settings(
        params={"optimizer": {"_target_": "torch.optim.AdamW", "lr": 0.01}}, metadata={"version": "1.0"},
        data_dir=synthetic_dataset, artifacts=["metrics.json"],
    )  # fmt: skip
    assert settings is not None
    handler = settings["configs"]["trainer"]
    assert handler["_target_"] == "medfcn.tracking.MlflowRunHandler"
    assert handler["experiment_param"] == {"optimizer": "torch.optim.AdamW", "optimizer.lr": "0.01"}
    assert handler["tags"]["bundle.name"] == "liver" and handler["tags"]["bundle.version"] == "1.0"
    assert handler["artifacts"] == [str(tmp_path / "run" / "config_executed.json"), "metrics.json"]
