"""``medfcn train``: train a bundle with its own ``configs/train.json`` (a thin wrapper of ``train``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Optional

import typer

from medfcn.cli._common import (
    EXIT_USAGE,
    amp_option,
    bundle_option,
    device_option,
    quiet_option,
    tracking_option,
    user_errors,
)

__all__ = ["train"]


def train(
    bundle: Annotated[
        Path,
        bundle_option(
            "Bundle folder (configs/train.json, configs/inference.json, configs/metadata.json). The best "
            "weights are written to its models/model.pt.",
        ),
    ],
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data",
            file_okay=True,
            dir_okay=True,
            help="Dataset: an MSD or nnU-Net v2 raw folder (dataset.json; multi-channel cases set the network's "
            "in_channels), or a CSV/JSON list of image/label paths. Default: the bundle's dataset_dir. "
            "Make one with `medfcn data synth` or `medfcn data download Task03_Liver`.",
        ),
    ] = None,
    epochs: Annotated[
        Optional[int], typer.Option("--epochs", min=1, help="Training epochs. Default: the bundle's (300).")
    ] = None,
    val_interval: Annotated[
        Optional[int],
        typer.Option(
            "--val-interval",
            min=1,
            help="Validate (sliding window, Dice per class) every N epochs and after the last one. "
            "Default: the bundle's (5).",
        ),
    ] = None,
    device: Annotated[str, device_option()] = "auto",
    amp: Annotated[Optional[bool], amp_option("fp16 trains with a GradScaler.")] = None,
    amp_dtype: Annotated[
        Optional[str],
        typer.Option("--amp-dtype", help="auto, fp16 (CUDA only) or bf16. Default: the bundle's (auto)."),
    ] = None,
    output: Annotated[
        Optional[Path],
        typer.Option(
            "--output",
            file_okay=False,
            dir_okay=True,
            help="Run folder: checkpoints/last.pt, metrics.json, split.json, the executed config, and a trained "
            "copy of the bundle (configs/, models/model.pt) that infer/evaluate take as --bundle; the source bundle "
            "is left byte-identical. Default: <bundle>/runs/train with the weights in <bundle>/models/model.pt "
            "(replaced, and said so).",
        ),
    ] = None,
    resume: Annotated[
        bool,
        typer.Option("--resume", help="Continue an interrupted run from <output>/checkpoints/last.pt."),
    ] = False,
    seed: Annotated[Optional[int], typer.Option("--seed", help="Random seed. Default: the bundle's (0).")] = None,
    override: Annotated[
        Optional[list[str]],
        typer.Option(
            "--override",
            "-O",
            help="Set any config id of train.json, repeatable: --override learning_rate=0.001 --override "
            "batch_size=4. Values are JSON, else strings ($expressions and @references work). The patch size and "
            "preprocessing live in configs/inference.json: change them there, so inference matches training.",
        ),
    ] = None,
    tracking: Annotated[bool, tracking_option()] = True,
    tracking_uri: Annotated[
        Optional[str],
        typer.Option(
            "--tracking-uri",
            help="MLflow store or server (e.g. http://mlflow.example.org:5000). Default: $MLFLOW_TRACKING_URI, "
            "else sqlite:///<current folder>/mlflow.db.",
        ),
    ] = None,
    experiment: Annotated[
        Optional[str], typer.Option("--experiment", help="MLflow experiment name. Default: the bundle name.")
    ] = None,
    quiet: Annotated[bool, quiet_option()] = False,
    folds: Annotated[
        Optional[int],
        typer.Option(
            "--folds",
            min=2,
            help="Cross-validation folds (nnU-Net style, deterministic by the bundle's split_seed). Default: the "
            "bundle's num_folds (5) when --fold is given.",
        ),
    ] = None,
    time_budget: Annotated[
        Optional[float],
        typer.Option(
            "--time-budget",
            min=0.1,
            help="Minutes of training (validations included): the epochs and the learning-rate schedule are "
            "planned from the measured epoch time to end within it; --epochs stays the upper bound. Use it to "
            "compare methods at equal wall time on one machine.",
        ),
    ] = None,
    fold: Annotated[
        Optional[str],
        typer.Option(
            "--fold",
            help="Train fold K (0 .. folds-1: validation = fold K, training = the rest) into <bundle>/runs/fold_K "
            "(a trained copy of the bundle; the bundle is not written), or 'all' (every case; the model that "
            "ships, into <bundle>/models). Default: the bundle's own split.",
        ),
    ] = None,
) -> None:
    """Train a bundle: AMP on CUDA, sliding-window validation, best model to models/model.pt, MLflow.

    Multi-GPU / multi-node: torchrun --nproc_per_node=N -m medfcn train --bundle ... (DDP; NCCL on GPUs,
    gloo on CPUs; the bundle's configs/multi_gpu_train.json is merged in).
    """
    from medfcn.engine.training import train as run_training

    if amp_dtype is not None and amp_dtype not in ("auto", "fp16", "bf16"):
        raise typer.BadParameter(f"{amp_dtype!r} is not one of auto, fp16, bf16", param_hint="--amp-dtype")
    if tracking_uri and not tracking:
        typer.echo("error: --tracking-uri given with --no-tracking; drop one of them", err=True)
        raise typer.Exit(EXIT_USAGE)
    with user_errors():
        result = run_training(
            bundle,
            data_dir=data,
            epochs=epochs,
            val_interval=val_interval,
            device=device,
            amp=amp,
            amp_dtype=amp_dtype,  # type: ignore[arg-type]
            output_dir=output,
            resume=resume,
            seed=seed,
            overrides=list(override or []),
            tracking=tracking,
            tracking_uri=tracking_uri,
            experiment=experiment,
            quiet=quiet,
            fold=fold,
            num_folds=folds,
            time_budget=None if time_budget is None else time_budget * 60.0,
        )
    if int(os.environ.get("RANK", "0")) != 0:
        return
    best = result.metrics.get("best") or {}
    dice = ", ".join(
        f"{k.removeprefix('val_').removesuffix('_dice')} {float(v):.3f}"
        for k, v in best.items()
        if k.startswith("val_") and k.endswith("_dice")
    )
    typer.echo(
        f"trained {result.metrics.get('epochs', '?')} epoch(s) in {result.seconds:.0f} s; "
        f"best epoch {result.metrics.get('best_epoch')}: {dice or 'no validation'}"
    )
    typer.echo(f"best weights: {result.model_path}")
    typer.echo(f"metrics:      {result.output_dir / 'metrics.json'}")
    if result.tracking_uri:
        from medfcn.tracking import redact_uri

        typer.echo(f"MLflow:       {redact_uri(result.tracking_uri)} (experiment {result.experiment!r}, run {result.run_id})")
