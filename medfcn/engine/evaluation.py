"""Held-out evaluation of a bundle: Dice and 95% Hausdorff distance per class per case.

The prediction comes from the bundle's own inference pipeline (:class:`medfcn.engine.inference.Segmenter`:
the bundle's preprocessing, sliding-window inferer and postprocessing, inverted to the scan's grid), so
what is measured is exactly what ``medfcn infer`` produces. Metrics are MONAI's ``DiceMetric`` and
``HausdorffDistanceMetric(percentile=95)`` computed on the **source grid** of each labelled case, with the
voxel spacing of its affine so HD95 is in millimetres.

Which cases (``split``):

* ``"val"`` — the validation part of the training cases, ``medfcn.data.msd.split_datalist(training,
  val_fraction=..., seed=...)``: the same function, fraction and seed the training uses, so these cases
  were never trained on (pass the ``seed``/``val_fraction`` you trained with).
* ``"test"`` — labelled held-out cases outside the training list: the dataset.json ``"validation"`` list
  when it exists, else the ``"test"`` images that have a label of the same file name in ``labelsTs/``.
  Falls back to an error naming what is missing (MSD test images ship without labels).
* ``"all"`` — every labelled case in dataset.json (training included: an optimistic figure).

Conventions for empty structures (both are reported, never dropped): a class absent from both the
prediction and the ground truth scores Dice 1 and HD95 0 mm; a class present in only one of them scores
Dice 0 and HD95 ``inf``. Summaries (mean ± sd) are over the finite values, with the number of ``inf``
cases stated beside them.

Example:
    >>> result = evaluate("bundles/liver", "data/Task03_Liver", split="val")  # doctest: +SKIP
    >>> print(format_summary(result))  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medfcn._io import atomic_write_text
from medfcn.errors import DataError, InputError, one_line

if TYPE_CHECKING:  # pragma: no cover
    from medfcn.engine.inference import Segmenter

__all__ = [
    "CSV_FIELDS",
    "CaseMetrics",
    "ClassSummary",
    "EvaluationResult",
    "Split",
    "case_metrics",
    "evaluate",
    "format_summary",
    "select_cases",
    "summarise",
    "write_csv",
]

logger = logging.getLogger(__name__)

Split = Literal["test", "val", "all"]
CSV_FIELDS = ["case", "class", "dice", "hd95_mm"]


@dataclass(frozen=True)
class CaseMetrics:
    """Metrics of one class in one case.

    Attributes:
        case: case name (image file name without ``.nii.gz``; dataset file names are not patient data).
        class_name: class name from the bundle metadata (e.g. ``liver``).
        dice: Dice coefficient in [0, 1].
        hd95_mm: 95th percentile symmetric Hausdorff distance in mm (``inf`` when one mask is empty).
    """

    case: str
    class_name: str
    dice: float
    hd95_mm: float


@dataclass(frozen=True)
class ClassSummary:
    """Mean ± sd of one class over the cases (finite values only; ``n_inf`` counts the others)."""

    class_name: str
    n: int
    dice_mean: float
    dice_sd: float
    hd95_mean: float
    hd95_sd: float
    n_inf: int


@dataclass
class EvaluationResult:
    """What :func:`evaluate` measured.

    Attributes:
        split: the split evaluated.
        rows: one :class:`CaseMetrics` per case and foreground class.
        summary: one :class:`ClassSummary` per foreground class.
        failed: ``(case, reason)`` of cases that could not be evaluated (unreadable, shape mismatch).
        csv_path: where the CSV was written, if it was.
        seconds: wall-clock time (s).
    """

    split: str
    rows: list[CaseMetrics]
    summary: list[ClassSummary]
    failed: list[tuple[str, str]] = field(default_factory=list)
    csv_path: Path | None = None
    seconds: float = 0.0


# ----------------------------------------------------------------------------------------------- metrics


def _one_hot(label: np.ndarray, num_classes: int) -> Any:
    """``(X, Y, Z)`` integer labels -> ``(1, C, X, Y, Z)`` float one-hot tensor (MONAI's metric input)."""
    import torch
    from monai.networks.utils import one_hot

    t = torch.as_tensor(np.asarray(label, dtype=np.int64))
    if t.numel() and (int(t.min()) < 0 or int(t.max()) >= num_classes):
        raise InputError(
            f"label values must be in [0, {num_classes - 1}], found {int(t.min())}..{int(t.max())}"
        )
    return one_hot(t[None, None], num_classes, dim=1)  # MONAI's: float32, (1, C, *spatial)


def case_metrics(
    pred: np.ndarray,
    truth: np.ndarray,
    spacing: Sequence[float],
    num_classes: int,
) -> list[tuple[int, float, float]]:
    """Dice and HD95 (mm) of each foreground class of one case.

    Args:
        pred: ``(X, Y, Z)`` integer label map (or ``(1, X, Y, Z)``), values in ``[0, num_classes)``.
        truth: ground truth, same shape.
        spacing: voxel size in mm along the array axes ``(X, Y, Z)``.
        num_classes: number of classes including background (0).

    Returns:
        ``[(class_index, dice, hd95_mm), ...]`` for classes ``1..num_classes-1`` (see the module docstring
        for empty structures).

    Raises:
        InputError: shapes differ or label values are out of range.
    """
    import warnings

    from monai.metrics import DiceMetric, HausdorffDistanceMetric

    p = np.squeeze(np.asarray(pred))
    t = np.squeeze(np.asarray(truth))
    if p.shape != t.shape:
        raise InputError(f"prediction shape {p.shape} differs from label shape {t.shape}")
    if len(spacing) != p.ndim:
        raise InputError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {p.ndim}D label map")
    yp, yt = _one_hot(p, num_classes), _one_hot(t, num_classes)
    # ignore_empty=False: a class absent from both masks is a correct prediction (Dice 1), not "no value".
    dice: Any = DiceMetric(include_background=False, reduction="none", ignore_empty=False)(yp, yt)
    with warnings.catch_warnings():
        # MONAI warns for every empty mask; the convention below handles those cases explicitly.
        warnings.simplefilter("ignore")
        hd: Any = HausdorffDistanceMetric(include_background=False, percentile=95, reduction="none")(
            yp, yt, spacing=[float(s) for s in spacing]
        )
    out = []
    for c in range(1, num_classes):
        in_p, in_t = bool((p == c).any()), bool((t == c).any())
        d = float(dice[0, c - 1])
        if not in_p and not in_t:
            h = 0.0
        elif in_p != in_t:
            h = math.inf
        else:
            h = float(hd[0, c - 1])
        out.append((c, d, h))
    return out


def summarise(rows: Sequence[CaseMetrics], class_names: Sequence[str]) -> list[ClassSummary]:
    """Mean ± sd (population sd, ``ddof=0``) per class over finite values; ``n_inf`` counts infinite HD95."""
    result = []
    for name in class_names:
        sel = [r for r in rows if r.class_name == name]
        dice = np.array([r.dice for r in sel if math.isfinite(r.dice)], dtype=np.float64)
        hd = np.array([r.hd95_mm for r in sel if math.isfinite(r.hd95_mm)], dtype=np.float64)
        result.append(
            ClassSummary(
                class_name=name,
                n=len(sel),
                dice_mean=float(dice.mean()) if dice.size else math.nan,
                dice_sd=float(dice.std()) if dice.size else math.nan,
                hd95_mean=float(hd.mean()) if hd.size else math.nan,
                hd95_sd=float(hd.std()) if hd.size else math.nan,
                n_inf=sum(1 for r in sel if math.isinf(r.hd95_mm)),
            )
        )
    return result


def format_summary(result: EvaluationResult) -> str:
    """A plain-text table: class, cases, Dice mean ± sd, HD95 mean ± sd (mm), cases with an empty mask."""
    lines = [
        f"{'class':<14} {'cases':>5}  {'dice (mean ± sd)':>17}  {'hd95 mm (mean ± sd)':>20}  {'hd95 inf':>8}"
    ]
    for s in result.summary:
        lines.append(
            f"{s.class_name:<14} {s.n:>5}  {s.dice_mean:>8.4f} ± {s.dice_sd:<6.4f}  "
            f"{s.hd95_mean:>9.2f} ± {s.hd95_sd:<8.2f}  {s.n_inf:>8}"
        )
    return "\n".join(lines)


def write_csv(rows: Sequence[CaseMetrics], path: str | os.PathLike[str]) -> Path:
    """Write ``case,class,dice,hd95_mm`` rows atomically (temp file in the same folder, then rename)."""
    out = Path(path)
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(CSV_FIELDS)
    for r in rows:
        writer.writerow([r.case, r.class_name, f"{r.dice:.6f}", f"{r.hd95_mm:.4f}"])
    atomic_write_text(out, buf.getvalue())
    return out


# ----------------------------------------------------------------------------------------------- cases


def _case_name(path: str | list[str]) -> str:
    if isinstance(path, list):  # one file per channel (nnU-Net v2 raw): the case id without _0000
        return re.sub(r"_\d{4}$", "", _case_name(path[0]))
    name = Path(path).name
    for suffix in (".nii.gz", ".nii", ".nrrd", ".mha"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def select_cases(
    data_dir: str | os.PathLike[str],
    split: Split = "val",
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    fold: int | None = None,
    num_folds: int = 5,
) -> list[dict[str, Any]]:
    """The labelled ``{"image", "label"}`` items of ``split`` (see the module docstring).

    ``data_dir`` may be any format of :func:`medfcn.data.datasets.read_dataset` (MSD, nnU-Net v2 raw,
    CSV/JSON list); ``"image"`` is a list of paths for a case stored as one file per channel.

    Raises:
        DataError: no dataset.json, or the split has no labelled case.
        InputError: an unknown split.
    """
    from medfcn.data.msd import load_datalist, split_datalist

    if split not in ("test", "val", "all"):
        raise InputError(f"unknown split {split!r}; use test, val or all")
    datalist = load_datalist(data_dir, check_seg_labels=False)  # a mispaired SEG fails its case only
    training = [i for i in datalist.get("training", []) if "label" in i]
    if split == "val":
        items = split_datalist(training, val_fraction=val_fraction, seed=seed, fold=fold, num_folds=num_folds)[1]
    elif split == "all":
        items = training + [i for i in datalist.get("validation", []) if "label" in i]
    else:
        items = [i for i in datalist.get("validation", []) if "label" in i]
        if not items:
            root = Path(data_dir) if Path(data_dir).is_dir() else Path(data_dir).parent
            for item in datalist.get("test", []):
                if isinstance(item["image"], list):  # nnU-Net: labelsTs/<case><file_ending>
                    first = Path(item["image"][0]).name
                    label = root / "labelsTs" / first.replace(f"{_case_name(item['image'])}_0000", _case_name(item["image"]), 1)
                else:
                    label = root / "labelsTs" / Path(item["image"]).name
                if label.is_file():
                    items.append({"image": item["image"], "label": str(label)})
        if not items:
            raise DataError(
                f"{data_dir} has no labelled held-out cases (no dataset.json 'validation' list and no "
                "labelsTs/ labels for the test images); use --split val (the training split's validation part)"
            )
    if not items:
        raise DataError(f"{data_dir}: the {split} split holds no labelled case")
    return [
        {"image": [str(p) for p in i["image"]] if isinstance(i["image"], list) else str(i["image"]), "label": str(i["label"])}
        for i in items
    ]


# ----------------------------------------------------------------------------------------------- evaluate


def evaluate(
    bundle: str | os.PathLike[str] | Segmenter,
    data_dir: str | os.PathLike[str],
    *,
    split: Split = "val",
    output: str | os.PathLike[str] | None = None,
    device: str = "auto",
    amp: bool | None = None,
    val_fraction: float = 0.2,
    seed: int = 0,
    progress: bool = True,
    segment_map: str | Mapping[str, str] | None = None,
    segment_overlap: Literal["error", "higher"] = "error",
    fold: int | None = None,
    num_folds: int = 5,
) -> EvaluationResult:
    """Segment the labelled cases of ``split`` with the bundle and score them against their labels.

    A label may be a DICOM SEG of the case's DICOM series (3D Slicer, OHIF...): it is matched to the
    series by the referenced SeriesInstanceUID and its segments to the bundle's classes by name or code
    (:func:`medfcn.data.seg_labels.read_seg_label`).

    Args:
        bundle: bundle folder, or a ready :class:`~medfcn.engine.inference.Segmenter` (then ``device`` and
            ``amp`` are its own).
        data_dir: MSD-layout dataset folder (``dataset.json``).
        split: ``val`` (default), ``test`` or ``all`` (see the module docstring).
        output: CSV path (``case,class,dice,hd95_mm``); not written if ``None``.
        device: ``auto``, ``cpu``, ``cuda[:i]``.
        amp: autocast (see :class:`~medfcn.engine.inference.Segmenter`); ``None`` = on for CUDA only.
        val_fraction, seed: the training split (``split="val"``); use the values the bundle was trained with.
        fold, num_folds: with ``split="val"``, the validation cases of cross-validation fold ``fold`` (the
            split of ``medfcn train --folds num_folds --fold K``); ``val_fraction`` is then ignored.
        progress: show a progress bar.
        segment_map: DICOM SEG labels: explicit segment -> class mapping (``"Liver=liver,2=tumour"``).
        segment_overlap: DICOM SEG labels whose segments of different classes overlap: ``"error"``
            (the case fails with the voxel count) or ``"higher"`` (the higher class value wins).

    Returns:
        An :class:`EvaluationResult`; a case that cannot be read is listed in ``failed`` and the others go on.

    Raises:
        DataError: dataset problems (see :func:`select_cases`), or every case failed.
        BundleError: the bundle cannot be loaded.
    """
    from monai.transforms import LoadImage

    from medfcn._progress import progress as progress_bar
    from medfcn.data.seg_labels import is_dicom_seg, read_seg_label
    from medfcn.data.segment_codes import class_table
    from medfcn.engine.inference import Segmenter

    t0 = time.perf_counter()
    items = select_cases(data_dir, split, val_fraction=val_fraction, seed=seed, fold=fold, num_folds=num_folds)
    seg = (
        bundle
        if isinstance(bundle, Segmenter)
        else Segmenter(bundle, device=device, amp=amp, keep_probabilities=False)
    )
    names: Mapping[int, str] = seg.class_names
    num_classes = max(int(k) for k in names) + 1
    fg_names = [names.get(c, f"class_{c}") for c in range(1, num_classes)]
    load_label = LoadImage(image_only=True, ensure_channel_first=False)
    classes = class_table(seg.metadata, names)  # names and codes a DICOM SEG label is matched against
    rows: list[CaseMetrics] = []
    failed: list[tuple[str, str]] = []
    for item in progress_bar(items, desc=f"evaluating ({split})", unit="case", enabled=progress, lines="each"):
        case = _case_name(item["image"])
        try:
            pred = seg(item["image"])
            spacing = np.sqrt((np.asarray(pred.affine)[:3, :3] ** 2).sum(axis=0))
            if is_dicom_seg(item["label"]):
                seg_label, _ = read_seg_label(
                    item["label"], item["image"], classes, mapping=segment_map, overlap=segment_overlap
                )
                truth_arr = seg_label.astype(np.int64)
            else:
                truth_arr = np.rint(np.asarray(load_label(item["label"]))).astype(np.int64)
            for c, d, h in case_metrics(pred.label[0].numpy(), truth_arr, spacing.tolist(), num_classes):
                rows.append(CaseMetrics(case, fg_names[c - 1], d, h))
        except (InputError, OSError, RuntimeError, ValueError) as err:  # one bad case never stops the run
            reason = one_line(err)
            logger.warning("case %s not evaluated: %s", case, reason)
            failed.append((case, reason))
    if not rows:
        raise DataError(f"no case of the {split} split could be evaluated (first failure: {failed[0][1]})")
    result = EvaluationResult(split=split, rows=rows, summary=summarise(rows, fg_names), failed=failed)
    if output is not None:
        result.csv_path = write_csv(rows, output)
    result.seconds = time.perf_counter() - t0
    return result
