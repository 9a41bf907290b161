"""ONNX export of a bundle's network, kept only if ONNX Runtime reproduces it at a new input size.

Used by :func:`medfcn.bundle.export.export_bundle` (``medfcn export --onnx``): the TorchScript-based
exporter first, then the dynamo exporter where the traced graph does not generalise.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from medfcn.errors import BundleError, one_line

__all__ = ["INPUT_NAME", "OUTPUT_NAME", "error_line", "export_and_check_onnx", "export_onnx", "max_abs_diff", "onnx_run"]

INPUT_NAME = "image"
"""The name of the network's input in the exported graph and in ``metadata.json``'s ``inputs``."""

OUTPUT_NAME = "pred"
"""The name of the network's output in the exported graph."""


def error_line(err: BaseException) -> str:
    """``Type: first line`` of an exporter's or runtime's error (their messages are long and varied)."""
    return f"{type(err).__name__}: {one_line(err)}" if str(err).strip() else type(err).__name__


def max_abs_diff(a: Any, b: Any) -> float:
    """The largest absolute difference of two arrays or tensors (float64; NaN if either has one)."""
    import numpy as np

    return float(np.max(np.abs(np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64))))


def export_onnx(net: Any, example: Any, path: Path, opset: int | None, dynamo: bool) -> None:
    import torch

    spatial = {i: f"spatial_{i - 1}" for i in range(2, example.ndim)}
    axes = {INPUT_NAME: {0: "batch", **spatial}, OUTPUT_NAME: {0: "batch", **spatial}}
    extra: dict[str, Any] = {"external_data": False, "verbose": False} if dynamo else {}
    with torch.no_grad(), warnings.catch_warnings():
        # Tracer warnings about Python ints are expected; the numeric check below is what decides.
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (example,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[OUTPUT_NAME],
            dynamic_axes=axes,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=dynamo,
            **extra,
        )


def onnx_run(path: Path, x: Any) -> Any:
    try:
        import onnxruntime as ort
    except ImportError as err:
        raise BundleError("ONNX export needs onnx and onnxruntime: pip install 'medfcn[onnx]'") from err
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]


def export_and_check_onnx(
    net: Any, example: Any, path: Path, opset: int | None, x: Any, reference: Any, bound: float | None
) -> float | None:
    """Export with the TorchScript-based exporter, then (if its graph does not generalise) with the
    dynamo exporter; keep the first whose ONNX Runtime output matches the eager network at the new size.

    Tracing freezes shape-dependent Python branches (e.g. "pad if the skip is larger") at the example
    size, which only a run at another size reveals; torch.export keeps them symbolic where it can.
    """
    failures = []
    for dynamo in (False, True):
        label = "dynamo exporter" if dynamo else "TorchScript exporter"
        try:
            export_onnx(net, example, path, opset, dynamo)
        except Exception as err:  # exporter errors are long and varied; keep their first line
            failures.append(f"{label}: {error_line(err)}")
            continue
        if reference is None or bound is None:
            return None
        try:
            diff = max_abs_diff(onnx_run(path, x), reference)
        except BundleError:
            raise
        except Exception as err:  # ONNX Runtime rejects the graph at the new size
            failures.append(f"{label}: ONNX Runtime fails on input {tuple(x.shape)} ({error_line(err)})")
            continue
        if diff <= bound:
            return diff
        failures.append(f"{label}: differs from the checkpoint by {diff:.3g} (allowed {bound:.3g})")
    raise BundleError(
        f"{path}: no ONNX export reproduces the network at a new input size; "
        + "; ".join(failures)
    )
