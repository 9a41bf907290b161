"""Bundles in the MONAI model zoo's own shapes, tiny and with random weights, for the third-party tests.

* :func:`spleen_like`: ``spleen_ct_segmentation``'s inference.json (UNet, Activationsd + Invertd +
  AsDiscreted + SaveImaged writing to ``$@bundle_root + '/eval'``), only smaller.
* :func:`segresnet_like`: a SegResNet bundle without Invertd (and no channel_def in its metadata).
* :func:`two_channel`: a two-channel UNet bundle (NormalizeIntensityd per channel), with a
  ``{"model": state_dict}`` checkpoint.

No medfcn id (``post_activation``...) appears in any of them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import torch

WeightForm = Literal["state_dict", "model_key", "ts_only", "none"]


def _meta(name: str, channels: int, channel_def: dict[str, str] | None, patch: list[int]) -> dict[str, Any]:
    outputs: dict[str, Any] = {"type": "image", "format": "segmentation", "num_channels": 2, "spatial_shape": patch,
                               "dtype": "float32", "value_range": [0, 1], "is_patch_data": False}
    if channel_def is not None:
        outputs["channel_def"] = channel_def
        outputs["num_channels"] = len(channel_def)
    return {
        "schema": "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20220324.json",
        "version": "0.5.2",
        "changelog": {"0.5.2": "tiny test copy"},
        "monai_version": "1.3.0",
        "pytorch_version": "2.0.0",
        "numpy_version": "1.24.0",
        "optional_packages_version": {"nibabel": "5.0.0"},
        "name": name,
        "task": "Segmentation",
        "description": "tiny test bundle in a model-zoo shape",
        "authors": "medfcn tests",
        "copyright": "none",
        "network_data_format": {
            "inputs": {"image": {"type": "image", "format": "hounsfield", "modality": "CT", "num_channels": channels,
                                 "spatial_shape": patch, "dtype": "float32", "value_range": [0, 1],
                                 "is_patch_data": True, "channel_def": {str(i): f"ch{i}" for i in range(channels)}}},
            "outputs": {"pred": outputs},
        },
    }


def _pre(keys: str, intensity: dict[str, Any], pixdim: list[float]) -> dict[str, Any]:
    return {
        "_target_": "Compose",
        "transforms": [
            {"_target_": "LoadImaged", "keys": keys},
            {"_target_": "EnsureChannelFirstd", "keys": keys},
            {"_target_": "Orientationd", "keys": keys, "axcodes": "RAS"},
            {"_target_": "Spacingd", "keys": keys, "pixdim": pixdim, "mode": "bilinear"},
            intensity,
            {"_target_": "EnsureTyped", "keys": keys},
        ],
    }


def _write(root: Path, config: dict[str, Any], meta: dict[str, Any], form: WeightForm, seed: int) -> Path:
    from monai.bundle import ConfigParser

    (root / "configs").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "configs" / "inference.json").write_text(json.dumps(config, indent=4))
    (root / "configs" / "metadata.json").write_text(json.dumps(meta, indent=4))
    (root / "docs").mkdir()
    (root / "docs" / "README.md").write_text("# tiny test bundle\n")
    if form == "none":
        return root
    parser = ConfigParser(json.loads(json.dumps(config)))
    torch.manual_seed(seed)
    net = parser.get_parsed_content("network_def").eval()
    if form == "state_dict":
        torch.save(net.state_dict(), root / "models" / "model.pt")
    elif form == "model_key":
        torch.save({"model": net.state_dict(), "epoch": 3}, root / "models" / "model.pt")
    else:
        torch.jit.script(net).save(str(root / "models" / "model.ts"))
    return root


_COMMON = {
    "imports": ["$import glob", "$import os"],
    "bundle_root": ".",
    "output_dir": "$@bundle_root + '/eval'",
    "dataset_dir": "/workspace/data/Task09_Spleen",
    "datalist": "$list(sorted(glob.glob(@dataset_dir + '/imagesTs/*.nii.gz')))",
    "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
    "network": "$@network_def.to(@device)",
    "dataset": {"_target_": "Dataset", "data": "$[{'image': i} for i in @datalist]", "transform": "@preprocessing"},
    "dataloader": {"_target_": "DataLoader", "dataset": "@dataset", "batch_size": 1, "shuffle": False, "num_workers": 0},
    "handlers": [{"_target_": "StatsHandler", "iteration_log": False}],
    "evaluator": {"_target_": "SupervisedEvaluator", "device": "@device", "val_data_loader": "@dataloader",
                  "network": "@network", "inferer": "@inferer", "postprocessing": "@postprocessing",
                  "val_handlers": "@handlers", "amp": True},
    "checkpointloader": {"_target_": "CheckpointLoader", "load_path": "$@bundle_root + '/models/model.pt'",
                         "load_dict": {"model": "@network"}},
    "initialize": ["$monai.utils.set_determinism(seed=123)", "$@checkpointloader(@evaluator)"],
    "run": ["$@evaluator.run()"],
}

PATCH = [16, 16, 16]


def spleen_like(root: Path, *, form: WeightForm = "state_dict", seed: int = 0) -> Path:
    """``spleen_ct_segmentation`` in miniature: UNet, Invertd, AsDiscreted, SaveImaged to ``eval/``."""
    config = {
        **_COMMON,
        "output_ext": ".nii.gz",
        "output_dtype": "$numpy.float32",
        "output_postfix": "trans",
        "separate_folder": True,
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 2,
                        "channels": [4, 8, 16], "strides": [2, 2], "num_res_units": 1, "norm": "batch"},
        "preprocessing": _pre("image", {"_target_": "ScaleIntensityRanged", "keys": "image", "a_min": -57,
                                        "a_max": 164, "b_min": 0, "b_max": 1, "clip": True}, [3.0, 3.0, 4.0]),
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": PATCH, "sw_batch_size": 4, "overlap": 0.5},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                 "nearest_interp": False, "to_tensor": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "output_ext": "@output_ext",
                 "output_dtype": "@output_dtype", "output_postfix": "@output_postfix",
                 "separate_folder": "@separate_folder"},
            ],
        },
    }
    meta = _meta("spleen_ct_segmentation", 1, {"0": "background", "1": "spleen"}, PATCH)
    return _write(root, config, meta, form, seed)


def segresnet_like(root: Path, *, form: WeightForm = "state_dict", seed: int = 1) -> Path:
    """A SegResNet bundle whose postprocessing has no Invertd and whose metadata has no channel_def."""
    config = {
        **_COMMON,
        "network_def": {"_target_": "SegResNet", "spatial_dims": 3, "in_channels": 1, "out_channels": 3,
                        "init_filters": 8, "blocks_down": [1, 1], "blocks_up": [1]},
        "preprocessing": _pre("image", {"_target_": "NormalizeIntensityd", "keys": "image", "nonzero": False},
                              [2.5, 2.5, 3.5]),
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": PATCH, "sw_batch_size": 2, "overlap": 0.25},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
            ],
        },
    }
    meta = _meta("tiny_segresnet", 1, None, PATCH)
    meta["network_data_format"]["outputs"]["pred"]["num_channels"] = 3
    return _write(root, config, meta, form, seed)


def two_channel(root: Path, *, form: WeightForm = "model_key", seed: int = 2) -> Path:
    """A two-channel (e.g. two MR contrasts) UNet bundle; the input is a 4D NIfTI or two channel files."""
    config = {
        **_COMMON,
        "network_def": {"_target_": "UNet", "spatial_dims": 3, "in_channels": 2, "out_channels": 2,
                        "channels": [4, 8], "strides": [2], "num_res_units": 0},
        "preprocessing": _pre("image", {"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": True},
                              [3.0, 3.0, 3.0]),
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": PATCH, "sw_batch_size": 1, "overlap": 0.25},
        "postprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "Activationsd", "keys": "pred", "softmax": True},
                {"_target_": "Invertd", "keys": "pred", "transform": "@preprocessing", "orig_keys": "image",
                 "nearest_interp": False, "to_tensor": True},
                {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
                {"_target_": "SaveImaged", "keys": "pred", "output_dir": "@output_dir", "resample": False},
            ],
        },
    }
    meta = _meta("tiny_two_channel", 2, {"0": "background", "1": "lesion"}, PATCH)
    meta["network_data_format"]["inputs"]["image"]["modality"] = "MR"
    return _write(root, config, meta, form, seed)
