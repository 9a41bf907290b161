"""The model pipeline: :class:`Segmenter` loads a bundle once and segments many scans, each into a
:class:`Prediction` in the scan's own geometry.

The bundle's inference config is the single source of truth: it is parsed **once**
(:meth:`medfcn.bundle.Bundle.parser`, with the device and inferer options as overrides) and its
``preprocessing``, ``network``, ``inferer``, ``post_activation``, ``post_invert`` and ``post_discrete``
objects are used as they are (:func:`medfcn.bundle.standard.read_pipeline`). Nothing about spacing,
intensity window, patch size or network is re-typed here.

One case goes: load (the bundle's ``LoadImaged``, skipped for an in-memory ``MetaTensor``) → the rest of
the bundle's preprocessing → sliding-window inference under ``torch.inference_mode()`` and autocast
(:func:`medfcn.runtime.autocast_dtype`, optionally averaged over flips) → softmax (``post_activation``) →
back to the source grid (``post_invert``, MONAI ``Invertd``: the MetaTensor carries the applied
transforms) → argmax (``post_discrete``). The label map therefore has the shape and affine of the scan as
loaded.

Memory: the whole preprocessed volume is held on the CPU; only sliding-window batches go to the device
(on CUDA the output is stitched on the CPU above ``cpu_thresh`` voxels). Host memory peaks while
``post_invert`` resamples the class probabilities back to the source grid; the logits are released before
it, and it runs one channel at a time (:func:`medfcn.engine.probabilities.invert_by_channel`), so a
512x512x300 CT peaks at 2.8 GiB instead of 3.9 (``benchmarks/README.md``).

Example:
    >>> seg = Segmenter("bundles/liver", device="cpu")  # doctest: +SKIP
    >>> pred = seg("scan.nii.gz")  # doctest: +SKIP
    >>> pred.label.shape, pred.affine  # (1, X, Y, Z) in the scan's own geometry  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from medfcn.bundle import Bundle, apply_overrides, load_bundle
from medfcn.engine.probabilities import fill_background, invert_by_channel
from medfcn.errors import BundleError, InputError, MedfcnError, one_line
from medfcn.memory import huge_pages
from medfcn.runtime import (
    AmpSetting,
    PrecisionPlan,
    apply_precision_policy,
    autocast_dtype,
    cpu_bf16_units,
    resolve_device,
)

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from monai.data import MetaTensor

__all__ = ["Prediction", "Segmenter", "Source"]

logger = logging.getLogger(__name__)

Source = Any
"""What :meth:`Segmenter.load` reads: a path, a list of paths, or an image in memory (see there)."""


def _reason(err: BaseException) -> str:
    """One line for a failed step: a medfcn error's own message, else the exception type and its message."""
    return one_line(err) if isinstance(err, MedfcnError) or not str(err).strip() else f"{type(err).__name__}: {one_line(err)}"


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

    One NaN reaching the network wipes out the mask around it; NaN-padded scans (resampled or registered
    elsewhere) are common enough that refusing them would be unhelpful. NaN and -inf become the scan's lowest finite value (what lies
    outside a field of view: air), +inf its highest. The count is reported (``stats.json``, a flag).

    Raises:
        InputError: the scan has no finite voxel at all.
    """
    import torch

    data = image.as_tensor() if hasattr(image, "as_tensor") else image
    if not data.is_floating_point():
        return 0
    # A finite sum means every voxel is finite (one NaN or inf makes the sum NaN or inf): one reading pass
    # of 0.03 s for a 512x512x300 CT, where the voxel-wise check below took 0.8-1.1 s on 2 cores. Only a
    # sum that overflows (huge finite values) or a scan with non-finite voxels pays for the exact count.
    if math.isfinite(float(data.sum())):
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


class Segmenter:
    """Load a bundle once and segment many scans.

    Args:
        bundle: bundle folder (``configs/inference.json``, ``configs/metadata.json``, ``models/model.pt``)
            or a :class:`medfcn.bundle.Bundle`.
        device: ``"auto"`` (``cuda:LOCAL_RANK`` if available, else CPU), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
        amp: autocast. ``None`` (default) = on for CUDA, off for CPU; ``True`` = CUDA bf16 (fp16 where
            bf16 is unsupported) / CPU bf16; ``"fp16"``/``"bf16"`` force a dtype; ``False`` = fp32.
            Reduced precision is faster and lighter on GPUs; on CPUs without bf16 units it is slower.
        sw_batch_size: windows per network call (bundle default if ``None``); more is faster on GPUs and
            needs proportionally more memory.
        overlap: sliding-window overlap in [0, 1) (bundle default if ``None``); more is smoother and slower
            (0.5 costs ~2.4x the windows of 0.25 in 3D).
        tta: also average the softmax over mirror images: ``True`` along each spatial axis the bundle's
            training flipped (:meth:`medfcn.bundle.Bundle.trained_flips`; every axis without a train.json),
            one extra pass each; or a sequence of spatial axes (0-based, the preprocessed array's order).
            Axes the bundle's inferer mirrors already (``MirroredSlidingWindowInferer``) are not doubled.
        cpu_thresh: on CUDA, stitch the output on the CPU for preprocessed volumes above this many voxels
            (bounded GPU memory); ``None`` = 2**24 (~256³).
        buffer_steps: MONAI ``buffer_steps`` (windows buffered on the device before stitching).
        keep_probabilities: return the class probabilities in :attr:`Prediction.probabilities`.
        network: use this module instead of the bundle's ``network_def`` and weights (tests, custom models).
        overrides: extra ``ConfigParser`` overrides (``{"id#key": value}``) applied before parsing.
        lazy: read the weights on first use (:attr:`network`, :meth:`predict`) instead of now (that a
            weights file exists is still checked now): a rerun with nothing left to do loads no model.

    Raises:
        BundleError: missing or invalid configs, ids or weights.
        InputError: an unusable device or amp setting.

    Example:
        >>> seg = Segmenter("bundles/liver", device="cpu")  # doctest: +SKIP
        >>> pred = seg("case.nii.gz")  # doctest: +SKIP
    """

    def __init__(
        self,
        bundle: str | os.PathLike[str] | Bundle,
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
        from monai.transforms.compose import Compose
        from monai.transforms.io.dictionary import LoadImaged

        from medfcn.bundle.standard import class_names_of, inferer_updates, out_channels_of, read_pipeline
        from medfcn.bundle.weights import no_weights_error
        from medfcn.engine.inferers import tta_axes

        if sw_batch_size is not None and sw_batch_size < 1:
            raise InputError(f"sw_batch_size must be >= 1, got {sw_batch_size}")
        if overlap is not None and not 0.0 <= overlap < 1.0:
            raise InputError(f"overlap must be in [0, 1), got {overlap}")
        self.bundle = load_bundle(bundle)
        self.bundle_root = self.bundle.root
        config_file = self.bundle.config_file("inference")
        self.device = resolve_device(device)
        self.amp_dtype = autocast_dtype(self.device, amp)
        self._amp_requested = amp not in (None, False)
        units = cpu_bf16_units() if amp is None and self.device.type == "cpu" else []
        if units:
            # fp32 stays the CPU default (the same numbers as `monai.bundle run` of the bundle), but say so
            logger.info(
                "this CPU has bf16 units (%s): amp=True (--amp) runs the network faster (1.5-1.6x measured with "
                "AVX512-BF16 alone, more with AMX)",
                ", ".join(units),
            )
        self.keep_probabilities = keep_probabilities

        parser = self.bundle.parser(
            "inference", {"bundle_root": str(self.bundle_root), "device": f"$torch.device('{self.device}')"}
        )
        sliding = inferer_updates(
            parser, self.device, sw_batch_size=sw_batch_size, overlap=overlap, cpu_thresh=cpu_thresh,
            buffer_steps=buffer_steps,
        )  # fmt: skip
        apply_overrides(parser, {**sliding, **(overrides or {})})
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
        dims = parser.get("network_def", {}).get("spatial_dims", 3) if isinstance(parser.get("network_def"), dict) else 3
        spatial_dims = dims if isinstance(dims, int) else 3
        mirrored = getattr(self.inferer, "mirror_axes", ())
        trained = self.bundle.trained_flips(spatial_dims) if tta is True else None
        self.tta_axes = tta_axes(tta, spatial_dims, mirrored, trained)

        self.metadata: dict[str, Any] = dict(parser.get("_meta_", {}) or {})
        self.name, self.version = self.bundle.name, self.bundle.version
        self.weights: str | None = None
        self._network: torch.nn.Module | None = None
        self._build_network = lambda: parser.get_parsed_content("network" if "network" in parser else "network_def")
        self._config_file = config_file
        self.precision: PrecisionPlan | None = None
        if network is None:
            found_weights = self.bundle.weights_file
            if found_weights is None:
                raise no_weights_error(self.bundle_root)
            self.weights = str(found_weights.relative_to(self.bundle_root))
        self.class_names = class_names_of(
            self.metadata, out_channels_of(parser, network), self.name, multilabel=self.multilabel
        )
        self.in_channels = self.bundle.in_channels
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
        self.precision = apply_precision_policy(
            net, self.amp_dtype, self.device, input_shape=call_shape, amp_requested=self._amp_requested
        )
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
                raise InputError(f"cannot read {name}: {_reason(err)}") from err
        nonfinite = _replace_nonfinite(image, name)
        try:
            # The source grid as (C, X, Y, Z): what the prediction is inverted to and what stats use.
            source_image: Any = EnsureChannelFirst()(image)
        except Exception as err:
            raise InputError(f"cannot read {name}: {_reason(err)}") from err
        try:
            data = self._after_load({self.image_key: image})
        except Exception as err:
            raise InputError(f"cannot preprocess {name}: {_reason(err)}") from err
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
                del logits  # C x the preprocessed volume: gone before the inversion allocates its output
                p = torch.flip(p, [d - 1 for d in dims]) if dims else p
                probs = p if probs is None else probs.add_(p)
                del p
            assert probs is not None
            if len(flips) > 1:
                probs.div_(len(flips))
            t1 = time.perf_counter()
            inverted = invert_by_channel(self.post_invert, self.image_key, image, probs)
            del probs
            # The label is exactly the bundle's postprocessing (what `monai.bundle run` and the Deploy app
            # compute); only the probabilities handed back are completed to sum to 1, after the argmax.
            label = self.post_discrete({"pred": inverted})["pred"]
            if self.multilabel or label.shape[0] > 1:  # sigmoid bundles: one mask per region
                from medfcn.bundle.standard import collapse_channels

                label = collapse_channels(label)
            elif self.keep_probabilities:
                inverted = fill_background(inverted)
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
            "huge_pages": huge_pages(),
            "tta": self.tta,
            "tta_axes": list(self.tta_axes or ()),
            "mirror_axes": list(getattr(self.inferer, "mirror_axes", ())),
            "sw_batch_size": getattr(inferer, "sw_batch_size", None),
            "overlap": getattr(inferer, "overlap", None),
            "roi_size": list(getattr(inferer, "roi_size", []) or []),
            "classes": {str(k): v for k, v in self.class_names.items()},
        }
