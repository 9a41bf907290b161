"""Class probabilities between the network and the label: back to the scan's grid, completed to sum to 1.

:func:`invert_by_channel` runs a bundle's ``post_invert`` (MONAI ``Invertd``) one channel at a time, with the
same values as all channels at once and a fraction of the peak memory; :func:`fill_background` gives the
background the probability mass that undoing a foreground crop left out.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch

__all__ = ["fill_background", "invert_by_channel"]


def invert_by_channel(
    post_invert: Callable[[dict[str, Any]], dict[str, Any]], image_key: str, image: Any, probs: torch.Tensor
) -> torch.Tensor:
    """The bundle's ``post_invert`` of ``(C, *spatial)`` probabilities, computed one channel at a time.

    ``Invertd`` applies the image's (single-channel) transform record to every channel alike, so channel by
    channel gives the same values as all at once. But each inverted transform (the crop's padding, the
    resampling, the orientation flip) makes a copy at the source resolution, and with all channels together
    two such copies of C channels coexist (2 x 0.94 GB for 3 channels of a 512x512x300 CT). One channel at
    a time holds the C-channel output and the copies of a single channel: the peak of a whole ``medfcn
    infer`` of that CT fell from 3.9 to 2.8 GiB (``benchmarks/README.md``).

    Args:
        post_invert: the bundle's inversion, ``{image_key: preprocessed image, "pred": probs} -> {"pred"}``.
        image_key: the key of the preprocessed image (its MetaTensor carries the transform record).
        image: the preprocessed image.
        probs: ``(C, *spatial)`` probabilities on the preprocessed grid (not modified).

    Returns:
        ``(C, *source spatial)``: what ``post_invert`` of all channels returns (a MetaTensor when it does).
    """
    import torch
    from monai.data import MetaTensor

    channels = int(probs.shape[0])
    first = post_invert({image_key: image, "pred": probs[:1]})["pred"]
    if channels == 1:
        return first  # type: ignore[no-any-return]
    if first.ndim != probs.ndim or first.shape[0] != 1:  # an inversion that changes the channel layout
        return post_invert({image_key: image, "pred": probs})["pred"]  # type: ignore[no-any-return]
    out = torch.empty((channels, *first.shape[1:]), dtype=first.dtype)
    out[:1] = first
    for c in range(1, channels):
        out[c : c + 1] = post_invert({image_key: image, "pred": probs[c : c + 1]})["pred"]
    return MetaTensor(out).copy_meta_from(first) if isinstance(first, MetaTensor) else out


def fill_background(probs: torch.Tensor) -> torch.Tensor:
    """Give class 0 the probability mass that inverting the preprocessing left out.

    ``Invertd`` undoes a foreground crop by zero-padding, and the interpolation of the inverted resampling
    blends those zeros into the voxels along the crop border, so there the class probabilities of a
    ``(C, X, Y, Z)`` map sum to less than 1 (to 0 outside the crop box). The preprocessing cropped those
    voxels away as background; this makes that explicit, so every voxel's probabilities sum to 1. Works
    in place on ``probs`` (the fresh output of ``Invertd``).

    Only the reported probabilities are completed: the label map stays the bundle's own ``post_discrete``
    of the raw inverted map, so that every runtime of the bundle gives the same mask.
    """
    missing = probs.sum(0)  # in place from here: one (X, Y, Z) temporary, no copy of the C channels
    probs[0] += missing.neg_().add_(1.0).clamp_(min=0.0)
    return probs
