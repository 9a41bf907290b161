"""``medfcn evaluate``: Dice and HD95 per class per case on a held-out split (wraps ``evaluate``)."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from medfcn.cli._common import (
    EXIT_PARTIAL,
    amp_option,
    bundle_option,
    device_option,
    quiet_option,
    user_errors,
)

__all__ = ["evaluate"]


class _Split(str, Enum):
    test = "test"
    val = "val"
    all = "all"


class _Overlap(str, Enum):
    error = "error"
    higher = "higher"


def evaluate(
    bundle: Annotated[
        Path,
        bundle_option(
            "Trained bundle folder (configs/inference.json, models/model.pt).",
        ),
    ],
    data: Annotated[
        Path,
        typer.Option(
            "--data",
            exists=True,
            resolve_path=True,
            help="Dataset: an MSD or nnU-Net v2 raw folder (dataset.json), or a CSV/JSON list of image/label "
            "paths. Only read.",
        ),
    ],
    split: Annotated[
        _Split,
        typer.Option(
            "--split",
            help="Which labelled cases: val = the validation part of the training split (split_datalist with "
            "--val-fraction/--seed, never trained on); test = dataset.json 'validation' list or imagesTs with "
            "labelsTs; all = every labelled case (includes training cases: optimistic).",
        ),
    ] = _Split.val,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            dir_okay=False,
            resolve_path=True,
            help="CSV to write (case,class,dice,hd95_mm). Default: <bundle>/eval/metrics_<split>.csv.",
        ),
    ] = None,
    device: Annotated[str, device_option()] = "auto",
    amp: Annotated[Optional[bool], amp_option("bf16 may change Dice slightly.")] = None,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction", min=0.01, max=0.99, help="Validation share used at training (split val)."
        ),
    ] = 0.2,
    seed: Annotated[int, typer.Option("--seed", help="Split seed used at training (split val).")] = 0,
    quiet: Annotated[bool, quiet_option()] = False,
    segment_map: Annotated[
        Optional[str],
        typer.Option(
            "--segment-map",
            help="DICOM SEG labels: which segment is which bundle class, e.g. 'Liver=liver,2=tumour' (segment "
            "label, number or SCHEME:CODE = class name or value). Default: segments match classes by name, "
            "then by SNOMED code from the bundle metadata.",
        ),
    ] = None,
    segment_overlap: Annotated[
        _Overlap,
        typer.Option(
            "--segment-overlap",
            help="DICOM SEG labels whose segments of different classes overlap: error (the case fails, "
            "counted) or higher (the higher class value wins, e.g. tumour over liver).",
        ),
    ] = _Overlap.error,
    fold: Annotated[
        Optional[list[int]],
        typer.Option(
            "--fold",
            min=0,
            help="Cross-validation: score fold K's model (<bundle>/runs/fold_K, from medfcn train --fold K) on "
            "fold K's validation cases; repeatable. Writes fold_K.json/.csv and cv.json (every fold scored so "
            "far, per fold and the mean) to --results.",
        ),
    ] = None,
    cv: Annotated[
        bool, typer.Option("--cv", help="Cross-validation: score every fold that has a trained model.")
    ] = False,
    folds: Annotated[
        Optional[int], typer.Option("--folds", min=2, help="Folds of the split. Default: the bundle's (5).")
    ] = None,
    runs: Annotated[
        Optional[Path],
        typer.Option("--runs", file_okay=False, help="Folder holding fold_K/. Default: <bundle>/runs."),
    ] = None,
    results: Annotated[
        Optional[Path],
        typer.Option(
            "--results",
            file_okay=False,
            help="Cross-validation results folder (fold_K.json, fold_K.csv, cv.json); folds scored at other "
            "times add up there. Default: <bundle>/eval/cv.",
        ),
    ] = None,
) -> None:
    """Score a bundle on held-out labelled cases: Dice and 95% Hausdorff distance (mm) per class and case.

    Uses the bundle's own inference pipeline (the same as medfcn infer), compares on each scan's grid,
    writes a CSV and prints mean ± sd per class. Exit code 3 when some cases could not be evaluated.
    With --fold K or --cv, scores cross-validation folds (per fold and the mean over the folds).
    """
    from medfcn.engine.evaluation import evaluate as run_evaluation
    from medfcn.engine.evaluation import format_summary

    if fold or cv:
        from medfcn.engine.crossval import evaluate_folds, format_cv

        with user_errors():
            summary = evaluate_folds(
                bundle,
                data,
                folds=None if cv and not fold else list(fold or []),
                num_folds=folds,
                runs=runs,
                results=results,
                device=device,
                amp=amp,
                progress=not quiet,
            )
        typer.echo(format_cv(summary))
        typer.echo(f"cross-validation summary: {summary.path}")
        return

    csv_path = output if output is not None else bundle / "eval" / f"metrics_{split.value}.csv"
    with user_errors():
        result = run_evaluation(
            bundle,
            data,
            split=split.value,  # type: ignore[arg-type]
            output=csv_path,
            device=device,
            amp=amp,
            val_fraction=val_fraction,
            seed=seed,
            progress=not quiet,
            segment_map=segment_map,
            segment_overlap=segment_overlap.value,  # type: ignore[arg-type]
        )
    typer.echo(format_summary(result))
    typer.echo(f"{len(result.rows)} rows written to {result.csv_path} ({result.seconds:.1f} s)")
    for case, reason in result.failed:
        typer.echo(f"failed: {case}: {reason}", err=True)
    if result.failed:
        raise typer.Exit(EXIT_PARTIAL)
