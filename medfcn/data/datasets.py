"""Dataset formats beside the MSD layout: nnU-Net v2 raw, and plain CSV or JSON lists of image/label paths.

Every format is read into one normalised description, the MSD ``dataset.json`` shape that the rest of
medfcn uses (``training``: ``{"image", "label"}`` items, ``test``: images, ``labels``: value -> name,
``modality``: channel -> name), with ``"image"`` a path or, for several channels in separate files, a
list of paths (MONAI's ``LoadImaged`` stacks such a list into channels).

* **MSD** (``medfcn.data.msd``): ``dataset.json`` with a ``training`` list.
* **nnU-Net v2 raw**: ``dataset.json`` with ``channel_names``, ``labels`` (name -> value) and
  ``file_ending``; ``imagesTr/<case>_0000<file_ending>``, ``<case>_0001...`` one file per channel,
  ``labelsTr/<case><file_ending>``, optional ``imagesTs/``. A ``dataset`` mapping of
  ``{case: {"images": [...], "label": ...}}`` (nnU-Net's alternative to the folders) is honoured.
* **CSV**: a header with ``image`` and ``label`` columns (``label`` may be empty for unlabelled
  cases); several channels as ``image_0000``, ``image_0001``, ... columns.
* **JSON list**: ``[{"image": path or [paths], "label": path}, ...]``.

Relative paths are relative to the folder of the ``dataset.json`` / list file.

Example:
    >>> from medfcn.data.datasets import read_dataset
    >>> desc = read_dataset("data/Dataset004_Hippocampus")  # doctest: +SKIP
    >>> desc["format"], len(desc["modality"]), desc["training"][0]  # doctest: +SKIP
    ('nnunet', 1, {'image': ['imagesTr/hippocampus_001_0000.nii.gz'], 'label': 'labelsTr/hippocampus_001.nii.gz'})
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from medfcn.errors import DataError, one_line

__all__ = [
    "HOW_TO_GET_DATA",
    "DatasetFormat",
    "count_channels",
    "dataset_source",
    "read_dataset",
    "read_list",
    "read_nnunet",
]

DatasetFormat = Literal["msd", "nnunet", "list"]

HOW_TO_GET_DATA = (
    "create a synthetic one with `medfcn data synth --output {root}` "
    "or fetch the real one with `medfcn data download Task03_Liver --output {parent}`"
)
"""What to do when there is no dataset (``{root}``: the folder asked for, ``{parent}``: its parent)."""

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")
_EXPECTED = (
    'an MSD dataset.json (a "training" list), an nnU-Net v2 raw dataset.json (channel_names, labels, '
    "file_ending), or a CSV/JSON list of image/label paths"
)


def dataset_source(root: str | os.PathLike[str]) -> Path:
    """The file that describes the dataset at ``root``: ``root/dataset.json``, or ``root`` if it is a file.

    Raises:
        DataError: nothing there (the message says what was expected).
    """
    path = Path(root)
    if path.is_file():
        return path
    if (path / "dataset.json").is_file():
        return path / "dataset.json"
    what = "folder does not exist" if not path.exists() else "dataset.json is missing"
    hint = HOW_TO_GET_DATA.format(root=path, parent=path.parent)
    raise DataError(f"no dataset at {path}: {what}; expected {_EXPECTED}; {hint}")


def _load_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DataError(
            f"{path} is not valid JSON ({one_line(err)}); expected {_EXPECTED}"
        ) from err


def read_dataset(root: str | os.PathLike[str]) -> dict[str, Any]:
    """Read any supported dataset into the normalised description (see the module docstring).

    Returns:
        A dict with ``format``, ``name``, ``labels`` (``{"0": "background", ...}``), ``modality``
        (``{"0": "CT", ...}``), ``training`` and ``test`` (paths relative to ``source``'s folder, or
        absolute) and ``source`` (the describing file).

    Raises:
        DataError: unknown format, or a malformed file (one line naming the file and what was expected).
    """
    from medfcn.data.msd import read_dataset_json

    path = dataset_source(root)
    if path.suffix.lower() == ".csv":
        return read_list(path)
    data = _load_json(path)
    if isinstance(data, list) and path.name != "dataset.json":
        return read_list(path)
    if not isinstance(data, dict) or "training" in data:  # MSD (or its own one-line error)
        desc = dict(read_dataset_json(path))
        desc.setdefault("format", "msd")
        desc["source"] = str(path)
        return desc
    if isinstance(data, dict) and ("channel_names" in data or "file_ending" in data):
        return read_nnunet(path, data)
    raise DataError(
        f'{path} has no "training" list (MSD) and no "channel_names"/"file_ending" (nnU-Net v2 raw); '
        f"expected {_EXPECTED}"
    )


def read_nnunet(path: str | os.PathLike[str], data: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Read an nnU-Net v2 raw dataset (``dataset.json`` and ``imagesTr``/``labelsTr``/``imagesTs``).

    Raises:
        DataError: missing keys, labels that are regions (nnU-Net's ``regions_class_order``), channel
            files missing for a case, or a label without images.
    """
    file = Path(path)
    base = file.parent
    raw = dict(data) if data is not None else _load_json(file)
    channels, labels, ending = raw.get("channel_names"), raw.get("labels"), raw.get("file_ending")
    if not isinstance(channels, Mapping) or not channels:
        raise DataError(f'{file}: nnU-Net v2 needs "channel_names", e.g. {{"0": "CT"}} (found {channels!r})')
    if not isinstance(labels, Mapping) or not labels:
        raise DataError(f'{file}: nnU-Net v2 needs "labels", e.g. {{"background": 0, "liver": 1}}')
    if not isinstance(ending, str) or not ending.startswith("."):
        raise DataError(f'{file}: nnU-Net v2 needs "file_ending", e.g. ".nii.gz" (found {ending!r})')
    if "regions_class_order" in raw or any(not isinstance(v, int) for v in labels.values()):
        raise DataError(
            f"{file}: region-based labels (lists of values, regions_class_order) are not supported; "
            'give each class one integer value ("labels": {"background": 0, "tumour": 1})'
        )
    n_ch = len(channels)
    training: list[dict[str, Any]] = []
    if isinstance(raw.get("dataset"), Mapping):
        for case, entry in raw["dataset"].items():
            images = entry.get("images") if isinstance(entry, Mapping) else None
            if not isinstance(images, list) or len(images) != n_ch or not isinstance(entry.get("label"), str):
                raise DataError(f'{file}: "dataset" entry {case!r} needs "images" ({n_ch} paths) and "label"')
            training.append({"image": [str(p) for p in images], "label": str(entry["label"])})
    else:
        training = [
            {"image": images, "label": f"labelsTr/{case}{ending}"}
            for case, images in _cases(base / "imagesTr", ending, n_ch, file, base / "labelsTr").items()
        ]
    test = [{"image": images} for images in _cases(base / "imagesTs", ending, n_ch, file, None).values()]
    return {
        "format": "nnunet",
        "name": str(raw.get("name") or base.name),
        "description": str(raw.get("description", "")),
        "labels": {str(int(v)): str(k) for k, v in sorted(labels.items(), key=lambda kv: kv[1])},
        "modality": {str(k): str(v) for k, v in sorted(channels.items(), key=lambda kv: int(kv[0]))},
        "numTraining": raw.get("numTraining", len(training)),
        "training": training,
        "test": test,
        "file_ending": ending,
        "source": str(file),
    }


