"""Inference with a medfcn bundle: :class:`Segmenter` (load once, predict many) and :func:`segment_folder`.

The bundle's ``configs/inference.json`` is the single source of truth: it is parsed **once** (MONAI's
``ConfigParser``, with the device and inferer options as overrides) and its ``preprocessing``,
``network``, ``inferer``, ``post_activation``, ``post_invert`` and ``post_discrete`` objects are used as
they are. Nothing about spacing, intensity window, patch size or network is re-typed here.

One case goes: load (the bundle's ``LoadImaged``, skipped for an in-memory ``MetaTensor``) → the rest of
the bundle's preprocessing → sliding-window inference under ``torch.inference_mode()`` and autocast
(optionally averaged over flips) → softmax (``post_activation``) → back to the source grid
(``post_invert``, MONAI ``Invertd``: the MetaTensor carries the applied transforms) → argmax
(``post_discrete``). The label map therefore has the shape and affine of the scan as loaded.

Memory: the whole preprocessed volume is held on the CPU; only sliding-window batches go to the device.
On CUDA the output is stitched on the device for volumes up to ``cpu_thresh`` voxels and on the CPU
above it (MONAI ``SlidingWindowInferer(sw_device=..., device=..., cpu_thresh=...)``), so a 512×512×600
CT needs GPU memory for one window batch only; ``buffer_steps`` trades GPU memory for fewer transfers.
Host memory peaks while ``post_invert`` resamples the class probabilities back to the source grid
(MONAI resamples in the ``dtype`` of the bundle's ``Spacingd``; the liver bundle asks for float32, MONAI's
default is float64): measured for the liver bundle on CPU, a whole 512×512×300 case through ``medfcn infer``
peaks at about 4.2 GiB and takes 25–31 s on 2 cores (``benchmarks/README.md``). The argmax is the bundle's
``post_discrete`` (``medfcn.data.transforms.FastAsDiscreted`` in the liver bundle: MONAI's ``torch.argmax``
over the channel dimension alone took 12 s of such a case).

:func:`segment_folder` runs a whole folder: discovery (:func:`medfcn.data.discovery.find_cases`), a
background thread that loads the next case while the current one is computed, per-case outputs written
atomically with a ``done.json`` marker last (so reruns skip finished cases), run-level summaries, and
``torchrun`` scale-out (rank ``r`` of ``N`` takes cases ``r::N``; rank 0 writes the merged summary).

Example:
    >>> seg = Segmenter("bundles/liver", device="cpu")  # doctest: +SKIP
    >>> pred = seg("scan.nii.gz")  # doctest: +SKIP
    >>> pred.label.shape, pred.affine  # (1, X, Y, Z) in the scan's own geometry  # doctest: +SKIP
    >>> summary = segment_folder("bundles/liver", "SCANS/", "RESULTS/")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import os
import platform
import queue
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from medfcn._io import atomic_write, atomic_write_json, atomic_write_text
from medfcn.errors import BundleError, InputError, MedfcnError
from medfcn.runtime import (
    AmpSetting,
    PrecisionPlan,
    apply_precision_policy,
    autocast_dtype,
    cpu_bf16_units,
    cpu_has_bf16,
)
from medfcn.runtime import resolve_device as _resolve_device  # the old private name, used by callers

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from monai.data import MetaTensor

    from medfcn.data.discovery import Case

__all__ = [
    "CASE_FILES",
    "CaseResult",
    "Prediction",
    "RunSummary",
    "Segmenter",
    "cpu_bf16_units",
    "cpu_has_bf16",
    "segment_folder",
]

logger = logging.getLogger(__name__)

Source = Any
"""What :meth:`Segmenter.load` reads: a path, a list of paths, or an image in memory (see there)."""

CASE_FILES = {
    "mask": "mask.nii.gz",
    "seg": "seg.dcm",
    "rtstruct": "rtstruct.dcm",
    "probabilities": "probabilities.nii.gz",
    "preview": "preview.png",
    "stats": "stats.json",
    "done": "done.json",
}
"""File names inside ``<output>/<case-id>/``; ``done.json`` is written last and marks a complete case.
With ``per_class``, one ``mask_<class>.nii.gz`` per kept class is written beside ``mask.nii.gz``."""

PER_CLASS_PATTERN = "mask_*.nii.gz"
"""The per-class masks of a case folder (``mask_<class name>.nii.gz``, 0/1 uint8)."""


def per_class_file(name: str) -> str:
    """``mask_<name>.nii.gz`` with the class name made filesystem-safe."""
    import re

    return "mask_" + (re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "class") + ".nii.gz"


@dataclass(frozen=True)
class _Outputs:
    """What :func:`segment_folder` writes per case (one record instead of a dozen keyword arguments)."""

    classes: Mapping[int, Any]  # kept label value -> medfcn.data.segment_codes.ClassInfo
    save_probabilities: bool = False
    previews: bool = True
    rtstruct: bool = True
    per_class: bool = False
    volume_ranges_ml: Mapping[str, tuple[float, float]] | None = None
    max_entropy: float | None = None
    window: tuple[float, float] | Literal["percentile"] = "percentile"


# ----------------------------------------------------------------------------------------------- helpers


def _write_json(path: Path, payload: Any) -> None:
    atomic_write_json(path, payload)


def _clean_temp(folder: Path) -> None:
    """Remove temp files an interrupted run left in ``folder`` (only names :func:`_atomic_write` makes)."""
    if folder.is_dir():
        for p in folder.glob(".*.tmp*"):
            if p.is_file():
                p.unlink(missing_ok=True)


def _save_nifti(path: Path, array: np.ndarray, affine: np.ndarray) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_qform(affine, code=1)
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    atomic_write(path, lambda tmp: nib.save(img, str(tmp)))


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    msg = text[0] if text else ""
    return msg if isinstance(err, MedfcnError) else f"{type(err).__name__}: {msg}".rstrip(": ")


# ----------------------------------------------------------------------------------------------- Segmenter


@dataclass
class Prediction:
    """The result of one :class:`Segmenter` call, in the **source geometry** (the scan as loaded).

    Attributes:
        label: ``(1, X, Y, Z)`` uint8 MetaTensor of class indices; ``label.affine`` is the source affine.
        image: ``(1, X, Y, Z)`` float32 MetaTensor of the source intensities (HU for CT) on the same grid.
        probabilities: ``(C, X, Y, Z)`` float32 MetaTensor of class probabilities on the same grid, or
            ``None`` when the segmenter was created with ``keep_probabilities=False``.
        seconds: wall-clock time of ``load``, ``infer`` and ``post`` (seconds).
        nonfinite_voxels: NaN/±inf voxels of the scan that were replaced before prediction (see
            :meth:`Segmenter.load`); 0 for a clean scan.
    """

    label: MetaTensor
    image: MetaTensor
    probabilities: MetaTensor | None
    seconds: dict[str, float] = field(default_factory=dict)
    nonfinite_voxels: int = 0

    @property
    def affine(self) -> np.ndarray:
        """``(4, 4)`` float64 voxel-to-world matrix (RAS, mm) of :attr:`label`."""
        return np.asarray(self.label.affine, dtype=np.float64)


@dataclass
class _Loaded:
    """A preprocessed case: the bundle's data dict (key ``image``) and the source image as loaded."""

    data: dict[str, Any]
    source: MetaTensor
    seconds: float
    nonfinite_voxels: int = 0


