"""medfcn.bundle helpers: copies without run outputs, seeded random weights, the patch size in one place."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medfcn.bundle import copy_bundle, load_bundle, save_random_weights, set_patch_size
from medfcn.errors import BundleError

REPO = Path(__file__).resolve().parents[2]
LIVER = REPO / "bundles" / "liver"


def _fake_run_outputs(root: Path) -> None:
    for name in ("runs/r1", "eval", "logs", "mlruns/0", "__pycache__", "models"):
        (root / name).mkdir(parents=True, exist_ok=True)
    (root / "runs" / "r1" / "ckpt.pt").write_bytes(b"x")
    (root / "models" / "model.pt").write_bytes(b"weights")
    (root / "eval" / "metrics.csv").write_text("a,b\n")


def test_copy_bundle_leaves_run_outputs_and_weights_behind(tmp_path: Path) -> None:
    src = copy_bundle(LIVER, tmp_path / "src")
    _fake_run_outputs(src)
    before = sorted(str(p.relative_to(src)) for p in src.rglob("*"))
    out = copy_bundle(src, tmp_path / "copy")
    names = {p.name for p in out.iterdir()}
    assert {"configs", "docs", "models"} <= names
    assert not names & {"runs", "eval", "logs", "mlruns", "__pycache__"}
    assert list((out / "models").iterdir()) == []  # ready for a training run
    assert (out / "configs" / "inference.json").read_bytes() == (LIVER / "configs" / "inference.json").read_bytes()
    assert sorted(str(p.relative_to(src)) for p in src.rglob("*")) == before  # source untouched
    with_weights = copy_bundle(src, tmp_path / "with", weights=True)
    assert (with_weights / "models" / "model.pt").read_bytes() == b"weights"
    assert not (with_weights / "runs").exists()
    with pytest.raises(BundleError):
        copy_bundle(tmp_path / "nowhere", tmp_path / "x")


def test_save_random_weights_is_seeded_and_loads_into_network_def(tmp_path: Path) -> None:
    from monai.bundle import ConfigParser

    a = copy_bundle(LIVER, tmp_path / "a")
    b = copy_bundle(LIVER, tmp_path / "b")
    pa, pb = save_random_weights(a, seed=3), save_random_weights(b, seed=3)
    assert pa == a / "models" / "model.pt" and load_bundle(a).trained
    sa, sb = torch.load(pa, weights_only=True), torch.load(pb, weights_only=True)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    other = torch.load(save_random_weights(b, seed=4), weights_only=True)
    assert any(not torch.equal(sa[k], other[k]) for k in sa)
    parser = ConfigParser()
    parser.read_config(str(a / "configs" / "inference.json"))
    net = parser.get_parsed_content("network_def", lazy=False)
    net.load_state_dict(sa)  # strict: every key of the network, nothing else
    assert not list(a.glob("models/.*tmp*"))  # written atomically, no temp left


def test_set_patch_size_changes_inference_and_metadata_only_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = copy_bundle(LIVER, tmp_path / "b")
    set_patch_size(out, (32, 40, 24))
    assert json.loads((out / "configs" / "inference.json").read_text())["patch_size"] == [32, 40, 24]
    meta = json.loads((out / "configs" / "metadata.json").read_text())
    assert meta["network_data_format"]["inputs"]["image"]["spatial_shape"] == [32, 40, 24]
    # train.json takes it by macro from inference.json: unchanged, and it resolves to the new patch
    assert json.loads((out / "configs" / "train.json").read_text())["patch_size"] == "%configs/inference.json#patch_size"
    from monai.bundle import ConfigParser

    monkeypatch.chdir(out)  # the macro's path is relative to the bundle root, as `monai.bundle run` runs
    parser = ConfigParser()
    parser.read_config(str(out / "configs" / "train.json"))
    assert list(parser.get_parsed_content("patch_size")) == [32, 40, 24]
    with pytest.raises(BundleError, match="three positive ints"):
        set_patch_size(out, (32, 0, 24))