def _cases(folder: Path, ending: str, n_ch: int, file: Path, labels: Path | None) -> dict[str, list[str]]:
    """case -> its channel files (relative to the dataset root) in ``folder``; labels checked to match."""
    if not folder.is_dir():
        if labels is not None:
            raise DataError(f"{folder} not found: an nnU-Net v2 raw dataset keeps its training images there")
        return {}
    found: dict[str, dict[int, str]] = {}
    for p in sorted(folder.iterdir()):
        if not p.name.endswith(ending) or p.name.startswith("."):
            continue
        m = _CHANNEL.match(p.name[: -len(ending)])
        if m is None:
            raise DataError(
                f"{p}: nnU-Net v2 image names end in a 4-digit channel suffix, e.g. "
                f"{p.name[: -len(ending)]}_0000{ending}"
            )
        found.setdefault(m["case"], {})[int(m["ch"])] = f"{folder.name}/{p.name}"
    out: dict[str, list[str]] = {}
    for case, files in found.items():
        missing = [c for c in range(n_ch) if c not in files]
        if missing:
            raise DataError(
                f"{folder / case}: channel file(s) {', '.join(f'_{c:04d}{ending}' for c in missing)} missing; "
                f"{file.name} declares {n_ch} channel(s) (channel_names)"
            )
        out[case] = [files[c] for c in range(n_ch)]
    if labels is not None:
        if not labels.is_dir():
            raise DataError(f"{labels} not found: an nnU-Net v2 raw dataset keeps its training labels there")
        for p in sorted(labels.iterdir()):
            stem = p.name[: -len(ending)] if p.name.endswith(ending) else None
            if stem is not None and not p.name.startswith(".") and stem not in out:
                raise DataError(f"{p}: label without images (expected {folder.name}/{stem}_0000{ending})")
    return out


