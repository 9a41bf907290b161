"""Any MONAI bundle's inference pipeline, read from the standard ids of the bundle specification.

MONAI's bundle specification (``monai/bundle/properties.py``) names what an inference config holds:
``network_def``, ``preprocessing``, ``inferer`` and ``postprocessing``. :func:`read_pipeline` builds
medfcn's pipeline from those ids alone, so a model-zoo bundle runs as it is, whatever its network and
whatever its postprocessing holds:

* ``Activationsd`` in ``postprocessing`` is the activation, applied to each sliding-window output
  (and averaged over flips with test-time augmentation); without one, softmax (a warning says so).
* ``Invertd`` maps the probabilities back to the scan's grid; without one, medfcn inverts the
  bundle's ``preprocessing`` itself (MetaTensors carry the applied transforms), with a warning.
* The remaining transforms (``AsDiscreted``, ``KeepLargestConnectedComponentd``, ...) make the label
  map, in the bundle's order; without an ``AsDiscreted``, an argmax goes first (a warning says so).
* Writers (``SaveImaged``, ``SaveImage``) are replaced by ``Identityd`` before anything is built: they
  would write stray files wherever the bundle's ``output_dir`` points. medfcn's writers own the outputs.

medfcn's own ids ``post_activation``, ``post_invert`` and ``post_discrete`` (and ``hu_window``) are
optional refinements: where a bundle defines them, they are used instead of what is derived.

Example:
    >>> from medfcn.bundle.standard import open_config, read_pipeline
    >>> parser = open_config("bundles/spleen_ct_segmentation")  # doctest: +SKIP
    >>> pipe = read_pipeline(parser, "bundles/spleen_ct_segmentation/configs/inference.json")  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from medfcn.errors import BundleError, one_line

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from monai.bundle import ConfigParser

__all__ = [
    "STANDARD_IDS",
    "WRITER_TARGETS",
    "InferencePipeline",
    "channel_def",
    "class_names_of",
    "collapse_channels",
    "inferer_updates",
    "neutralise_writers",
    "open_config",
    "out_channels_of",
    "read_pipeline",
]

logger = logging.getLogger(__name__)

STANDARD_IDS = ("network_def", "preprocessing", "inferer", "postprocessing")
"""The ids of MONAI's bundle specification that an inference config defines."""

WRITER_TARGETS = ("SaveImaged", "SaveImage")
"""Transforms that write files; in a bundle's postprocessing they become ``Identityd``."""

_SLIDING = ("SlidingWindowInferer", "SlidingWindowInfererAdapt", "SliceInferer", "MirroredSlidingWindowInferer")

Stage = Callable[..., Any]
"""A dictionary transform: ``{key: tensor, ...} -> {key: tensor, ...}``."""


@dataclass
class InferencePipeline:
    """What :class:`medfcn.engine.segmenter.Segmenter` runs, built from a bundle's config.

    Attributes:
        preprocessing: the bundle's ``preprocessing`` (a ``Compose``).
        inferer: the bundle's ``inferer``.
        activation: ``{"pred": logits (C, *spatial)} -> {"pred": probabilities}``.
        invert: ``{image_key: preprocessed image, "pred": probabilities} -> {"pred": on the source grid}``.
        discrete: ``{"pred": probabilities} -> {"pred": label (1 or C, *spatial)}``.
        image_key: the data key of the image (the first key of the bundle's ``LoadImaged``).
        multilabel: the activation is a sigmoid (one channel per overlapping region, no background
            channel); the label map is then :func:`collapse_channels` of the mask.
        window: the intensity window (``hu_window``, else the first ``ScaleIntensityRanged``), or ``None``.
        notes: one line per derived or fallback part (also logged as warnings).
    """

    preprocessing: Any
    inferer: Any
    activation: Stage
    invert: Stage
    discrete: Stage
    image_key: str = "image"
    multilabel: bool = False
    window: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)


def open_config(
    bundle_root: str | os.PathLike[str], config_file: str | os.PathLike[str] | None = None
) -> ConfigParser:
    """Parse ``configs/metadata.json`` and the inference config (nothing instantiated, writers neutralised):
    :meth:`medfcn.bundle.Bundle.parser` without macro resolution.

    Raises:
        BundleError: not a bundle, or the config is missing or not valid JSON/YAML.
    """
    from medfcn.bundle import load_bundle

    bundle = load_bundle(bundle_root)
    return bundle.parser(str(Path(config_file).resolve()) if config_file is not None else "inference", macros=False)


def _target_name(item: Any) -> str:
    target = item.get("_target_") if isinstance(item, Mapping) else None
    return str(target).rsplit(".", 1)[-1] if isinstance(target, str) else ""


