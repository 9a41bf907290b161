"""A PNG preview of a predicted mask: a few axial and coronal slices of the scan with the mask overlaid.

The volume is first reoriented to the nearest RAS axes (no resampling: only axis flips and swaps), so
"axial" and "coronal" mean what a radiologist expects whatever the scan's voxel order; slices are shown
in radiological convention (patient's right on the left of the image, anterior / superior on top) and
stretched to the physical aspect ratio of the voxels.

Example:
    >>> img = render_preview(image_hu, label, affine, window=(-160.0, 240.0))  # CT soft tissue  # doctest: +SKIP
    >>> img = render_preview(image_mr, label, affine, window="percentile")  # MR: per-image range  # doctest: +SKIP
    >>> img.save("preview.png")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
from PIL import Image

__all__ = ["display_window", "render_preview"]

PERCENTILES = (0.5, 99.5)
"""The ``"percentile"`` window: these percentiles of the image's intensities (robust to outliers)."""

# RGB of label values 1, 2, 3...; label 1 green (organ), 2 red (lesion), then a few distinct hues.
_COLOURS = np.array(
    [[0, 200, 80], [230, 40, 40], [40, 120, 255], [250, 200, 0], [200, 60, 220], [0, 210, 210]],
    dtype=np.float32,
)
_TILE = 224  # height in pixels of each slice panel


def _to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Flip/permute the axes of ``array`` to the closest RAS order; returns it and the voxel sizes."""
    import nibabel.orientations as nio

    ornt = nio.io_orientation(affine)
    spacing = np.linalg.norm(affine[:3, :3], axis=0)
    ras = nio.apply_orientation(array, ornt)
    # ornt[i, 0] is the output axis that input axis i goes to
    out_spacing = np.empty(3)
    for axis, (target, _flip) in enumerate(ornt):
        out_spacing[int(target)] = spacing[axis]
    return ras, out_spacing


def _panel(image: np.ndarray, label: np.ndarray, pixel_mm: tuple[float, float], alpha: float) -> Image.Image:
    """One slice: ``image`` in [0, 1] and ``label`` as ``(rows, cols)``, physical aspect, height _TILE."""
    grey = np.repeat((image * 255.0)[..., None], 3, axis=2).astype(np.float32)
    for value in np.unique(label):
        if value == 0:
            continue
        colour = _COLOURS[(int(value) - 1) % len(_COLOURS)]
        sel = label == value
        grey[sel] = (1.0 - alpha) * grey[sel] + alpha * colour
    pil = Image.fromarray(np.clip(grey, 0, 255).astype(np.uint8), mode="RGB")
    rows, cols = image.shape
    height_mm, width_mm = rows * pixel_mm[0], cols * pixel_mm[1]
    width = max(1, round(_TILE * width_mm / max(height_mm, 1e-6)))
    return pil.resize((min(width, 4 * _TILE), _TILE), Image.Resampling.NEAREST)


def _pick(label_axis_profile: np.ndarray, n: int) -> list[int]:
    """``n`` slice indices spread over the range where the mask is (or the whole range if empty)."""
    size = label_axis_profile.size
    nz = np.flatnonzero(label_axis_profile)
    lo, hi = (int(nz[0]), int(nz[-1])) if nz.size else (0, size - 1)
    return sorted({round(lo + (hi - lo) * f) for f in np.linspace(0.2, 0.8, n)})


def display_window(image: np.ndarray, window: Sequence[float] | Literal["percentile"]) -> tuple[float, float]:
    """``(low, high)`` of ``window``: as given, or the :data:`PERCENTILES` of the finite voxels of ``image``."""
    if isinstance(window, str):
        if window != "percentile":
            raise ValueError(f'window must be (low, high) or "percentile", got {window!r}')
        flat = np.asarray(image).reshape(-1)
        values = flat[:: max(1, flat.size // 2_000_000)].astype(np.float32)  # a strided sample: ~0.1 s
        values = values[np.isfinite(values)]
        if values.size == 0:
            return 0.0, 1.0
        low, high = (float(v) for v in np.percentile(values, PERCENTILES))
        return (low, high) if high > low else (low, low + 1.0)
    return float(window[0]), float(window[1])


def render_preview(
    image: np.ndarray,
    label: np.ndarray,
    affine: np.ndarray,
    *,
    window: Sequence[float] | Literal["percentile"] = "percentile",
    num_axial: int = 3,
    num_coronal: int = 2,
    alpha: float = 0.4,
) -> Image.Image:
    """Render axial and coronal slices of ``image`` with ``label`` overlaid, side by side.

    Args:
        image: ``(X, Y, Z)`` intensities (HU for CT) in the source geometry.
        label: ``(X, Y, Z)`` integer labels on the same grid (0 background).
        affine: ``(4, 4)`` voxel-to-world matrix (RAS, mm) of both arrays.
        window: ``(low, high)`` display window in the image's units (values are clipped to it), or
            ``"percentile"`` (default) for the 0.5-99.5 % range of the image (:func:`display_window`).
            Bundles set theirs in ``metadata.json`` (``medfcn.preview_window``).
        num_axial: axial slices, spread over the cranio-caudal extent of the mask.
        num_coronal: coronal slices, spread over the antero-posterior extent of the mask.
        alpha: opacity of the mask colour.

    Returns:
        An RGB :class:`PIL.Image.Image`, one row of panels ``_TILE`` pixels high.

    Raises:
        ValueError: ``image`` and ``label`` are not 3D arrays of the same shape.
    """
    image = np.asarray(image)
    label = np.asarray(label)
    if image.ndim != 3 or image.shape != label.shape:
        raise ValueError(f"image and label must be 3D of one shape, got {image.shape} and {label.shape}")
    affine = np.asarray(affine, dtype=np.float64)
    img, spacing = _to_ras(image.astype(np.float32, copy=False), affine)
    lab, _ = _to_ras(label, affine)
    low, high = display_window(image, window)
    span = max(high - low, 1e-6)

    def shown(plane: np.ndarray) -> np.ndarray:  # only the slices shown are windowed, not the volume
        return np.clip((plane - low) / span, 0.0, 1.0)

    panels: list[Image.Image] = []
    fg = lab > 0
    # Axial slice z: rows = y (anterior on top), cols = x (patient's right on the left).
    for k in _pick(np.asarray(fg.any(axis=(0, 1))), num_axial):
        panels.append(
            _panel(shown(img[::-1, ::-1, k].T), lab[::-1, ::-1, k].T, (float(spacing[1]), float(spacing[0])), alpha)
        )
    # Coronal slice y: rows = z (superior on top), cols = x (patient's right on the left).
    for j in _pick(np.asarray(fg.any(axis=(0, 2))), num_coronal):
        panels.append(
            _panel(shown(img[::-1, j, ::-1].T), lab[::-1, j, ::-1].T, (float(spacing[2]), float(spacing[0])), alpha)
        )
    gap = 4
    total = sum(p.width for p in panels) + gap * (len(panels) - 1)
    sheet = Image.new("RGB", (total, _TILE), (0, 0, 0))
    x = 0
    for p in panels:
        sheet.paste(p, (x, 0))
        x += p.width + gap
    return sheet
