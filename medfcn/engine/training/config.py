"""Reading and checking a bundle's training config before anything is built: ``key=value`` overrides, the
cross-validation fold, a run to resume, the train/validation split record (``split.json``), the patch size
against the network's stride, and the hyper-parameters shown in MLflow (never paths).

Every check raises one clear :class:`~medfcn.errors.MedfcnError` rather than letting MONAI or ignite fail
deep in the run.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medfcn.bundle import working_directory
from medfcn.errors import BundleError, DataError, InputError, one_line, root_cause

__all__ = [
    "check_fold",
    "check_patch_size",
    "check_resume",
    "copy_bundle_files",
    "missing_dataset",
    "params_view",
    "parse_overrides",
    "split_params",
    "split_record",
]


def parse_overrides(pairs: Sequence[str]) -> dict[str, Any]:
    """``["a#b=1", "lr=0.01", "x=[1,2]", "name=abc"]`` -> ``{"a#b": 1, ...}`` (values parsed as JSON when
    they are JSON, else kept as strings, so ``$`` expressions and ``@`` references pass through).

    Raises:
        InputError: an item without ``=`` or with an empty key.
    """
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        key = key.strip()
        if not sep or not key:
            raise InputError(f"override {pair!r} is not key=value (e.g. --override learning_rate=0.001)")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out


def missing_dataset(data: Path) -> DataError:
    """The error for a dataset path without ``dataset.json``: it says how to make or fetch one."""
    return DataError(
        f"no MSD dataset at {data} (dataset.json not found). Make a synthetic one with "
        f"`medfcn data synth --output {data}` or fetch the real liver set with "
        f"`medfcn data download Task03_Liver --output {data.parent}`, then pass it with --data"
    )


def check_fold(
    fold: int | str | None, num_folds: int | None, raw: Mapping[str, Any], train_json: Path
) -> tuple[int | str | None, int]:
    """Validate ``fold``/``num_folds`` against the bundle; ``"3"`` becomes 3."""
    if "fold" not in raw or "num_folds" not in raw:
        raise BundleError(
            f"{train_json} has no 'fold'/'num_folds' ids, so it cannot cross-validate: add \"fold\": null, "
            "\"num_folds\": 5 and pass fold=@fold, num_folds=@num_folds to msd.split_datalist in its 'split'"
        )
    folds = int(num_folds if num_folds is not None else raw.get("num_folds") or 5)
    if folds < 2:
        raise InputError(f"--folds must be at least 2, got {folds}")
    if isinstance(fold, str) and fold.strip().lower() != "all":
        try:
            fold = int(fold)
        except ValueError:
            raise InputError(f"--fold must be 'all' or an integer in [0, {folds - 1}], got {fold!r}") from None
    if isinstance(fold, str):
        fold = "all"
    if isinstance(fold, int) and not 0 <= fold < folds:
        raise InputError(f"--fold must be 'all' or an integer in [0, {folds - 1}], got {fold}")
    return fold, folds


def check_resume(last: Path, epochs: int) -> None:
    """A resumed run must have epochs left: say so in one line rather than let ignite raise."""
    try:
        state = torch.load(last, map_location="cpu", weights_only=True)
        trainer = state["trainer"]  # ignite keeps iterations; the epoch follows from them
        done = int(trainer["epoch"]) if "epoch" in trainer else int(trainer["iteration"]) // int(trainer["epoch_length"])
    except Exception as err:  # a truncated or foreign file: name it
        reason = one_line(root_cause(err), typed=True)
        raise InputError(f"{last} is not a readable medfcn checkpoint ({reason}); train without --resume") from err
    if epochs and epochs <= done:
        raise InputError(
            f"{last.parent.parent} already completed {done} epoch(s); --resume continues a run only to more "
            f"epochs (e.g. --epochs {done + 10}) — or start a new run without --resume"
        )


def split_record(
    config_files: Sequence[str], updates: Mapping[str, Any], root: Path, raw: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The train/validation split the config will use (``split``), for ``split.json`` and MLflow."""
    from medfcn.bundle import load_bundle

    if "split" not in raw:
        return None
    parser = load_bundle(root).parser([Path(f).name for f in config_files], updates, macros=False, writers=True)
    try:
        with working_directory(root):
            train_items, val_items = parser.get_parsed_content("split")
    except (InputError, DataError):
        raise
    except Exception as err:
        inner = root_cause(err)
        if isinstance(inner, (InputError, DataError)):
            raise inner from None
        reason = one_line(root_cause(err), typed=True)
        raise BundleError(f"{config_files[0]}: cannot build the train/validation split: {reason}") from err
    from medfcn.data.msd import case_id, split_digest

    val = sorted(case_id(i) for i in val_items)
    train = sorted(case_id(i) for i in train_items)
    digest = split_digest(train_items, val_items)
    merged = {**raw, **updates}
    return {
        "fold": merged.get("fold"),
        "num_folds": merged.get("num_folds"),
        "split_seed": merged.get("split_seed"),
        "val_fraction": None if merged.get("fold") is not None else merged.get("val_fraction"),
        "val_held_out": merged.get("fold") != "all",
        "sha1": digest,
        "train": train,
        "val": val,
    }


