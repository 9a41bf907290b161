"""The ``medfcn`` application: subcommands are composed from one module each (``add_typer``)."""

from __future__ import annotations

import gc
import importlib
import importlib.util
import platform
from pathlib import Path
from typing import Annotated, Optional

import typer

from medfcn._version import __version__
from medfcn.cli._common import new_app

__all__ = ["app", "main"]

app = new_app(
    name="medfcn",
    help="Fully Convolutional Networks for CT and MR segmentation (MONAI bundles, DICOM and NIfTI).",
    no_args_is_help=True,
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"medfcn {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    ] = False,
) -> None:
    """Fully Convolutional Networks for CT and MR segmentation (MONAI bundles, DICOM and NIfTI)."""
    from medfcn._logging import quiet_third_party

    quiet_third_party()


_OPTIONAL_PARTS = {
    "onnx": "ONNX export (medfcn[onnx])",
    "onnxruntime": "ONNX Runtime checks (medfcn[onnx])",
    "monai.deploy": "MONAI Deploy app (medfcn[deploy])",
    "highdicom": "DICOM SEG writing",
    "mlflow": "experiment tracking",
}


def _package_version(module: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    dist = {"monai.deploy": "monai-deploy-app-sdk"}.get(module, module)
    try:  # the distribution's metadata first: find_spec("monai.deploy") would import all of monai (seconds)
        return version(dist)
    except PackageNotFoundError:
        pass
    if "." in module:
        return "not installed"
    try:
        return "installed" if importlib.util.find_spec(module) is not None else "not installed"
    except (ImportError, ValueError):
        return "not installed"


def _bundle_rows(path: Path) -> list[tuple[str, str]]:
    from medfcn.bundle import load_bundle
    from medfcn.cli._common import user_errors

    with user_errors():
        b = load_bundle(path)
    inputs = b.metadata.get("network_data_format", {}).get("inputs", {}).get("image", {})
    return [
        ("bundle", f"{b.name} {b.version} ({b.root})"),
        ("task", str(b.metadata.get("task", ""))),
        ("classes", ", ".join(f"{k} {v}" for k, v in sorted(b.class_names.items()))),
        ("input", f"{b.in_channels or '?'} channel(s) {inputs.get('modality', '')}, patch "
         f"{'x'.join(str(s) for s in b.patch_size or ())}"),
        ("configs", ", ".join(sorted(b.configs))),
        ("weights", ", ".join(sorted(b.weights)) or "none (train it: medfcn train --bundle ...)"),
        *(
            [("stale exports", f"{', '.join(stale)} made from other weights than models/model.pt: run "
              f"`medfcn export --bundle {b.root}` again (medfcn infer uses model.pt)")]
            if (stale := b.stale_exports)
            else []
        ),
        ("intended use", str(b.metadata.get("intended_use", ""))),
    ]


@app.command()
def info(
    bundle: Annotated[
        Optional[Path],
        typer.Option("--bundle", help="Also describe this bundle (name, version, classes, weights; no weights loaded)."),
    ] = None,
) -> None:
    """Print versions of medfcn, MONAI and PyTorch, the devices available and the optional parts installed."""
    from importlib.metadata import version

    import torch

    rows: list[tuple[str, str]] = [
        ("medfcn", __version__),
        ("python", platform.python_version()),
        ("platform", platform.platform(terse=True)),
        ("monai", version("monai")),  # not `import monai`: its package face loads every submodule (seconds)
        ("torch", torch.__version__),
        ("cuda available", str(torch.cuda.is_available())),
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            rows.append((f"cuda:{i}", torch.cuda.get_device_name(i)))
    from medfcn.memory import huge_pages
    from medfcn.runtime import cpu_bf16_units, describe_policy

    units = cpu_bf16_units()
    if torch.cuda.is_available():
        rows.append(("bf16 autocast", "yes" if torch.cuda.is_bf16_supported() else "no (fp16)"))
    else:
        rows.append(("bf16 autocast", "yes" if units else "no: emulated only, --amp runs fp32"))
    if not units:
        units_text = "no (--amp runs fp32)"
    elif "AMX" in units:
        units_text = f"yes: {', '.join(units)} (--amp is much faster on the CPU)"
    else:
        units_text = f"yes: {', '.join(units)}, no AMX (--amp about 1.5x faster for the network)"
    rows.append(("cpu bf16 units", units_text))
    rows.append(("cpu bf16 policy", describe_policy(units)))
    rows.append(("cpu threads", str(torch.get_num_threads())))
    rows.append(("huge pages (tensors)", huge_pages()))
    for module, what in _OPTIONAL_PARTS.items():
        rows.append((f"{module} ({what})", _package_version(module)))
    if bundle is not None:
        rows.extend(_bundle_rows(bundle))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        typer.echo(f"{key:<{width}}  {value}")


def _register() -> None:
    """Attach the command groups; each lives in its own module under ``medfcn.cli``."""
    for module_name, kind, name in (
        ("medfcn.cli.data", "group", "data"),
        ("medfcn.cli.bundle", "group", "bundle"),
        ("medfcn.cli.train", "command", "train"),
        ("medfcn.cli.infer", "command", "infer"),
        ("medfcn.cli.evaluate", "command", "evaluate"),
        ("medfcn.cli.export", "command", "export"),
        ("medfcn.cli.demo", "command", "demo"),
    ):
        if importlib.util.find_spec(module_name) is None:
            continue
        module = importlib.import_module(module_name)
        if kind == "group":
            app.add_typer(module.app, name=name)
        else:
            app.command(name)(getattr(module, name))


_register()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    finally:
        # The interpreter's last garbage collection walks every object that importing PyTorch and MONAI
        # made: 1.0-1.4 s after a `medfcn infer` on a 2-core AMD EPYC, 0.3 s with them frozen. Nothing of
        # them needs collecting at exit; atexit handlers and the modules' teardown still run.
        gc.freeze()


if __name__ == "__main__":
    main()
