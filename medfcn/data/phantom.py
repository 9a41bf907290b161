"""The synthetic CT phantom of the abdomen (:func:`make_phantom`); :mod:`medfcn.data.synthetic` writes
phantoms as an MSD-layout dataset and :mod:`medfcn.data.dicom.synthetic` as a DICOM series.

The phantoms stand in for real liver CT wherever the project needs data it may ship: tests, demos,
``medfcn data synth``. Each phantom is a CT-like volume in Hounsfield units (HU) with

* air outside the patient (-1000 HU), an elliptical body outline with subcutaneous fat (~-100 HU)
  and an abdominal muscle wall (~+45 HU), bowel-like soft tissue with fat and gas pockets inside;
* a vertebra (cortex ~+900 HU, cancellous bone ~+350 HU, discs ~+90 HU) with paraspinal muscles;
* aorta and vena cava, two kidneys and a spleen;
* a smooth, lobed liver (~+60 HU) on the patient's right (negative RAS x), anterior and superior,
  made from a smooth union of three ellipsoids deformed by smooth noise;
* one or more hypo- or hyperdense tumour-like lesions inside the liver;
* slight blur (partial volume) and Gaussian noise.

Labels: 0 background, 1 liver, 2 tumour. The anatomy is defined in world (RAS) coordinates and
sampled at each voxel's world position, so labels stay anatomically consistent whatever voxel
orientation, axis flips, anisotropic spacing or oblique tilt the affine records. The anatomy is scaled
to the field of view (the body fills the axial plane; the cranio-caudal coverage is capped at about the
abdomen) so that even a 48x48x32 volume shows a whole liver.

Example:
    >>> from medfcn.data.phantom import make_phantom
    >>> ph = make_phantom((64, 64, 48), seed=3)
    >>> ph.image.shape, ph.image.dtype, sorted(np.unique(ph.label).tolist())
    ((64, 64, 48), dtype('float32'), [0, 1, 2])
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

__all__ = ["Orientation", "Phantom", "make_phantom"]

_HU_MIN, _HU_MAX = -1024.0, 3071.0  # the 12-bit CT range every scanner writes

Orientation = Literal["random", "lps", "ras"]


@dataclass(frozen=True)
class Phantom:
    """One synthetic CT volume.

    Attributes:
        image: ``(X, Y, Z)`` float32, Hounsfield units.
        label: ``(X, Y, Z)`` uint8; 0 background, 1 liver, 2 tumour.
        affine: ``(4, 4)`` float64 voxel-to-world matrix in RAS millimetres (the NIfTI/MONAI convention).
        num_tumours: lesions placed (a lesion may be small but is never empty).
    """

    image: np.ndarray
    label: np.ndarray
    affine: np.ndarray
    num_tumours: int

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size along each array axis in mm (column norms of the affine)."""
        s = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(s[0]), float(s[1]), float(s[2]))


# ----------------------------------------------------------------------------------------------- geometry


def _rotation(axis: np.ndarray, angle_rad: float) -> np.ndarray:
    """Rodrigues' rotation matrix about a unit ``axis``."""
    axis = axis / np.linalg.norm(axis)
    k = np.array([[0.0, -axis[2], axis[1]], [axis[2], 0.0, -axis[0]], [-axis[1], axis[0], 0.0]])
    return np.eye(3) + np.sin(angle_rad) * k + (1.0 - np.cos(angle_rad)) * (k @ k)


def _direction(rng: np.random.Generator, orientation: Orientation, max_oblique_deg: float) -> np.ndarray:
    """3x3 direction matrix (columns: world direction of each voxel axis).

    The slice axis (array axis 2) stays along world z, as in an axial acquisition; "random" swaps the two
    in-plane axes and flips any axis, never giving the identity so that code which ignores the affine
    fails tests.
    """
    if orientation == "ras":
        d = np.eye(3)
    elif orientation == "lps":
        d = np.diag([-1.0, -1.0, 1.0])
    elif orientation == "random":
        perm = [1, 0, 2] if rng.random() < 0.5 else [0, 1, 2]
        signs = rng.choice([-1.0, 1.0], size=3)
        d = np.zeros((3, 3))
        for voxel_axis, world_axis in enumerate(perm):
            d[world_axis, voxel_axis] = signs[voxel_axis]
        if np.allclose(d, np.eye(3)):
            d[0, 0] = -1.0
    else:
        raise ValueError(f"orientation must be 'random', 'lps' or 'ras', got {orientation!r}")
    if max_oblique_deg > 0:
        axis = rng.normal(size=3)
        angle = np.deg2rad(rng.uniform(0.3 * max_oblique_deg, max_oblique_deg))
        d = _rotation(axis, angle) @ d
    return d


def _smooth_noise(
    rng: np.random.Generator, q: np.ndarray, lo: np.ndarray, hi: np.ndarray, cells: int
) -> np.ndarray:
    """A smooth random field of unit standard deviation sampled at points ``q`` (3, N).

    Gaussian values on a coarse ``cells``^3 lattice spanning the box ``[lo, hi]`` are interpolated with
    cubic splines, so the field varies on the scale of (hi - lo) / cells and costs one lattice lookup per
    voxel rather than a 3D convolution of the whole volume.
    """
    from scipy.ndimage import map_coordinates

    lattice = rng.normal(size=(cells, cells, cells))
    idx = (q - lo[:, None]) / (hi - lo)[:, None] * (cells - 1)
    field = map_coordinates(lattice, idx, order=3, mode="nearest")
    std = float(field.std())
    return (field / std if std > 0 else field).astype(np.float32)


# ----------------------------------------------------------------------------------------------- phantom


def make_phantom(
    shape: Sequence[int] = (64, 64, 48),
    spacing: Sequence[float] | None = None,
    seed: int = 0,
    *,
    orientation: Orientation = "random",
    max_oblique_deg: float = 0.0,
    num_tumours: int | None = None,
    noise_hu: float = 15.0,
    blur_mm: float = 0.6,
) -> Phantom:
    """Generate one CT-like abdominal volume with liver and tumour labels.

    Args:
        shape: voxels along array axes ``(X, Y, Z)``; Z is the slice axis.
        spacing: voxel size in mm along ``(X, Y, Z)``. ``None`` draws square in-plane pixels of
            0.7-1.0 mm and slices of 1.5-5.0 mm, as in clinical abdominal CT.
        seed: everything (spacing, orientation, anatomy, noise) is a function of the seed.
        orientation: ``"random"`` draws axis flips and an in-plane axis swap (never the identity),
            ``"lps"`` gives the usual DICOM axial orientation, ``"ras"`` an identity direction.
        max_oblique_deg: tilt the grid by up to this angle about a random axis (0: axis-aligned).
        num_tumours: lesions to place; ``None`` draws 1-3.
        noise_hu: standard deviation of the Gaussian image noise in HU.
        blur_mm: Gaussian blur (sigma, mm) applied before the noise, mimicking partial volume.

    Returns:
        A :class:`Phantom` with ``image`` (float32 HU), ``label`` (uint8) and ``affine`` (RAS, mm).

    Raises:
        ValueError: a shape or spacing that is not three positive numbers.
    """
    from scipy.ndimage import distance_transform_edt, gaussian_filter

    shape_t = tuple(int(s) for s in shape)
    if len(shape_t) != 3 or min(shape_t) < 2:
        raise ValueError(f"shape must be three sizes >= 2, got {tuple(shape)}")
    rng = np.random.default_rng(seed)
    if spacing is None:
        in_plane = round(float(rng.uniform(0.7, 1.0)), 3)
        spacing_a = np.array([in_plane, in_plane, round(float(rng.uniform(1.5, 5.0)), 2)])
    else:
        spacing_a = np.asarray(spacing, dtype=float)
        if spacing_a.shape != (3,) or np.any(spacing_a <= 0):
            raise ValueError(f"spacing must be three positive sizes in mm, got {tuple(spacing)}")

    direction = _direction(rng, orientation, max_oblique_deg)
    linear = direction * spacing_a[None, :]
    centre_world = np.array([rng.uniform(-20, 20), rng.uniform(-30, 10), rng.uniform(-250, 50)])
    half_index = (np.asarray(shape_t, dtype=float) - 1.0) / 2.0
    affine = np.eye(4)
    affine[:3, :3] = linear
    affine[:3, 3] = centre_world - linear @ half_index

    # World half-extent of the volume along x, y, z; the anatomy is scaled to it.
    half_extent = np.abs(linear) @ (np.asarray(shape_t, dtype=float) / 2.0)
    body_ax = 1.0 * rng.uniform(0.95, 1.05)
    body_ay = 0.72 * rng.uniform(0.9, 1.08)
    scale_xy = 0.95 * min(half_extent[0] / body_ax, half_extent[1] / body_ay) * rng.uniform(0.9, 1.0)
    # Cap the cranio-caudal coverage at +-1 body unit (about the upper abdomen) so that the liver spans
    # about half of the slices even when thick slices cover a long range.
    scale = np.array([scale_xy, scale_xy, max(scale_xy, half_extent[2] / 1.0)])

    ijk = np.indices(shape_t, dtype=np.float32).reshape(3, -1)
    world = (linear.astype(np.float32) @ ijk) + affine[:3, 3:4].astype(np.float32)
    q = (world - centre_world[:, None].astype(np.float32)) / scale[:, None].astype(np.float32)
    lo, hi = q.min(axis=1) - 0.05, q.max(axis=1) + 0.05

    # Smooth fields vary over several voxels, so they are sampled on a coarse voxel grid (<= 32 a side)
    # and linearly upsampled: 10-30x cheaper than spline evaluation at every voxel.
    coarse_shape = tuple(min(s, 32) for s in shape_t)
    coarse_ijk = np.stack(
        [
            g.ravel()
            for g in np.meshgrid(
                *(np.linspace(0, s - 1, c) for s, c in zip(shape_t, coarse_shape, strict=True)), indexing="ij"
            )
        ]
    )
    coarse_q = (linear @ coarse_ijk + affine[:3, 3:4] - centre_world[:, None]) / scale[:, None]

    def noise(cells: int) -> np.ndarray:
        from scipy.ndimage import zoom

        field = _smooth_noise(rng, coarse_q, lo, hi, cells).reshape(coarse_shape)
        if field.shape == shape_t:
            return field
        factors = [s / c for s, c in zip(shape_t, coarse_shape, strict=True)]
        return zoom(field, factors, order=1, grid_mode=False, mode="nearest").astype(np.float32)

    x, y, z = (c.reshape(shape_t) for c in q)
    n_voxels = int(np.prod(shape_t))
    del ijk

    def ellipsoid(centre: Sequence[float] | np.ndarray, radii: Sequence[float] | np.ndarray) -> np.ndarray:
        """Implicit ellipsoid: 1 at the centre, 0 on the surface, negative outside."""
        return 1.0 - (
            ((x - centre[0]) / radii[0]) ** 2
            + ((y - centre[1]) / radii[1]) ** 2
            + ((z - centre[2]) / radii[2]) ** 2
        )

    def cylinder(centre: Sequence[float], radii: Sequence[float]) -> np.ndarray:
        """Implicit elliptic cylinder along z (structures running through the whole scan)."""
        return 1.0 - (((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2)

    def jitter(values: Sequence[float], amount: float) -> np.ndarray:
        return np.asarray(values, dtype=float) + rng.uniform(-amount, amount, size=len(values))

    hu = np.full(shape_t, -1000.0, dtype=np.float32)

    # Body: outline, subcutaneous fat, muscle wall, abdominal cavity.
    r_body = np.sqrt((x / body_ax) ** 2 + (y / body_ay) ** 2) * (1.0 + 0.025 * noise(4))
    fat_thickness = rng.uniform(0.06, 0.14)
    body = r_body < 1.0
    wall = r_body < 1.0 - fat_thickness
    cavity = r_body < 1.0 - fat_thickness - 0.05
    texture = noise(12)
    hu[body] = -100.0 + 8.0 * texture[body]
    hu[wall] = 45.0 + 5.0 * texture[wall]
    bowel_pattern = noise(9)
    gas_pattern = noise(9)
    hu[cavity] = 25.0 + 12.0 * texture[cavity]
    hu[cavity & (bowel_pattern > 0.9)] = -90.0  # mesenteric fat
    hu[cavity & (gas_pattern > 1.8)] = -750.0  # bowel gas pockets

    # Other organs; each is cut to the cavity so nothing pokes through the abdominal wall.
    occupied = np.zeros(shape_t, dtype=bool)

    def paint(mask: np.ndarray, value: float, texture_hu: float = 4.0) -> None:
        hu[mask] = value + texture_hu * texture[mask]
        occupied[mask] = True

    kidney_r = cavity & (ellipsoid(jitter((-0.36, -0.34, -0.35), 0.03), (0.11, 0.14, 0.32)) > 0)
    kidney_l = cavity & (ellipsoid(jitter((0.36, -0.34, -0.2), 0.03), (0.11, 0.14, 0.32)) > 0)
    paint(kidney_r | kidney_l, 35.0)
    spleen = cavity & (ellipsoid(jitter((0.55, -0.2, 0.32), 0.04), (0.15, 0.22, 0.26)) + 0.2 * noise(5) > 0)
    paint(spleen & ~occupied, 50.0)
    aorta = cavity & (cylinder((0.08, -0.26), (0.065, 0.065)) > 0)
    ivc = cavity & (cylinder((-0.14, -0.22), (0.075, 0.06)) > 0)
    paint(aorta, 140.0)
    paint(ivc & ~aorta, 120.0)

    # Spine: vertebral body (cortex + cancellous bone, discs between vertebrae), canal, posterior arch,
    # paraspinal muscles. Painted as "occupied" so the liver never overlaps bone.
    vb = cylinder((0.0, -0.44), (0.12, 0.11))
    canal = cylinder((0.0, -0.6), (0.05, 0.05)) > 0
    arch = (cylinder((0.0, -0.6), (0.09, 0.09)) > 0) & ~canal
    spinous = cylinder((0.0, -0.72), (0.03, 0.09)) > 0
    disc = np.mod(z - rng.uniform(0, 0.3), 0.3) < 0.06
    paraspinal = (cylinder((-0.2, -0.58), (0.12, 0.1)) > 0) | (cylinder((0.2, -0.58), (0.12, 0.1)) > 0)
    paint(body & paraspinal, 50.0)
    cortex = (vb > 0) & (vb < 0.3)
    paint(body & (vb > 0) & ~disc, 350.0, 30.0)
    paint(body & cortex & ~disc, 900.0, 40.0)
    paint(body & (vb > 0) & disc, 90.0)
    paint(body & (arch | spinous), 700.0, 40.0)
    paint(body & canal, 15.0)

    # Liver: smooth union (log-sum-exp) of three lobes, deformed by smooth noise into a lobed shape.
    lobes = [
        ellipsoid(
            jitter((-0.42, 0.02, 0.15), 0.04), np.array((0.36, 0.42, 0.42)) * rng.uniform(0.92, 1.08, 3)
        ),
        ellipsoid(jitter((0.08, 0.28, 0.28), 0.04), np.array((0.32, 0.17, 0.22)) * rng.uniform(0.9, 1.1, 3)),
        ellipsoid(jitter((-0.5, 0.05, -0.22), 0.04), np.array((0.22, 0.28, 0.22)) * rng.uniform(0.9, 1.1, 3)),
    ]
    k = 0.12
    liver_f = k * np.logaddexp.reduce(np.stack(lobes) / k, axis=0) + 0.18 * noise(6)
    liver = (liver_f > 0) & cavity & ~occupied
    liver_hu = float(rng.uniform(55.0, 65.0))
    hu[liver] = liver_hu + 5.0 * texture[liver]

    label = np.zeros(shape_t, dtype=np.uint8)
    label[liver] = 1

    # Tumours: radius a few mm, centred where the liver is thick enough to hold the whole lesion (distance
    # to the liver surface, in mm, exceeds the radius), so every lesion is surrounded by liver.
    n_tumours = int(rng.integers(1, 4)) if num_tumours is None else int(num_tumours)
    depth_mm = distance_transform_edt(liver, sampling=spacing_a) if liver.any() else np.zeros(shape_t)
    world_grid = world.reshape((3, *shape_t))
    placed = 0
    lesions_placed: list[tuple[np.ndarray, float]] = []
    for _ in range(n_tumours):
        # At least 2 pixels in-plane and most of a slice thick, so a lesion is visible at any resolution.
        floor_mm = max(2.0 * float(spacing_a.min()), 0.75 * float(spacing_a.max()))
        radius_mm = max(float(rng.uniform(0.08, 0.18)) * scale_xy, floor_mm)
        radii = radius_mm * rng.uniform(0.8, 1.2, size=3)
        margin = 0.5 * float(spacing_a.max())
        if float(depth_mm.max()) <= margin:
            break  # no liver (or only a sliver) in this field of view
        # Shrink the lesion when the liver is thinner than it (small volumes, thick slices).
        radii *= min(1.0, (float(depth_mm.max()) - margin) / float(radii.max()) * 0.9)
        candidates = np.flatnonzero(depth_mm > float(radii.max()) + margin)
        if len(candidates) == 0:
            candidates = np.flatnonzero(depth_mm == depth_mm.max())
        # Keep lesions apart: overlapping hypo- and hyperdense lesions would average out to liver HU.
        flat_world = world.T
        for prev_centre, prev_radius in lesions_placed:
            gap = np.linalg.norm(flat_world[candidates] - prev_centre, axis=1)
            candidates = candidates[gap > prev_radius + float(radii.max()) + margin]
        if len(candidates) == 0:
            break
        centre_idx = np.unravel_index(int(rng.choice(candidates)), shape_t)
        centre_mm = world_grid[(slice(None), *centre_idx)]
        lesions_placed.append((centre_mm, float(radii.max())))
        d2 = sum(((world_grid[a] - centre_mm[a]) / radii[a]) ** 2 for a in range(3))
        lesion = (d2 < 1.0) & liver
        lesion[centre_idx] = True  # a lesion thinner than a slice still marks its centre voxel
        contrast = -rng.uniform(25.0, 40.0) if rng.random() < 0.75 else rng.uniform(25.0, 40.0)
        hu[lesion] = liver_hu + contrast + 4.0 * texture[lesion]
        label[lesion] = 2
        placed += 1

    if blur_mm > 0:
        hu = gaussian_filter(hu, sigma=tuple(blur_mm / spacing_a), mode="nearest")
    if noise_hu > 0:
        hu = hu + rng.normal(0.0, noise_hu, size=n_voxels).astype(np.float32).reshape(shape_t)
    image = np.clip(hu, _HU_MIN, _HU_MAX).astype(np.float32)
    return Phantom(image=image, label=label, affine=affine, num_tumours=placed)


# ----------------------------------------------------------------------------------------------- writing