def split_params(split: Mapping[str, Any] | None) -> dict[str, Any]:
    """The split as MLflow params: fold, counts and a digest of the case lists (names stay local)."""
    if split is None:
        return {}
    return {
        "fold": split["fold"],
        "num_folds": split["num_folds"],
        "split_sha1": split["sha1"],
        "n_train": len(split["train"]),
        "n_val": len(split["val"]),
    }


def copy_bundle_files(root: Path, out: Path) -> None:
    """Make ``out`` a bundle: the source's configs, docs and licence files (never its weights or runs)."""
    out.mkdir(parents=True, exist_ok=True)
    for entry in root.iterdir():
        if entry.name in ("models", "runs", "eval", "logs") or entry.resolve() == out or out.is_relative_to(entry):
            continue
        target = out / entry.name
        if entry.is_dir():
            shutil.copytree(entry, target, dirs_exist_ok=True)
        else:
            shutil.copy2(entry, target)


def check_patch_size(parser: Any, train_json: Path) -> None:
    """Refuse a patch too small for the network's total stride before ignite raises deep in a forward."""
    from medfcn.networks import FCN

    if "patch_size" not in parser or "network_def" not in parser:
        return
    try:
        patch = [int(p) for p in parser.get_parsed_content("patch_size")]
        net = parser.get_parsed_content("network_def", instantiate=True)
    except Exception:  # not ours to judge: the run itself will say what is wrong
        return
    if not isinstance(net, FCN):
        return
    total = [1] * len(patch)
    for stride in net.encoder.strides:
        total = [t * s for t, s in zip(total, stride, strict=False)]
    deepest = [-(-p // t) for p, t in zip(patch, total, strict=False)]
    if int(np.prod(deepest)) <= 1:
        smallest = [t + 1 if i == 0 else 1 for i, t in enumerate(total)]
        example = [t * 2 for t in total]
        raise InputError(
            f"patch_size {patch} is too small for the network of {train_json.parent / 'inference.json'}: its total "
            f"stride is {total}, so the deepest stage would hold a single voxel, which instance norm cannot "
            f"normalise; the smallest valid patch has more than {total} voxels on one axis (e.g. {smallest}), "
            f"multiples of the stride work best: set \"patch_size\": {example} in configs/inference.json"
        )


_PARAM_IDS = (
    "epochs",
    "val_interval",
    "learning_rate",
    "weight_decay",
    "grad_clip_norm",
    "batch_size",
    "num_samples",
    "pos_neg_ratio",
    "val_fraction",
    "split_seed",
    "seed",
    "amp",
    "amp_dtype",
    "cache_rate",
    "device",
    "resume",
)


def params_view(
    raw: Mapping[str, Any], updates: Mapping[str, Any], meta: Mapping[str, Any], inference: Mapping[str, Any]
) -> dict[str, Any]:
    """The hyper-parameters worth comparing across runs (never paths: a hospital path can name a patient)."""
    merged = {**raw, **updates}
    view: dict[str, Any] = {k: merged[k] for k in _PARAM_IDS if k in merged}
    for key in ("loss", "optimizer", "lr_scheduler"):
        if isinstance(merged.get(key), Mapping):
            view[key] = {k: v for k, v in merged[key].items() if not str(v).startswith("@")}
    view["bundle_version"] = meta.get("version")
    # The preprocessing and network live in inference.json (train.json points there with macros).
    for key in ("pixdim", "hu_window", "patch_size", "foreground_margin", "sw_batch_size", "overlap", "network_def"):
        value = merged.get(key, inference.get(key))
        if isinstance(value, str) and value.startswith("%"):
            value = inference.get(key)
        if value is not None:
            view[key] = value
    return view
