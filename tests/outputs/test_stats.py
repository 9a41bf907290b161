"""Per-case statistics: volumes from the affine, intensities, connectivity, confidence and flags."""

from __future__ import annotations

import numpy as np
import pytest

from medfcn.outputs.stats import case_stats, voxel_volume_ml

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
        np.zeros((4, 4, 4), np.uint8),
        np.eye(4),
        class_names=CLASSES,
        image=np.zeros((4, 4, 4)),
        volume_ranges_ml={"liver": (500.0, 3500.0)},
    )
    assert empty["classes"]["liver"]["mean_intensity"] is None
    assert empty["classes"]["liver"]["largest_component_fraction"] is None
    assert empty["flags"] == ["empty:liver"] and empty["suspicious"]


def test_volume_range_and_confidence_flags() -> None:
    label = np.zeros((10, 10, 10), np.uint8)
    label[2:8, 2:8, 2:8] = 1  # 216 voxels of 8 mm^3 = 1.728 mL
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    adult = {"liver": (500.0, 3500.0)}  # the liver bundle's metadata range
    assert case_stats(label, affine, class_names=CLASSES, volume_ranges_ml=adult)["flags"] == [
        "volume_out_of_range:liver"
    ]
    # no range in the library: without the bundle's ranges nothing is flagged, not even empty classes
    assert case_stats(label, affine, class_names=CLASSES)["flags"] == []
    assert case_stats(np.zeros_like(label), affine, class_names=CLASSES)["flags"] == []
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


def _entropy_reference(probs: np.ndarray, where: np.ndarray) -> float:
    """The textbook formula in float64 numpy (0 log 0 = 0), for comparison."""
    p = probs[:, where].astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, -p * np.log(p), 0.0)
    return float(terms.sum(axis=0).mean() / np.log(probs.shape[0]))


@pytest.mark.parametrize("slab", [1, 3, 8, 64])
def test_normalised_entropy_matches_the_formula_over_slabs(slab: int) -> None:
    """Slabs of the first axis (17 planes: none of the slab sizes divides it), exact zeros and ones."""
    from medfcn.outputs.stats import _normalised_entropy

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 17, 9, 11)) * 3
    probs = (np.exp(logits) / np.exp(logits).sum(0, keepdims=True)).astype(np.float32)
    probs[:, 0, 0, 0] = (1.0, 0.0, 0.0)  # a certain voxel: entropy 0, no NaN from log(0)
    probs[:, 1, 0, 0] = 1.0 / 3  # a uniform voxel: normalised entropy 1
    where = rng.random((17, 9, 11)) < 0.3
    where[0, 0, 0] = where[1, 0, 0] = True
    got = _normalised_entropy(probs, where, slab=slab)
    assert got == pytest.approx(_entropy_reference(probs, where), rel=1e-6)
    only_certain = np.zeros_like(where)
    only_certain[0, 0, 0] = True
    assert _normalised_entropy(probs, only_certain, slab=slab) == pytest.approx(0.0, abs=1e-7)
    only_uniform = np.zeros_like(where)
    only_uniform[1, 0, 0] = True
    assert _normalised_entropy(probs, only_uniform, slab=slab) == pytest.approx(1.0, rel=1e-6)
    assert _normalised_entropy(probs, np.zeros_like(where), slab=slab) is None
    assert _normalised_entropy(probs[:1], where, slab=slab) is None  # one channel: no entropy


def test_largest_component_fraction_of_components_touching_the_borders() -> None:
    """The components are labelled inside the mask's bounding box: components on the volume's edges and
    corners (where the box is the whole volume on some axes) are counted right."""
    from medfcn.outputs.stats import _largest_component_fraction

    mask = np.zeros((20, 15, 12), bool)
    mask[0:4, 0:3, 0:2] = True  # 24 voxels at the origin corner
    mask[19, 14, 11] = True  # 1 voxel at the far corner
    mask[10:12, 5:8, 11] = True  # 6 voxels on the last plane
    assert _largest_component_fraction(mask) == pytest.approx(24 / 31)
    inner = np.zeros((20, 15, 12), bool)
    inner[5:9, 6:8, 3:4] = True
    inner[8, 8, 4] = True  # diagonal neighbour: 26-connected, one component
    assert _largest_component_fraction(inner) == 1.0
    assert _largest_component_fraction(np.zeros((4, 4, 4), bool)) is None


@pytest.mark.parametrize("seed", [0, 1])
def test_cc3d_components_are_scipy_26_connected_components(seed: int) -> None:
    """The fast labeller (cc3d) finds exactly scipy's 26-connected components: same count, same sizes."""
    from scipy import ndimage

    from medfcn.outputs.stats import _label, _largest_component_fraction, _sizes

    rng = np.random.default_rng(seed)
    mask = ndimage.zoom(rng.random((9, 8, 7)), 4, order=1) > 0.62  # blobs touching along edges and corners
    mask[0, 0, 0], mask[1, 1, 1] = True, True  # a corner-only contact: one component at 26-connectivity
    ours, n = _label(mask)
    ref, n_ref = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    assert n == n_ref > 3
    np.testing.assert_array_equal(np.sort(_sizes(ours, n)), np.sort(np.bincount(ref.ravel())[1:]))
    assert (ours > 0).sum() == mask.sum() and ours[0, 0, 0] == ours[1, 1, 1]
    assert _largest_component_fraction(mask) == pytest.approx(np.bincount(ref.ravel())[1:].max() / mask.sum())


@pytest.mark.parametrize("slab", [1, 4, 8, 64])
def test_masked_mean_equals_the_mean_of_the_gathered_voxels(slab: int) -> None:
    """Slab by slab (19 planes: no slab size divides it), with empty slabs and a float64 sum."""
    from medfcn.outputs.stats import _masked_mean

    rng = np.random.default_rng(5)
    image = rng.normal(40.0, 300.0, (19, 7, 13)).astype(np.float32)
    mask = rng.random((19, 7, 13)) < 0.2
    mask[4:12] = False  # slabs with nothing in them
    count = int(mask.sum())
    assert _masked_mean(image, mask, count, slab=slab) == pytest.approx(float(image[mask].astype(np.float64).mean()), rel=1e-9)
