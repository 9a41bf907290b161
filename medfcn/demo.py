"""The end-to-end demo behind ``medfcn demo``: synthetic CT -> a short training -> folder inference.

Everything happens under one output folder and nothing is downloaded:

1. ``data/``: a small synthetic liver dataset in MSD layout (:func:`medfcn.data.synthetic.write_msd_dataset`),
   its test cases written both as NIfTI (``imagesTs/``) and as CT DICOM series (``dicom/``);
2. ``bundle/``: a copy of the liver bundle, trained briefly on ``data/`` (:func:`medfcn.engine.training.train`),
   tracked in MLflow (``mlflow.db`` in the output folder unless ``MLFLOW_TRACKING_URI`` says otherwise);
3. ``results/``: ``medfcn infer`` of the test scans, NIfTI and DICOM (:func:`medfcn.engine.inference.segment_folder`):
   masks, DICOM SEG, previews, statistics, ``summary.csv``.

The source bundle is copied, never trained in place, so the repository's ``bundles/liver`` stays as it is.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medfcn._io import atomic_write_text
from medfcn.errors import BundleError

__all__ = ["DemoResult", "default_bundle", "run_demo"]


@dataclass
class DemoResult:
    """Where the demo left its outputs."""

    output: Path
    data: Path
    bundle: Path
    results: Path
    train: Any
    infer: Any


def default_bundle() -> Path:
    """``bundles/liver`` of the source checkout medfcn runs from (``pip install -e .``), else of the current
    folder (a regular install run from a clone, or ``/opt/medfcn`` in the Docker image)."""
    source = Path(__file__).resolve().parents[1] / "bundles" / "liver"
    here = Path.cwd() / "bundles" / "liver"
    return source if (source / "configs").is_dir() or not (here / "configs").is_dir() else here


def run_demo(
    output: str | os.PathLike[str],
    *,
    bundle: str | os.PathLike[str] | None = None,
    num_train: int = 8,
    num_test: int = 2,
    shape: tuple[int, int, int] = (64, 64, 48),
    epochs: int = 60,
    patch_size: tuple[int, int, int] = (48, 48, 48),
    device: str = "auto",
    tracking: bool = True,
    tracking_uri: str | None = None,
    seed: int = 0,
    quiet: bool = False,
) -> DemoResult:
    """Generate data, train a copy of the bundle briefly, segment the test scans.

    Args:
        output: the demo folder (created); rerunning reuses the dataset and retrains.
        bundle: source bundle (default: :func:`default_bundle`).
        num_train, num_test, shape: the synthetic dataset (cases and voxels per case).
        epochs: training epochs (validation every 5 and after the last).
        patch_size: training patch (the synthetic volumes are small; real CT uses the bundle's 96^3).
        device: ``auto``, ``cpu``, ``cuda``...
        tracking, tracking_uri: MLflow (default store: ``<output>/mlflow.db``).
        seed: dataset and training seed.
        quiet: no progress bars.

    Raises:
        BundleError: the source bundle is missing.
    """
    from monai.utils import path_to_sqlite_uri

    from medfcn.bundle import copy_bundle, set_patch_size
    from medfcn.data.synthetic import write_msd_dataset
    from medfcn.engine.inference import segment_folder
    from medfcn.engine.training import train

    out = Path(output).expanduser().resolve()
    source = Path(bundle).expanduser().resolve() if bundle is not None else default_bundle()
    if not (source / "configs" / "train.json").is_file():
        raise BundleError(
            f"{source} is not a medfcn bundle (configs/train.json missing); pass --bundle bundles/liver "
            "from a clone of the medfcn repository"
        )
    out.mkdir(parents=True, exist_ok=True)
    data = write_msd_dataset(
        out / "data", num_train=num_train, num_test=num_test, shape=shape, seed=seed, dicom=True
    )
    work = out / "bundle"
    if work.exists():
        shutil.rmtree(work)
    copy_bundle(source, work)
    set_patch_size(work, patch_size)  # training and inference alike
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or path_to_sqlite_uri(str(out / "mlflow.db"))
    trained = train(
        work,
        data_dir=data,
        epochs=epochs,
        val_interval=5,
        device=device,
        seed=seed,
        overrides={"num_workers": 0},
        tracking=tracking,
        tracking_uri=uri if tracking else None,
        experiment="medfcn-demo",
        quiet=quiet,
    )
    # What a hospital folder would hold: scans only (NIfTI and DICOM), listed in one file.
    scans = out / "scans.txt"
    atomic_write_text(scans, f"{data / 'imagesTs'}\n{data / 'dicom'}\n")
    results = out / "results"
    summary = segment_folder(work, scans, results, device=device, overwrite=True, progress=not quiet)
    return DemoResult(output=out, data=data, bundle=work, results=results, train=trained, infer=summary)
