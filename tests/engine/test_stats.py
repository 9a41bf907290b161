"""Per-case statistics: volumes from the affine, intensities, connectivity, confidence and flags."""

from __future__ import annotations

import numpy as np
import pytest

from medfcn.engine.stats import case_stats, voxel_volume_ml

CLASSES = {0: "background", 1: "liver", 2: "tumour"}


def _oblique_affine(spacing: tuple[float, float, float]) -> np.ndarray:
    angle = np.deg2rad(20.0)
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rot @ np.diag(spacing) @ np.diag([-1.0, 1.0, 1.0])
    affine[:3, 3] = [12.0, -40.0, 7.5]
    return affine


def test_volume_is_count_times_voxel_volume_of_an_oblique_anisotropic_grid() -> None:
    affine = _oblique_affine((0.8, 0.8, 3.0))
    label = np.zeros((20, 18, 9), np.uint8)
    label[2:12, 3:9, 1:5] = 1  # 240 voxels
    label[14:16, 10:13, 6:8] = 2  # 12 voxels
    s = case_stats(label, affine, class_names=CLASSES, volume_ranges_ml={})
    assert voxel_volume_ml(affine) == pytest.approx(0.8 * 0.8 * 3.0 / 1000.0)
    assert s["classes"]["liver"]["voxels"] == 240
    assert s["classes"]["liver"]["volume_ml"] == pytest.approx(240 * 0.00192, rel=1e-6)
    assert s["classes"]["tumour"]["volume_ml"] == pytest.approx(12 * 0.00192, rel=1e-6)
    assert s["foreground"]["voxels"] == 252
    assert s["spacing_mm"] == pytest.approx([0.8, 0.8, 3.0])
    assert "background" not in s["classes"]
    assert s["flags"] == [] and s["suspicious"] is False


def test_mean_intensity_and_largest_component_fraction() -> None:
    label = np.zeros((16, 16, 16), np.uint8)
    label[1:5, 1:5, 1:5] = 1  # 64 voxels
    label[10:12, 10:12, 10:12] = 1  # 8 voxels, a separate component
    image = np.full(label.shape, -50.0, np.float32)
    image[label == 1] = 60.0
    image[10:12, 10:12, 10:12] = 150.0
    s = case_stats(label, np.eye(4), class_names=CLASSES, image=image, volume_ranges_ml={})
    liver = s["classes"]["liver"]
    assert liver["mean_intensity"] == pytest.approx((64 * 60.0 + 8 * 150.0) / 72)
    assert liver["largest_component_fraction"] == pytest.approx(64 / 72)
    # diagonal neighbours are one component (26-connectivity)
    label2 = np.zeros((6, 6, 6), np.uint8)
    label2[1, 1, 1] = label2[2, 2, 2] = 1
    assert (
        case_stats(label2, np.eye(4), class_names=CLASSES)["classes"]["liver"]["largest_component_fraction"]
        == 1.0
    )
    # an empty class has no mean and no fraction, and is flagged when a range is declared for it
    empty = case_stats(
        np.zeros((4, 4, 4), np.uint8), np.eye(4), class_names=CLASSES, image=np.zeros((4, 4, 4))
    )
    assert empty["classes"]["liver"]["mean_intensity"] is None
    assert empty["classes"]["liver"]["largest_component_fraction"] is None
    assert empty["flags"] == ["empty:liver"] and empty["suspicious"]


def test_volume_range_and_confidence_flags() -> None:
    label = np.zeros((10, 10, 10), np.uint8)
    label[2:8, 2:8, 2:8] = 1  # 216 voxels of 8 mm^3 = 1.728 mL
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    assert case_stats(label, affine, class_names=CLASSES)["flags"] == [
        "volume_out_of_range:liver"
    ]  # adult default
    assert (
        case_stats(label, affine, class_names=CLASSES, volume_ranges_ml={"liver": (1.0, 2.0)})["flags"] == []
    )

    certain = np.zeros((3, 10, 10, 10), np.float32)
    certain[0] = 1.0
    certain[:, label == 1] = np.array([[0.0], [1.0], [0.0]])
    s = case_stats(label, affine, class_names=CLASSES, probabilities=certain, volume_ranges_ml={})
    assert s["foreground"]["mean_entropy"] == pytest.approx(0.0, abs=1e-6)
    assert s["flags"] == []
    unsure = np.full((3, 10, 10, 10), 1 / 3, np.float32)
    s = case_stats(label, affine, class_names=CLASSES, probabilities=unsure, volume_ranges_ml={})
    assert s["foreground"]["mean_entropy"] == pytest.approx(1.0, abs=1e-5)
    assert s["flags"] == ["low_confidence"]
    assert (
        case_stats(
            label, affine, class_names=CLASSES, probabilities=unsure, volume_ranges_ml={}, max_entropy=1.01
        )["flags"]
        == []
    )


def test_shape_mismatch_is_an_error() -> None:
    label = np.zeros((4, 4, 4), np.uint8)
    with pytest.raises(ValueError, match="image shape"):
        case_stats(label, np.eye(4), class_names=CLASSES, image=np.zeros((4, 4, 5)))
    with pytest.raises(ValueError, match="probabilities shape"):
        case_stats(label, np.eye(4), class_names=CLASSES, probabilities=np.zeros((3, 4, 4, 5)))
    with pytest.raises(ValueError, match=r"\(X, Y, Z\)"):
        case_stats(np.zeros((4, 4)), np.eye(4), class_names=CLASSES)
