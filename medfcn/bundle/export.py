"""Export a trained bundle to TorchScript (and optionally ONNX), verified against the checkpoint.

``models/model.ts`` is written the way MONAI's ``ckpt_export`` writes it (``monai/bundle/scripts.py``):
the network from ``network_def`` with the weights of ``models/model.pt``, scripted with
:func:`monai.networks.utils.convert_to_torchscript` and saved with
:func:`monai.data.torchscript_utils.save_net_with_metadata`, carrying ``metadata.json`` and
``inference.json`` as extra files. That is what MONAI Deploy's ``MonaiBundleInferenceOperator`` reads
from a TorchScript bundle, so the embedded ``inference.json`` must stand alone: when the bundle's
config uses ``%`` macros or is split over several files, the macros are resolved and the files merged
before embedding.

Every export is checked numerically before it replaces anything: the saved model is loaded back and
run on a random volume of a *new* size (not the patch size the network was traced or trained at, odd
along every axis, batch of 2), and its output is compared with the eager network's. The largest
absolute difference is reported and must stay below ``tolerance * max(1, max|eager output|)``.

Writes are atomic (temporary file in ``models/`` or ``configs/``, then :func:`os.replace`), and
``configs/metadata.json`` is updated last — version bump, changelog entry with the measured
differences, MONAI/PyTorch/NumPy versions — so an interrupted or failed export leaves the bundle as
it was.

Example:
    >>> from medfcn.bundle.export import export_bundle
    >>> result = export_bundle("bundles/liver", onnx=True)  # doctest: +SKIP
    >>> [(e.format, e.max_abs_diff) for e in result.exports]  # doctest: +SKIP
    [('torchscript', 0.0), ('onnx', 3.1e-06)]
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import os
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from medfcn._io import atomic_write_json, file_sha256
from medfcn.bundle import Bundle, load_bundle
from medfcn.bundle.onnx_export import INPUT_NAME, error_line, export_and_check_onnx, max_abs_diff
from medfcn.bundle.weights import read_state_dict
from medfcn.errors import BundleError, one_line

__all__ = [
    "DEFAULT_TOLERANCE",
    "WEIGHTS_DIGEST_KEY",
    "Bump",
    "ExportCheck",
    "ExportResult",
    "check_shape_for",
    "export_bundle",
    "load_torchscript_bundle",
    "resolved_inference_config",
]

DEFAULT_TOLERANCE = 1e-4
"""Relative tolerance of the numeric check: ``max|export - eager| <= tol * max(1, max|eager|)``.
fp32 TorchScript reproduces eager PyTorch to ~1e-7; ONNX Runtime's CPU kernels differ by ~1e-6."""

Bump = Literal["auto", "none", "patch", "minor", "major"]
WEIGHTS_DIGEST_KEY = "medfcn_weights_sha256"
"""``metadata.json`` key recording the sha256 of the ``model.pt`` the exports were made from: ``"auto"``
bumps the version only when the weights differ from it."""
Format = Literal["torchscript", "onnx"]

_TS_NAME = "model.ts"
_ONNX_NAME = "model.onnx"


@dataclass(frozen=True)
class ExportCheck:
    """One exported file and the result of its numeric check.

    Attributes:
        format: ``"torchscript"`` or ``"onnx"``.
        path: the file written (``<bundle>/models/model.ts`` or ``model.onnx``).
        size_bytes: its size on disk.
        input_shape: ``(B, C, X, Y, Z)`` of the check volume; ``None`` when the check was skipped.
        max_abs_diff: largest ``|export - eager|`` over the logits; ``None`` when skipped.
        tolerance: the bound it was held to (absolute, already scaled); ``None`` when skipped.
    """

    format: Format
    path: Path
    size_bytes: int
    input_shape: tuple[int, ...] | None
    max_abs_diff: float | None
    tolerance: float | None


