"""``medfcn export``: TorchScript (and ONNX) from a trained bundle, each checked against the checkpoint."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from medfcn.cli._common import bundle_option, user_errors

__all__ = ["export"]


class _Bump(str, Enum):
    auto = "auto"
    none = "none"
    patch = "patch"
    minor = "minor"
    major = "major"


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


def export(
    bundle: Annotated[
        Path,
        bundle_option(
            "Bundle directory with configs/inference.json, configs/metadata.json and models/model.pt.",
        ),
    ],
    onnx: Annotated[
        bool,
        typer.Option(
            "--onnx/--no-onnx",
            help="Also write models/model.onnx (dynamic batch and spatial axes) for ONNX Runtime/TensorRT. "
            "Default: off (needs the onnx extra).",
        ),
    ] = False,
    check: Annotated[
        bool,
        typer.Option(
            "--check/--no-check",
            help="Run each export on a volume of a new size and compare with the checkpoint's eager network; "
            "nothing is written if they differ. Default: on (seconds on CPU); --no-check skips the only proof "
            "that the file is faithful.",
        ),
    ] = True,
    tolerance: Annotated[
        float,
        typer.Option(
            "--tolerance",
            min=0.0,
            help="Allowed max |export - eager| relative to max(1, max |eager|). Default 1e-4: fp32 TorchScript "
            "matches to ~1e-7, ONNX Runtime to ~1e-6.",
        ),
    ] = 1e-4,
    check_size: Annotated[
        Optional[tuple[int, int, int]],
        typer.Option(
            "--check-size",
            help="Spatial size X Y Z of the check volume. Default: about 3/4 of the patch size, odd, different "
            "per axis (sizes the network was not traced at).",
        ),
    ] = None,
    bump_version: Annotated[
        _Bump,
        typer.Option(
            "--bump-version",
            case_sensitive=False,
            help="How to raise the version in metadata.json. auto (default): the patch number, and a changelog "
            "entry, only when models/model.pt differs from the weights of the last export; re-exporting the "
            "same weights keeps the version. patch/minor/major: always; none: never (the note is appended to "
            "the current version's entry).",
        ),
    ] = _Bump.auto,
) -> None:
    """Export the bundle's weights to models/model.ts (TorchScript with metadata.json and inference.json
    embedded, what MONAI Deploy loads) and optionally models/model.onnx, verified and written atomically."""
    with user_errors():
        from medfcn.bundle.export import export_bundle

        result = export_bundle(
            bundle,
            onnx=onnx,
            check=check,
            tolerance=tolerance,
            check_shape=check_size,
            bump=bump_version.value,
        )
    for item in result.exports:
        where = item.path.relative_to(result.bundle)
        if item.max_abs_diff is None:
            verdict = "not checked (--no-check)"
        else:
            shape = "x".join(str(s) for s in item.input_shape or ())
            verdict = f"max |diff| vs checkpoint {item.max_abs_diff:.2e} (allowed {item.tolerance:.1e}, input {shape})"
        typer.echo(f"{where}  {_size(item.size_bytes)}  {verdict}")
    if result.version != result.previous_version:
        why = "weights changed since the last export" if result.weights_changed else f"--bump-version {bump_version.value}"
        typer.echo(f"configs/metadata.json  version {result.version} (was {result.previous_version}: {why})")
    else:
        why = "same weights as the last export" if not result.weights_changed else "--bump-version none"
        typer.echo(f"configs/metadata.json  version {result.version} (kept: {why})")
