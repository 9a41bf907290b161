"""Fixtures of the export tests: a copy of the liver bundle with deterministic weights, exported once.

Export numerics do not need a trained network, only fixed weights: these are the network_def's own
initialisation under a fixed seed, so the tests run without waiting for training.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
LIVER = REPO / "bundles" / "liver"


def make_weighted_bundle(dest: Path, *, seed: int = 0) -> Path:
    """Copy ``bundles/liver`` (configs, docs) to ``dest`` and write ``models/model.pt`` from ``network_def``."""
    from medfcn.bundle import copy_bundle, save_random_weights

    copy_bundle(LIVER, dest)
    save_random_weights(dest, seed=seed)
    return dest


@pytest.fixture(scope="session")
def liver_source() -> Path:
    """The liver bundle of the repository (read only)."""
    return LIVER


@pytest.fixture
def weighted_bundle(tmp_path: Path) -> Path:
    """A fresh, writable copy of the liver bundle with seeded weights (not exported)."""
    return make_weighted_bundle(tmp_path / "liver")


@pytest.fixture(scope="session")
def exported_bundle(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    """``(bundle, ExportResult)``: a seeded copy exported once to TorchScript and ONNX, checked."""
    from medfcn.bundle.export import export_bundle

    bundle = make_weighted_bundle(tmp_path_factory.mktemp("export") / "liver")
    result = export_bundle(bundle, onnx=True)
    return bundle, result
