"""Medical Segmentation Decathlon (MSD) datasets: read and split (checking is
:mod:`medfcn.data.dataset_check`, fetching :mod:`medfcn.data.msd_download`).

An MSD dataset is a folder with ``dataset.json`` (name, modality, labels, ``training`` image/label pairs,
``test`` images) and the NIfTI files it lists (``imagesTr/``, ``labelsTr/``, ``imagesTs/``).
``medfcn data synth`` writes one from synthetic phantoms; ``medfcn data download Task03_Liver`` fetches
the real liver task.

Example:
    >>> from medfcn.data.msd import load_datalist, split_datalist
    >>> datalist = load_datalist("data/Task03_Liver")  # doctest: +SKIP
    >>> train, val = split_datalist(datalist["training"], val_fraction=0.2, seed=0)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from medfcn.data.datasets import HOW_TO_GET_DATA
from medfcn.errors import DataError, InputError

__all__ = [
    "case_id",
    "load_datalist",
    "msd_tasks",
    "read_dataset_json",
    "split_datalist",
    "split_digest",
]

T = TypeVar("T")


def msd_tasks() -> dict[str, tuple[str, str]]:
    """MSD task name -> (download URL, md5 of the tar archive).

    The table is MONAI's (``monai.apps.DecathlonDataset.resource`` and ``.md5``), read on demand so that
    importing this module does not import MONAI.
    """
    from monai.apps.datasets import DecathlonDataset

    return {task: (url, DecathlonDataset.md5[task]) for task, url in DecathlonDataset.resource.items()}



# ----------------------------------------------------------------------------------------------- reading


def _dataset_json_path(root: str | os.PathLike[str]) -> Path:
    path = Path(root)
    return path if path.suffix == ".json" else path / "dataset.json"


def read_dataset_json(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read and validate an MSD ``dataset.json``.

    Args:
        root: the dataset folder, or the ``dataset.json`` file itself.

    Returns:
        The parsed JSON object; ``training`` is a list of ``{"image", "label"}`` dicts and ``test`` a list
        (of paths or ``{"image"}`` dicts), both possibly empty.

    Raises:
        DataError: the file is missing, not JSON, or lacks/garbles the MSD keys.
    """
    path = _dataset_json_path(root)
    folder = path.parent
    if not path.is_file():
        hint = HOW_TO_GET_DATA.format(root=folder, parent=folder.parent)
        what = "folder does not exist" if not folder.exists() else "dataset.json is missing"
        raise DataError(f"no MSD dataset at {folder}: {what}; {hint}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(f"{path} is not valid JSON ({err}); fix or regenerate the file") from err
    if not isinstance(data, dict):
        raise DataError(f"{path} must hold a JSON object with MSD keys, found {type(data).__name__}")
    training = data.get("training")
    if not isinstance(training, list):
        raise DataError(
            f'{path} has no "training" list; an MSD dataset.json lists image/label pairs under it'
        )
    for i, item in enumerate(training):
        if not (
            isinstance(item, dict)
            and isinstance(item.get("image"), str)
            and isinstance(item.get("label"), str)
        ):
            raise DataError(
                f'{path}: training entry {i} must be {{"image": path, "label": path}}, found {item!r}'
            )
    test = data.get("test", [])
    if not isinstance(test, list) or not all(
        isinstance(t, str) or (isinstance(t, dict) and isinstance(t.get("image"), str)) for t in test
    ):
        raise DataError(f'{path}: "test" must be a list of image paths')
    data["test"] = test
    for key in ("labels", "modality"):
        if key in data and not isinstance(data[key], dict):
            raise DataError(f'{path}: "{key}" must map values to names, e.g. {{"0": "background"}}')
    return data


def load_datalist(
    root: str | os.PathLike[str], *, check_files: bool = True, check_seg_labels: bool = True
) -> dict[str, list[dict[str, Any]]]:
    """Read a dataset into MONAI datalists with absolute paths.

    Any format of :func:`medfcn.data.datasets.read_dataset`: an MSD ``dataset.json``, an nnU-Net v2 raw
    dataset, or a CSV/JSON list of image/label paths. A multi-channel case stored as one file per
    channel (nnU-Net's ``_0000``, ``_0001``) has a list of paths as ``"image"``; MONAI's ``LoadImaged``
    stacks it into channels.

    Args:
        root: the dataset folder, its ``dataset.json``, or a ``.csv``/``.json`` list file.
        check_files: raise if a listed file does not exist (one stat per file).
        check_seg_labels: with ``check_files``, raise if a DICOM SEG label references another series than
            its image's (headers only): training must not learn from a mispaired label. Evaluation scores
            such a case as failed instead, and the others go on.

    Returns:
        ``{"training": [{"image": abs, "label": abs}, ...], "test": [{"image": abs}, ...]}`` plus
        ``"validation"`` when the file defines one; ready for ``monai.data.Dataset``.

    Raises:
        DataError: missing or invalid dataset description, listed files missing, or (``check_seg_labels``)
            a DICOM SEG label of another series than its image's.
    """
    from medfcn.data.datasets import read_dataset

    data = read_dataset(root)
    path = Path(data["source"]).resolve()
    base = path.parent

    def absolute(p: Any) -> Any:
        if isinstance(p, list):
            return [absolute(q) for q in p]
        q = Path(str(p)).expanduser()
        return str(q if q.is_absolute() else (base / q).resolve())

    result: dict[str, list[dict[str, Any]]] = {}
    for key in ("training", "validation", "test"):
        if key == "validation" and key not in data:
            continue
        entries = data.get(key) or []
        result[key] = [
            {k: absolute(v) for k, v in ({"image": e} if isinstance(e, str) else e).items()} for e in entries
        ]
    if check_files:
        listed = [
            p
            for items in result.values()
            for item in items
            for k, v in item.items()
            if k in ("image", "label")
            for p in (v if isinstance(v, list) else [v])
        ]
        missing = [p for p in listed if not Path(p).exists()]
        if missing:
            first = os.path.relpath(missing[0], base)
            raise DataError(
                f"{len(missing)} file(s) listed in {path} are missing (first: {first}); "
                f"run `medfcn data check {path if data.get('format') == 'list' else base}` for the full list"
            )
        if check_seg_labels:
            _check_seg_labels(result, base)
    return result


def _check_seg_labels(result: Mapping[str, list[dict[str, Any]]], base: Path) -> None:
    """Refuse a DICOM SEG label that does not reference its own image's series (headers only)."""
    from medfcn.data.dicom.seg_labels import is_dicom_seg, seg_pairing_error

    images = (".nii", ".nii.gz", ".nrrd", ".mha", ".mhd", ".npz", ".npy")
    for items in result.values():
        for item in items:
            label = item.get("label")
            if not isinstance(label, str) or label.lower().endswith(images) or not Path(label).is_file():
                continue
            if is_dicom_seg(label):
                problem = seg_pairing_error(label, item["image"])
                if problem:
                    raise DataError(problem.replace(str(label), os.path.relpath(label, base), 1))


def split_datalist(
    items: Sequence[T],
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    fold: int | str | None = None,
    num_folds: int = 5,
) -> tuple[list[T], list[T]]:
    """Split items into training and validation sets, deterministically.

    Items are shuffled by a generator seeded with ``seed``. Without ``fold``, the first
    ``round(len * val_fraction)`` (at least 1, leaving at least 1 for training) go to validation. With
    ``fold``, the shuffled items are cut into ``num_folds`` near-equal folds and fold ``fold`` is the
    validation set (k-fold cross-validation: the folds are disjoint and together cover every item).
    Both sets keep the items' original order.

    Args:
        items: datalist entries (any objects).
        val_fraction: share of items for validation, in (0, 1); ignored when ``fold`` is given.
        seed: shuffling seed; the same seed gives the same split.
        fold: k-fold index in ``[0, num_folds)``; ``"all"`` trains on every item and returns fold 0's
            validation items as the (not held-out) validation set, nnU-Net's ``fold all``, for the model that
            ships; ``None`` for a single random split by ``val_fraction``.
        num_folds: number of folds for k-fold.

    Returns:
        ``(train, val)`` lists.

    Raises:
        InputError: fewer than 2 items, a fraction outside (0, 1), or a fold index out of range.
    """
    n = len(items)
    if n < 2:
        raise DataError(f"need at least 2 cases to split into training and validation, got {n}")
    order = np.random.default_rng(seed).permutation(n)
    if fold is None:
        if not 0.0 < val_fraction < 1.0:
            raise InputError(f"val_fraction must be between 0 and 1 (exclusive), got {val_fraction}")
        n_val = min(max(round(n * val_fraction), 1), n - 1)
        val_idx = set(order[:n_val].tolist())
    else:
        if num_folds < 2 or num_folds > n:
            raise InputError(f"num_folds must be between 2 and the number of cases ({n}), got {num_folds}")
        if fold == "all":
            val_idx = set(np.array_split(order, num_folds)[0].tolist())
            return list(items), [item for i, item in enumerate(items) if i in val_idx]
        if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < num_folds:
            raise InputError(f"fold must be 'all' or an integer in [0, {num_folds - 1}], got {fold!r}")
        val_idx = set(np.array_split(order, num_folds)[fold].tolist())
    train = [item for i, item in enumerate(items) if i not in val_idx]
    val = [item for i, item in enumerate(items) if i in val_idx]
    return train, val


def case_id(item: Any) -> str:
    """The case name of a datalist entry: its image file name without the image suffix
    (``{"image": ".../hippocampus_001.nii.gz"}`` -> ``hippocampus_001``; nnU-Net channel lists -> the id
    without ``_0000``)."""
    image = item.get("image", "") if isinstance(item, Mapping) else item
    if isinstance(image, (list, tuple)):
        return re.sub(r"_\d{4}$", "", case_id(image[0])) if image else ""
    name = Path(str(image)).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha", ".mhd", ".dcm"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def split_digest(train: Sequence[Any], val: Sequence[Any]) -> str:
    """sha1 of the sorted case names of a split: the same digest means the same split (recorded in
    ``split.json`` and MLflow, where case names never go)."""
    import hashlib

    names = {"train": sorted(case_id(i) for i in train), "val": sorted(case_id(i) for i in val)}
    return hashlib.sha1(json.dumps(names).encode()).hexdigest()
