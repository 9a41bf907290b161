"""Is a dataset usable for training? :func:`check_dataset` verifies every image/label pair of an MSD,
nnU-Net v2 raw or CSV/JSON-listed dataset (files load, shapes and geometry agree, labels are declared) and
computes its fingerprint (spacing, shape, foreground intensities, label counts), reporting every problem
rather than stopping at the first; ``medfcn data check`` prints it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medfcn.errors import one_line

__all__ = ["DatasetCheck", "Fingerprint", "Problem", "check_dataset"]


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
            problems.append(Problem(rel(path), f"cannot be read as NIfTI ({one_line(err, typed=True)})"))
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
                    Problem(rel(label_path), f"cannot be read as NIfTI ({one_line(err, typed=True)})")
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
                Problem(rel(label_path), f"voxel data cannot be read ({one_line(err, typed=True)})")
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
                Problem(rel(image_path), f"voxel data cannot be read ({one_line(err, typed=True)})")
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
