"""``medfcn infer``: segment every scan in a folder with a bundle (a thin wrapper of ``segment_folder``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from medfcn.cli._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PARTIAL,
    EXIT_USAGE,
    amp_option,
    bundle_option,
    device_option,
    fail,
    quiet_option,
    user_errors,
)

__all__ = ["infer"]


def infer(
    bundle: Annotated[
        Path,
        bundle_option(
            "Bundle folder (configs/inference.json, configs/metadata.json, models/model.pt).",
            readable=True,
        ),
    ],
    input: Annotated[
        Path,
        typer.Option(
            "--input",
            exists=True,
            file_okay=True,
            dir_okay=True,
            readable=True,
            resolve_path=True,
            help="What to segment: a folder tree of DICOM series (single-frame or enhanced multi-frame) and "
            "NIfTI files, zip archives of them, one file, one DICOM series folder, a DICOMDIR, or a list file "
            "(.txt/.lst, one path per line). It is only read, never written.",
        ),
    ],
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            file_okay=False,
            dir_okay=True,
            writable=True,
            resolve_path=True,
            help="Results folder (created; must not be inside --input): <case-id>/mask.nii.gz, seg.dcm and "
            "rtstruct.dcm (DICOM input), preview.png, stats.json; summary.csv, summary.json, run.json, "
            "labels.json.",
        ),
    ],
    device: Annotated[str, device_option()] = "auto",
    amp: Annotated[
        Optional[bool],
        amp_option("With AVX512-BF16 alone the network runs 1.5-1.6x faster on the CPU, more with AMX."),
    ] = None,
    sw_batch_size: Annotated[
        Optional[int],
        typer.Option(
            "--sw-batch-size",
            min=1,
            help="Sliding windows per network call. Default: the bundle's. Larger is faster on GPUs and uses "
            "proportionally more memory.",
        ),
    ] = None,
    overlap: Annotated[
        Optional[float],
        typer.Option(
            "--overlap",
            min=0.0,
            max=0.95,
            help="Sliding-window overlap. Default: the bundle's. Higher is smoother and slower (0.5 runs ~2.4x "
            "the windows of 0.25).",
        ),
    ] = None,
    tta: Annotated[
        bool,
        typer.Option(
            "--tta",
            help="Also average over mirror images along each axis the bundle's training flipped (one more "
            "pass each); never along an axis it did not, whose mirror image the network never learned.",
        ),
    ] = False,
    save_probabilities: Annotated[
        bool,
        typer.Option(
            "--save-probabilities",
            help="Also write probabilities.nii.gz (float32 per class per voxel: large).",
        ),
    ] = False,
    no_previews: Annotated[
        bool, typer.Option("--no-previews", help="Do not write preview.png (saves ~0.1-1 s per case).")
    ] = False,
    per_class: Annotated[
        bool,
        typer.Option(
            "--per-class",
            help="Also write one 0/1 mask per class, mask_<class>.nii.gz, beside the multilabel mask.nii.gz.",
        ),
    ] = False,
    classes: Annotated[
        Optional[str],
        typer.Option(
            "--classes",
            help="Keep only these classes, comma-separated names from the bundle (e.g. liver,tumour); the "
            "others become background in every output. Default: all.",
        ),
    ] = None,
    no_rtstruct: Annotated[
        bool,
        typer.Option(
            "--no-rtstruct",
            help="DICOM input: do not write rtstruct.dcm (RT Structure Set contours; ~1 s per 20 slices "
            "of 512x512).",
        ),
    ] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Redo cases an earlier run finished. Default: finished cases are kept."
        ),
    ] = False,
    modality: Annotated[
        Optional[str],
        typer.Option("--modality", help="Only DICOM series of this Modality, e.g. CT. Default: all."),
    ] = None,
    min_slices: Annotated[
        Optional[int],
        typer.Option(
            "--min-slices",
            min=1,
            help="Skip DICOM series with fewer slices (localisers, single images). Default: discovery's.",
        ),
    ] = None,
    quiet: Annotated[bool, quiet_option()] = False,
) -> None:
    """Segment every scan in --input with a bundle; results go to --output/<case-id>/.

    Exit codes: 0 all cases succeeded; 3 some failed (see summary.csv); 1 nothing could run (bad bundle,
    no scans found, or every case failed); 2 usage errors. Rerunning the same command resumes: finished
    cases are skipped. Under torchrun each rank takes a share of the cases; rank 0 writes the summary.
    """
    import os

    from medfcn.engine.inference import check_classes, discover, read_ahead  # neither PyTorch nor MONAI

    if input.is_dir() and (output == input or input in output.parents):
        raise fail(
            f"--output {output} is inside --input {input}; choose a folder outside the scans", EXIT_USAGE
        )
    wanted = [c for c in classes.split(",") if c.strip()] if classes is not None else None
    discovered = None
    with user_errors():
        check_classes(bundle, wanted)
        if int(os.environ.get("WORLD_SIZE", "1")) == 1:  # under torchrun rank 0 discovers inside segment_folder
            # Discovery first, then the first scan is inflated on the other core while PyTorch, MONAI and
            # the network load (engine.inference.read_ahead): the start-up and the first read overlap.
            discovered = discover(input, modality=modality, min_slices=min_slices)
            read_ahead(discovered.cases, output, overwrite=overwrite)
    from medfcn._monai import light_monai

    light_monai()  # a fresh `medfcn infer` process imports MONAI's parts, not its face (seconds)
    from medfcn.engine.inference import segment_folder

    with user_errors():
        summary = segment_folder(
            bundle,
            input,
            output,
            overwrite=overwrite,
            save_probabilities=save_probabilities,
            previews=not no_previews,
            device=device,
            amp=amp,
            sw_batch_size=sw_batch_size,
            overlap=overlap,
            tta=tta,
            modality=modality,
            min_slices=min_slices,
            progress=not quiet,
            rtstruct=not no_rtstruct,
            per_class=per_class,
            classes=wanted,
            discovered=discovered,
        )
    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun every rank has the merged summary
    n_cases = summary.ok + summary.failed
    if rank0 and (not quiet or summary.failed or n_cases == 0):
        typer.echo(
            f"{summary.ok - summary.already_done} ok, "
            + (f"{summary.already_done} already done, " if summary.already_done else "")
            + f"{summary.failed} failed, {summary.skipped} skipped (not scans) "
            f"in {summary.seconds:.1f} s -> {output / 'summary.csv'}",
            err=True,
        )
    code, message = EXIT_OK, ""
    if n_cases == 0:
        code, message = (
            EXIT_FAILED,
            f"no scans found in {input} (see {output / 'summary.csv'} for what was skipped)",
        )
    elif summary.failed:
        first = next(c for c in summary.cases if c.status == "failed")
        what = "every case failed" if summary.ok == 0 else f"{summary.failed} case(s) failed"
        code = EXIT_FAILED if summary.ok == 0 else EXIT_PARTIAL
        message = f"{what}; first: {first.id}: {first.reason}"
    if code != EXIT_OK:
        if rank0:
            raise fail(message, code)
        raise typer.Exit(code)
    raise typer.Exit(EXIT_OK)
