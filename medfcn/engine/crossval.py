"""Cross-validation of a bundle, as nnU-Net does it: one model per fold, each scored on the cases it never saw.

``medfcn train --bundle B --folds 5 --fold K`` trains fold ``K`` into ``B/runs/fold_K``, a trained copy of
the bundle with the split it used in ``split.json``. :func:`evaluate_folds` scores each fold's model on that
fold's validation cases with :func:`medfcn.engine.evaluation.evaluate` (the bundle's own inference pipeline:
Dice and HD95 per class on each scan's grid) and writes, to a results folder:

* ``fold_K.json``: the fold's per-class summary, its split digest, weights digest and timings;
* ``fold_K.csv``: one row per case and class;
* ``cv.json``: every ``fold_*.json`` found in the folder, the mean over the folds per class and the pooled mean
  over all their cases. Folds can be scored one at a time: a later call adds to the folder, nothing is lost.

Example:
    >>> cv = evaluate_folds("bundles/hippocampus", "data/Task04_Hippocampus", folds=[0, 1])  # doctest: +SKIP
    >>> print(format_cv(cv))  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medfcn._io import atomic_write_json, file_sha256
from medfcn.errors import DataError, InputError

__all__ = ["CrossValidation", "evaluate_folds", "fold_bundle", "format_cv", "summarise_folds"]


@dataclass
class CrossValidation:
    """What :func:`evaluate_folds` found in its results folder.

    Attributes:
        folds: ``fold_K.json`` contents, by fold index (those scored now and those scored before).
        mean: class name -> ``{"dice", "hd95_mm"}`` averaged over the folds (each fold's mean counts once).
        pooled: class name -> ``{"dice", "hd95_mm", "n"}`` over every case of every fold.
        num_folds: the number of folds of the split.
        path: the ``cv.json`` written.
    """

    folds: dict[int, dict[str, Any]]
    mean: dict[str, dict[str, float]]
    pooled: dict[str, dict[str, float]]
    num_folds: int
    path: Path | None = None

    @property
    def complete(self) -> bool:
        """True when every fold of the split has been scored."""
        return sorted(self.folds) == list(range(self.num_folds))


def fold_bundle(bundle: str | os.PathLike[str], fold: int, runs: str | os.PathLike[str] | None = None) -> Path:
    """The trained copy of ``bundle`` for ``fold``: ``<runs>/fold_K`` (default ``<bundle>/runs``), or the bundle
    itself when it is one (its ``split.json`` names that fold).

    Raises:
        DataError: no trained model for that fold (the message gives the command that trains it).
    """
    root = Path(bundle).expanduser().resolve()
    own = _read_json(root / "split.json")
    if own and own.get("fold") == fold and (root / "models" / "model.pt").is_file():
        return root
    candidate = (Path(runs).expanduser().resolve() if runs else root / "runs") / f"fold_{fold}"
    if (candidate / "models" / "model.pt").is_file() and (candidate / "split.json").is_file():
        return candidate
    raise DataError(
        f"no trained model for fold {fold} in {candidate} (models/model.pt and split.json); train it with "
        f"`medfcn train --bundle {root} --data DATA --fold {fold}`"
    )


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def evaluate_folds(
    bundle: str | os.PathLike[str],
    data_dir: str | os.PathLike[str],
    *,
    folds: Sequence[int] | None = None,
    num_folds: int | None = None,
    runs: str | os.PathLike[str] | None = None,
    results: str | os.PathLike[str] | None = None,
    device: str = "auto",
    amp: bool | None = None,
    progress: bool = True,
) -> CrossValidation:
    """Score the model of each fold on that fold's validation cases and summarise every fold scored so far.

    Args:
        bundle: the bundle whose folds were trained (``medfcn train --bundle B --fold K``).
        data_dir: the dataset the folds were trained on.
        folds: fold indices to score now; ``None`` scores every fold that has a trained model.
        num_folds: folds of the split (default: the bundle's ``num_folds``, else 5).
        runs: the folder holding ``fold_K/`` (default ``<bundle>/runs``).
        results: where ``fold_K.json``/``.csv`` and ``cv.json`` go (default ``<bundle>/eval/cv``).
        device, amp, progress: as :func:`medfcn.engine.evaluation.evaluate`.

    Returns:
        A :class:`CrossValidation` over every fold file in ``results``.

    Raises:
        DataError: a fold has no trained model, or its model was trained on another split of the data.
        InputError: a fold index outside ``[0, num_folds)``.
    """
    from medfcn.data.msd import load_datalist, split_datalist, split_digest
    from medfcn.engine.evaluation import evaluate, write_csv

    root = Path(bundle).expanduser().resolve()
    k = int(num_folds or _bundle_num_folds(root))
    out = Path(results).expanduser().resolve() if results else root / "eval" / "cv"
    if folds is None:
        folds = [f for f in range(k) if _has_fold(root, f, runs)]
        if not folds:
            raise DataError(
                f"no trained fold in {Path(runs) if runs else root / 'runs'} (fold_K/models/model.pt); train one "
                f"with `medfcn train --bundle {root} --data DATA --fold 0`"
            )
    for f in folds:
        if not 0 <= int(f) < k:
            raise InputError(f"fold {f} is outside [0, {k - 1}] for {k} folds")
    training = [i for i in load_datalist(data_dir)["training"] if "label" in i]
    for f in folds:
        fold_dir = fold_bundle(root, int(f), runs)
        record = _read_json(fold_dir / "split.json") or {}
        seed = int(record.get("split_seed") or 0)
        if int(record.get("num_folds") or k) != k:
            raise DataError(f"{fold_dir / 'split.json'}: trained with {record.get('num_folds')} folds, not {k}")
        train_items, val_items = split_datalist(training, seed=seed, fold=int(f), num_folds=k)
        if record.get("sha1") and record["sha1"] != split_digest(train_items, val_items):
            raise DataError(
                f"{fold_dir / 'split.json'}: fold {f} was trained on another split of the cases than {data_dir} "
                "gives now (other data or seed); its validation cases would not be held out"
            )
        t0 = time.perf_counter()
        result = evaluate(
            fold_dir,
            data_dir,
            split="val",
            fold=int(f),
            num_folds=k,
            seed=seed,
            device=device,
            amp=amp,
            progress=progress,
        )
        out.mkdir(parents=True, exist_ok=True)
        write_csv(result.rows, out / f"fold_{f}.csv")
        metrics = _read_json(fold_dir / "metrics.json") or {}
        meta = _read_json(fold_dir / "configs" / "metadata.json") or {}
        atomic_write_json(
            out / f"fold_{f}.json",
            {
                "fold": int(f),
                "num_folds": k,
                "split_seed": seed,
                "split_sha1": record.get("sha1"),
                "cases": len({r.case for r in result.rows}),
                "failed": len(result.failed),
                "bundle": meta.get("name"),
                "bundle_version": meta.get("version"),
                "weights_sha256": file_sha256(fold_dir / "models" / "model.pt"),
                "train_epochs": metrics.get("epochs"),
                "train_seconds": metrics.get("train_seconds"),
                "evaluate_seconds": round(time.perf_counter() - t0, 1),
                "classes": {
                    s.class_name: {
                        "dice_mean": s.dice_mean,
                        "dice_sd": s.dice_sd,
                        "hd95_mm_mean": s.hd95_mean,
                        "hd95_mm_sd": s.hd95_sd,
                        "hd95_inf": s.n_inf,
                        "n": s.n,
                    }
                    for s in result.summary
                },
                "date": time.strftime("%Y-%m-%d", time.gmtime()),
            },
        )
    return summarise_folds(out, k)


def _bundle_num_folds(root: Path) -> int:
    config = _read_json(root / "configs" / "train.json") or {}
    value = config.get("num_folds")
    return int(value) if isinstance(value, int) and value >= 2 else 5


def _has_fold(root: Path, fold: int, runs: str | os.PathLike[str] | None) -> bool:
    try:
        fold_bundle(root, fold, runs)
    except DataError:
        return False
    return True


def summarise_folds(results: str | os.PathLike[str], num_folds: int) -> CrossValidation:
    """Read every ``fold_K.json`` in ``results`` and write ``cv.json``: per-fold figures, the mean over folds and
    the pooled mean over all cases (weighted by each fold's case count)."""
    out = Path(results)
    folds: dict[int, dict[str, Any]] = {}
    for f in range(num_folds):
        data = _read_json(out / f"fold_{f}.json")
        if data is not None and int(data.get("num_folds", num_folds)) == num_folds:
            folds[f] = data
    names: list[str] = []
    for data in folds.values():
        names += [n for n in data.get("classes", {}) if n not in names]
    mean: dict[str, dict[str, float]] = {}
    pooled: dict[str, dict[str, float]] = {}
    for name in names:
        per = [d["classes"][name] for d in folds.values() if name in d.get("classes", {})]
        dice = [float(c["dice_mean"]) for c in per]
        hd = [float(c["hd95_mm_mean"]) for c in per if math.isfinite(float(c["hd95_mm_mean"]))]
        n = [int(c.get("n", 0)) for c in per]
        mean[name] = {"dice": sum(dice) / len(dice), "hd95_mm": sum(hd) / len(hd) if hd else math.nan}
        total = sum(n)
        pooled[name] = {
            "dice": sum(d * w for d, w in zip(dice, n, strict=True)) / total if total else math.nan,
            "n": float(total),
        }
    cv = CrossValidation(folds=folds, mean=mean, pooled=pooled, num_folds=num_folds)
    if folds:
        out.mkdir(parents=True, exist_ok=True)
        cv.path = out / "cv.json"
        atomic_write_json(
            cv.path,
            {
                "num_folds": num_folds,
                "folds_scored": sorted(folds),
                "complete": cv.complete,
                "mean_over_folds": mean,
                "pooled_over_cases": pooled,
                "folds": {str(f): {"classes": d["classes"], "cases": d.get("cases")} for f, d in sorted(folds.items())},
            },
        )
    return cv


def format_cv(cv: CrossValidation) -> str:
    """A plain-text table: one row per fold, then the mean over the folds (Dice and HD95 per class)."""
    names = list(cv.mean)
    head = f"{'fold':<6} {'cases':>5}  " + "  ".join(f"{n + ' dice':>16} {n + ' hd95':>16}" for n in names)
    lines = [head]
    for f, data in sorted(cv.folds.items()):
        cells = []
        for n in names:
            c: Mapping[str, Any] = data["classes"].get(n, {})
            cells.append(f"{c.get('dice_mean', math.nan):>16.4f} {c.get('hd95_mm_mean', math.nan):>13.2f} mm")
        lines.append(f"{f:<6} {data.get('cases', 0):>5}  " + "  ".join(cells))
    label = "mean" if cv.complete else f"mean ({len(cv.folds)}/{cv.num_folds})"
    cells = [f"{cv.mean[n]['dice']:>16.4f} {cv.mean[n]['hd95_mm']:>13.2f} mm" for n in names]
    lines.append(f"{label:<6} {sum(int(d.get('cases', 0)) for d in cv.folds.values()):>5}  " + "  ".join(cells))
    return "\n".join(lines)
