"""Cross-validation: ``medfcn train --fold K`` into a trained copy of the bundle, the split it records,
``medfcn evaluate --fold/--cv``, resume rules and the patch-size check."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from medfcn.cli.main import app
from medfcn.data.msd import load_datalist, split_datalist, split_digest
from medfcn.engine.crossval import evaluate_folds, fold_bundle, format_cv, summarise_folds
from medfcn.engine.training import train
from medfcn.errors import BundleError, DataError, InputError

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _hippocampus_support import TINY_HIPPOCAMPUS_TRAINING, copy_hippocampus_bundle, hippocampus_subset
from _liver_support import copy_liver_bundle

runner = CliRunner()


def _tree_digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and "runs" not in p.relative_to(root).parts
    }


@pytest.fixture(scope="module")
def fold_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path, object]:
    """Fold 1 of 3 on 6 real hippocampus cases, one epoch, tracked in a local MLflow store."""
    base = tmp_path_factory.mktemp("cv")
    data = hippocampus_subset(base / "data", 6)
    bundle = copy_hippocampus_bundle(base / "hippocampus")
    before = _tree_digest(bundle)
    result = train(
        bundle,
        data_dir=data,
        epochs=1,
        val_interval=1,
        device="cpu",
        fold=1,
        num_folds=3,
        tracking_uri=f"sqlite:///{base / 'mlflow.db'}",
        experiment="cv",
        quiet=True,
        overrides=TINY_HIPPOCAMPUS_TRAINING,
    )
    assert _tree_digest(bundle) == before, "training a fold must not write the bundle"
    return bundle, data, base, result


def test_a_fold_trains_into_a_copy_of_the_bundle_and_records_its_split(fold_run: tuple) -> None:
    bundle, data, _, result = fold_run
    out = bundle / "runs" / "fold_1"
    assert result.output_dir == out and result.model_path == out / "models" / "model.pt"
    assert not (bundle / "models" / "model.pt").exists()
    assert (out / "configs" / "inference.json").is_file() and (out / "configs" / "metadata.json").is_file()
    split = json.loads((out / "split.json").read_text())
    items = load_datalist(data)["training"]
    train_items, val_items = split_datalist(items, seed=0, fold=1, num_folds=3)
    assert split["fold"] == 1 and split["num_folds"] == 3 and split["val_held_out"] is True
    assert split["val"] == sorted(Path(i["image"]).name.removesuffix(".nii.gz") for i in val_items)
    assert len(split["train"]) == 4 and len(split["val"]) == 2 and not set(split["train"]) & set(split["val"])
    assert split["sha1"] == split_digest(train_items, val_items)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and metrics["train_seconds"] > 0
    assert set(metrics["class_names"]) == {"anterior", "posterior"}


def test_the_split_reaches_mlflow_without_case_names(fold_run: tuple) -> None:
    from mlflow.tracking import MlflowClient

    bundle, _, _, result = fold_run
    split = json.loads((bundle / "runs" / "fold_1" / "split.json").read_text())
    run = MlflowClient(tracking_uri=result.tracking_uri).get_run(result.run_id)
    params = run.data.params
    assert params["fold"] == "1" and params["num_folds"] == "3"
    assert params["split_sha1"] == split["sha1"] and params["n_train"] == "4" and params["n_val"] == "2"
    assert not any("hippocampus_" in v for v in (*params.values(), *run.data.tags.values()))


def test_evaluate_scores_the_fold_on_its_own_validation_cases(fold_run: tuple) -> None:
    bundle, data, base, _ = fold_run
    results = base / "cv-results"
    cv = evaluate_folds(bundle, data, folds=[1], num_folds=3, results=results, device="cpu", progress=False)
    fold = json.loads((results / "fold_1.json").read_text())
    assert fold["cases"] == 2 and set(fold["classes"]) == {"anterior", "posterior"}
    for summary in fold["classes"].values():
        assert 0.0 <= summary["dice_mean"] <= 1.0
    assert fold["split_sha1"] == json.loads((bundle / "runs" / "fold_1" / "split.json").read_text())["sha1"]
    csv_cases = {ln.split(",")[0] for ln in (results / "fold_1.csv").read_text().splitlines()[1:]}
    assert csv_cases == set(json.loads((bundle / "runs" / "fold_1" / "split.json").read_text())["val"])
    assert cv.folds.keys() == {1} and not cv.complete
    assert cv.mean["anterior"]["dice"] == pytest.approx(fold["classes"]["anterior"]["dice_mean"])
    assert "mean (1/3)" in format_cv(cv)
    # the CLI takes the same route and prints the table
    result = runner.invoke(
        app,
        ["evaluate", "--bundle", str(bundle), "--data", str(data), "--fold", "1", "--folds", "3",
         "--results", str(results), "--device", "cpu", "-q"],
    )
    assert result.exit_code == 0, result.output
    assert "anterior dice" in result.output and str(results / "cv.json") in result.output


def test_a_fold_trained_on_another_split_is_refused(fold_run: tuple, tmp_path: Path) -> None:
    bundle, _, _, _ = fold_run
    other = hippocampus_subset(tmp_path / "other", 6, start=6)  # other cases: another split
    with pytest.raises(DataError, match="another split"):
        evaluate_folds(bundle, other, folds=[1], num_folds=3, results=tmp_path / "r", device="cpu", progress=False)
    with pytest.raises(DataError, match=r"no trained model for fold 0.*--fold 0"):
        fold_bundle(bundle, 0)


def test_cv_summary_adds_folds_scored_at_different_times(tmp_path: Path) -> None:
    def write(fold: int, ant: float, post: float, n: int) -> None:
        classes = {
            "anterior": {"dice_mean": ant, "dice_sd": 0.0, "hd95_mm_mean": 1.0 + fold, "hd95_mm_sd": 0.0, "n": n},
            "posterior": {"dice_mean": post, "dice_sd": 0.0, "hd95_mm_mean": 2.0, "hd95_mm_sd": 0.0, "n": n},
        }
        (tmp_path / f"fold_{fold}.json").write_text(json.dumps({"num_folds": 2, "cases": n, "classes": classes}))

    write(0, 0.8, 0.6, 10)
    first = summarise_folds(tmp_path, 2)
    assert not first.complete and first.mean["anterior"]["dice"] == pytest.approx(0.8)
    write(1, 0.9, 0.7, 30)
    cv = summarise_folds(tmp_path, 2)
    assert cv.complete
    assert cv.mean["anterior"]["dice"] == pytest.approx(0.85)  # each fold counts once
    assert cv.pooled["anterior"]["dice"] == pytest.approx((0.8 * 10 + 0.9 * 30) / 40)  # each case counts once
    assert cv.mean["anterior"]["hd95_mm"] == pytest.approx(1.5)
    saved = json.loads((tmp_path / "cv.json").read_text())
    assert saved["complete"] and saved["folds_scored"] == [0, 1]


# ---------------------------------------------------------------------------------------------- resume


def test_resume_of_a_finished_run_needs_more_epochs_and_continues_the_same_mlflow_run(fold_run: tuple) -> None:
    from mlflow.tracking import MlflowClient

    bundle, data, base, result = fold_run
    common = {"data_dir": data, "device": "cpu", "fold": 1, "num_folds": 3, "quiet": True,
              "tracking_uri": f"sqlite:///{base / 'mlflow.db'}", "experiment": "cv",
              "overrides": TINY_HIPPOCAMPUS_TRAINING}
    with pytest.raises(InputError, match=r"already completed 1 epoch.*--epochs 11"):
        train(bundle, epochs=1, resume=True, **common)
    cli = runner.invoke(
        app, ["train", "--bundle", str(bundle), "--data", str(data), "--fold", "1", "--folds", "3",
              "--resume", "--epochs", "1", "--no-tracking"],
    )
    assert cli.exit_code == 1 and "Traceback" not in cli.output
    assert [ln for ln in cli.output.splitlines() if ln.strip()][-1].startswith("error: ")
    extended = train(bundle, epochs=2, val_interval=1, resume=True, **common)
    assert extended.run_id == result.run_id  # the same run, not a second one of the same name
    client = MlflowClient(tracking_uri=result.tracking_uri)
    runs = client.search_runs([client.get_experiment_by_name("cv").experiment_id])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(result.run_id, "val_mean_dice")] == [1, 2]
    last = torch.load(extended.output_dir / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert last["lr_scheduler"]["total_iters"] == 2  # the schedule was stretched to the new length


def test_fold_options_are_checked(tmp_path: Path) -> None:
    data = hippocampus_subset(tmp_path / "data", 6)
    bundle = copy_hippocampus_bundle(tmp_path / "hippocampus")
    with pytest.raises(InputError, match=r"'all' or an integer in \[0, 4\]"):
        train(bundle, data_dir=data, fold=5, tracking=False)
    with pytest.raises(InputError, match="'all' or an integer"):
        train(bundle, data_dir=data, fold="last", tracking=False)
    plain = tmp_path / "plain"
    copy_hippocampus_bundle(plain)
    config = json.loads((plain / "configs" / "train.json").read_text())
    del config["fold"], config["num_folds"]
    (plain / "configs" / "train.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match="cannot cross-validate"):
        train(plain, data_dir=data, fold=0, tracking=False)


def test_split_all_trains_on_every_case_and_monitors_fold_0() -> None:
    items = list(range(23))
    train_items, val_items = split_datalist(items, seed=3, fold="all", num_folds=5)
    assert train_items == items
    assert val_items == split_datalist(items, seed=3, fold=0, num_folds=5)[1]
    with pytest.raises(InputError):
        split_datalist(items, fold=True, num_folds=5)  # a bool is not a fold


# ------------------------------------------------------------------------------------------- patch size


def test_a_patch_too_small_for_the_network_is_one_clear_line(tmp_path: Path, synthetic_dataset: Path) -> None:
    bundle = copy_liver_bundle(tmp_path / "liver", patch_size=(32, 32, 32))
    with pytest.raises(InputError, match=r"total stride is \[32, 32, 32\].*\[33, 1, 1\].*\[64, 64, 64\]"):
        train(bundle, data_dir=synthetic_dataset, epochs=1, tracking=False, quiet=True)
    result = runner.invoke(
        app, ["train", "--bundle", str(bundle), "--data", str(synthetic_dataset), "--no-tracking", "--epochs", "1"]
    )
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "patch_size [32, 32, 32] is too small" in result.output


# ---------------------------------------------------------------------------------------- bundle weights


def test_output_keeps_the_bundle_byte_identical_and_in_place_training_says_it_replaces_weights(
    tmp_path: Path, synthetic_dataset: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import hashlib as _hashlib
    import logging

    from _liver_support import TINY_TRAINING

    from medfcn.bundle import load_bundle, save_random_weights

    bundle = copy_liver_bundle(tmp_path / "liver")
    save_random_weights(bundle)
    (bundle / "models" / "model.ts").write_bytes(b"an export of these weights")
    meta_file = bundle / "configs" / "metadata.json"
    meta = json.loads(meta_file.read_text())
    meta["medfcn_weights_sha256"] = _hashlib.sha256((bundle / "models" / "model.pt").read_bytes()).hexdigest()
    meta_file.write_text(json.dumps(meta, indent=4))
    assert load_bundle(bundle).stale_exports == []
    before = _tree_digest(bundle)
    common = {"data_dir": synthetic_dataset, "epochs": 1, "device": "cpu", "tracking": False, "quiet": True,
              "overrides": TINY_TRAINING}
    elsewhere = train(bundle, output_dir=tmp_path / "copy", **common)
    assert _tree_digest(bundle) == before  # --output: the bundle is left byte-identical
    assert elsewhere.model_path == tmp_path / "copy" / "models" / "model.pt" and elsewhere.model_path.is_file()
    assert load_bundle(tmp_path / "copy").trained  # the run folder is a runnable bundle
    with caplog.at_level(logging.WARNING, logger="medfcn.engine.training"):
        train(bundle, **common)
    assert "this run replaces" in caplog.text and "model.ts was exported from the weights this run replaced" in caplog.text
    assert load_bundle(bundle).stale_exports == ["model.ts"]
    shown = runner.invoke(app, ["info", "--bundle", str(bundle)])
    assert shown.exit_code == 0 and "stale exports" in shown.output and "medfcn export" in shown.output
