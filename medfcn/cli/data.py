"""``medfcn data``: make a synthetic dataset, check a dataset before training, download an MSD task,
scan a folder for the scans ``medfcn infer`` would segment.

Heavy imports (numpy, nibabel, MONAI) happen inside the commands so that ``medfcn --help`` stays fast.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from medfcn.cli._common import EXIT_FAILED, fail, new_app, quiet_option, user_errors

if TYPE_CHECKING:
    from medfcn.data.cases import DiscoveryReport
    from medfcn.data.dataset_check import DatasetCheck

__all__ = ["app", "check", "download", "scan", "synth"]

app = new_app(
    help="Datasets: synthetic CT phantoms, MSD dataset checks and downloads, scan-folder discovery.",
    no_args_is_help=True,
)


@app.command()
def synth(
    output: Annotated[
        Path,
        typer.Option(
            "--output",
            "-o",
            help="Dataset folder to write (created). Rerunning with the same options reuses it.",
        ),
    ] = Path("data/SyntheticLiver"),
    num_train: Annotated[int, typer.Option("--num-train", min=1, help="Labelled training cases.")] = 8,
    num_test: Annotated[
        int, typer.Option("--num-test", min=0, help="Unlabelled test cases (imagesTs/).")
    ] = 2,
    shape: Annotated[
        tuple[int, int, int],
        typer.Option(
            "--shape",
            min=8,
            help="Voxels per case X Y Z (Z = slices). Larger looks more realistic but trains slower; "
            "64 64 48 takes well under a second per case.",
        ),
    ] = (64, 64, 48),
    seed: Annotated[
        int, typer.Option("--seed", help="Same seed, same dataset (spacing, orientation, anatomy, noise).")
    ] = 0,
    max_oblique_deg: Annotated[
        float,
        typer.Option(
            "--max-oblique-deg",
            min=0.0,
            max=45.0,
            help="Tilt each volume by up to this many degrees (0: axis-aligned like most CT; >0 exercises geometry handling).",
        ),
    ] = 0.0,
    dicom: Annotated[
        bool,
        typer.Option(
            "--dicom/--no-dicom",
            help="Also write each test case as a CT DICOM series under OUTPUT/dicom/<case>/.",
        ),
    ] = False,
    quiet: Annotated[bool, quiet_option()] = False,
) -> None:
    """Write a synthetic liver CT dataset in MSD layout (imagesTr/, labelsTr/, imagesTs/, dataset.json).

    Phantoms have a body outline, spine, kidneys, spleen, a lobed liver (label 1) with tumours (label 2), random anisotropic spacing and orientation, in Hounsfield units. No patient data.
    """
    from medfcn._progress import progress
    from medfcn.data.synthetic import write_msd_dataset

    total = num_train + num_test
    with user_errors(), progress(total=total, desc="phantoms", unit="case", enabled=not quiet, leave=False) as bar:
        root = write_msd_dataset(
            output,
            num_train=num_train,
            num_test=num_test,
            shape=shape,
            seed=seed,
            max_oblique_deg=max_oblique_deg,
            dicom=dicom,
            progress=lambda _name: bar.update(1),
        )
    parts = (
        "dataset.json, imagesTr/, labelsTr/"
        + (", imagesTs/" if num_test else "")
        + (", dicom/" if dicom and num_test else "")
    )
    typer.echo(f"wrote {num_train} training and {num_test} test cases to {root} ({parts})")
    typer.echo(f"next: medfcn data check {root}")


def _fmt(values: tuple[float, ...] | list[float], digits: int = 3) -> str:
    return " x ".join(f"{v:.{digits}g}" for v in values)


def _check_as_dict(result: DatasetCheck) -> dict[str, Any]:
    fp = result.fingerprint
    return {
        "root": str(result.root),
        "name": result.name,
        "ok": result.ok,
        "modality": result.modality,
        "labels": {str(k): v for k, v in result.labels.items()},
        "num_training": result.num_training,
        "num_test": result.num_test,
        "fingerprint": None
        if fp is None
        else {
            "median_spacing": list(fp.median_spacing),
            "min_spacing": list(fp.min_spacing),
            "max_spacing": list(fp.max_spacing),
            "median_shape": list(fp.median_shape),
            "intensity": fp.intensity,
            "label_voxels": {str(k): v for k, v in fp.label_voxels.items()},
        },
        "problems": [{"path": p.path, "message": p.message} for p in result.problems],
    }


def _print_table(result: DatasetCheck) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"{result.name} ({result.root})", show_header=True, title_justify="left")
    table.add_column("property", style="bold")
    table.add_column("value")
    table.add_row("cases", f"{result.num_training} training, {result.num_test} test")
    table.add_row("modality", ", ".join(f"{k}: {v}" for k, v in result.modality.items()))
    table.add_row("labels", ", ".join(f"{k}: {v}" for k, v in sorted(result.labels.items())))
    fp = result.fingerprint
    if fp is not None:
        table.add_row("median spacing (mm)", _fmt(fp.median_spacing))
        table.add_row("spacing range (mm)", f"{_fmt(fp.min_spacing)} .. {_fmt(fp.max_spacing)}")
        table.add_row("median shape (voxels)", " x ".join(str(s) for s in fp.median_shape))
        for key, stats in fp.intensity.items():
            name = result.modality.get(key, key)
            table.add_row(
                f"intensity {key} ({name}) in foreground",
                f"p0.5 {stats['p0.5']:.1f} / p50 {stats['p50']:.1f} / p99.5 {stats['p99.5']:.1f}  "
                f"(mean {stats['mean']:.1f}, std {stats['std']:.1f})",
            )
        total = sum(fp.label_voxels.values()) or 1
        table.add_row(
            "label voxels",
            ", ".join(
                f"{result.labels.get(v, str(v))} {100.0 * c / total:.2f}%" for v, c in fp.label_voxels.items()
            ),
        )
    Console(width=120, soft_wrap=False).print(table)


@app.command()
def check(
    directory: Annotated[
        Path,
        typer.Argument(
            help="Dataset: an MSD or nnU-Net v2 raw folder (holding dataset.json), its dataset.json, or a "
            "CSV/JSON list of image/label paths."
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the result as JSON instead of a table.")
    ] = False,
) -> None:
    """Verify a dataset before training and print its fingerprint.

    Checks that every image/label pair exists and loads, shapes and affines match, and label values are declared in dataset.json; prints median spacing, shape and foreground intensity percentiles. Exit code 1 when any problem is found (each is listed).
    """
    from medfcn.data.dataset_check import check_dataset

    with user_errors():
        result = check_dataset(directory)
    if as_json:
        typer.echo(json.dumps(_check_as_dict(result), indent=2))
    else:
        _print_table(result)
        for problem in result.problems:
            typer.echo(f"problem: {problem}")
    if not result.ok:
        raise fail(
            f"{len(result.problems)} problem(s) found in {result.root}; fix them before training", EXIT_FAILED
        )
    if not as_json:
        typer.echo("ok: no problems found")


@app.command()
def download(
    task: Annotated[
        str, typer.Argument(help="MSD task, e.g. Task03_Liver (Task01_BrainTumour ... Task10_Colon).")
    ] = "Task03_Liver",
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder that receives TASK/ (created).")
    ] = Path("data"),
    url: Annotated[
        str | None, typer.Option("--url", help="Download from this URL instead (a mirror or a local copy).")
    ] = None,
    md5: Annotated[
        str | None,
        typer.Option(
            "--md5", help="Expected md5 of the archive (default: MONAI's for known tasks; none for others)."
        ),
    ] = None,
    keep_archive: Annotated[
        bool,
        typer.Option(
            "--keep-archive/--no-keep-archive", help="Keep TASK.tar after extracting (liver: ~27 GB)."
        ),
    ] = False,
    quiet: Annotated[bool, quiet_option()] = False,
) -> None:
    """Download a Medical Segmentation Decathlon task, verify its md5 and extract it to OUTPUT/TASK.

    Uses MONAI's download utilities and URLs. Nothing is downloaded when OUTPUT/TASK/dataset.json exists.
    """
    from medfcn.data.msd import read_dataset_json
    from medfcn.data.msd_download import download_msd

    with user_errors():
        # MONAI's download bar redraws with carriage returns: only on a terminal.
        bar = not quiet and sys.stderr.isatty()
        target = download_msd(task, output, url=url, md5=md5, progress=bar, keep_archive=keep_archive)
        data = read_dataset_json(target)
    typer.echo(f"{task} ready at {target} ({len(data['training'])} training, {len(data['test'])} test cases)")
    typer.echo(f"next: medfcn data check {target}")


def _print_scan(report: DiscoveryReport) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(width=140, soft_wrap=False)
    cases = Table(title=f"{len(report.cases)} scan(s) in {report.root}", title_justify="left")
    for column in ("id", "kind", "modality", "slices", "shape (voxels)", "spacing (mm)", "source"):
        cases.add_column(column, overflow="fold")
    for c in report.cases:
        cases.add_row(
            c.id,
            c.kind,
            c.modality or "-",
            str(c.n_slices) if c.n_slices is not None else "-",
            " x ".join(str(v) for v in c.shape) if c.shape else "-",
            _fmt(c.spacing) if c.spacing else "-",
            c.source,
        )
    console.print(cases)
    if report.skipped:
        skipped = Table(title=f"{len(report.skipped)} skipped", title_justify="left")
        skipped.add_column("path", overflow="fold")
        skipped.add_column("reason", overflow="fold")
        for s in report.skipped:
            skipped.add_row(s.path, s.reason)
        console.print(skipped)


@app.command()
def scan(
    folder: Annotated[
        Path,
        typer.Argument(
            exists=True,
            help="Folder tree to scan (or one NIfTI/NRRD/MHA file, DICOM file, DICOM series folder, zip "
            "archive, or a list file .txt/.lst/.list with one path per line, as medfcn infer takes).",
        ),
    ],
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the report as JSON instead of tables.")
    ] = False,
    modality: Annotated[
        str | None,
        typer.Option("--modality", help="Only DICOM series of this Modality, e.g. CT. Default: all."),
    ] = None,
    min_slices: Annotated[
        int | None,
        typer.Option(
            "--min-slices",
            min=1,
            help="Skip DICOM series with fewer slices (localisers, key images). Default: discovery's (5).",
        ),
    ] = None,
    series_description: Annotated[
        str | None,
        typer.Option(
            "--series-description",
            help="Only DICOM series whose SeriesDescription matches this regular expression (case-insensitive).",
        ),
    ] = None,
) -> None:
    """List the scans in a folder (NIfTI files, DICOM series) and what was skipped, with reasons.

    The same discovery as medfcn infer: run it first to see what would be segmented. Reads headers only and never writes into FOLDER. Exit code 1 when no scan is found.
    """
    from medfcn.data.discovery import find_cases

    kwargs: dict[str, Any] = {"modality": modality, "series_description": series_description}
    if min_slices is not None:
        kwargs["min_slices"] = min_slices
    with user_errors():
        report = find_cases(folder, **kwargs)
    if as_json:
        typer.echo(json.dumps(report.to_dict(), indent=2, ensure_ascii=False))
    else:
        _print_scan(report)
    if not report.cases:
        raise fail(f"no scans found in {folder} ({len(report.skipped)} item(s) skipped)", EXIT_FAILED)