def neutralise_writers(parser: ConfigParser) -> int:
    """Replace every writer of ``postprocessing#transforms`` by an ``Identityd`` (indices unchanged).

    Indices are kept so references such as ``@postprocessing#transforms#2`` still point where they did.

    Returns:
        How many writers were replaced.
    """
    post = parser.get("postprocessing")
    transforms = post.get("transforms") if isinstance(post, Mapping) else None
    if not isinstance(transforms, list):
        return 0
    n = 0
    for i, item in enumerate(transforms):
        if _target_name(item) in WRITER_TARGETS:
            keys = item.get("keys", "pred") if isinstance(item, Mapping) else "pred"
            parser[f"postprocessing#transforms#{i}"] = {"_target_": "Identityd", "keys": keys}
            n += 1
    return n


def inferer_updates(
    parser: ConfigParser,
    device: torch.device,
    *,
    sw_batch_size: int | None = None,
    overlap: float | None = None,
    cpu_thresh: int | None = None,
    buffer_steps: int | None = None,
) -> dict[str, Any]:
    """Config overrides of a sliding-window ``inferer`` for the device and the user's options.

    A bundle whose inferer is not a sliding window (``SimpleInferer``) gets none: its constructor would
    not accept them.
    """
    if _target_name(parser.get("inferer")) not in _SLIDING:
        if sw_batch_size is not None or overlap is not None:
            logger.warning("the bundle's inferer is not a sliding window: --sw-batch-size/--overlap ignored")
        return {}
    updates: dict[str, Any] = {
        # Windows go to the compute device; the stitched output lives on the CPU for large volumes.
        "inferer#sw_device": str(device),
        "inferer#device": str(device),
    }
    if device.type == "cuda":
        updates["inferer#cpu_thresh"] = int(cpu_thresh if cpu_thresh is not None else 2**24)
    if buffer_steps is not None:
        updates["inferer#buffer_steps"] = int(buffer_steps)
    if sw_batch_size is not None:
        updates["inferer#sw_batch_size"] = int(sw_batch_size)
    if overlap is not None:
        updates["inferer#overlap"] = float(overlap)
    return updates


def _parse(parser: ConfigParser, key: str, config_file: Path) -> Any:
    try:
        return parser.get_parsed_content(key)
    except Exception as err:  # MONAI raises plain exceptions for config errors; name the file and id
        cause: BaseException = err
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise BundleError(f"{config_file}: cannot build '{key}': {type(cause).__name__}: {one_line(cause)}") from err


def _flat(transform: Any) -> list[Any]:
    """The transforms of a (nested) ``Compose``, or ``[transform]``."""
    return list(transform.flatten().transforms) if hasattr(transform, "flatten") else [transform]


def _note(notes: list[str], name: str, text: str) -> None:
    line = f"{name}: {text}"
    notes.append(line)
    logger.warning("%s", line)


def read_pipeline(parser: ConfigParser, config_file: str | os.PathLike[str]) -> InferencePipeline:
    """Build the inference pipeline of a parsed bundle config (see the module docstring).

    Raises:
        BundleError: no ``preprocessing`` or ``inferer``, or one of them cannot be built.
    """
    from monai.inferers import SlidingWindowInferer
    from monai.transforms import (
        Activationsd,
        AsDiscreted,
        Compose,
        Identityd,
        Invertd,
        LoadImaged,
        ScaleIntensityRanged,
    )

    config_path = Path(config_file)
    notes: list[str] = []
    name = str((parser.get("_meta_", {}) or {}).get("name") or config_path.parent.parent.name)
    if "preprocessing" not in parser:
        raise BundleError(f"{config_path} has no 'preprocessing': a MONAI bundle defines its input transforms there")
    preprocessing = _parse(parser, "preprocessing", config_path)
    if not isinstance(preprocessing, Compose):
        preprocessing = Compose([preprocessing])
    pre = _flat(preprocessing)
    load = next((t for t in pre if isinstance(t, LoadImaged)), None)
    image_key = str(next(iter(load.keys))) if load is not None else "image"

    if "inferer" in parser:
        inferer = _parse(parser, "inferer", config_path)
    else:
        roi = _roi_size(parser)
        inferer = SlidingWindowInferer(roi_size=roi, sw_batch_size=1, overlap=0.25)
        _note(notes, name, f"no 'inferer' id; a sliding window of {list(roi)} is used")

    post = _flat(_parse(parser, "postprocessing", config_path)) if "postprocessing" in parser else []
    post = [t for t in post if not isinstance(t, Identityd)]  # neutralised writers, or no-ops
    activations = [t for t in post if isinstance(t, Activationsd)]
    inverts = [t for t in post if isinstance(t, Invertd)]
    rest = [t for t in post if not isinstance(t, (Activationsd, Invertd))]

    if "post_activation" in parser:
        activation: Stage = _parse(parser, "post_activation", config_path)
    elif activations:
        activation = activations[0]
        rest = activations[1:] + rest if len(activations) > 1 else rest
    else:
        activation = Activationsd(keys="pred", softmax=True)
        _note(notes, name, "postprocessing has no Activationsd; probabilities are a softmax of the logits")

    if "post_invert" in parser:
        invert: Stage = _parse(parser, "post_invert", config_path)
    elif inverts:
        invert = Compose(inverts)
    else:
        invert = Invertd(
            keys="pred", transform=preprocessing, orig_keys=image_key, nearest_interp=False, to_tensor=True
        )
        _note(notes, name, "postprocessing has no Invertd; medfcn inverts the preprocessing to the scan's grid")

    if "post_discrete" in parser:
        discrete: Stage = _parse(parser, "post_discrete", config_path)
    else:
        if not any(isinstance(t, AsDiscreted) for t in rest):
            rest = [AsDiscreted(keys="pred", argmax=True), *rest]
            _note(notes, name, "postprocessing has no AsDiscreted; the label is the argmax over classes")
        discrete = Compose(rest)

    return InferencePipeline(
        preprocessing=preprocessing,
        inferer=inferer,
        activation=activation,
        invert=invert,
        discrete=discrete,
        image_key=image_key,
        multilabel=bool(isinstance(activation, Activationsd) and any(activation.sigmoid)),
        window=_window(parser, pre, ScaleIntensityRanged),
        notes=notes,
    )


