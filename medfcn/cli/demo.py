"""``medfcn demo``: the whole product on built-in synthetic data (a thin wrapper of ``run_demo``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medfcn.cli._common import EXIT_FAILED, device_option, quiet_option, tracking_option, user_errors

__all__ = ["demo"]


def demo(
    output: Annotated[
        Path,
        typer.Option("--output", "-o", file_okay=False, help="Folder for everything the demo writes (created)."),
    ] = Path("medfcn-demo"),
    bundle: Annotated[
        Optional[Path],
        typer.Option(
            "--bundle",
            exists=True,
            file_okay=False,
            help="Bundle to copy and train (default: bundles/liver of this checkout; it is not modified).",
        ),
    ] = None,
    epochs: Annotated[int, typer.Option("--epochs", min=1, help="Training epochs (about 1 s each on 2 CPU cores).")] = 60,
    num_train: Annotated[int, typer.Option("--num-train", min=2, help="Synthetic training cases.")] = 8,
    device: Annotated[str, device_option()] = "auto",
    tracking: Annotated[bool, tracking_option("the training")] = True,
    quiet: Annotated[bool, quiet_option()] = False,
) -> None:
    """Generate a small synthetic CT set, train the liver bundle briefly, segment a folder of NIfTI and DICOM
    scans, and print where the masks, the report and the MLflow run are."""
    from medfcn.demo import run_demo
    from medfcn.tracking import redact_uri

    with user_errors():
        result = run_demo(
            output, bundle=bundle, epochs=epochs, num_train=num_train, device=device, tracking=tracking, quiet=quiet
        )
    t, s = result.train, result.infer
    best = t.metrics.get("best") or {}
    typer.echo("")
    typer.echo(f"data:      {result.data}  (synthetic MSD dataset; DICOM series in {result.data / 'dicom'})")
    typer.echo(
        f"training:  {t.metrics.get('epochs')} epochs in {t.seconds:.0f} s; best validation Dice: liver "
        f"{best.get('val_liver_dice', float('nan')):.3f}, tumour {best.get('val_tumour_dice', float('nan')):.3f} "
        f"(epoch {t.metrics.get('best_epoch')})"
    )
    typer.echo(f"bundle:    {result.bundle}  (best weights in models/model.pt)")
    typer.echo(f"masks:     {result.results}/<case-id>/mask.nii.gz (+ seg.dcm for DICOM, preview.png, stats.json)")
    typer.echo(f"report:    {result.results / 'summary.csv'}  ({s.ok} ok, {s.failed} failed)")
    if t.tracking_uri:
        typer.echo(f"MLflow:    {redact_uri(t.tracking_uri)}  (experiment {t.experiment!r}, run {t.run_id})")
        typer.echo(f"           browse with: mlflow ui --backend-store-uri {redact_uri(t.tracking_uri)}")
    if s.failed or not s.ok:
        typer.echo(f"error: {s.failed} of {s.ok + s.failed} demo case(s) failed; see {result.results / 'summary.csv'}", err=True)
        raise typer.Exit(EXIT_FAILED)
