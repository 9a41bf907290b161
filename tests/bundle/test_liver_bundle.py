"""bundles/liver is a real MONAI bundle: MONAI's own tools check and run it, without medfcn's CLI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
LIVER = REPO / "bundles" / "liver"
SCHEMA = Path(__file__).resolve().parent / "meta_schema.json"
sys.path.insert(0, str(REPO / "tests"))
from _liver_support import TINY_TRAINING, copy_liver_bundle  # noqa: E402


def _config(name: str) -> dict:
    return json.loads((LIVER / "configs" / name).read_text(encoding="utf-8"))


def _monai_bundle(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "2", "MLFLOW_TRACKING_URI": ""}
    env.pop("MLFLOW_TRACKING_URI")
    return subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env=env, check=False,
    )  # fmt: skip


def _overrides(data: Path, bundle: Path) -> list[str]:
    out = ["--bundle_root", str(bundle), "--dataset_dir", str(data), "--device", "$torch.device('cpu')"]
    for key, value in TINY_TRAINING.items():
        out += [f"--{key}", json.dumps(value)]
    return out


def test_layout_is_the_monai_bundle_layout() -> None:
    for rel in ("configs/metadata.json", "configs/inference.json", "configs/train.json", "configs/evaluate.json",
                "configs/multi_gpu_train.json", "configs/logging.conf", "docs/README.md", "LICENSE"):  # fmt: skip
        assert (LIVER / rel).is_file(), rel


def test_metadata_says_what_the_model_is_and_is_not_for() -> None:
    meta = _config("metadata.json")
    assert meta["schema"].startswith("https://") and meta["schema"].endswith(".json")
    assert meta["version"] in meta["changelog"]
    assert "research" in meta["intended_use"].lower() and "not for clinical use" in meta["intended_use"].lower()
    assert meta["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "liver", "2": "tumour"}
    inputs = meta["network_data_format"]["inputs"]["image"]
    assert inputs["num_channels"] == 1 and inputs["modality"] == "CT"
    infer = _config("inference.json")
    assert inputs["spatial_shape"] == infer["patch_size"]
    # The description states the spacing and HU window the configs use.
    assert "1.5 x 1.5 x 2.0 mm" in meta["description"] and infer["pixdim"] == [1.5, 1.5, 2.0]
    assert "[-175, 250]" in meta["description"] and infer["hu_window"] == [-175.0, 250.0]
    for key in ("monai_version", "pytorch_version", "numpy_version", "required_packages_version", "authors", "copyright"):
        assert meta[key], key
    assert "medfcn" in meta["required_packages_version"]


def test_preprocessing_network_and_patch_are_defined_once() -> None:
    """train.json takes them from inference.json by macro; evaluate.json only overrides what differs."""
    train, evaluate = _config("train.json"), _config("evaluate.json")
    for key in ("pixdim", "hu_window", "patch_size", "network_def", "reader", "foreground_margin", "num_classes"):
        assert train[key] == f"%configs/inference.json#{key}", key
    assert train["deterministic_transforms"] == "%configs/inference.json#preprocessing#transforms"
    text = json.dumps(evaluate)
    for literal in ("Spacingd", "ScaleIntensityRanged", "Orientationd", "CropForegroundd", "medfcn.networks.FCN"):
        assert literal not in text, literal
    infer = _config("inference.json")
    targets = [t["_target_"] for t in infer["preprocessing"]["transforms"]]
    spacing = "medfcn.data.fast_spatial.FastSpacingd"  # MONAI's Spacingd, resampling axis-aligned grids fast
    assert targets[:5] == ["LoadImaged", "EnsureChannelFirstd", "Orientationd", spacing, "ScaleIntensityRanged"]
    assert "CropForegroundd" in targets


def test_every_postprocessing_argmax_is_the_fast_one_and_equals_monai() -> None:
    """The bundle's argmax steps are FastAsDiscreted (MONAI's own argmax takes seconds on a whole CT)."""
    from monai.bundle import ConfigParser
    from monai.data import MetaTensor
    from monai.transforms import AsDiscreted

    from medfcn.data.transforms import FastAsDiscreted

    for name in ("inference.json", "train.json", "evaluate.json"):
        text = (LIVER / "configs" / name).read_text(encoding="utf-8")
        assert '"AsDiscreted"' not in text, f"{name} still uses MONAI's slow AsDiscreted argmax"
    parser = ConfigParser()
    parser.read_config(str(LIVER / "configs" / "inference.json"))
    post = parser.get_parsed_content("post_discrete")
    assert isinstance(post, FastAsDiscreted)
    probs = MetaTensor(torch.rand(3, 23, 19, 17, generator=torch.Generator().manual_seed(0)))
    probs = probs / probs.sum(0, keepdim=True)
    ref = AsDiscreted(keys="pred", argmax=True)({"pred": probs})["pred"]
    out = post({"pred": probs})["pred"]
    assert out.shape == (1, 23, 19, 17) and torch.equal(out, ref)


def test_train_config_resolves_to_the_inference_preprocessing(tmp_path: Path, synthetic_dataset: Path) -> None:
    from monai.bundle import ConfigParser
    from monai.transforms import Spacingd

    parser = ConfigParser()
    parser.read_config(str(LIVER / "configs" / "train.json"))
    parser["dataset_dir"] = str(synthetic_dataset)
    cwd = Path.cwd()
    os.chdir(LIVER)  # macros are resolved from the bundle root, as `monai.bundle run` is used
    try:
        parser.parse()
        val = parser.get_parsed_content("validate#preprocessing")
        train = parser.get_parsed_content("train#preprocessing")
    finally:
        os.chdir(cwd)
    spacing = [t for t in val.transforms if isinstance(t, Spacingd)]
    assert len(spacing) == 1 and list(spacing[0].spacing_transform.pixdim) == [1.5, 1.5, 2.0]
    assert [type(t).__name__ for t in train.transforms[: len(val.transforms)]] == [type(t).__name__ for t in val.transforms]
    assert spacing[0].keys == ("image", "label")


def test_verify_metadata_passes_and_can_fail(tmp_path: Path) -> None:
    """MONAI's verify_metadata against a local copy of the schema (it skips the download when the file is
    there); a metadata file without network_data_format must fail the same check."""
    schema = tmp_path / "schema.json"
    shutil.copy(SCHEMA, schema)
    ok = _monai_bundle("verify_metadata", "--meta_file", str(LIVER / "configs" / "metadata.json"),
                       "--filepath", str(schema), cwd=tmp_path)  # fmt: skip
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "metadata is verified with no error" in ok.stdout + ok.stderr
    assert "skipped downloading" in ok.stdout + ok.stderr  # no network used
    broken = _config("metadata.json")
    del broken["network_data_format"]
    (tmp_path / "broken.json").write_text(json.dumps(broken))
    bad = _monai_bundle("verify_metadata", "--meta_file", str(tmp_path / "broken.json"), "--filepath", str(schema), cwd=tmp_path)
    assert bad.returncode != 0 and "network_data_format" in bad.stdout + bad.stderr


def test_verify_net_in_out() -> None:
    result = _monai_bundle("verify_net_in_out", "network_def", "--meta_file", "configs/metadata.json",
                           "--config_file", "configs/inference.json", "--device", "cpu", cwd=LIVER)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert "data shape of network is verified with no error" in result.stdout + result.stderr


@pytest.mark.slow
def test_monai_bundle_run_trains_then_evaluates(tmp_path: Path, synthetic_dataset: Path) -> None:
    """`python -m monai.bundle run` with train.json, then train.json + evaluate.json (model-zoo style)."""
    bundle = copy_liver_bundle(tmp_path / "liver")
    run = _monai_bundle("run", "--config_file", "configs/train.json", *_overrides(synthetic_dataset, bundle),
                        "--epochs", "1", cwd=bundle)  # fmt: skip
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-4000:]
    state = torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    assert any(k.startswith("encoder.") for k in state)
    metrics = json.loads((bundle / "runs" / "train" / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and [r["epoch"] for r in metrics["history"]] == [1]
    ev = _monai_bundle("run", "--config_file", "['configs/train.json','configs/evaluate.json']",
                       *_overrides(synthetic_dataset, bundle), cwd=bundle)  # fmt: skip
    assert ev.returncode == 0, ev.stdout[-2000:] + ev.stderr[-4000:]
    csv = (bundle / "eval" / "metrics.csv").read_text()
    assert "val_mean_dice" in csv and "val_liver_dice" in csv


@pytest.mark.slow
def test_torchrun_two_cpu_processes_train_with_ddp(tmp_path: Path, synthetic_dataset: Path) -> None:
    """`torchrun --nproc_per_node=2 -m medfcn train` (gloo on CPU): rank 0 alone writes, weights are plain."""
    bundle = copy_liver_bundle(tmp_path / "liver")
    overrides = [f"--override={k}={json.dumps(v)}" for k, v in TINY_TRAINING.items()]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "medfcn", "train", "--bundle", str(bundle), "--data", str(synthetic_dataset), "--epochs", "2",
           "--val-interval", "1", "--device", "cpu", "--no-tracking", "--quiet", *overrides]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    assert result.stdout.count("best weights:") == 1  # only rank 0 reports
    assert (result.stdout + result.stderr).count("Epoch[2] Metrics") == 1  # rank 1's StatsHandler is off
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def")
    net.load_state_dict(torch.load(bundle / "models" / "model.pt", map_location="cpu", weights_only=True))
    last = torch.load(bundle / "runs" / "train" / "checkpoints" / "last.pt", map_location="cpu", weights_only=True)
    assert not any(k.startswith("module.") for k in last["model"])  # resumable with or without torchrun
    metrics = json.loads((bundle / "runs" / "train" / "metrics.json").read_text())
    assert [r["epoch"] for r in metrics["history"]] == [1, 2]
