"""Helpers for tests on the real MSD Hippocampus cases in ../shared/data (imported by name, like
``_liver_support``). The data is never copied: a subset is a dataset.json whose paths point into the shared
folder."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
HIPPOCAMPUS_BUNDLE = REPO_ROOT / "bundles" / "hippocampus"
HIPPOCAMPUS_DATA = REPO_ROOT.parent / "shared" / "data" / "msd-hippocampus"
# Tests train for an epoch or two: no worker processes, small validation overhead.
TINY_HIPPOCAMPUS_TRAINING = {"num_workers": 0, "batch_size": 2}


def require_hippocampus_data() -> Path:
    """The shared MSD Hippocampus folder, or a skip that names it."""
    if not (HIPPOCAMPUS_DATA / "dataset.json").is_file():
        pytest.skip(f"needs the MSD Hippocampus cases in {HIPPOCAMPUS_DATA} (see ../shared/data/README.md)")
    return HIPPOCAMPUS_DATA


def hippocampus_subset(dest: Path, n: int, start: int = 0) -> Path:
    """An MSD dataset of ``n`` shared cases (absolute paths into ../shared; nothing is copied)."""
    src = require_hippocampus_data()
    meta = json.loads((src / "dataset.json").read_text(encoding="utf-8"))
    items = meta["training"][start : start + n]
    meta["training"] = [{k: str((src / v).resolve()) for k, v in item.items()} for item in items]
    meta["numTraining"] = len(items)
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "dataset.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
    return dest


def copy_hippocampus_bundle(dest: Path, *, weights: bool = False) -> Path:
    """A writable copy of ``bundles/hippocampus`` (with its shipped weights when ``weights``)."""
    from medfcn.bundle import copy_bundle

    return copy_bundle(HIPPOCAMPUS_BUNDLE, dest, weights=weights)