def _roi_size(parser: ConfigParser) -> tuple[int, ...]:
    meta = parser.get("_meta_", {}) or {}
    for candidate in (
        parser.get("patch_size"),
        meta.get("network_data_format", {}).get("inputs", {}).get("image", {}).get("spatial_shape"),
    ):
        if isinstance(candidate, (list, tuple)) and candidate and all(isinstance(s, int) for s in candidate):
            return tuple(int(s) for s in candidate)
    return (96, 96, 96)


def _window(parser: ConfigParser, pre: list[Any], scale_type: Any) -> tuple[float, float] | None:
    if "hu_window" in parser:
        w = parser.get_parsed_content("hu_window")
        return float(w[0]), float(w[1])
    for t in pre:
        if isinstance(t, scale_type):
            scaler: Any = t.scaler
            if scaler.a_min is not None and scaler.a_max is not None:
                return float(scaler.a_min), float(scaler.a_max)
    return None


def channel_def(meta: Mapping[str, Any]) -> dict[int, str]:
    """Output channel -> class name from ``network_data_format.outputs.pred.channel_def`` (``{}``: none)."""
    try:
        names = meta["network_data_format"]["outputs"]["pred"]["channel_def"]
        return {int(k): str(v) for k, v in names.items()}
    except (KeyError, TypeError, ValueError, AttributeError):
        return {}


def class_names_of(
    meta: Mapping[str, Any], out_channels: int | None, name: str, *, multilabel: bool = False
) -> dict[int, str]:
    """Label value -> class name from ``network_data_format.outputs.pred.channel_def``.

    For a ``multilabel`` bundle channel ``c`` is label ``c + 1`` and 0 is ``background``
    (:func:`collapse_channels`). Where the metadata has none, ``background`` and ``class_<i>`` for
    ``out_channels`` classes, with a one-line warning.
    """
    names = channel_def(meta)
    if names and multilabel:
        return {0: "background", **{k + 1: v for k, v in sorted(names.items())}}
    if names:
        return names
    n = int(out_channels or 2) + (1 if multilabel else 0)
    logger.warning(
        "%s: metadata.json has no network_data_format.outputs.pred.channel_def; classes named class_1..class_%d",
        name,
        n - 1,
    )
    return {i: ("background" if i == 0 else f"class_{i}") for i in range(n)}


def out_channels_of(parser: ConfigParser, network: Any = None) -> int | None:
    """The number of output channels: the network's ``out_channels``, the metadata's, or ``network_def``'s."""
    meta = parser.get("_meta_", {}) or {}
    net_def = parser.get("network_def")
    declared = net_def.get("out_channels") if isinstance(net_def, Mapping) else None
    if declared is not None and not isinstance(declared, int):  # "@num_classes": resolve the reference only
        try:
            declared = parser.get_parsed_content("network_def#out_channels")
        except Exception:  # an expression needing what is not there: fall through to None
            declared = None
    for value in (
        getattr(network, "out_channels", None),
        meta.get("network_data_format", {}).get("outputs", {}).get("pred", {}).get("num_channels"),
        declared,
    ):
        if isinstance(value, int) and value > 0:
            return value
    return None


def collapse_channels(label: torch.Tensor) -> torch.Tensor:
    """A ``(C, *spatial)`` multi-label mask (sigmoid bundles) as one ``(1, *spatial)`` label map.

    Channel ``c`` becomes label ``c + 1``; where channels overlap the highest one wins (in the zoo's
    nested multi-label bundles, such as BraTS' TC/WT/ET, later channels are the inner regions).
    """
    import torch

    data = torch.as_tensor(label)
    values = torch.arange(1, data.shape[0] + 1, dtype=torch.uint8).view(-1, *([1] * (data.ndim - 1)))
    return ((data > 0.5).to(torch.uint8) * values).amax(dim=0, keepdim=True)
