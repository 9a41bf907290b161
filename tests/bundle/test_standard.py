"""medfcn.bundle.standard: the pieces that turn any bundle's postprocessing into medfcn's pipeline."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _zoo import spleen_like

from medfcn.bundle.standard import (
    class_names_of,
    collapse_channels,
    open_config,
    out_channels_of,
    read_pipeline,
)


def test_collapse_channels_gives_one_label_map_highest_channel_wins() -> None:
    mask = torch.zeros(3, 2, 2, 1)
    mask[0, 0, :, 0] = 1  # TC
    mask[1, :, :, 0] = 1  # WT everywhere
    mask[2, 0, 0, 0] = 1  # ET in one voxel
    label = collapse_channels(mask)
    assert label.shape == (1, 2, 2, 1) and label.dtype == torch.uint8
    assert label[0, :, :, 0].tolist() == [[3, 2], [2, 2]]
    meta = {"network_data_format": {"outputs": {"pred": {"channel_def": {"0": "TC", "1": "WT", "2": "ET"}}}}}
    assert class_names_of(meta, 3, "brats", multilabel=True) == {0: "background", 1: "TC", 2: "WT", 3: "ET"}


def test_writers_become_identity_and_medfcn_ids_refine(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    bundle = spleen_like(tmp_path / "b", form="none")
    parser = open_config(bundle)
    post = parser.get("postprocessing")["transforms"]
    assert [t["_target_"] for t in post][-1] == "Identityd", "SaveImaged is neutralised before anything is built"
    with caplog.at_level(logging.WARNING, logger="medfcn"):
        pipe = read_pipeline(parser, bundle / "configs" / "inference.json")
    assert not [r for r in caplog.records if r.name.startswith("medfcn")]
    assert pipe.notes == [] and pipe.window == (-57.0, 164.0)
    # medfcn's own ids, where a bundle defines them, replace what is derived
    config = json.loads((bundle / "configs" / "inference.json").read_text())
    config["post_discrete"] = {"_target_": "AsDiscreted", "keys": "pred", "threshold": 0.5}
    config["num_classes"] = 2
    config["network_def"]["out_channels"] = "@num_classes"
    (bundle / "configs" / "inference.json").write_text(json.dumps(config))
    parser = open_config(bundle)
    pipe = read_pipeline(parser, bundle / "configs" / "inference.json")
    probs = torch.tensor([[[[0.2]]], [[[0.7]]]])
    assert pipe.discrete({"pred": probs})["pred"].tolist() == [[[[0.0]]], [[[1.0]]]]  # threshold, not argmax
    assert out_channels_of(parser) == 2  # metadata first; the reference resolves without building the net
    del parser["_meta_"]["network_data_format"]["outputs"]["pred"]["num_channels"]
    assert out_channels_of(parser) == 2