@dataclass(frozen=True)
class ExportResult:
    """What :func:`export_bundle` wrote.

    Attributes:
        bundle: the bundle directory.
        version: the bundle version after the export (``metadata.json`` ``version``).
        exports: one :class:`ExportCheck` per file written, TorchScript first.
        metadata_path: the updated ``configs/metadata.json``.
        previous_version: the version before the export (equal to ``version`` when not bumped).
        weights_changed: ``False`` when ``model.pt`` is the one the last export recorded.
    """

    bundle: Path
    version: str
    exports: tuple[ExportCheck, ...]
    metadata_path: Path
    previous_version: str = ""
    weights_changed: bool = True


# ----------------------------------------------------------------------------------------- helpers


def resolved_inference_config(bundle: str | os.PathLike[str] | Bundle, config_file: str | Sequence[str]) -> dict:
    """The bundle's inference config as one self-contained dict (macros resolved, files merged).

    Args:
        bundle: bundle directory (or a :class:`~medfcn.bundle.Bundle`).
        config_file: config path(s) relative to the bundle (``"configs/inference.json"``, or a list
            merged in order the way ``monai.bundle run --config_file "['a.json','b.json']"`` merges).

    Returns:
        The config without ``_meta_``; identical to the file's content when there is nothing to resolve.

    Raises:
        BundleError: a config file is missing or is not valid JSON/YAML.
    """
    files = [config_file] if isinstance(config_file, (str, os.PathLike)) else list(config_file)
    b = load_bundle(bundle)
    return b.config([str(b.root / f) for f in files])


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise BundleError(f"{path}: not found; a MONAI bundle needs configs/metadata.json")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise BundleError(f"{path}: not valid JSON ({err.msg} at line {err.lineno})") from err
    if not isinstance(data, dict):
        raise BundleError(f"{path}: expected a JSON object, found {type(data).__name__}")
    return data


@contextlib.contextmanager
def _staging(folder: Path) -> Iterator[Path]:
    """A private folder inside ``folder`` for files that are then moved in with :func:`os.replace`.

    Same file system, so the final rename is atomic; files keep their final names (TorchScript names
    its archive root after the file, and Deploy looks for ``model/extra/*.json``) and the usual
    permissions (``mkstemp`` would make them owner-only).
    """
    stage = Path(tempfile.mkdtemp(dir=folder, prefix=".medfcn-export-"))
    try:
        yield stage
    finally:
        for leftover in stage.iterdir():
            leftover.unlink()
        stage.rmdir()


def _bump(version: str, how: Bump, path: Path) -> str:
    if how == "none":
        return version
    parts = version.split(".")
    if len(parts) != 3 or not all(p.isdigit() for p in parts):
        raise BundleError(
            f"{path}: version {version!r} is not MAJOR.MINOR.PATCH; fix it or export with --bump-version none"
        )
    major, minor, patch = (int(p) for p in parts)
    if how == "major":
        return f"{major + 1}.0.0"
    if how == "minor":
        return f"{major}.{minor + 1}.0"
    return f"{major}.{minor}.{patch + 1}"


