"""Synthetic CT phantoms of the abdomen written as a Medical Segmentation Decathlon dataset (no patient data).

:func:`write_msd_dataset` writes ``imagesTr``/``labelsTr``/``imagesTs`` and ``dataset.json`` (and, on
request, each test case as a DICOM series), atomically and resumably. The phantom itself is
:func:`medfcn.data.phantom.make_phantom` and the DICOM writer
:func:`medfcn.data.dicom.synthetic.write_dicom_series`; both are re-exported here, where users find them.

Example:
    >>> write_msd_dataset("data/SyntheticLiver", num_train=4, num_test=1, shape=(48, 48, 32))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medfcn._io import atomic_dir, atomic_write, atomic_write_json
from medfcn.data.dicom.synthetic import CT_IMAGE_STORAGE, MR_IMAGE_STORAGE, write_dicom_series
from medfcn.data.phantom import Orientation, Phantom, make_phantom
from medfcn.errors import DataError

__all__ = [
    "CT_IMAGE_STORAGE",
    "LABELS",
    "MR_IMAGE_STORAGE",
    "Phantom",
    "make_phantom",
    "write_dicom_series",
    "write_msd_dataset",
]

LABELS: dict[str, str] = {"0": "background", "1": "liver", "2": "tumour"}
"""Label values of the phantoms (MSD ``dataset.json`` spelling)."""

_SYNTH_KEY = "medfcn_synthetic"  # extra key in dataset.json: marks a dataset this module generated


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_qform(affine, code=1)  # scanner coordinates, as written by DICOM converters
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    atomic_write(path, lambda tmp: nib.save(img, str(tmp)))


def _write_dicom_dir(ph: Phantom, dicom_dir: Path, *, seed: int) -> None:
    """Write a series into a temp folder beside ``dicom_dir``, then rename it into place (all or nothing).

    A series from earlier parameters (written here by this function) is replaced.
    """
    with atomic_dir(dicom_dir, replace=True) as tmp:
        write_dicom_series(ph.image, ph.affine, tmp, seed=seed, series_description="medfcn synthetic CT")


def _remove_stale_cases(root: Path, listed: set[str], dicom: bool) -> None:
    """Delete case files an earlier run (with more cases) wrote here and this run no longer lists.

    Only called on folders this module wrote (see the checks in :func:`write_msd_dataset`), and only
    touches ``liver_*`` names, so nothing else is ever removed.
    """
    import shutil

    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        for path in (root / folder).glob("liver_*.nii.gz"):
            if f"./{folder}/{path.name}" not in listed:
                path.unlink()
    test_cases = {Path(p).name.removesuffix(".nii.gz") for p in listed if p.startswith("./imagesTs/")}
    for path in (root / "dicom").glob("liver_*"):
        if path.is_dir() and not (dicom and path.name in test_cases):
            shutil.rmtree(path)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_json(path, payload)


def write_msd_dataset(
    root: str | os.PathLike[str],
    *,
    num_train: int = 8,
    num_test: int = 2,
    shape: Sequence[int] = (64, 64, 48),
    seed: int = 0,
    orientation: Orientation = "random",
    max_oblique_deg: float = 0.0,
    image_dtype: Literal["int16", "float32"] = "int16",
    dicom: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write a Medical Segmentation Decathlon style liver dataset of synthetic phantoms.

    Layout under ``root``: ``imagesTr/liver_000.nii.gz``..., ``labelsTr/`` (same names), ``imagesTs/``
    (numbered after the training cases), ``dataset.json`` (MSD keys; labels 0 background, 1 liver,
    2 tumour), and with ``dicom=True`` ``dicom/<case>/`` holding each test case as a CT DICOM series.

    Every file is written atomically and ``dataset.json`` last, so an interrupted run never leaves a
    dataset that looks complete. Running again with the same arguments reuses the finished files
    (phantoms are deterministic given the seed); different arguments regenerate them, and cases a
    previous run wrote beyond the new counts are removed. A folder that is not empty and was not
    written by this function is never written into.

    Args:
        root: dataset folder (created).
        num_train: labelled training cases (>= 1).
        num_test: unlabelled test cases (>= 0).
        shape: voxels per case ``(X, Y, Z)``; Z is the slice axis.
        seed: case ``i`` is ``make_phantom(seed=seed * 100_003 + i)``.
        orientation: see :func:`make_phantom`.
        max_oblique_deg: see :func:`make_phantom`.
        image_dtype: ``"int16"`` (rounded HU, like MSD) or ``"float32"``.
        dicom: also write each test case as a DICOM series under ``dicom/<case>/``.
        progress: called with each case name once it is written (for progress bars).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: ``root`` already holds a ``dataset.json`` or other files that this function did not
            write (it never overwrites a real dataset), or the counts or shape are invalid.
    """
    root = Path(root)
    if num_train < 1 or num_test < 0:
        raise DataError(
            f"need num_train >= 1 and num_test >= 0, got num_train={num_train}, num_test={num_test}"
        )
    shape_t = [int(s) for s in shape]
    if len(shape_t) != 3 or min(shape_t) < 8:
        raise DataError(f"phantom shape must be three sizes >= 8, got {tuple(shape)}")
    dataset_json = root / "dataset.json"
    params = {
        "seed": int(seed),
        "shape": shape_t,
        "orientation": orientation,
        "max_oblique_deg": float(max_oblique_deg),
        "image_dtype": image_dtype,
        "generator": "medfcn.data.synthetic.make_phantom v1",
    }
    previous: dict[str, Any] | None = None
    if dataset_json.exists():
        try:
            previous = json.loads(dataset_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(
                f"{dataset_json} exists but is not valid JSON ({err}); choose another output folder"
            ) from err
        if not isinstance(previous, dict) or _SYNTH_KEY not in previous:
            raise DataError(
                f"{dataset_json} belongs to a dataset medfcn did not generate; refusing to overwrite it, "
                "choose another output folder"
            )
    # A marker written before any case records the parameters, so a rerun after an interruption knows
    # whether the files already there are the ones it would write.
    marker = root / ".medfcn-synthetic.json"
    if previous is None and not marker.exists() and root.is_dir() and any(root.iterdir()):
        raise DataError(
            f"{root} is not empty and holds no dataset written by medfcn; refusing to write into it, "
            "choose a new or empty output folder"
        )
    reuse = False
    if marker.exists():
        try:
            reuse = json.loads(marker.read_text(encoding="utf-8")) == params
        except (OSError, ValueError):
            reuse = False
    root.mkdir(parents=True, exist_ok=True)
    if not reuse:
        _write_json(marker, params)

    training: list[dict[str, str]] = []
    test: list[str] = []
    for i in range(num_train + num_test):
        name = f"liver_{i:03d}.nii.gz"
        is_train = i < num_train
        image_path = root / ("imagesTr" if is_train else "imagesTs") / name
        label_path = root / "labelsTr" / name
        dicom_dir = root / "dicom" / name.removesuffix(".nii.gz")
        want_dicom = dicom and not is_train
        done = reuse and image_path.exists() and (label_path.exists() or not is_train)
        done = done and (not want_dicom or dicom_dir.is_dir())
        if not done:
            ph = make_phantom(
                shape_t, seed=seed * 100_003 + i, orientation=orientation, max_oblique_deg=max_oblique_deg
            )
            image = np.rint(ph.image).astype(np.int16) if image_dtype == "int16" else ph.image
            _save_nifti(image, ph.affine, image_path)
            if is_train:
                _save_nifti(ph.label, ph.affine, label_path)
            if want_dicom:
                _write_dicom_dir(ph, dicom_dir, seed=seed * 100_003 + i)
        if is_train:
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            test.append(f"./imagesTs/{name}")
        if progress is not None:
            progress(name.removesuffix(".nii.gz"))

    _remove_stale_cases(
        root, {t["image"] for t in training} | {t["label"] for t in training} | set(test), dicom
    )
    _write_json(
        dataset_json,
        {
            "name": "SyntheticLiver",
            "description": "Synthetic CT phantoms of the abdomen with liver and tumour labels (medfcn data synth)",
            "reference": "generated by medfcn; no patient data",
            "licence": "CC0",
            "release": "1.0",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": dict(LABELS),
            "numTraining": num_train,
            "numTest": num_test,
            "training": training,
            "test": test,
            _SYNTH_KEY: params,
        },
    )
    return root


# ----------------------------------------------------------------------------------------------- DICOM