def _channel_first(img: MetaTensor) -> MetaTensor:
    """Give an in-memory image the channel metadata ``EnsureChannelFirstd`` expects."""
    if img.ndim == 3:
        img.meta["original_channel_dim"] = "no_channel"
    elif img.ndim == 4:
        img.meta["original_channel_dim"] = 0
    else:
        raise InputError(f"expected an image of shape (X, Y, Z) or (1, X, Y, Z), got {tuple(img.shape)}")
    # MONAI >= 1.6 caches the number of spatial dims when the affine is set; for an (X, Y, Z) tensor made
    # without "no_channel" it guessed 2, and crops would then leave the affine's z translation stale.
    # Setting the affine again re-derives it now that the channel layout is known.
    img.affine = img.affine
    return img


def _plain(x: Any) -> torch.Tensor:
    """``x`` as a plain tensor (a MetaTensor's data without its metadata)."""
    import torch

    return x.as_tensor() if hasattr(x, "as_tensor") else torch.as_tensor(x)


def _replace_nonfinite(image: torch.Tensor, name: str) -> int:
    """Replace NaN and ±inf voxels of a freshly loaded scan in place; return how many there were.

    One NaN reaching the network spreads through every convolution and the window blending and wipes out
    the mask around it; NaN-padded scans (resampled or registered elsewhere) are common enough that
    refusing them would be unhelpful. NaN and -inf become the scan's lowest finite value (what lies
    outside a field of view: air), +inf its highest. The count is reported (``stats.json``, a flag).

    Raises:
        InputError: the scan has no finite voxel at all.
    """
    import torch

    data = image.as_tensor() if hasattr(image, "as_tensor") else image
    if not data.is_floating_point():
        return 0
    finite = torch.isfinite(data)
    n_bad = int(finite.numel() - finite.sum())
    if n_bad == 0:
        return 0
    if n_bad == finite.numel():
        raise InputError(f"{name} has no finite voxel (all {n_bad} are NaN or inf); it is not a usable scan")
    values = data[finite]
    low, high = float(values.min()), float(values.max())
    torch.nan_to_num(data, nan=low, posinf=high, neginf=low, out=data)
    logger.warning("%s: %d non-finite (NaN/inf) voxel(s) replaced by %g/%g", name, n_bad, low, high)
    return n_bad


def _fill_background(probs: torch.Tensor) -> torch.Tensor:
    """Give class 0 the probability mass that inverting the preprocessing left out.

    ``Invertd`` undoes a foreground crop by zero-padding, and the interpolation of the inverted resampling
    blends those zeros into the voxels along the crop border, so there the class probabilities of a
    ``(C, X, Y, Z)`` map sum to less than 1 (to 0 outside the crop box). The preprocessing cropped those
    voxels away as background; this makes that explicit, so every voxel's probabilities sum to 1. Works
    in place on ``probs`` (the fresh output of ``Invertd``).

    Only the reported probabilities are completed: the label map stays the bundle's own ``post_discrete``
    of the raw inverted map, so that every runtime of the bundle gives the same mask. Along the crop
    border the two can differ (the argmax of the raw map extends the prediction inside the box; the
    completed map favours background there).
    """
    missing = probs.sum(0)  # in place from here: one (X, Y, Z) temporary, no copy of the C channels
    probs[0] += missing.neg_().add_(1.0).clamp_(min=0.0)
    return probs


