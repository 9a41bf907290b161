"""Inferers named in bundle configs, so that ``medfcn infer``, ``python -m monai.bundle run`` and the Deploy
app run the same prediction.

:class:`MirroredSlidingWindowInferer` is MONAI's sliding window plus test-time mirroring as nnU-Net does it:
the logits of the image and of its mirror images along chosen spatial axes are averaged (each mirrored
prediction flipped back first). A bundle names only the axes its training augmented with (for
``bundles/hippocampus``, left-right), so no pass sees an image the network never learned.

Example (``configs/inference.json``)::

    "inferer": {
        "_target_": "medfcn.engine.inferers.MirroredSlidingWindowInferer",
        "roi_size": "@patch_size", "sw_batch_size": 1, "overlap": 0.25, "mode": "gaussian",
        "mirror_axes": [0]
    }
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer

from medfcn.errors import InputError

__all__ = ["MirroredSlidingWindowInferer", "tta_axes"]

logger = logging.getLogger(__name__)


class MirroredSlidingWindowInferer(SlidingWindowInferer):
    """:class:`monai.inferers.SlidingWindowInferer` averaged over mirror images along ``mirror_axes``.

    Args:
        mirror_axes: spatial axes (0-based, of the array the network sees) to mirror along; one extra
            sliding-window pass each. ``()`` is the plain sliding window.
        *args, **kwargs: :class:`~monai.inferers.SlidingWindowInferer`'s.

    Raises:
        ValueError: repeated or negative axes.
    """

    def __init__(self, *args: Any, mirror_axes: Sequence[int] = (), **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        axes = tuple(int(a) for a in mirror_axes)
        if any(a < 0 for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"mirror_axes must be distinct spatial axes (0, 1, 2), got {list(mirror_axes)}")
        self.mirror_axes = axes

    def __call__(  # type: ignore[override]
        self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any
    ) -> torch.Tensor:
        spatial = inputs.ndim - 2
        if any(a >= spatial for a in self.mirror_axes):
            raise ValueError(f"mirror_axes {list(self.mirror_axes)} do not fit a {spatial}D input")
        total = torch.as_tensor(super().__call__(inputs, network, *args, **kwargs))
        for axis in self.mirror_axes:
            dims = [2 + axis]
            mirrored = torch.as_tensor(super().__call__(torch.flip(inputs, dims), network, *args, **kwargs))
            total = total + torch.flip(mirrored, dims)
        return total / (1 + len(self.mirror_axes))


def tta_axes(
    tta: bool | Sequence[int], spatial_dims: int, mirrored: Sequence[int], trained: Sequence[int] | None = None
) -> tuple[int, ...] | None:
    """The spatial axes :class:`medfcn.engine.segmenter.Segmenter` mirrors itself (``--tta``): ``None`` = none.

    ``tta=True`` means the axes the bundle's training flipped (``trained``; every axis when unknown): a
    mirror image along another axis is an anatomy the network never saw (left and right swapped for a
    liver, anterior and posterior swapped for a hippocampus). ``mirrored``: axes the bundle's own inferer
    mirrors already (:class:`medfcn.engine.inferers.MirroredSlidingWindowInferer`), never doubled.
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
