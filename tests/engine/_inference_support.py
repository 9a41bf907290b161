"""Helpers for the inference tests: a fixed thresholding predictor, bundle copies, scan folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

LIVER_BUNDLE = Path(__file__).resolve().parents[2] / "bundles" / "liver"


class ThresholdNet(torch.nn.Module):
    """A fixed predictor: class 0 below ``t1``, class 1 between ``t1`` and ``t2``, class 2 above ``t2``.

    Thresholds are in the network's input units (after the bundle's intensity scaling). Logits are
    ``(0, g(x - t1), g(x - t1) + g(x - t2))`` so the argmax is exactly the thresholding. It is
    equivariant to flips, and knows nothing about geometry: any misplaced voxel is the pipeline's fault.
    """

    def __init__(self, t1: float, t2: float, gain: float = 200.0) -> None:
        super().__init__()
        self.t1, self.t2, self.gain = float(t1), float(t2), float(gain)
        self.out_channels = 3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = self.gain * (x - self.t1)
        b = self.gain * (x - self.t2)
        return torch.cat([torch.zeros_like(x), a, a + b], dim=1)


def hu_to_input(segmenter: object, hu: float) -> float:
    """The network-input value of ``hu`` HU under the bundle's own intensity transform."""
    from monai.transforms import ScaleIntensityRanged

    for t in segmenter.preprocessing.flatten().transforms:  # type: ignore[attr-defined]
        if isinstance(t, ScaleIntensityRanged):
            out = t({"image": torch.full((1, 1, 1, 1), float(hu))})["image"]
            return float(torch.as_tensor(out).flatten()[0])
    return float(hu)


def window(segmenter: object) -> tuple[float, float]:
    """The bundle's HU window."""
    w = segmenter.window  # type: ignore[attr-defined]
    assert w is not None, "the bundle defines hu_window"
    return float(w[0]), float(w[1])


def copy_bundle(dest: Path, *, weights: bool = True, seed: int = 0) -> Path:
    """Copy bundles/liver to ``dest`` (no models/outputs) and save random weights of its network_def."""
    from medfcn.bundle import copy_bundle as copy_without_weights
    from medfcn.bundle import save_random_weights

    copy_without_weights(LIVER_BUNDLE, dest)
    if weights:
        save_random_weights(dest, seed=seed)
    return dest


def tree_digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (relative path -> digest), plus the folder list."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def sphere_volume(
    shape: tuple[int, int, int], affine: np.ndarray, centre_world: np.ndarray, radius_mm: float
) -> np.ndarray:
    """Boolean ``shape`` mask of the voxels whose world centre is within ``radius_mm`` of ``centre_world``."""
    ijk = np.indices(shape).reshape(3, -1).astype(np.float64)
    world = affine[:3, :3] @ ijk + affine[:3, 3:4]
    return (np.linalg.norm(world - centre_world[:, None], axis=0) <= radius_mm).reshape(shape)


def world_com(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """World (mm) centre of mass of a boolean mask."""
    ijk = np.argwhere(mask).mean(axis=0)
    return affine[:3, :3] @ ijk + affine[:3, 3]


def oblique_affine(spacing: tuple[float, float, float], degrees: float = 17.0) -> np.ndarray:
    """An oblique, axis-flipped, anisotropic voxel-to-RAS affine."""
    axis = np.array([0.3, -0.5, 0.8])
    axis /= np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = np.deg2rad(degrees)
    rot = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k)
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag([-1.0, 1.0, 1.0]) @ np.diag(spacing)
    affine[:3, 3] = [25.0, -60.0, -120.0]
    return affine
