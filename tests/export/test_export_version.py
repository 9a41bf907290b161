"""``medfcn export`` raises the bundle version only when the weights change (issue 17, item 7)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from medfcn.bundle.export import WEIGHTS_DIGEST_KEY, export_bundle


def _meta(bundle: Path) -> dict:
    return json.loads((bundle / "configs" / "metadata.json").read_text(encoding="utf-8"))


def test_same_weights_keep_the_version_new_weights_bump_it(weighted_bundle: Path) -> None:
    original = _meta(weighted_bundle)
    first = export_bundle(weighted_bundle, check=False)
    after_first = _meta(weighted_bundle)
    major, minor, patch = (int(p) for p in original["version"].split("."))
    assert first.weights_changed and first.previous_version == original["version"]
    assert first.version == after_first["version"] == f"{major}.{minor}.{patch + 1}"
    assert len(after_first[WEIGHTS_DIGEST_KEY]) == 64

    # The same model.pt again, twice: version, changelog and the recorded digest stay as they were.
    for _ in range(2):
        again = export_bundle(weighted_bundle, check=False)
        assert not again.weights_changed and again.version == again.previous_version == first.version
        meta = _meta(weighted_bundle)
        assert meta["version"] == first.version
        assert meta["changelog"] == after_first["changelog"]
        assert meta[WEIGHTS_DIGEST_KEY] == after_first[WEIGHTS_DIGEST_KEY]

    # New weights: one patch bump, with a changelog entry for the new version.
    state = torch.load(weighted_bundle / "models" / "model.pt", map_location="cpu", weights_only=True)
    next(iter(v for v in state.values() if v.is_floating_point())).add_(0.25)
    torch.save(state, weighted_bundle / "models" / "model.pt")
    bumped = export_bundle(weighted_bundle, check=False)
    assert bumped.weights_changed and bumped.version == f"{major}.{minor}.{patch + 2}"
    meta = _meta(weighted_bundle)
    assert next(iter(meta["changelog"])) == bumped.version
    assert meta[WEIGHTS_DIGEST_KEY] != after_first[WEIGHTS_DIGEST_KEY]


def test_explicit_bump_still_bumps_same_weights(weighted_bundle: Path) -> None:
    export_bundle(weighted_bundle, check=False)
    version = _meta(weighted_bundle)["version"]
    major, minor, _ = (int(p) for p in version.split("."))
    result = export_bundle(weighted_bundle, check=False, bump="minor")
    assert not result.weights_changed and result.version == f"{major}.{minor + 1}.0"


def test_cli_says_whether_it_bumped(weighted_bundle: Path) -> None:
    from medfcn.cli.main import app

    runner = CliRunner()
    first = runner.invoke(app, ["export", "--bundle", str(weighted_bundle), "--no-check"])
    assert first.exit_code == 0, first.output
    version = _meta(weighted_bundle)["version"]
    assert f"version {version} (was " in first.stdout and "weights changed" in first.stdout
    second = runner.invoke(app, ["export", "--bundle", str(weighted_bundle), "--no-check"])
    assert second.exit_code == 0, second.output
    assert _meta(weighted_bundle)["version"] == version
    assert f"version {version} (kept: same weights as the last export)" in second.stdout
