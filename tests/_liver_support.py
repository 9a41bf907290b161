"""Helpers shared by tests that train or copy the liver bundle (imported by name: a unique module, not
``conftest``, which several test folders define)."""

from __future__ import annotations

from pathlib import Path

LIVER_BUNDLE = Path(__file__).resolve().parents[1] / "bundles" / "liver"
# Small enough for 2 CPU cores: the synthetic phantoms are ~40 voxels across after resampling.
TINY_PATCH = (48, 48, 48)
TINY_TRAINING = {"num_workers": 0, "num_samples": 2}


def copy_liver_bundle(dest: Path, patch_size: tuple[int, int, int] | None = TINY_PATCH) -> Path:
    """A writable copy of ``bundles/liver`` without weights or run folders, with a smaller patch (training
    and inference alike) unless ``patch_size`` is None."""
    from medfcn.bundle import copy_bundle, set_patch_size

    copy_bundle(LIVER_BUNDLE, dest)
    if patch_size is not None:
        set_patch_size(dest, patch_size)
    return dest