def _trained_flips(bundle_root: Path, spatial_dims: int) -> tuple[int, ...] | None:
    """The spatial axes the bundle's ``configs/train.json`` flips (``RandFlipd``/``RandAxisFlipd``), or
    ``None`` when there is no readable train.json (a bundle shipped for inference only)."""
    try:
        config = json.loads((bundle_root / "configs" / "train.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    axes: set[int] = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            name = str(node.get("_target_", "")).rsplit(".", 1)[-1]
            if name in ("RandFlipd", "RandFlip"):
                axis = node.get("spatial_axis")
                if axis is None:
                    axes.update(range(spatial_dims))
                elif isinstance(axis, int):
                    axes.add(axis)
                elif isinstance(axis, list):
                    axes.update(int(a) for a in axis if isinstance(a, int))
            elif name in ("RandAxisFlipd", "RandAxisFlip"):
                axes.update(range(spatial_dims))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(config)
    return tuple(sorted(a for a in axes if 0 <= a < spatial_dims))


def _tta_axes(
    tta: bool | Sequence[int], spatial_dims: int, mirrored: Sequence[int], trained: Sequence[int] | None = None
) -> tuple[int, ...] | None:
    """The spatial axes Segmenter mirrors itself: ``None`` = none.

    ``tta=True`` means the axes the bundle's training flipped (``trained``; every axis when unknown): a
    mirror image along another axis is an anatomy the network never saw (left and right swapped for a
    liver, anterior and posterior swapped for a hippocampus) and makes the masks worse, not smoother.
    ``mirrored``: axes the bundle's own inferer mirrors already
    (:class:`medfcn.engine.inferers.MirroredSlidingWindowInferer`), never doubled.
    """
    if tta is False or tta is None:
        return None
    if tta is True:
        requested = tuple(range(spatial_dims)) if trained is None else tuple(trained)
    else:
        requested = tuple(int(a) for a in tta)
    if any(a < 0 or a >= spatial_dims for a in requested) or len(set(requested)) != len(requested):
        raise InputError(f"tta axes must be distinct spatial axes in 0..{spatial_dims - 1}, got {list(requested)}")
    axes = tuple(a for a in requested if a not in mirrored)
    if tta is True and not axes:
        logger.warning(
            "--tta: nothing to add: the bundle's training flipped no other axis%s, and a mirror image along an "
            "axis it never flipped would show the network an anatomy it never learned",
            f" than its inferer mirrors ({list(mirrored)})" if mirrored else "",
        )
    return axes


class Segmenter:
    """Load a bundle once and segment many scans.

    Args:
        bundle: bundle folder (``configs/inference.json``, ``configs/metadata.json``, ``models/model.pt``).
        device: ``"auto"`` (``cuda:LOCAL_RANK`` if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        amp: autocast. ``None`` (default) = on for CUDA, off for CPU; ``True`` = CUDA bf16 (fp16 where
            bf16 is unsupported) / CPU bf16; ``"fp16"``/``"bf16"`` force a dtype; ``False`` = fp32.
            Reduced precision is faster and lighter on GPUs; on CPUs without bf16 units it is slower.
        sw_batch_size: windows per network call (bundle default if ``None``); more is faster on GPUs and
            needs proportionally more memory.
        overlap: sliding-window overlap in [0, 1) (bundle default if ``None``); more is smoother and slower
            (0.5 costs ~2.4x the windows of 0.25 in 3D).
        tta: also average the softmax over mirror images: ``True`` along each spatial axis the bundle's
            training flipped (``RandFlipd`` in ``configs/train.json``; every axis for a bundle without
            one), one extra pass each; or a sequence of spatial axes (0-based, the preprocessed array's
            order). Axes the bundle's inferer mirrors already (``MirroredSlidingWindowInferer``, e.g.
            left-right in ``bundles/hippocampus``) are not mirrored twice.
        cpu_thresh: on CUDA, stitch the output on the CPU for preprocessed volumes above this many voxels
            (bounded GPU memory); ``None`` = 2**24 (~256³).
        buffer_steps: MONAI ``buffer_steps`` (windows buffered on the device before stitching); ``None``
            keeps MONAI's default.
        keep_probabilities: return the class probabilities in :attr:`Prediction.probabilities`.
        network: use this module instead of the bundle's ``network_def`` and weights (tests, custom models).
        overrides: extra ``ConfigParser`` overrides (``{"id#key": value}``) applied before parsing.
        lazy: read the weights on first use (:attr:`network`, :meth:`predict`) instead of now; that a
            weights file exists is still checked now. :func:`segment_folder` uses it so that a rerun
            with nothing left to segment loads no model.

    Raises:
        BundleError: missing or invalid configs, ids or weights.
        InputError: an unusable device or amp setting.

    Example:
        >>> seg = Segmenter("bundles/liver", device="cpu")  # doctest: +SKIP
        >>> pred = seg("case.nii.gz")  # doctest: +SKIP
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str],
        *,
        device: str | torch.device = "auto",
        amp: AmpSetting = None,
        sw_batch_size: int | None = None,
        overlap: float | None = None,
        tta: bool | Sequence[int] = False,
        cpu_thresh: int | None = None,
        buffer_steps: int | None = None,
        keep_probabilities: bool = True,
        network: torch.nn.Module | None = None,
        overrides: Mapping[str, Any] | None = None,
        lazy: bool = False,
    ) -> None:
        from monai.transforms import Compose, LoadImaged

        from medfcn.bundle.standard import (
            class_names_of,
            inferer_updates,
            open_config,
            out_channels_of,
            read_pipeline,
        )
        from medfcn.bundle.weights import find_weights, no_weights_error

        self.bundle_root = Path(bundle).resolve()
        config_file = self.bundle_root / "configs" / "inference.json"
        if not config_file.is_file():
            raise BundleError(f"{config_file} not found: {bundle} is not a medfcn/MONAI bundle folder")
        if sw_batch_size is not None and sw_batch_size < 1:
            raise InputError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        if overlap is not None and not 0.0 <= overlap < 1.0:
            raise InputError(f"overlap must be in [0, 1), got {overlap}")
        self.device = _resolve_device(device)
        self.amp_dtype = autocast_dtype(self.device, amp)
        units = cpu_bf16_units() if amp is None and self.device.type == "cpu" else []
        if units:
            # fp32 stays the CPU default (the same numbers as `monai.bundle run` of the bundle), but say so
            logger.info(
                "this CPU has bf16 units (%s): amp=True (--amp) runs the network faster (1.5-1.6x measured with "
                "AVX512-BF16 alone, more with AMX)",
                ", ".join(units),
            )
        self.keep_probabilities = keep_probabilities

        parser = open_config(self.bundle_root, config_file)
        updates: dict[str, Any] = {
            "bundle_root": str(self.bundle_root),
            "device": f"$torch.device('{self.device}')",
            **inferer_updates(
                parser,
                self.device,
                sw_batch_size=sw_batch_size,
                overlap=overlap,
                cpu_thresh=cpu_thresh,
                buffer_steps=buffer_steps,
            ),
        }
        updates.update(overrides or {})
        for key, value in updates.items():
            if key.split("#")[0] in parser:
                parser[key] = value
        self.config = parser
        # Any MONAI bundle: the standard ids, with medfcn's post_* ids as optional refinements.
        pipeline = read_pipeline(parser, config_file)
        self.notes = pipeline.notes
        self.multilabel = pipeline.multilabel
        self.image_key = pipeline.image_key
        self.preprocessing = pipeline.preprocessing
        self.inferer = pipeline.inferer
        self.post_activation = pipeline.activation
        self.post_invert = pipeline.invert
        self.post_discrete = pipeline.discrete
        transforms = list(self.preprocessing.transforms)
        # The bundle's loader reads paths; in-memory MetaTensors skip it and enter the rest of the chain.
        self._load = transforms[0] if transforms and isinstance(transforms[0], LoadImaged) else None
        if self._load is not None:
            # DICOM series (a folder or discovery's sorted file list) are read by medfcn's reader whatever
            # the bundle's LoadImaged names: MONAI's PydicomReader orders slices by InstanceNumber.
            # NIfTI still goes to the bundle's own reader (DicomSeriesReader declines it by suffix).
            from medfcn.data.readers import DicomSeriesReader

            self._load.register(DicomSeriesReader())
        self._after_load = Compose(transforms[1:] if self._load is not None else transforms)
        self.window = pipeline.window
        try:
            spatial_dims = int(parser["network_def"]["spatial_dims"])
        except (KeyError, TypeError, ValueError):
            spatial_dims = 3
        self.tta_axes = _tta_axes(
            tta,
            spatial_dims,
            getattr(self.inferer, "mirror_axes", ()),
            _trained_flips(self.bundle_root, spatial_dims) if tta is True else None,
        )

        meta = parser.get("_meta_", {}) or {}
        self.name = str(meta.get("name") or self.bundle_root.name)
        self.version = str(meta.get("version") or "0")
        self.metadata: dict[str, Any] = dict(meta)
        self.weights: str | None = None
        self._network: torch.nn.Module | None = None
        self._build_network = lambda: parser.get_parsed_content("network" if "network" in parser else "network_def")
        self._config_file = config_file
        self.precision: PrecisionPlan | None = None
        if network is None:
            found_weights = find_weights(self.bundle_root)
            if found_weights is None:
                raise no_weights_error(self.bundle_root)
            self.weights = str(found_weights.relative_to(self.bundle_root))
        self.class_names = class_names_of(
            meta, out_channels_of(parser, network), self.name, multilabel=self.multilabel
        )
        try:
            self.in_channels: int | None = int(meta["network_data_format"]["inputs"]["image"]["num_channels"])
        except (KeyError, TypeError, ValueError):
            self.in_channels = None
        if network is not None:
            self._prepare_network(network.to(self.device))
        elif not lazy:
            self.load_weights()

    @property
    def tta(self) -> bool:
        """Whether predictions average mirrored passes (see ``tta`` and :attr:`tta_axes`)."""
        return bool(self.tta_axes)

    @property
    def network(self) -> torch.nn.Module:
        """The network with its weights, on :attr:`device` in eval mode (read on first use when ``lazy``)."""
        return self.load_weights()

    def load_weights(self) -> torch.nn.Module:
        """Build the network and read its weights unless done already; return it.

        Raises:
            BundleError: unreadable weights, or weights that do not fit ``network_def``.
        """
        if self._network is None:
            from medfcn.bundle.weights import load_network

            net, self.weights = load_network(self.bundle_root, self._build_network, self.device, self._config_file)
            self._prepare_network(net)
        assert self._network is not None
        return self._network

    def _prepare_network(self, net: torch.nn.Module) -> None:
        net.eval()
        roi = list(getattr(self.inferer, "roi_size", None) or [])
        call_shape = (int(getattr(self.inferer, "sw_batch_size", 1)), self.in_channels or 1, *roi) if roi else None
        # per-layer precision under CPU bf16 (medfcn.runtime): recorded in run.json, named by `medfcn info`
        self.precision = apply_precision_policy(net, self.amp_dtype, self.device, input_shape=call_shape)
        self._network = net

    # -- one case
    def load(self, source: Source) -> _Loaded:
        """Read (unless in memory) and preprocess one scan with the bundle's transforms.

        Thread-safe for one loader thread beside the predicting thread (:func:`segment_folder` uses it so).
        NaN/±inf voxels are replaced by the scan's lowest/highest finite value before preprocessing and
        counted (:attr:`Prediction.nonfinite_voxels`); a MetaTensor passed in is not modified.

        Args:
            source: a NIfTI/image file, a DICOM series folder, the list of files of one series (or of one
                case's channels), or an image in memory: a MetaTensor ``(X, Y, Z)`` / ``(C, X, Y, Z)`` with
                its affine, a nibabel image, a SimpleITK image, or ``(array, affine)`` (RAS, mm;
                :mod:`medfcn.engine.sources`).

        Raises:
            InputError: the scan cannot be read or preprocessed, or has no finite voxel (message names
                the source).
        """
        from monai.data import MetaTensor
        from monai.transforms import EnsureChannelFirst

        from medfcn.engine.sources import in_memory_image

        t0 = time.perf_counter()
        memory = in_memory_image(source)  # nibabel/SimpleITK images and (array, affine) as MetaTensors
        if memory is not None:
            image = _channel_first(memory.clone())
            name = "in-memory image"
        else:
            if self._load is None:
                raise InputError("this bundle's preprocessing has no LoadImaged; pass a MetaTensor instead")
            item: Any = [str(p) for p in source] if isinstance(source, (list, tuple)) else str(source)
            name = Path(item[0]).parent.name + "/" if isinstance(item, list) else Path(item).name
            try:
                image = self._load({self.image_key: item})[self.image_key]
            except Exception as err:
                raise InputError(f"cannot read {name}: {_first_line(err)}") from err
        nonfinite = _replace_nonfinite(image, name)
        try:
            # The source grid as (C, X, Y, Z): what the prediction is inverted to and what stats use.
            source_image: Any = EnsureChannelFirst()(image)
        except Exception as err:
            raise InputError(f"cannot read {name}: {_first_line(err)}") from err
        try:
            data = self._after_load({self.image_key: image})
        except Exception as err:
            raise InputError(f"cannot preprocess {name}: {_first_line(err)}") from err
        if not isinstance(data[self.image_key], MetaTensor):
            raise BundleError("the bundle's preprocessing must return a MetaTensor (keep track_meta on)")
        if self.in_channels is not None and data[self.image_key].shape[0] != self.in_channels:
            raise InputError(
                f"the {self.name} bundle expects {self.in_channels} input channel(s); {name} has "
                f"{data[self.image_key].shape[0]} (shape {'x'.join(str(s) for s in source_image.shape)}). "
                + ("Pass a single-phase scan." if self.in_channels == 1 else
                   f"Pass a {self.in_channels}-channel image (a 4D NIfTI, or one file per channel).")
            )
        return _Loaded(
            data=data, source=source_image, seconds=time.perf_counter() - t0, nonfinite_voxels=nonfinite
        )

    def _logits_to_probs(self, logits: torch.Tensor) -> torch.Tensor:
        return self.post_activation({"pred": logits.float()})["pred"]

    def predict(self, loaded: _Loaded) -> Prediction:
        """Run the network and the postprocessing on a case from :meth:`load`."""
        import torch
        from monai.data import MetaTensor

        t0 = time.perf_counter()
        image = loaded.data[self.image_key]
        x = image.as_tensor()[None]  # (1, C_in, *spatial) on the CPU; windows are moved by the inferer
        flips: list[tuple[int, ...]] = [()]
        flips += [(2 + a,) for a in self.tta_axes or ()]
        with torch.inference_mode():
            probs: torch.Tensor | None = None
            for dims in flips:
                xi = torch.flip(x, dims) if dims else x
                with torch.autocast(
                    self.device.type,
                    dtype=self.amp_dtype or torch.float32,
                    enabled=self.amp_dtype is not None,
                ):
                    logits = self.inferer(xi, self.network)
                p = self._logits_to_probs(torch.as_tensor(logits)[0].to("cpu", torch.float32))
                p = torch.flip(p, [d - 1 for d in dims]) if dims else p
                probs = p if probs is None else probs + p
            assert probs is not None
            probs = probs / len(flips)
            t1 = time.perf_counter()
            d = self.post_invert({self.image_key: image, "pred": probs})
            inverted = d["pred"]
            # The label is exactly the bundle's postprocessing (what `monai.bundle run` and the Deploy app
            # compute); only the probabilities handed back are completed to sum to 1, after the argmax.
            label = self.post_discrete({"pred": inverted})["pred"]
            if self.multilabel or label.shape[0] > 1:  # sigmoid bundles: one mask per region
                from medfcn.bundle.standard import collapse_channels

                label = collapse_channels(label)
            elif self.keep_probabilities:
                inverted = _fill_background(inverted)
        src = loaded.source
        affine = torch.as_tensor(src.affine, dtype=torch.float64)
        inv_affine = torch.as_tensor(getattr(inverted, "affine", affine), dtype=torch.float64)
        if tuple(label.shape[1:]) != tuple(src.shape[1:]) or not torch.allclose(
            inv_affine, affine, atol=1e-3
        ):
            raise InputError(
                f"the inverted prediction (shape {tuple(label.shape[1:])}) is not on the scan's grid (shape "
                f"{tuple(src.shape[1:])}); the bundle's post_invert does not undo its preprocessing"
            )
        # Fresh MetaTensors with only the source affine (plain tensors in: no stale transform history).
        label_mt = MetaTensor(_plain(label).to(torch.uint8), affine=affine)
        probs_mt = MetaTensor(_plain(inverted).float(), affine=affine) if self.keep_probabilities else None
        image_mt = MetaTensor(_plain(src)[:1].float(), affine=affine)
        t2 = time.perf_counter()
        return Prediction(
            label=label_mt,
            image=image_mt,
            probabilities=probs_mt,
            seconds={"load": loaded.seconds, "infer": t1 - t0, "post": t2 - t1},
            nonfinite_voxels=loaded.nonfinite_voxels,
        )

    def __call__(
        self, source: Source
    ) -> Prediction:
        """Segment one scan (see :meth:`load` for what ``source`` may be); the result is in its geometry."""
        return self.predict(self.load(source))

    def describe(self) -> dict[str, Any]:
        """What ``run.json`` records about the model and the inference settings."""
        inferer = self.inferer
        return {
            "bundle": {
                "name": self.name,
                "version": self.version,
                "path": str(self.bundle_root),
                "weights": self.weights,
            },
            "device": str(self.device),
            "amp": None if self.amp_dtype is None else str(self.amp_dtype).removeprefix("torch."),
            "precision": self.precision.as_dict() if self.precision is not None else None,
            "tta": self.tta,
            "tta_axes": list(self.tta_axes or ()),
            "mirror_axes": list(getattr(self.inferer, "mirror_axes", ())),
            "sw_batch_size": getattr(inferer, "sw_batch_size", None),
            "overlap": getattr(inferer, "overlap", None),
            "roi_size": list(getattr(inferer, "roi_size", []) or []),
            "classes": {str(k): v for k, v in self.class_names.items()},
        }


# ----------------------------------------------------------------------------------------------- folders


@dataclass
class CaseResult:
    """One row of ``summary.csv`` / ``summary.json``.

    Attributes:
        id: PHI-free case id (the output folder name); empty for discovery skips.
        source: path of the scan relative to the input.
        kind: ``dicom``, ``nifti``, ``image`` (or ``""`` for discovery skips).
        status: ``ok``, ``failed`` or ``skipped``.
        reason: why it failed or was skipped (or that an earlier run's output was kept).
        volumes_ml: class name -> predicted volume in mL.
        flags: advisory flags from :func:`medfcn.engine.stats.case_stats`.
        seconds: time spent on the case in this run (or the earlier run that produced it).
        kept: an ``ok`` case whose complete outputs an earlier run wrote (nothing was recomputed).
    """

    id: str
    source: str
    kind: str
    status: Literal["ok", "failed", "skipped"]
    reason: str = ""
    volumes_ml: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    seconds: float = 0.0
    kept: bool = False


@dataclass
class RunSummary:
    """What :func:`segment_folder` did (also written as ``summary.csv``, ``summary.json``, ``run.json``).

    Attributes:
        output: the results folder.
        cases: one row per case and per discovery skip, in discovery order.
        seconds: wall-clock time of the run.
    """

    output: Path
    cases: list[CaseResult]
    seconds: float = 0.0

    def count(self, status: str) -> int:
        """Number of rows with ``status`` (``ok``, ``failed``, ``skipped``)."""
        return sum(1 for c in self.cases if c.status == status)

    @property
    def ok(self) -> int:
        """Cases with complete outputs (done in this run or kept from an earlier one)."""
        return self.count("ok")

    @property
    def failed(self) -> int:
        """Cases that failed in this run."""
        return self.count("failed")

    @property
    def skipped(self) -> int:
        """Inputs discovery did not accept as scans."""
        return self.count("skipped")

    @property
    def already_done(self) -> int:
        """``ok`` cases kept from an earlier run (counted in :attr:`ok` too)."""
        return sum(1 for c in self.cases if c.status == "ok" and c.kept)


def _is_within(child: Path, parent: Path) -> bool:
    try:
        child.resolve().relative_to(parent.resolve())
    except ValueError:
        return False
    return True


@dataclass
class _Found:
    cases: list[Case]
    sources: dict[str, str]  # case id -> source shown in the summary
    skipped: list[CaseResult]
    roots: list[Path]
    reports: list[Any] = field(default_factory=list)  # DiscoveryReports: own the zip extractions

    def close(self) -> None:
        """Remove the folders zip archives were extracted to."""
        for report in self.reports:
            report.close()


def _discover(input_path: Path, *, modality: str | None, min_slices: int | None) -> _Found:
    """Find the cases of a folder/file/series folder or of every entry of a list file (discovery decides)."""
    from medfcn.data.discovery import find_cases

    kwargs: dict[str, Any] = {"modality": modality}
    if min_slices is not None:
        kwargs["min_slices"] = min_slices
    report = find_cases(input_path, **kwargs)
    sources = {case.id: case.source for case in report.cases}
    skipped = [CaseResult(s.case_id, s.path, s.kind, "skipped", s.reason) for s in report.skipped]
    # What "inside the input" means for the output check: a folder's tree, a DICOMDIR's folder (discovery
    # scans it), but a single scan file only itself, so results may go beside it (`--input ct.nii.gz
    # --output results/` in the folder that holds the scan).
    return _Found(list(report.cases), sources, skipped, list(report.inputs), [report])


def _is_done(case_dir: Path) -> bool:
    return (case_dir / CASE_FILES["done"]).is_file()


def _result_from_done(case: Case, source: str, case_dir: Path) -> CaseResult:
    """Row for a case an earlier run completed: volumes and flags from its stats.json."""
    volumes: dict[str, float] = {}
    flags: list[str] = []
    seconds = 0.0
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        stats = json.loads((case_dir / CASE_FILES["stats"]).read_text(encoding="utf-8"))
        volumes = {k: float(v["volume_ml"]) for k, v in stats["classes"].items()}
        flags = list(stats.get("flags", []))
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        seconds = float(json.loads((case_dir / CASE_FILES["done"]).read_text(encoding="utf-8"))["seconds"])
    return CaseResult(
        case.id,
        source,
        case.kind,
        "ok",
        "complete from an earlier run (kept; --overwrite redoes it)",
        volumes,
        flags,
        seconds,
        kept=True,
    )


_END = object()


def _prefetch(
    segmenter: Segmenter, cases: Sequence[Case], out: queue.Queue[Any], stop: threading.Event
) -> None:
    """Loader thread: read and preprocess cases in order, handing (case, loaded|None, error|None) over."""
    for case in cases:
        if stop.is_set():
            return
        try:
            item: tuple[Any, ...] = (case, segmenter.load(case.load_input()), None)
        except Exception as err:  # reported per case by the consumer; the loader carries on
            item = (case, None, err)
        while not stop.is_set():
            try:
                out.put(item, timeout=0.2)
                break
            except queue.Full:
                continue
    while not stop.is_set():
        try:
            out.put(_END, timeout=0.2)
            return
        except queue.Full:
            continue


@contextlib.contextmanager
def _loader(segmenter: Segmenter, cases: Sequence[Case], depth: int) -> Iterator[Iterator[tuple[Any, ...]]]:
    """Iterate over loaded cases while a background thread reads ahead (``depth`` cases buffered)."""
    q: queue.Queue[Any] = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()
    thread = threading.Thread(
        target=_prefetch, args=(segmenter, cases, q, stop), name="medfcn-loader", daemon=True
    )
    thread.start()

    def items() -> Iterator[tuple[Any, ...]]:
        while True:
            item = q.get()
            if item is _END:
                return
            yield item

    try:
        yield items()
    finally:
        stop.set()
        thread.join(timeout=30)


def _write_case(
    segmenter: Segmenter,
    case: Case,
    pred: Prediction,
    case_dir: Path,
    opts: _Outputs,
) -> dict[str, Any]:
    """Write the outputs of one case (each atomically) and return its stats; done.json is not written here."""
    from medfcn.engine.stats import case_stats

    affine = pred.affine
    label = pred.label[0].numpy()
    kept = sorted(int(v) for v in opts.classes)
    if set(kept) != {int(v) for v in segmenter.class_names if int(v) != 0}:
        label = np.where(np.isin(label, kept), label, 0).astype(np.uint8)  # --classes: the others -> 0
    image = pred.image[0].numpy()
    _save_nifti(case_dir / CASE_FILES["mask"], label.astype(np.uint8, copy=False), affine)
    if opts.per_class:
        for value, info in sorted(opts.classes.items()):
            _save_nifti(case_dir / per_class_file(info.name), (label == value).astype(np.uint8), affine)
    probs = pred.probabilities.numpy() if pred.probabilities is not None else None
    if opts.save_probabilities and probs is not None:
        _save_nifti(
            case_dir / CASE_FILES["probabilities"], np.moveaxis(probs, 0, -1).astype(np.float32), affine
        )
    if case.kind == "dicom":
        from medfcn.data.dicom_seg import write_dicom_seg

        write_dicom_seg(
            label,
            affine,
            case.geometry or case.paths,  # the checked geometry: no source header read again
            case_dir / CASE_FILES["seg"],
            class_names=opts.classes,
            algorithm_name=segmenter.name,
            algorithm_version=segmenter.version,
            series_description=f"{segmenter.name} segmentation (medfcn)",
        )
        if opts.rtstruct:
            from medfcn.data.rtstruct import write_rtstruct

            write_rtstruct(
                label,
                affine,
                case.geometry or case.paths,
                case_dir / CASE_FILES["rtstruct"],
                classes=opts.classes,
                algorithm_name=segmenter.name,
                algorithm_version=segmenter.version,
                series_description=f"{segmenter.name} structures (medfcn)",
            )
    if opts.previews:
        from medfcn.engine.preview import render_preview

        sheet = render_preview(image, label, affine, window=opts.window)
        atomic_write(case_dir / CASE_FILES["preview"], lambda tmp: sheet.save(tmp, format="PNG"))
    kwargs: dict[str, Any] = {}
    if opts.max_entropy is not None:
        kwargs["max_entropy"] = opts.max_entropy
    stats = case_stats(
        label,
        affine,
        class_names={v: c.name for v, c in opts.classes.items()},
        image=image,
        probabilities=probs,
        volume_ranges_ml=opts.volume_ranges_ml,
        **kwargs,
    )
    if pred.nonfinite_voxels:
        stats["flags"].append("non_finite_voxels")
        stats["suspicious"] = True
    stats["input"] = {"non_finite_voxels": pred.nonfinite_voxels}
    stats["case"] = {"id": case.id, "kind": case.kind, "modality": case.modality}
    _write_json(case_dir / CASE_FILES["stats"], stats)
    return stats


def _case_files(case_dir: Path) -> list[Path]:
    """medfcn's own output files in a case folder (fixed names and the per-class masks)."""
    return [case_dir / name for name in CASE_FILES.values()] + sorted(case_dir.glob(PER_CLASS_PATTERN))


def _remove_case_outputs(case_dir: Path) -> None:
    """Delete what a failed attempt wrote (only medfcn's own file names), and the folder if then empty."""
    _clean_temp(case_dir)
    for path in _case_files(case_dir):
        path.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        case_dir.rmdir()


def _select_classes(table: Mapping[int, Any], classes: Sequence[str] | None, bundle: str) -> dict[int, Any]:
    """The classes of ``table`` named in ``classes`` (all if ``None``).

    Raises:
        InputError: a name the bundle does not have, or an empty list (one line listing the classes).
    """
    if classes is None:
        return dict(table)
    by_name = {c.name.lower(): v for v, c in table.items()}
    wanted = [n.strip() for n in classes if n.strip()]
    unknown = [n for n in wanted if n.lower() not in by_name]
    if unknown or not wanted:
        raise InputError(
            f"--classes {','.join(wanted) or '(none)'}: unknown class {', '.join(map(repr, unknown)) or '(none given)'}; "
            f"the {bundle} bundle has {', '.join(c.name for c in table.values())}"
        )
    keep = {by_name[n.lower()] for n in wanted}
    return {v: c for v, c in table.items() if v in keep}


def _output_options(
    segmenter: Segmenter,
    *,
    classes: Sequence[str] | None,
    save_probabilities: bool,
    previews: bool,
    rtstruct: bool,
    per_class: bool,
    volume_ranges_ml: Mapping[str, tuple[float, float]] | None,
    max_entropy: float | None,
) -> _Outputs:
    """The bundle's classes (names, codes, volume ranges, preview window) and the chosen subset.

    Raises:
        InputError: a ``classes`` name the bundle does not have.
        BundleError: malformed ``medfcn`` metadata.
    """
    from medfcn.data.segment_codes import class_table, preview_window, volume_ranges

    table = _select_classes(class_table(segmenter.metadata, segmenter.class_names), classes, segmenter.name)
    ranges = volume_ranges(table) if volume_ranges_ml is None else dict(volume_ranges_ml)
    window = preview_window(segmenter.metadata)
    if window is None:  # the bundle's own intensity window (e.g. its HU window), else the image's range
        window = (float(segmenter.window[0]), float(segmenter.window[1])) if segmenter.window else "percentile"
    return _Outputs(
        classes=table,
        save_probabilities=save_probabilities,
        previews=previews,
        rtstruct=rtstruct,
        per_class=per_class,
        volume_ranges_ml={k: v for k, v in ranges.items() if k in {c.name for c in table.values()}},
        max_entropy=max_entropy,
        window=window,
    )


def _dist_info() -> tuple[int, int]:
    """(rank, world size) from torchrun's environment."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


_SUMMARY_FIELDS = ["id", "source", "kind", "status", "reason", "seconds", "flags"]


def _write_summaries(
    output: Path, rows: list[CaseResult], class_names: Mapping[int, str], run_info: dict[str, Any]
) -> None:
    classes = [n for v, n in sorted(class_names.items()) if int(v) != 0]
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*_SUMMARY_FIELDS, *(f"{c}_ml" for c in classes)])
    for r in rows:
        writer.writerow(
            [r.id, r.source, r.kind, r.status, r.reason, f"{r.seconds:.2f}", ";".join(r.flags)]
            + [("" if c not in r.volumes_ml else f"{r.volumes_ml[c]:.3f}") for c in classes]
        )
    atomic_write_text(output / "summary.csv", buf.getvalue())
    _write_json(output / "summary.json", {"cases": [asdict(r) for r in rows]})
    _write_json(output / "run.json", run_info)


def segment_folder(
    bundle: str | os.PathLike[str] | Segmenter,
    input: str | os.PathLike[str],
    output: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    save_probabilities: bool = False,
    previews: bool = True,
    device: str = "auto",
    amp: AmpSetting = None,
    sw_batch_size: int | None = None,
    overlap: float | None = None,
    tta: bool = False,
    modality: str | None = None,
    min_slices: int | None = None,
    volume_ranges_ml: Mapping[str, tuple[float, float]] | None = None,
    max_entropy: float | None = None,
    progress: bool = True,
    prefetch: int = 1,
    rtstruct: bool = True,
    per_class: bool = False,
    classes: Sequence[str] | None = None,
) -> RunSummary:
    """Segment every scan found under ``input`` and write per-case and run-level results to ``output``.

    ``input`` may be a folder tree (DICOM series and NIfTI files, found by
    :func:`medfcn.data.discovery.find_cases`), one file, one DICOM series folder, or a list file
    (``.txt``/``.lst``/``.list``, one path per line, relative to the list file). The model is loaded
    once; a background thread reads and preprocesses the next case while the current one is computed.

    Per case, in ``output/<case-id>/`` (see :data:`CASE_FILES`): ``mask.nii.gz`` (uint8 labels, the
    scan's shape and affine), ``mask_<class>.nii.gz`` (``per_class``), ``seg.dcm`` and ``rtstruct.dcm``
    (DICOM input: DICOM SEG on the source instances, RT Structure Set contours on the source slices),
    ``probabilities.nii.gz`` (optional, ``(X, Y, Z, C)`` float32), ``preview.png``, ``stats.json``
    (:func:`medfcn.engine.stats.case_stats`) and ``done.json``, written last. Each file is written to a
    temp name and renamed. A rerun skips cases with ``done.json`` unless ``overwrite``; a failed case
    leaves no files and is reported. Run level: ``summary.csv``, ``summary.json``, ``run.json`` and
    ``labels.json`` (class value -> name and codes, :func:`medfcn.data.segment_codes.labels_document`).
    Nothing is ever written under ``input``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) rank ``r`` segments cases ``r::WORLD_SIZE`` (on
    ``cuda:LOCAL_RANK`` with CUDA) and rank 0 writes the merged summaries (gloo process group).

    Args:
        bundle: bundle folder, or a ready :class:`Segmenter` (then ``device``/``amp``/``sw_batch_size``/
            ``overlap``/``tta`` are its own).
        input: what to segment (see above).
        output: results folder (created); must not be inside ``input``.
        overwrite: redo cases an earlier run completed.
        save_probabilities: also write ``probabilities.nii.gz`` (large: 4 bytes x classes per voxel).
        previews: write ``preview.png``.
        device, amp, sw_batch_size, overlap, tta: see :class:`Segmenter`.
        modality: only scans of this DICOM Modality (e.g. ``CT``); passed to discovery.
        min_slices: DICOM series with fewer slices are skipped (discovery's default if ``None``).
        volume_ranges_ml: plausible volumes per class name for the advisory flags (default: the bundle
            metadata's ``medfcn.classes.<value>.volume_ml``; classes listed are also flagged when empty).
        max_entropy: mean normalised entropy above which a case is flagged low-confidence.
        progress: show a progress bar (rank 0 only).
        prefetch: cases the loader thread may read ahead (1-2; each costs one volume of memory).
        rtstruct: DICOM input: also write ``rtstruct.dcm`` (RT Structure Set, one ROI per class).
        per_class: also write ``mask_<class>.nii.gz`` (0/1) per class beside ``mask.nii.gz``.
        classes: keep only these classes (names from the bundle): other labels become 0 in every
            output (mask, SEG, RTSTRUCT, stats, summaries, ``labels.json``). ``None`` keeps all.

    Returns:
        A :class:`RunSummary` (every rank gets the merged one under torchrun).

    Raises:
        InputError: ``input`` missing, ``output`` inside ``input``, an unreadable list file.
        BundleError: the bundle cannot be loaded.
    """
    from medfcn._progress import progress as progress_bar

    t_start = time.perf_counter()
    started = datetime.now(timezone.utc)
    input_path = Path(input)
    out = Path(output)
    if not input_path.exists():
        raise InputError(f"input {input_path} does not exist")
    if out.exists() and not out.is_dir():
        raise InputError(f"output {out} exists and is not a folder")
    rank, world = _dist_info()
    group_created = False
    if world > 1:
        import torch.distributed as dist

        if not dist.is_initialized():
            from datetime import timedelta

            # gloo carries only the case split and the summary rows: no tensors, any device.
            dist.init_process_group("gloo", timeout=timedelta(hours=12))
            group_created = True
    if classes is not None and not isinstance(bundle, Segmenter):
        from medfcn.data.segment_codes import class_table, read_metadata

        meta = read_metadata(bundle)  # a wrong --classes is reported before any scan or weight is read
        if class_table(meta):
            _select_classes(class_table(meta), classes, str(meta.get("name") or Path(bundle).name))
    try:
        found = _Found([], {}, [], [])
        if rank == 0:
            found = _discover(input_path, modality=modality, min_slices=min_slices)
        if world > 1:
            import torch.distributed as dist

            # the extracted zip folders stay with rank 0, which removes them (same machine under torchrun)
            box: list[Any] = [_Found(found.cases, found.sources, found.skipped, found.roots)]
            dist.broadcast_object_list(box, src=0)
            box[0].reports = found.reports
            found = box[0]
        for root in found.roots:
            if _is_within(out, root):
                raise InputError(
                    f"output {out} is inside the input {root}; choose an output folder outside the scans "
                    "(inputs are never written)"
                )
        t_discovered = time.perf_counter()
        segmenter = (
            bundle
            if isinstance(bundle, Segmenter)
            else Segmenter(
                bundle, device=device, amp=amp, sw_batch_size=sw_batch_size, overlap=overlap, tta=tta, lazy=True
            )
        )
        t_model = time.perf_counter()
        opts = _output_options(
            segmenter,
            classes=classes,
            save_probabilities=save_probabilities,
            previews=previews,
            rtstruct=rtstruct,
            per_class=per_class,
            volume_ranges_ml=volume_ranges_ml,
            max_entropy=max_entropy,
        )
        out.mkdir(parents=True, exist_ok=True)
        if rank == 0:
            from medfcn.data.segment_codes import labels_document

            _write_json(
                out / "labels.json", labels_document(opts.classes, bundle=segmenter.name, version=segmenter.version)
            )

        mine = found.cases[rank::world]
        rows: dict[str, CaseResult] = {}
        todo: list[Case] = []
        for case in mine:
            case_dir = out / case.id
            if _is_done(case_dir) and not overwrite:
                rows[case.id] = _result_from_done(case, found.sources[case.id], case_dir)
            else:
                todo.append(case)
        if todo:  # the weights are read only when there is something to segment: a finished rerun reads none
            t_weights = time.perf_counter()
            segmenter.load_weights()
            t_model += time.perf_counter() - t_weights
        bar = progress_bar(  # without a terminal, the write() below is the one line per case
            total=len(mine),
            initial=len(mine) - len(todo),
            unit="case",
            enabled=progress and rank == 0,
            desc="segmenting",
            lines="none",
        )
        with bar, _loader(segmenter, todo, prefetch) as loaded_cases:
            for case, loaded, load_error in loaded_cases:
                rows[case.id] = _run_case(
                    segmenter,
                    case,
                    loaded,
                    load_error,
                    found.sources[case.id],
                    out / case.id,
                    opts,
                )
                r = rows[case.id]
                bar.set_postfix_str(f"{case.id} {r.status} {r.seconds:.1f}s")
                bar.update(1)
                if progress and rank == 0:
                    bar.write(
                        f"{case.id}: {r.status} in {r.seconds:.1f} s"
                        + (f" ({r.reason})" if r.reason and r.status == "failed" else "")
                    )
        my_rows = [rows[c.id] for c in mine]

        all_rows = my_rows
        if world > 1:
            import torch.distributed as dist

            gathered: list[Any] = [None] * world
            dist.all_gather_object(gathered, my_rows)
            by_id = {r.id: r for part in gathered for r in part}
            all_rows = [by_id[c.id] for c in found.cases]
        rows_out = all_rows + found.skipped
        summary = RunSummary(output=out, cases=rows_out, seconds=time.perf_counter() - t_start)
        if rank == 0:
            import monai
            import torch

            from medfcn import __version__

            done_times = [r.seconds for r in all_rows if r.status == "ok" and not r.reason]
            run_info = {
                **segmenter.describe(),
                "versions": {
                    "medfcn": __version__,
                    "monai": monai.__version__,
                    "torch": torch.__version__,
                    "python": platform.python_version(),
                },
                "input": str(input_path.resolve()),
                "output": str(out.resolve()),
                "options": {
                    "overwrite": overwrite,
                    "save_probabilities": save_probabilities,
                    "previews": previews,
                    "modality": modality,
                    "min_slices": min_slices,
                    "prefetch": prefetch,
                    "world_size": world,
                    "volume_ranges_ml": {k: list(v) for k, v in (opts.volume_ranges_ml or {}).items()} or None,
                    "rtstruct": rtstruct,
                    "per_class": per_class,
                    "classes": [c.name for _, c in sorted(opts.classes.items())],
                    "max_entropy": max_entropy,
                },
                "counts": {
                    "cases": len(found.cases),
                    "ok": summary.ok,
                    "failed": summary.failed,
                    "skipped": summary.skipped,
                },
                "timings": {
                    "discovery_s": round(t_discovered - t_start, 3),
                    "load_model_s": round(t_model - t_discovered, 3),
                    "total_s": round(time.perf_counter() - t_start, 3),
                    "cases_run": len(done_times),
                    "mean_case_s": round(float(np.mean(done_times)), 3) if done_times else None,
                },
                "started": started.isoformat(timespec="seconds"),
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            _write_summaries(out, rows_out, {v: c.name for v, c in opts.classes.items()}, run_info)
        if world > 1:
            import torch.distributed as dist

            dist.barrier()  # the summary exists before any rank returns
        return summary
    finally:
        found.close()
        if group_created:
            import torch.distributed as dist

            dist.destroy_process_group()


def _run_case(
    segmenter: Segmenter,
    case: Case,
    loaded: _Loaded | None,
    load_error: BaseException | None,
    source: str,
    case_dir: Path,
    opts: _Outputs,
) -> CaseResult:
    """Predict and write one case; any error becomes a ``failed`` row and leaves no files behind."""
    t0 = time.perf_counter()
    if load_error is not None or loaded is None:
        logger.warning("case %s failed while loading: %s", case.id, _first_line(load_error or RuntimeError()))
        return CaseResult(
            case.id, source, case.kind, "failed", _first_line(load_error or RuntimeError("not loaded"))
        )
    completed = False
    case_dir.mkdir(parents=True, exist_ok=True)
    # An earlier attempt may have been interrupted, or this is --overwrite: the marker goes first, so
    # the folder never claims to be complete while files are being replaced.
    (case_dir / CASE_FILES["done"]).unlink(missing_ok=True)
    _clean_temp(case_dir)
    for path in _case_files(case_dir):  # files of an earlier run that this one may not write again
        path.unlink(missing_ok=True)
    try:
        pred = segmenter.predict(loaded)
        stats = _write_case(
            segmenter,
            case,
            pred,
            case_dir,
            opts,
        )
        seconds = loaded.seconds + time.perf_counter() - t0
        written = sorted(p.name for p in case_dir.iterdir() if not p.name.startswith("."))
        _write_json(
            case_dir / CASE_FILES["done"],
            {
                "id": case.id,
                "files": written,
                "seconds": round(seconds, 3),
                "timings": pred.seconds,
                "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            },
        )
        completed = True
    except Exception as err:  # one bad scan never stops the folder; it is reported in the summary
        logger.warning("case %s failed: %s", case.id, _first_line(err))
        return CaseResult(
            case.id, source, case.kind, "failed", _first_line(err), seconds=time.perf_counter() - t0
        )
    finally:
        if not completed:
            _remove_case_outputs(case_dir)
    return CaseResult(
        case.id,
        source,
        case.kind,
        "ok",
        "",
        {k: float(v["volume_ml"]) for k, v in stats["classes"].items()},
        list(stats["flags"]),
        seconds,
    )
