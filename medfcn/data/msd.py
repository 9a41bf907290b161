"""Medical Segmentation Decathlon (MSD) datasets: read, split, check, download.

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
import tarfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from medfcn._io import atomic_dir
from medfcn.data.datasets import HOW_TO_GET_DATA
from medfcn.errors import DataError, InputError, one_line

__all__ = [
    "DatasetCheck",
    "Fingerprint",
    "Problem",
    "case_id",
    "check_dataset",
    "download_msd",
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


_HOW_TO_GET_DATA = HOW_TO_GET_DATA


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
        hint = _HOW_TO_GET_DATA.format(root=folder, parent=folder.parent)
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


# ----------------------------------------------------------------------------------------------- checking


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: the file (relative to the dataset root) and what is wrong."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass(frozen=True)
class Fingerprint:
    """Summary statistics of a dataset, the numbers a training plan is derived from.

    Attributes:
        median_spacing: mm per array axis, median over training images.
        min_spacing, max_spacing: mm per array axis, extremes over training and test images.
        median_shape: voxels per array axis, median over training images.
        intensity: per modality key (``"0"``...), percentiles 0.5/50/99.5 plus mean and std of the image
            values inside the foreground (label > 0) of the training cases.
        label_voxels: label value -> voxel count over all training labels.
    """

    median_spacing: tuple[float, ...]
    min_spacing: tuple[float, ...]
    max_spacing: tuple[float, ...]
    median_shape: tuple[int, ...]
    intensity: dict[str, dict[str, float]]
    label_voxels: dict[int, int]


@dataclass
class DatasetCheck:
    """Result of :func:`check_dataset`.

    Attributes:
        root: the dataset folder.
        name: ``name`` from dataset.json.
        modality: modality key -> name (``{"0": "CT"}``).
        labels: label value -> name.
        num_training, num_test: entries listed in dataset.json.
        problems: every problem found, one per file and issue.
        fingerprint: statistics of the readable cases (``None`` if none could be read).
    """

    root: Path
    name: str
    modality: dict[str, str]
    labels: dict[int, str]
    num_training: int
    num_test: int
    problems: list[Problem] = field(default_factory=list)
    fingerprint: Fingerprint | None = None

    @property
    def ok(self) -> bool:
        """True when no problem was found."""
        return not self.problems


def _header(path: Path) -> Any:
    """Open a NIfTI lazily (nibabel reads the header; voxels stay on disk until asked for)."""
    import nibabel as nib

    return nib.load(str(path))


def _spacing(img: Any) -> tuple[float, ...]:
    return tuple(round(float(z), 6) for z in img.header.get_zooms()[:3])


def check_dataset(
    root: str | os.PathLike[str],
    *,
    max_intensity_samples: int = 20_000,
    seed: int = 0,
    affine_atol: float = 1e-3,
) -> DatasetCheck:
    """Verify an MSD dataset before training and compute its fingerprint.

    Checks every training pair (both files exist and load; image is 3D, or 4D with one channel per
    modality; label is 3D; same spatial shape; affines equal within ``affine_atol`` mm; label values are
    whole numbers declared in ``labels``) and every test image (exists, loads, 3D/4D). Problems are
    collected, never raised one by one. Headers are read lazily; voxel data is read only for labels and,
    for the intensity statistics, images of consistent pairs.

    Args:
        root: the dataset folder, or its ``dataset.json``.
        max_intensity_samples: foreground voxels sampled per case for the intensity percentiles
            (bounds memory on large datasets, as nnU-Net does).
        seed: seed of that sampling.
        affine_atol: tolerance in mm when comparing image and label affines.

    Returns:
        A :class:`DatasetCheck`; ``.ok`` is False when any problem was found.

    Raises:
        DataError: ``dataset.json`` is missing or invalid (nothing else can be checked).
    """
    from medfcn.data.datasets import read_dataset

    data = read_dataset(root)  # MSD, nnU-Net v2 raw, or a CSV/JSON list
    json_path = Path(data["source"]).resolve()
    base = json_path.parent
    problems: list[Problem] = []
    is_list = data.get("format") == "list"

    def rel(path: Path) -> str:
        try:
            return str(path.relative_to(base))
        except ValueError:
            return str(path)

    modality = {str(k): str(v) for k, v in dict(data.get("modality") or {"0": "unknown"}).items()}
    labels: dict[int, str] = {}
    for key, value in dict(data.get("labels") or {}).items():
        try:
            labels[int(key)] = str(value)
        except ValueError:
            problems.append(Problem("dataset.json", f"label key {key!r} is not an integer"))
    if not labels and not is_list:  # a plain list of paths names no classes
        problems.append(
            Problem("dataset.json", 'no "labels" declared; expected e.g. {"0": "background", "1": ...}')
        )
    for key, listed in (("numTraining", data["training"]), ("numTest", data["test"])):
        if key in data and data[key] != len(listed):
            problems.append(
                Problem("dataset.json", f"{key} is {data[key]} but {len(listed)} entries are listed")
            )
    if not data["training"]:
        problems.append(Problem("dataset.json", "the training list is empty"))

    n_modalities = len(modality)
    rng = np.random.default_rng(seed)
    train_spacings: list[tuple[float, ...]] = []
    all_spacings: list[tuple[float, ...]] = []
    shapes: list[tuple[int, ...]] = []
    samples: dict[str, list[np.ndarray]] = {m: [] for m in modality}
    label_voxels: dict[int, int] = {}

    def open_image(path: Path, channels: int | None = None) -> Any | None:
        n_expected = n_modalities if channels is None else channels
        if not path.is_file():
            problems.append(Problem(rel(path), "file is missing"))
            return None
        try:
            img = _header(path)
        except Exception as err:  # nibabel raises several unrelated types for unreadable files
            problems.append(Problem(rel(path), f"cannot be read as NIfTI ({type(err).__name__}: {err})"))
            return None
        if img.ndim == 3 or (
            img.ndim == 4 and (img.shape[3] == n_expected or (is_list and channels is None))
        ):
            return img
        expected = "3D" if n_expected == 1 else f"3D or 4D with {n_expected} channels (one per modality)"
        problems.append(Problem(rel(path), f"expected a {expected} image, found shape {img.shape}"))
        return None

    def open_case(entry: Any) -> tuple[Path, Any | None, list[Any]]:
        """The first (or only) image file of a case, its header, and the headers of all its channel files."""
        if not isinstance(entry, list):
            one = open_image(base / entry)
            return base / entry, one, [one] if one is not None else []
        paths = [base / p for p in entry]  # one 3D file per channel (nnU-Net's _0000, _0001, ...)
        opened = [open_image(p, channels=1) for p in paths]
        imgs = [i for i in opened if i is not None]
        if len(imgs) != len(opened):
            return paths[0], None, []
        for p, i in zip(paths[1:], imgs[1:], strict=True):
            if tuple(i.shape) != tuple(imgs[0].shape) or not np.allclose(
                i.affine, imgs[0].affine, atol=affine_atol
            ):
                problems.append(
                    Problem(rel(p), f"shape or affine differs from the case's first channel {rel(paths[0])}")
                )
                return paths[0], None, []
        return paths[0], imgs[0], imgs

    for item in data["training"]:
        image_path, img, channel_imgs = open_case(item["image"])
        label_path, lab = base / item["label"], None
        if not label_path.is_file():
            problems.append(Problem(rel(label_path), "label file is missing"))
        else:
            try:
                lab = _header(label_path)
            except Exception as err:  # as above
                problems.append(
                    Problem(rel(label_path), f"cannot be read as NIfTI ({type(err).__name__}: {err})")
                )
        if lab is not None and lab.ndim != 3:
            problems.append(Problem(rel(label_path), f"expected a 3D label, found shape {lab.shape}"))
            lab = None
        if img is not None:
            spacing = _spacing(img)
            train_spacings.append(spacing)
            all_spacings.append(spacing)
            shapes.append(tuple(int(s) for s in img.shape[:3]))
        if lab is None:
            continue
        try:
            label_data = np.asanyarray(lab.dataobj)
        except Exception as err:  # truncated gzip streams and the like
            problems.append(
                Problem(rel(label_path), f"voxel data cannot be read ({type(err).__name__}: {err})")
            )
            continue
        values, counts = np.unique(label_data, return_counts=True)
        if not np.all(np.mod(values, 1) == 0):
            problems.append(Problem(rel(label_path), "label values must be whole numbers, found fractions"))
        else:
            unexpected = sorted(int(v) for v in values if int(v) not in labels)
            if unexpected and labels:
                problems.append(
                    Problem(
                        rel(label_path),
                        f"label values {unexpected} are not declared in dataset.json labels {sorted(labels)}",
                    )
                )
            for v, c in zip(values.tolist(), counts.tolist(), strict=True):
                label_voxels[int(v)] = label_voxels.get(int(v), 0) + int(c)
        if img is None:
            continue
        if tuple(img.shape[:3]) != tuple(lab.shape):
            problems.append(
                Problem(
                    rel(label_path), f"shape {tuple(lab.shape)} differs from its image {tuple(img.shape[:3])}"
                )
            )
            continue
        if not np.allclose(img.affine, lab.affine, rtol=0.0, atol=affine_atol):
            diff = float(np.abs(img.affine - lab.affine).max())
            problems.append(
                Problem(
                    rel(label_path),
                    f"affine differs from its image by up to {diff:.4g} mm (voxels would not overlay)",
                )
            )
            continue
        fg = np.flatnonzero(label_data > 0)
        if fg.size == 0:
            continue
        if fg.size > max_intensity_samples:
            fg = rng.choice(fg, size=max_intensity_samples, replace=False)
        try:
            image_data = (
                np.stack([np.asanyarray(i.dataobj) for i in channel_imgs], axis=-1)
                if len(channel_imgs) > 1
                else np.asanyarray(img.dataobj)
            )
        except Exception as err:  # as above
            problems.append(
                Problem(rel(image_path), f"voxel data cannot be read ({type(err).__name__}: {err})")
            )
            continue
        if image_data.dtype.kind == "f":  # integer voxels are always finite; skip the pass over them
            n_bad = int(image_data.size - np.count_nonzero(np.isfinite(image_data)))
            if n_bad:
                # One NaN turns every loss and gradient it touches into NaN: training would silently fail.
                problems.append(
                    Problem(
                        rel(image_path),
                        f"{n_bad} non-finite voxel(s) (NaN/inf) in the image; replace or mask them before training",
                    )
                )
        for c, key in enumerate(modality):
            channel = image_data if image_data.ndim == 3 else image_data[..., c]
            values = np.asarray(channel.reshape(-1)[fg], dtype=np.float64)
            samples[key].append(values[np.isfinite(values)])

    for entry in data["test"]:
        _, img, _ = open_case(entry if isinstance(entry, (str, list)) else entry["image"])
        if img is not None:
            all_spacings.append(_spacing(img))

    fingerprint = None
    if train_spacings:
        intensity: dict[str, dict[str, float]] = {}
        for key, chunks in samples.items():
            if not chunks:
                continue
            values = np.concatenate(chunks)
            p005, p50, p995 = np.percentile(values, [0.5, 50.0, 99.5])
            intensity[key] = {
                "p0.5": float(p005),
                "p50": float(p50),
                "p99.5": float(p995),
                "mean": float(values.mean()),
                "std": float(values.std()),
            }
        spacing_arr = np.asarray(all_spacings)
        fingerprint = Fingerprint(
            median_spacing=tuple(float(v) for v in np.median(np.asarray(train_spacings), axis=0)),
            min_spacing=tuple(float(v) for v in spacing_arr.min(axis=0)),
            max_spacing=tuple(float(v) for v in spacing_arr.max(axis=0)),
            median_shape=tuple(round(float(v)) for v in np.median(np.asarray(shapes), axis=0)),
            intensity=intensity,
            label_voxels=dict(sorted(label_voxels.items())),
        )
    return DatasetCheck(
        root=base,
        name=str(data.get("name", base.name)),
        modality=modality,
        labels=labels,
        num_training=len(data["training"]),
        num_test=len(data["test"]),
        problems=problems,
        fingerprint=fingerprint,
    )


# ----------------------------------------------------------------------------------------------- download


def download_msd(
    task: str,
    root: str | os.PathLike[str],
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    keep_archive: bool = False,
) -> Path:
    """Download and extract an MSD task (e.g. ``Task03_Liver``) with MONAI's download utilities.

    The archive is fetched into ``root`` (MONAI downloads to a temporary file first), its md5 verified,
    and extracted into a temporary folder inside ``root`` that is renamed to ``root/<task>`` only once
    complete. If ``root/<task>/dataset.json`` already exists nothing is downloaded.

    Args:
        task: MSD task name, one of :func:`msd_tasks` unless ``url`` is given.
        root: folder that receives ``<task>/``.
        url: override the download URL: a mirror, or an archive already on disk (a path or ``file://``
            URI; it is verified and extracted, never moved or deleted).
        md5: expected md5 of the archive; defaults to MONAI's for known tasks, unchecked otherwise.
        progress: show MONAI's download progress bar.
        keep_archive: keep ``root/<task>.tar`` after extraction (the liver task is about 27 GB).

    Returns:
        ``root/<task>``, holding ``dataset.json`` and the images.

    Raises:
        DataError: unknown task without ``url``, download failure (offline, HTTP error), md5 mismatch,
            or an archive that does not contain ``<task>/dataset.json``.
    """
    root = Path(root)
    target = root / task
    if (target / "dataset.json").is_file():
        return target
    tasks = msd_tasks()
    if url is None:
        if task not in tasks:
            raise DataError(
                f"unknown MSD task {task!r}; choose one of {', '.join(sorted(tasks))} or pass --url"
            )
        url = tasks[task][0]
    if md5 is None and task in tasks:
        md5 = tasks[task][1]
    if target.exists():
        raise DataError(f"{target} exists but has no dataset.json; remove or rename it, then download again")
    root.mkdir(parents=True, exist_ok=True)
    local = _local_archive(url)
    archive = local if local is not None else root / f"{task}.tar"
    with atomic_dir(target) as staging:  # all or nothing: an interrupted download leaves no half dataset
        if local is not None:
            _extract_local(task, local, staging, md5)
        else:
            _download(task, url, archive, staging, md5, progress)
        extracted = staging / task
        if not (extracted / "dataset.json").is_file():
            found = sorted(p.name for p in staging.iterdir())
            raise DataError(f"the archive from {url} has no {task}/dataset.json (top level holds {found})")
        # the archive's one top folder, <task>/, becomes the target itself
        for entry in list(extracted.iterdir()):
            entry.rename(staging / entry.name)
        extracted.rmdir()
    if local is None and not keep_archive:
        archive.unlink(missing_ok=True)
    return target


def _local_archive(url: str) -> Path | None:
    """The local file behind ``url`` (``file://`` URI or plain path), or None for a network URL."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(url) if "://" not in url else None  # no scheme: a path on disk


def _md5_mismatch(task: str, source: str, md5: str | None) -> DataError:
    return DataError(
        f"{task} from {source} does not match md5 {md5}; the file is corrupt or another version: "
        "download it again or pass the right --md5"
    )


def _extract_local(task: str, archive: Path, staging: Path, md5: str | None) -> None:
    """Verify and extract an archive the user already has (it is never modified or removed)."""
    from monai.apps.utils import check_hash, extractall

    if not archive.is_file():
        raise DataError(f"{archive} does not exist; pass the path of the downloaded {task}.tar")
    if md5 and not check_hash(archive, md5, "md5"):
        raise _md5_mismatch(task, str(archive), md5)
    try:
        extractall(archive, staging, file_type="tar")
    except (OSError, ValueError, RuntimeError, tarfile.TarError) as err:
        raise DataError(
            f"cannot extract {archive} ({type(err).__name__}: {err}); is it a .tar archive?"
        ) from err


def _download(task: str, url: str, archive: Path, staging: Path, md5: str | None, progress: bool) -> None:
    """Fetch with MONAI (temp file, then md5 check) and extract into ``staging``."""
    from monai.apps import download_and_extract
    from monai.apps.utils import HashCheckError

    try:
        download_and_extract(
            url,
            filepath=archive,
            output_dir=staging,
            hash_val=md5,
            hash_type="md5",
            file_type="tar",
            progress=progress,
        )
    # Network libraries, OSError, tarfile and MONAI's RuntimeError/ValueError all mean "it failed"; each
    # becomes one DataError that keeps the reason.
    except Exception as err:
        reason = one_line(err)
        if isinstance(err, HashCheckError):
            archive.unlink(missing_ok=True)  # a corrupt archive must not be trusted by the next run
            raise _md5_mismatch(task, url, md5) from err
        raise DataError(
            f"could not download {task} from {url}: {reason}; check your network or download it by "
            "hand and pass --data"
        ) from err