def read_list(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a CSV (``image``/``label`` columns) or a JSON list (``[{"image", "label"}, ...]``).

    Items with a label are the training cases; items without one are test images.

    Raises:
        DataError: a missing column or key, an empty list (one line naming the file and the row).
    """
    file = Path(path)
    items: list[dict[str, Any]] = []
    if file.suffix.lower() == ".csv":
        try:
            with file.open(newline="", encoding="utf-8") as fh:
                reader = csv.DictReader(fh)
                columns = [c.strip() for c in reader.fieldnames or []]
                image_cols = (
                    ["image"]
                    if "image" in columns
                    else sorted(c for c in columns if re.fullmatch(r"image_\d{4}", c))
                )
                if not image_cols:
                    raise DataError(
                        f"{file}: expected a header with an image column (and label), found {columns}"
                    )
                for row in reader:
                    clean = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                    images = [clean[c] for c in image_cols]
                    if not all(images):
                        raise DataError(f"{file}, line {reader.line_num}: empty image path")
                    item: dict[str, Any] = {"image": images[0] if len(images) == 1 else images}
                    if clean.get("label"):
                        item["label"] = clean["label"]
                    items.append(item)
        except (OSError, UnicodeDecodeError, csv.Error) as err:
            raise DataError(f"cannot read {file} as CSV ({err})") from err
    else:
        data = _load_json(file)
        if not isinstance(data, list):
            raise DataError(f'{file}: expected a JSON list of {{"image": path, "label": path}}; {_EXPECTED}')
        for i, entry in enumerate(data):
            image = entry.get("image") if isinstance(entry, Mapping) else None
            ok = isinstance(image, str) or (
                isinstance(image, list) and image and all(isinstance(p, str) for p in image)
            )
            if not ok or not isinstance(entry.get("label", ""), str):
                raise DataError(
                    f'{file}: entry {i} must be {{"image": path or [paths], "label": path}}, found {entry!r}'
                )
            items.append({k: entry[k] for k in ("image", "label") if k in entry})
    if not items:
        raise DataError(f"{file} lists no cases; expected one image/label pair per row")
    n = {len(i["image"]) if isinstance(i["image"], list) else 1 for i in items}
    if len(n) > 1:
        raise DataError(f"{file}: cases have different numbers of channel files ({sorted(n)})")
    return {
        "format": "list",
        "name": file.stem,
        "labels": {},
        "modality": {str(c): f"channel_{c}" for c in range(n.pop())},
        "training": [i for i in items if "label" in i],
        "test": [{"image": i["image"]} for i in items if "label" not in i],
        "source": str(file),
    }


def count_channels(root: str | os.PathLike[str]) -> int:
    """Input channels of a dataset's images: files per case, or the 4th axis of a 4D NIfTI.

    Raises:
        DataError: as :func:`read_dataset`.
    """
    desc = read_dataset(root)
    items = desc["training"] or desc["test"]
    if not items:
        return max(1, len(desc.get("modality") or {}))
    image = items[0]["image"]
    if isinstance(image, list):
        return len(image)
    base = Path(desc["source"]).parent
    p = Path(image) if Path(image).is_absolute() else base / image
    try:
        import nibabel as nib

        shape = tuple(getattr(nib.load(str(p)), "shape", ()))
    except Exception:  # not NIfTI (a DICOM folder, .mha): one channel, as the readers make it
        return 1
    return int(shape[3]) if len(shape) == 4 else 1
