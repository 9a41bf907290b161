"""Per-case statistics of a predicted label mask: volumes, intensities, connectivity and confidence.

Everything is computed in the **source geometry** (the grid of the scan as loaded), so volumes use the
scan's own voxel size: ``volume_ml = voxels * |det(affine[:3, :3])| / 1000``.

The flags are advisory: they mark cases a person should look at (an organ that came out empty, an
organ volume outside the plausible range the bundle declares, a prediction the network was unsure
about), not failures.

Example:
    >>> import numpy as np
    >>> label = np.zeros((10, 10, 10), np.uint8)
    >>> label[2:6, 2:6, 2:6] = 1
    >>> s = case_stats(label, np.diag([2.0, 2.0, 2.5, 1.0]), class_names={1: "liver"})
    >>> s["classes"]["liver"]["voxels"], s["classes"]["liver"]["volume_ml"]
    (64, 0.64)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

__all__ = ["case_stats", "voxel_volume_ml"]

_DEFAULT_MAX_ENTROPY = 0.35  # normalised entropy above which a prediction is called low-confidence
_TINY = 1e-30  # log(max(p, _TINY)): 0 log 0 = 0 without a branch per voxel


def voxel_volume_ml(affine: np.ndarray) -> float:
    """Volume of one voxel in mL (cm³) from a ``(4, 4)`` voxel-to-world affine in mm."""
    return float(abs(np.linalg.det(np.asarray(affine, dtype=np.float64)[:3, :3]))) / 1000.0


def _largest_component_fraction(mask: np.ndarray) -> float | None:
    """Fraction of the voxels of ``mask`` in its largest 26-connected component (None when empty).

    Labelled by ``cc3d`` (connected-components-3d: 2-3.5x faster than ``scipy.ndimage.label`` on a
    512x512x300 mask; the same components) inside the mask's bounding box; ``scipy.ndimage`` where cc3d is
    not installed.
    """
    total = int(np.count_nonzero(mask))
    if total == 0:
        return None
    box = tuple(slice(int(i[0]), int(i[-1]) + 1) for i in (np.flatnonzero(a) for a in _projections(mask)))
    components, n = _label(mask[box])
    if n <= 1:
        return 1.0
    return float(_sizes(components, n).max()) / total


def _sizes(components: np.ndarray, n: int) -> np.ndarray:
    """Voxels of each component ``1..n`` of a label image, counted by torch (2x ``numpy.bincount``)."""
    import torch

    flat = components.reshape(-1)
    if flat.dtype == np.uint32 and n < 2**31:
        flat = flat.view(np.int32)  # the same non-negative values; torch counts signed integers
    elif flat.dtype not in (np.int32, np.int64):
        flat = flat.astype(np.int64)
    return torch.bincount(torch.from_numpy(flat), minlength=n + 1)[1:].numpy()  # type: ignore[no-any-return]


def _label(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """The fully connected components of a 2-D or 3-D boolean mask (8- or 26-connected), and their count."""
    try:
        import cc3d
    except ImportError:  # pragma: no cover - cc3d is a dependency; the same components by scipy
        from scipy import ndimage

        components, n = ndimage.label(mask, structure=np.ones((3,) * mask.ndim, dtype=bool))
        return components, int(n)
    components, n = cc3d.connected_components(mask, connectivity=26 if mask.ndim == 3 else 8, return_N=True)
    return components, int(n)


def _projections(mask: np.ndarray) -> list[np.ndarray]:
    """``mask.any`` over all axes but one, for each axis (the bounding box of the true voxels)."""
    return [
        np.asarray(mask.any(axis=tuple(d for d in range(mask.ndim) if d != axis))) for axis in range(mask.ndim)
    ]


def _masked_mean(image: np.ndarray, mask: np.ndarray, count: int, slab: int = 8) -> float:
    """Mean of ``image`` over the ``count`` true voxels of ``mask``, summed in float64 over slabs of ``slab``
    planes, by torch (several threads): a masked sum of each slab, no gather (``image[mask]`` of a whole CT
    with foreground everywhere is a 250 MB copy; numpy's slab-wise gathers took 0.46 s for a 512x512x300
    CT, this 0.21 s)."""
    import torch

    x, w = torch.from_numpy(np.asarray(image)), torch.from_numpy(np.asarray(mask, dtype=bool))
    total = 0.0
    for start in range(0, w.shape[0], slab):
        ws = w[start : start + slab]
        if bool(ws.any()):
            total += float(torch.where(ws, x[start : start + slab], 0.0).sum(dtype=torch.float64))
    return total / count


def _normalised_entropy(probabilities: np.ndarray, where: np.ndarray, slab: int = 4) -> float | None:
    """Mean predictive entropy over the voxels ``where``, divided by ``log(C)`` (0 certain, 1 uniform).

    ``-sum_c p log p`` (``0 log 0 = 0``: ``p log max(p, 1e-30)``; ``torch.special.entr`` is not vectorised)
    in float32 by torch (multi-threaded), summed in float64, over slabs
    of ``slab`` planes of the first spatial axis inside the bounding box of ``where``: the entropy of every
    voxel of a slab is summed over the classes first, then the ``where`` voxels of that one map are
    summed (a masked sum of one map, no gather of C channels). No full-volume temporaries, and the slab's
    own (two of them, worked in place) stay in the cache: a 512x512x300 CT with foreground almost
    everywhere takes 1.0 s (1.5-2.0 s with slabs of 8 planes and a new tensor per operation).
    """
    import torch

    n_channels = probabilities.shape[0]
    if n_channels < 2:
        return None
    w = torch.from_numpy(np.asarray(where, dtype=bool))
    planes = torch.nonzero(w.flatten(1).any(1)).flatten() if w.numel() else torch.empty(0, dtype=torch.long)
    if planes.numel() == 0:
        return None
    p = torch.from_numpy(np.asarray(probabilities))
    total, count = 0.0, 0
    for start in range(int(planes[0]), int(planes[-1]) + 1, slab):
        ws = w[start : start + slab]
        k = int(ws.sum())
        if k:
            q = p[:, start : start + slab].to(torch.float32).clamp(0.0, 1.0)
            q_log_q = q.clamp_min(_TINY).log_().mul_(q)  # -entr(q), vectorised: 2.4x faster than entr
            total -= float(torch.where(ws, q_log_q.sum(0), 0.0).sum(dtype=torch.float64))  # no gather: 7x faster
            count += k
    return total / count / float(np.log(n_channels))


def case_stats(
    label: np.ndarray,
    affine: np.ndarray,
    *,
    class_names: Mapping[int, str],
    image: np.ndarray | None = None,
    probabilities: np.ndarray | None = None,
    volume_ranges_ml: Mapping[str, tuple[float, float]] | None = None,
    max_entropy: float = _DEFAULT_MAX_ENTROPY,
) -> dict[str, Any]:
    """Statistics of one predicted mask, as a JSON-ready dict.

    Args:
        label: ``(X, Y, Z)`` integer label map in the source geometry (0 background).
        affine: ``(4, 4)`` voxel-to-world matrix of ``label`` in mm.
        class_names: foreground label value -> class name (background may be included; it is ignored).
        image: ``(X, Y, Z)`` source intensities on the same grid (HU for CT) for the mean per class.
        probabilities: ``(C, X, Y, Z)`` class probabilities on the same grid (sum to 1 over C), for the
            confidence figure.
        volume_ranges_ml: class name -> plausible ``(low, high)`` volume in mL; those classes are also
            flagged when empty. ``None`` or ``{}``: no volume flags. The ranges belong to the bundle
            (``metadata.json`` ``medfcn.classes.<value>.volume_ml``, read by
            :func:`medfcn.data.segment_codes.volume_ranges`), not to this function.
        max_entropy: mean normalised entropy inside the predicted foreground above which the case is
            flagged ``low_confidence``.

    Returns:
        ``{"shape", "spacing_mm", "voxel_volume_ml", "classes": {name: {"label", "voxels", "volume_ml",
        "mean_intensity", "largest_component_fraction"}}, "foreground": {"voxels", "volume_ml",
        "mean_entropy"}, "flags": [...], "suspicious": bool}``. ``mean_intensity`` is in the image's
        units (HU for CT) and ``None`` for an empty class or without ``image``.

    Raises:
        ValueError: arrays whose shapes do not match ``label``.
    """
    label = np.asarray(label)
    if label.ndim != 3:
        raise ValueError(f"label must be (X, Y, Z), got shape {label.shape}")
    if image is not None and np.shape(image) != label.shape:
        raise ValueError(f"image shape {np.shape(image)} does not match label shape {label.shape}")
    if probabilities is not None and np.shape(probabilities)[1:] != label.shape:
        raise ValueError(
            f"probabilities shape {np.shape(probabilities)} does not match label shape (C, *{label.shape})"
        )
    ranges = volume_ranges_ml or {}
    vox_ml = voxel_volume_ml(affine)
    spacing = np.linalg.norm(np.asarray(affine, dtype=np.float64)[:3, :3], axis=0)

    classes: dict[str, dict[str, Any]] = {}
    flags: list[str] = []
    for value, name in sorted(class_names.items()):
        if int(value) == 0:
            continue
        mask = label == value
        voxels = int(np.count_nonzero(mask))
        mean = _masked_mean(np.asarray(image), mask, voxels) if image is not None and voxels else None
        volume = voxels * vox_ml
        classes[name] = {
            "label": int(value),
            "voxels": voxels,
            "volume_ml": round(volume, 6),
            "mean_intensity": None if mean is None else round(mean, 3),
            "largest_component_fraction": _largest_component_fraction(mask),
        }
        if name in ranges:
            low, high = ranges[name]
            if voxels == 0:
                flags.append(f"empty:{name}")
            elif not low <= volume <= high:
                flags.append(f"volume_out_of_range:{name}")

    foreground = label > 0
    fg_voxels = int(np.count_nonzero(foreground))
    entropy = None if probabilities is None else _normalised_entropy(np.asarray(probabilities), foreground)
    if entropy is not None and entropy > max_entropy:
        flags.append("low_confidence")
    return {
        "shape": [int(s) for s in label.shape],
        "spacing_mm": [round(float(s), 6) for s in spacing],
        "voxel_volume_ml": vox_ml,
        "classes": classes,
        "foreground": {
            "voxels": fg_voxels,
            "volume_ml": round(fg_voxels * vox_ml, 6),
            "mean_entropy": None if entropy is None else round(entropy, 6),
        },
        "flags": flags,
        "suspicious": bool(flags),
    }
