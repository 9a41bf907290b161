"""medfcn.bundle.Bundle: the one door into a bundle folder (configs, overrides, macros, weights, classes)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _zoo import spleen_like

from medfcn.bundle import Bundle, copy_bundle, load_bundle, working_directory
from medfcn.bundle.export import resolved_inference_config
from medfcn.errors import BundleError

LIVER = Path(__file__).resolve().parents[2] / "bundles" / "liver"


@pytest.fixture()
def liver(tmp_path: Path) -> Bundle:
    return load_bundle(copy_bundle(LIVER, tmp_path / "liver"))


def test_what_a_bundle_declares(liver: Bundle) -> None:
    assert load_bundle(liver) is liver  # a Bundle passes through
    assert liver.in_channels == 1 and liver.patch_size == (96, 96, 96)
    assert liver.class_names == {0: "background", 1: "liver", 2: "tumour"}
    assert liver.weights_file is None and not liver.trained  # copied without weights
    codes = liver.segment_codes()
    assert sorted(codes) == [1, 2] and codes[1].name == "liver"
    assert liver.config_file("inference") == liver.root / "configs" / "inference.json"
    assert liver.config_file("train.json") == liver.root / "configs" / "train.json"
    with pytest.raises(BundleError, match="config file not found"):
        liver.config_file("nonexistent")


def test_parser_overrides_skip_ids_the_config_lacks(liver: Bundle) -> None:
    parser = liver.parser("inference", {"patch_size": [8, 8, 8], "no_such_id#key": 1, "inferer#overlap": 0.5})
    assert parser["patch_size"] == [8, 8, 8] and parser["inferer"]["overlap"] == 0.5
    assert "no_such_id" not in parser
    assert parser["_meta_"]["name"] == liver.name  # metadata.json is _meta_, as monai.bundle run reads it


def test_macros_resolve_from_the_bundle_root_whatever_the_working_directory(liver: Bundle, tmp_path: Path) -> None:
    extra = liver.root / "configs" / "extra.json"
    extra.write_text(json.dumps({"pixdim": "%configs/inference.json#pixdim", "ref": "@pixdim"}))
    here = Path.cwd()
    with working_directory(tmp_path):  # macros are relative paths: they must not depend on the cwd
        assert liver.parser("extra")["pixdim"] == [1.5, 1.5, 2.0]
        assert liver.config("extra") == {"pixdim": [1.5, 1.5, 2.0], "ref": "@pixdim"}
        assert liver.config("extra", macros=False)["pixdim"] == "%configs/inference.json#pixdim"
        assert Path.cwd() == tmp_path.resolve() or Path.cwd() == tmp_path
    assert Path.cwd() == here
    merged = resolved_inference_config(liver.root, ["configs/inference.json", "configs/extra.json"])
    assert merged["pixdim"] == [1.5, 1.5, 2.0] and "_meta_" not in merged and "network_def" in merged


def test_writers_are_neutralised_unless_kept(tmp_path: Path) -> None:
    bundle = load_bundle(spleen_like(tmp_path / "spleen", form="none"))
    targets = [t["_target_"] for t in bundle.parser()["postprocessing"]["transforms"]]
    assert targets[-1] == "Identityd"
    kept = [t["_target_"] for t in bundle.parser(writers=True)["postprocessing"]["transforms"]]
    assert kept[-1] == "SaveImaged"
    assert bundle.config()["postprocessing"]["transforms"][-1]["_target_"] == "SaveImaged"  # what the file says


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="not a medfcn/MONAI bundle"):
        load_bundle(tmp_path)
    (tmp_path / "configs").mkdir()
    (tmp_path / "configs" / "inference.json").write_text("{}")
    with pytest.raises(BundleError, match=r"metadata\.json not found"):
        load_bundle(tmp_path)
    (tmp_path / "configs" / "metadata.json").write_text(json.dumps({"name": "x"}))
    (tmp_path / "configs" / "inference.json").write_text("[1, 2]")
    with pytest.raises(BundleError, match="expected a JSON object"):
        load_bundle(tmp_path).parser()


def test_a_yaml_inference_config_is_found(tmp_path: Path) -> None:
    root = spleen_like(tmp_path / "spleen", form="none")
    config = json.loads((root / "configs" / "inference.json").read_text())
    (root / "configs" / "inference.json").unlink()
    (root / "configs" / "inference.yaml").write_text(json.dumps(config))  # JSON is valid YAML
    bundle = load_bundle(root)
    assert bundle.config_file() == root / "configs" / "inference.yaml"
    assert "network_def" in bundle.parser()
    assert os.fspath(bundle.configs["inference.yaml"]).endswith("inference.yaml")