def check_shape_for(spatial: Sequence[int]) -> tuple[int, ...]:
    """A spatial size unlike ``spatial`` for the numeric check: about 3/4 of it, odd, different per axis.

    Odd, unequal sides are what trips a network (or an exporter) that assumes divisibility by its
    strides, cubic inputs or the size it was traced at.

    Example:
        >>> check_shape_for((32, 32, 32))
        (25, 27, 29)
    """
    out = []
    for i, size in enumerate(spatial):
        n = max(9, int(size) - int(size) // 4) + 2 * i
        out.append(n if n % 2 else n + 1)
    return tuple(out)


def _patch_size(config: Mapping[str, Any], meta: Mapping[str, Any], spatial_dims: int) -> tuple[int, ...]:
    patch = config.get("patch_size")
    if isinstance(patch, (list, tuple)) and all(isinstance(p, int) for p in patch):
        return tuple(int(p) for p in patch)
    shape = meta.get("network_data_format", {}).get("inputs", {}).get(INPUT_NAME, {}).get("spatial_shape")
    if isinstance(shape, (list, tuple)) and all(isinstance(p, int) for p in shape):
        return tuple(int(p) for p in shape)
    return (32,) * spatial_dims


def _num_channels(meta: Mapping[str, Any]) -> int:
    inputs = meta.get("network_data_format", {}).get("inputs", {})
    channels = inputs.get(INPUT_NAME, {}).get("num_channels", 1)
    return int(channels) if isinstance(channels, int) else 1


def _eager_network(config: dict, bundle: Path, weights: Path, key_in_ckpt: str) -> Any:
    from monai.bundle import ConfigParser

    if "network_def" not in config:
        raise BundleError(
            f"{bundle}/configs/inference.json: no 'network_def'; MONAI bundles define the network there"
        )
    parser = ConfigParser(copy.deepcopy(config))
    parser["bundle_root"] = str(bundle)
    try:
        net = parser.get_parsed_content("network_def", instantiate=True)
    except Exception as err:  # bad _target_ or arguments: the innermost cause says what is wrong
        cause: BaseException = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise BundleError(f"{bundle}: cannot build 'network_def' ({error_line(cause)})") from err
    state = read_state_dict(weights, key_in_ckpt)  # every form the zoo ships: state_dict, {"model": ...}, DDP keys
    try:
        net.load_state_dict(state, strict=True)
    except RuntimeError as err:
        # torch lists every missing/unexpected/mis-sized key on the lines after a generic first line.
        detail = " ".join(line.strip() for line in str(err).strip().splitlines()[1:])
        detail = detail if len(detail) < 300 else detail[:297] + "..."
        raise BundleError(
            f"{weights}: weights do not fit 'network_def' ({detail or 'state_dict mismatch'}); "
            "were they trained with another network_def?"
        ) from err
    return net.eval()


def _check(name: str, diff: float, bound: float, shape: tuple[int, ...], path: Path) -> None:
    if not diff <= bound:  # also catches NaN
        raise BundleError(
            f"{path.name}: {name} output differs from the checkpoint's eager network by {diff:.3g} "
            f"(allowed {bound:.3g}) on input {shape}; the export is not faithful and was not written"
        )


# ------------------------------------------------------------------------------------------ exports


def _script(net: Any) -> Any:
    from monai.networks.utils import convert_to_torchscript

    try:
        return convert_to_torchscript(net, use_trace=False)
    except Exception as err:  # TorchScript rejects some Python; say so instead of tracing silently
        raise BundleError(
            f"network {type(net).__name__} cannot be scripted with torch.jit.script "
            f"({error_line(err)})"
        ) from err


def load_torchscript_bundle(path: str | os.PathLike[str]) -> tuple[Any, dict, dict]:
    """Load ``model.ts`` with its embedded ``metadata.json`` and ``inference.json`` (CPU).

    Returns:
        ``(script_module, metadata, inference_config)``.

    Raises:
        BundleError: the file is missing, not TorchScript, or lacks one of the two extra files.
    """
    import torch

    p = Path(path)
    extra = {"metadata.json": "", "inference.json": ""}
    try:
        module = torch.jit.load(str(p), map_location="cpu", _extra_files=extra)
    except (RuntimeError, ValueError, OSError) as err:
        raise BundleError(f"{p}: not a TorchScript model ({one_line(err)})") from err
    docs = {}
    for name, text in extra.items():
        if not text:
            raise BundleError(f"{p}: has no embedded {name}; re-export it with medfcn export")
        docs[name] = json.loads(text)
    return module, docs["metadata.json"], docs["inference.json"]


def export_bundle(
    bundle: str | os.PathLike[str],
    *,
    onnx: bool = False,
    check: bool = True,
    tolerance: float = DEFAULT_TOLERANCE,
    check_shape: Sequence[int] | None = None,
    bump: Bump = "auto",
    config_file: str | Sequence[str] = "configs/inference.json",
    ckpt_file: str = "models/model.pt",
    key_in_ckpt: str = "",
    opset: int | None = 18,
) -> ExportResult:
    """Write ``models/model.ts`` (and ``models/model.onnx``) from ``models/model.pt``, checked and atomic.

    Args:
        bundle: MONAI bundle directory (``configs/inference.json``, ``configs/metadata.json``,
            ``models/model.pt``).
        onnx: also write ``models/model.onnx`` (input ``image`` ``(B, C, X, Y, Z)``, output ``pred``
            ``(B, out_channels, X, Y, Z)`` logits; batch and spatial axes dynamic). Needs onnx + onnxruntime.
        check: run each export on a new-size volume and compare with the eager network (seconds on CPU
            for a small FCN). ``False`` skips it; nothing then vouches for the file.
        tolerance: relative bound of the check, see :data:`DEFAULT_TOLERANCE`.
        check_shape: spatial size of the check volume; default :func:`check_shape_for` of the patch size.
        bump: how to raise ``metadata.json``'s version. ``"auto"``: the patch number, only when
            ``model.pt`` differs from the weights of the last export (their sha256 is recorded under
            :data:`WEIGHTS_DIGEST_KEY`); a re-export of the same weights keeps the version and changelog.
            ``"none"`` keeps the version and appends the export note to its changelog entry.
        config_file: inference config(s) relative to the bundle; embedded as one resolved
            ``inference.json``.
        ckpt_file: the weights relative to the bundle (a plain ``state_dict``).
        key_in_ckpt: key of the weights inside a nested checkpoint (``""``: the file is the state_dict).
        opset: ONNX opset version.

    Returns:
        :class:`ExportResult` with one :class:`ExportCheck` per file.

    Raises:
        BundleError: missing/invalid configs or weights, a network that cannot be scripted/exported,
            or an export whose output differs from the checkpoint by more than the tolerance.
    """
    import monai
    import numpy
    import torch
    from monai.data.torchscript_utils import save_net_with_metadata

    from medfcn._version import __version__ as medfcn_version

    root = Path(bundle).resolve()
    if not root.is_dir():
        raise BundleError(f"{root}: not a bundle directory")
    meta_path = root / "configs" / "metadata.json"
    meta = _read_json(meta_path)
    config = resolved_inference_config(root, config_file)
    net = _eager_network(config, root, root / ckpt_file, key_in_ckpt)
    models = root / "models"

    net_def = config.get("network_def", {})
    dims = net_def.get("spatial_dims", 3) if isinstance(net_def, dict) else 3
    patch = _patch_size(config, meta, dims if isinstance(dims, int) else 3)
    shape = (2, _num_channels(meta), *(tuple(check_shape) if check_shape else check_shape_for(patch)))
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=gen)
    try:
        with torch.no_grad():
            reference = net(x) if check else None
    except (RuntimeError, ValueError) as err:
        if check_shape is None and check:  # networks such as MONAI's UNet need sizes divisible by their strides
            import logging

            logging.getLogger(__name__).warning(
                "the network does not take a %s volume; the export is checked at the patch size %s",
                "x".join(map(str, shape[2:])), "x".join(map(str, patch)),
            )
            shape = (2, shape[1], *patch)
            x = torch.randn(shape, generator=gen)
            with torch.no_grad():
                reference = net(x)
        else:
            raise BundleError(
                f"{root}: the checkpoint's network fails on a check volume of shape {shape} ({err}); "
                "pass a larger check shape"
            ) from err
    bound = tolerance * max(1.0, float(reference.abs().max())) if reference is not None else None

    # ---- TorchScript: script, round-trip through bytes, check, then save with metadata (below)
    scripted = _script(net)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    reloaded = torch.jit.load(buffer, map_location="cpu")
    ts_diff = None
    if reference is not None and bound is not None:
        with torch.no_grad():
            ts_diff = max_abs_diff(reloaded(x), reference)
        _check("TorchScript", ts_diff, bound, shape, models / _TS_NAME)

    # ---- ONNX: export at the patch size, check at the new size (proves the dynamic axes)
    onnx_tmp: Path | None = None
    onnx_diff = None
    with _staging(models) as stage:
        if onnx:
            try:
                import onnx as _onnx  # noqa: F401
            except ImportError as err:
                raise BundleError(
                    "ONNX export needs onnx and onnxruntime: pip install 'medfcn[onnx]'"
                ) from err
            onnx_tmp = stage / _ONNX_NAME
            example = torch.randn((1, shape[1], *patch), generator=gen)
            onnx_diff = export_and_check_onnx(net, example, onnx_tmp, opset, x, reference, bound)

        # ---- metadata: version, changelog, versions of what produced the files
        old_version = str(meta.get("version", "0.0.0"))
        weights_sha256 = file_sha256(root / ckpt_file)
        weights_changed = meta.get(WEIGHTS_DIGEST_KEY) != weights_sha256
        how: Bump = ("patch" if weights_changed else "none") if bump == "auto" else bump
        version = _bump(old_version, how, meta_path)
        now = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        parts = [f"TorchScript{' + ONNX' if onnx else ''} export ({now}, medfcn {medfcn_version})"]
        if ts_diff is not None:
            size = "x".join(str(s) for s in shape[2:])
            parts.append(f"max |TorchScript - checkpoint| {ts_diff:.2e}")
            if onnx_diff is not None:
                import onnxruntime

                # Not in required_packages_version: model.ts runs without it. (MONAI >= 1.5 reads the
                # old optional_packages_version as required_packages_version, overwriting it.)
                parts.append(f"max |ONNX Runtime {onnxruntime.__version__} - checkpoint| {onnx_diff:.2e}")
            parts[-1] += f" on a {size} volume"
        note = "; ".join(parts)
        new_meta = copy.deepcopy(meta)
        new_meta["version"] = version
        changelog = dict(new_meta.get("changelog", {}) or {})
        if bump == "auto" and not weights_changed:
            pass  # the same weights again: the changelog already tells this version's story
        elif version in changelog and how == "none":
            changelog[version] = f"{changelog[version]}; {note}"
            new_meta["changelog"] = changelog
        else:
            new_meta["changelog"] = {version: note, **{k: v for k, v in changelog.items() if k != version}}
        new_meta["monai_version"] = monai.__version__
        new_meta["pytorch_version"] = torch.__version__.split("+")[0]
        new_meta["numpy_version"] = numpy.__version__
        new_meta[WEIGHTS_DIGEST_KEY] = weights_sha256
        required = dict(new_meta.get("required_packages_version", {}) or {})
        required["medfcn"] = medfcn_version
        new_meta["required_packages_version"] = required

        # ---- write: model.ts (with the new metadata), model.onnx, then metadata.json last
        ts_tmp = stage / _TS_NAME
        save_net_with_metadata(
            reloaded,
            str(ts_tmp),
            include_config_vals=False,
            append_timestamp=False,
            meta_values=new_meta,
            more_extra_files={"inference.json": json.dumps(config, indent=4).encode()},
        )
        load_torchscript_bundle(ts_tmp)  # the file reads back with both extra files
        os.replace(ts_tmp, models / _TS_NAME)
        exports = [
            ExportCheck(
                "torchscript",
                models / _TS_NAME,
                (models / _TS_NAME).stat().st_size,
                shape if ts_diff is not None else None,
                ts_diff,
                bound if ts_diff is not None else None,
            )
        ]
        if onnx_tmp is not None:
            os.replace(onnx_tmp, models / _ONNX_NAME)
            exports.append(
                ExportCheck(
                    "onnx",
                    models / _ONNX_NAME,
                    (models / _ONNX_NAME).stat().st_size,
                    shape if onnx_diff is not None else None,
                    onnx_diff,
                    bound if onnx_diff is not None else None,
                )
            )
        atomic_write_json(meta_path, new_meta, indent=4)
    return ExportResult(
        bundle=root,
        version=version,
        exports=tuple(exports),
        metadata_path=meta_path,
        previous_version=old_version,
        weights_changed=weights_changed,
    )
