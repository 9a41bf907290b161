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

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import SlidingWindowInferer

__all__ = ["MirroredSlidingWindowInferer"]


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
        out = total / (1 + len(self.mirror_axes))
        return out
