"""Fixtures shared by the whole suite. Area-specific fixtures live in the conftest of each test folder."""

from __future__ import annotations

import os
from pathlib import Path

import monai.apps.utils  # noqa: F401  (MONAI binds its loggers to sys.stdout at first import: do it outside CliRunner)
import pytest
from _liver_support import TINY_TRAINING, copy_liver_bundle

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REPO_ROOT = Path(__file__).resolve().parents[1]
LIVER_BUNDLE = REPO_ROOT / "bundles" / "liver"
LONGEST_FIRST = ("test_learning.py",)  # the suite's longest test file by far (--durations): started first


def pytest_configure(config: pytest.Config) -> None:
    """One share of the cores per xdist worker: two workers of two torch threads each on two cores spin
    against each other (OpenMP busy-waits), which made the longest test 4.5x slower in the suite than
    alone. Subprocesses inherit the setting through OMP_NUM_THREADS."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1") or 1)
    if workers > 1:
        import torch

        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ.setdefault("OMP_NUM_THREADS", str(threads))
        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    # Modules with long tests first (a stable sort keeps every module's own order, so module fixtures are
    # built once), so that under xdist they start at once and the short ones fill the other worker,
    # instead of a long test starting last.
    slow_modules = {item.path for item in items if "slow" in item.keywords}
    items.sort(key=lambda item: (item.path.name not in LONGEST_FIRST, item.path not in slow_modules))
    if torch.cuda.is_available():
        return
    skip_cuda = pytest.mark.skip(reason="needs a CUDA device (none here)")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip_cuda)


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real public files in ../shared/data (MONAI's testing data)."""
    if not SHARED_DATA.is_dir():
        pytest.fail(f"{SHARED_DATA} is missing: the suite expects ../shared/data beside the repository")
    return SHARED_DATA


@pytest.fixture(scope="session")
def synthetic_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small MSD-layout synthetic liver dataset (imagesTr/labelsTr/imagesTs/dataset.json)."""
    from medfcn.data.synthetic import write_msd_dataset

    root = tmp_path_factory.mktemp("synthetic") / "Task03_Liver"
    write_msd_dataset(root, num_train=6, num_test=2, shape=(48, 48, 32), seed=0)
    return root


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory, synthetic_dataset: Path) -> Path:
    """A copy of the liver bundle trained briefly (4 epochs, CPU) on :func:`synthetic_dataset`.

    The weights are real (they segment the phantoms' liver roughly); tests that need exact numbers use
    their own fixed predictors instead.
    """
    from medfcn.engine.training import train

    bundle = copy_liver_bundle(tmp_path_factory.mktemp("trained") / "liver")
    train(
        bundle,
        data_dir=synthetic_dataset,
        epochs=4,
        val_interval=2,
        device="cpu",
        tracking=False,
        quiet=True,
        overrides=TINY_TRAINING,
    )
    assert (bundle / "models" / "model.pt").is_file()
    return bundle


@pytest.fixture
def private_tempdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The system temp folder of this test alone, so that "nothing left in the temp folder" checks do not
    see another xdist worker's extractions of the same moment."""
    import tempfile

    folder = tmp_path / "systmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder
