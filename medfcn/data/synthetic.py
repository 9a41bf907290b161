"""Synthetic CT phantoms of the abdomen, written as an MSD-layout dataset or as a DICOM series.

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
    >>> from medfcn.data.synthetic import make_phantom
    >>> ph = make_phantom((64, 64, 48), seed=3)
    >>> ph.image.shape, ph.image.dtype, sorted(np.unique(ph.label).tolist())
    ((64, 64, 48), dtype('float32'), [0, 1, 2])
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from medfcn._io import atomic_dir, atomic_write, atomic_write_json
from medfcn.errors import DataError

__all__ = [
    "CT_IMAGE_STORAGE",
    "LABELS",
    "MR_IMAGE_STORAGE",
    "Phantom",
    "make_phantom",
    "write_dicom_series",
    "write_msd_dataset",
]

LABELS: dict[str, str] = {"0": "background", "1": "liver", "2": "tumour"}
"""Label values of the phantoms (MSD ``dataset.json`` spelling)."""

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
"""SOP Class UID of CT Image Storage."""

MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
"""SOP Class UID of MR Image Storage."""

_HU_MIN, _HU_MAX = -1024.0, 3071.0  # the 12-bit CT range every scanner writes
_SYNTH_KEY = "medfcn_synthetic"  # extra key in dataset.json: marks a dataset this module generated

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


def _save_nifti(array: np.ndarray, affine: np.ndarray, path: Path) -> None:
    import nibabel as nib

    img = nib.Nifti1Image(array, affine)
    img.header.set_qform(affine, code=1)  # scanner coordinates, as written by DICOM converters
    img.header.set_sform(affine, code=1)
    img.header.set_xyzt_units("mm", "sec")
    atomic_write(path, lambda tmp: nib.save(img, str(tmp)))


def _write_dicom_dir(ph: Phantom, dicom_dir: Path, *, seed: int) -> None:
    """Write a series into a temp folder beside ``dicom_dir``, then rename it into place (all or nothing).

    A series from earlier parameters (written here by this function) is replaced.
    """
    with atomic_dir(dicom_dir, replace=True) as tmp:
        write_dicom_series(ph.image, ph.affine, tmp, seed=seed, series_description="medfcn synthetic CT")


def _remove_stale_cases(root: Path, listed: set[str], dicom: bool) -> None:
    """Delete case files an earlier run (with more cases) wrote here and this run no longer lists.

    Only called on folders this module wrote (see the checks in :func:`write_msd_dataset`), and only
    touches ``liver_*`` names, so nothing else is ever removed.
    """
    import shutil

    for folder in ("imagesTr", "labelsTr", "imagesTs"):
        for path in (root / folder).glob("liver_*.nii.gz"):
            if f"./{folder}/{path.name}" not in listed:
                path.unlink()
    test_cases = {Path(p).name.removesuffix(".nii.gz") for p in listed if p.startswith("./imagesTs/")}
    for path in (root / "dicom").glob("liver_*"):
        if path.is_dir() and not (dicom and path.name in test_cases):
            shutil.rmtree(path)


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    atomic_write_json(path, payload)


def write_msd_dataset(
    root: str | os.PathLike[str],
    *,
    num_train: int = 8,
    num_test: int = 2,
    shape: Sequence[int] = (64, 64, 48),
    seed: int = 0,
    orientation: Orientation = "random",
    max_oblique_deg: float = 0.0,
    image_dtype: Literal["int16", "float32"] = "int16",
    dicom: bool = False,
    progress: Callable[[str], None] | None = None,
) -> Path:
    """Write a Medical Segmentation Decathlon style liver dataset of synthetic phantoms.

    Layout under ``root``: ``imagesTr/liver_000.nii.gz``..., ``labelsTr/`` (same names), ``imagesTs/``
    (numbered after the training cases), ``dataset.json`` (MSD keys; labels 0 background, 1 liver,
    2 tumour), and with ``dicom=True`` ``dicom/<case>/`` holding each test case as a CT DICOM series.

    Every file is written atomically and ``dataset.json`` last, so an interrupted run never leaves a
    dataset that looks complete. Running again with the same arguments reuses the finished files
    (phantoms are deterministic given the seed); different arguments regenerate them, and cases a
    previous run wrote beyond the new counts are removed. A folder that is not empty and was not
    written by this function is never written into.

    Args:
        root: dataset folder (created).
        num_train: labelled training cases (>= 1).
        num_test: unlabelled test cases (>= 0).
        shape: voxels per case ``(X, Y, Z)``; Z is the slice axis.
        seed: case ``i`` is ``make_phantom(seed=seed * 100_003 + i)``.
        orientation: see :func:`make_phantom`.
        max_oblique_deg: see :func:`make_phantom`.
        image_dtype: ``"int16"`` (rounded HU, like MSD) or ``"float32"``.
        dicom: also write each test case as a DICOM series under ``dicom/<case>/``.
        progress: called with each case name once it is written (for progress bars).

    Returns:
        ``root`` as a :class:`~pathlib.Path`.

    Raises:
        DataError: ``root`` already holds a ``dataset.json`` or other files that this function did not
            write (it never overwrites a real dataset), or the counts or shape are invalid.
    """
    root = Path(root)
    if num_train < 1 or num_test < 0:
        raise DataError(
            f"need num_train >= 1 and num_test >= 0, got num_train={num_train}, num_test={num_test}"
        )
    shape_t = [int(s) for s in shape]
    if len(shape_t) != 3 or min(shape_t) < 8:
        raise DataError(f"phantom shape must be three sizes >= 8, got {tuple(shape)}")
    dataset_json = root / "dataset.json"
    params = {
        "seed": int(seed),
        "shape": shape_t,
        "orientation": orientation,
        "max_oblique_deg": float(max_oblique_deg),
        "image_dtype": image_dtype,
        "generator": "medfcn.data.synthetic.make_phantom v1",
    }
    previous: dict[str, Any] | None = None
    if dataset_json.exists():
        try:
            previous = json.loads(dataset_json.read_text(encoding="utf-8"))
        except (OSError, ValueError) as err:
            raise DataError(
                f"{dataset_json} exists but is not valid JSON ({err}); choose another output folder"
            ) from err
        if not isinstance(previous, dict) or _SYNTH_KEY not in previous:
            raise DataError(
                f"{dataset_json} belongs to a dataset medfcn did not generate; refusing to overwrite it, "
                "choose another output folder"
            )
    # A marker written before any case records the parameters, so a rerun after an interruption knows
    # whether the files already there are the ones it would write.
    marker = root / ".medfcn-synthetic.json"
    if previous is None and not marker.exists() and root.is_dir() and any(root.iterdir()):
        raise DataError(
            f"{root} is not empty and holds no dataset written by medfcn; refusing to write into it, "
            "choose a new or empty output folder"
        )
    reuse = False
    if marker.exists():
        try:
            reuse = json.loads(marker.read_text(encoding="utf-8")) == params
        except (OSError, ValueError):
            reuse = False
    root.mkdir(parents=True, exist_ok=True)
    if not reuse:
        _write_json(marker, params)

    training: list[dict[str, str]] = []
    test: list[str] = []
    for i in range(num_train + num_test):
        name = f"liver_{i:03d}.nii.gz"
        is_train = i < num_train
        image_path = root / ("imagesTr" if is_train else "imagesTs") / name
        label_path = root / "labelsTr" / name
        dicom_dir = root / "dicom" / name.removesuffix(".nii.gz")
        want_dicom = dicom and not is_train
        done = reuse and image_path.exists() and (label_path.exists() or not is_train)
        done = done and (not want_dicom or dicom_dir.is_dir())
        if not done:
            ph = make_phantom(
                shape_t, seed=seed * 100_003 + i, orientation=orientation, max_oblique_deg=max_oblique_deg
            )
            image = np.rint(ph.image).astype(np.int16) if image_dtype == "int16" else ph.image
            _save_nifti(image, ph.affine, image_path)
            if is_train:
                _save_nifti(ph.label, ph.affine, label_path)
            if want_dicom:
                _write_dicom_dir(ph, dicom_dir, seed=seed * 100_003 + i)
        if is_train:
            training.append({"image": f"./imagesTr/{name}", "label": f"./labelsTr/{name}"})
        else:
            test.append(f"./imagesTs/{name}")
        if progress is not None:
            progress(name.removesuffix(".nii.gz"))

    _remove_stale_cases(
        root, {t["image"] for t in training} | {t["label"] for t in training} | set(test), dicom
    )
    _write_json(
        dataset_json,
        {
            "name": "SyntheticLiver",
            "description": "Synthetic CT phantoms of the abdomen with liver and tumour labels (medfcn data synth)",
            "reference": "generated by medfcn; no patient data",
            "licence": "CC0",
            "release": "1.0",
            "tensorImageSize": "3D",
            "modality": {"0": "CT"},
            "labels": dict(LABELS),
            "numTraining": num_train,
            "numTest": num_test,
            "training": training,
            "test": test,
            _SYNTH_KEY: params,
        },
    )
    return root


# ----------------------------------------------------------------------------------------------- DICOM


def _ds(value: float) -> Any:
    """A decimal string that fits DICOM's 16 characters with as much precision as possible."""
    from pydicom.valuerep import DSfloat

    shortest = repr(float(value))  # "2.54" rather than "2.54000000000000" when it fits exactly
    if len(shortest) <= 16 and "e" not in shortest:
        return DSfloat(shortest)
    return DSfloat(float(value), auto_format=True)


def _save_dicom(ds: Any, path: Path) -> None:
    # The encoding (explicit VR little endian, deflated or encapsulated) follows file_meta.TransferSyntaxUID.
    ds.save_as(path, enforce_file_format=True)


def write_dicom_series(
    image_hu: np.ndarray,
    affine: np.ndarray,
    out_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    series_description: str = "medfcn synthetic CT",
    modality: Literal["CT", "MR"] = "CT",
    series_number: int = 1,
    rescale_slope: float = 1.0,
    rescale_intercept: float = -1024.0,
    signed: bool = False,
    reverse_instance_numbers: bool = False,
    transfer_syntax: str = "1.2.840.10008.1.2.1",
) -> list[Path]:
    """Write a volume as a single-frame DICOM series, one file per slice.

    Slice ``k`` of the array (axis 2) becomes one file. Geometry follows the affine: the RAS affine is
    converted to DICOM's LPS patient coordinates, array axis 0 runs along a row (DICOM column index),
    axis 1 down the columns (row index). ``ImagePositionPatient`` is the centre of voxel ``(0, 0, k)``.
    ``modality="CT"`` writes CT Image Storage with stored values ``round((HU - intercept) / slope)``;
    ``"MR"`` writes MR Image Storage with the values rounded and no rescale tags (as MR scanners do).
    Pixels are uint16 (``signed=False``) or int16. UIDs are derived from ``seed`` (deterministic);
    the patient module is synthetic (``SYNTHETIC^PHANTOM``) and holds no real data.

    Args:
        image_hu: ``(X, Y, Z)`` Hounsfield units (CT) or signal intensity (MR).
        affine: ``(4, 4)`` voxel-to-world matrix, RAS mm.
        out_dir: folder for the files (created); files are ``IM0001.dcm``...
        seed: source of every UID.
        series_description: SeriesDescription.
        modality: ``"CT"`` or ``"MR"`` (sets Modality and the SOP class).
        series_number: SeriesNumber.
        rescale_slope: RescaleSlope (CT only).
        rescale_intercept: RescaleIntercept (CT only).
        signed: store int16 (PixelRepresentation 1) instead of uint16.
        reverse_instance_numbers: number instances against the slice order (some scanners do), to test
            readers that must sort by position.
        transfer_syntax: Transfer Syntax UID. Explicit VR little endian by default; deflated and the
            lossless compressed syntaxes pydicom can encode (RLE Lossless; JPEG-LS and JPEG 2000
            lossless with pyjpegls / pylibjpeg-openjpeg installed; JPEG 2000 needs slices of at least
            32x32 pixels) are written compressed.

    Returns:
        The written files, in slice order (array axis 2).

    Raises:
        ValueError: ``image_hu`` is not 3D, ``affine`` is not 4x4, an unknown modality, or a transfer
            syntax pydicom cannot encode.
    """
    from pydicom.dataset import Dataset as DicomDataset
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, generate_uid

    image_hu = np.asarray(image_hu)
    affine = np.asarray(affine, dtype=float)
    if image_hu.ndim != 3:
        raise ValueError(f"image_hu must be 3D (X, Y, Z), got shape {image_hu.shape}")
    if affine.shape != (4, 4):
        raise ValueError(f"affine must be 4x4, got {affine.shape}")
    if modality not in ("CT", "MR"):
        raise ValueError(f"modality must be 'CT' or 'MR', got {modality!r}")
    syntax = UID(transfer_syntax)
    if not syntax.is_transfer_syntax:
        raise ValueError(f"{transfer_syntax} is not a DICOM transfer syntax UID")
    is_ct = modality == "CT"
    sop_class = UID(CT_IMAGE_STORAGE if is_ct else MR_IMAGE_STORAGE)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    row_dir = lps[:3, 0] / spacing[0]  # direction of increasing column index = array axis 0
    col_dir = lps[:3, 1] / spacing[1]  # direction of increasing row index = array axis 1
    normal = np.cross(row_dir, col_dir)

    def uid(*parts: object) -> UID:
        return generate_uid(entropy_srcs=["medfcn-synthetic", str(seed), *map(str, parts)])

    study_uid, series_uid, frame_uid = uid("study"), uid("series", series_number), uid("frame")
    dtype = np.int16 if signed else np.uint16
    info = np.iinfo(dtype)
    values = image_hu.astype(np.float64)
    if is_ct:
        values = (values - rescale_intercept) / rescale_slope
    stored = np.clip(np.rint(values), info.min, info.max).astype(dtype)
    n_slices = image_hu.shape[2]

    paths: list[Path] = []
    for k in range(n_slices):
        position = lps[:3, :3] @ np.array([0.0, 0.0, float(k)]) + lps[:3, 3]
        instance = n_slices - k if reverse_instance_numbers else k + 1
        sop_uid = uid("instance", series_number, k)

        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = sop_uid
        meta.TransferSyntaxUID = syntax if not syntax.is_compressed else UID("1.2.840.10008.1.2.1")
        meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
        ds = DicomDataset()
        ds.file_meta = meta
        # SOP common
        ds.SOPClassUID = sop_class
        ds.SOPInstanceUID = sop_uid
        ds.SpecificCharacterSet = "ISO_IR 100"
        # Patient: synthetic only; no real names, IDs or birth dates.
        ds.PatientName = "SYNTHETIC^PHANTOM"
        ds.PatientID = f"SYNTH{seed % 10**8:08d}"
        ds.PatientBirthDate = ""
        ds.PatientSex = "O"
        # Study / series / frame of reference / equipment
        ds.StudyInstanceUID = study_uid
        ds.StudyDate = "20000101"
        ds.StudyTime = "000000"
        ds.StudyID = "1"
        ds.AccessionNumber = ""
        ds.ReferringPhysicianName = ""
        ds.StudyDescription = "medfcn synthetic abdomen"
        ds.SeriesInstanceUID = series_uid
        ds.SeriesNumber = series_number
        ds.SeriesDescription = series_description
        ds.Modality = modality
        ds.BodyPartExamined = "ABDOMEN"
        ds.FrameOfReferenceUID = frame_uid
        ds.PositionReferenceIndicator = ""
        ds.Manufacturer = "medfcn"
        ds.ManufacturerModelName = "synthetic phantom"
        # Image
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL" if is_ct else "OTHER"]
        ds.InstanceNumber = instance
        ds.AcquisitionNumber = 1
        if is_ct:
            ds.KVP = _ds(120)
        else:  # the MR Image module's type-1 attributes
            ds.ScanningSequence = "GR"
            ds.SequenceVariant = "NONE"
            ds.ScanOptions = ""
            ds.MRAcquisitionType = "3D"
            ds.RepetitionTime = _ds(5.0)
            ds.EchoTime = _ds(2.0)
            ds.MagneticFieldStrength = _ds(1.5)
        ds.ImagePositionPatient = [_ds(v) for v in position]
        ds.ImageOrientationPatient = [_ds(v) for v in (*row_dir, *col_dir)]
        ds.SliceLocation = _ds(float(position @ normal))
        ds.SliceThickness = _ds(spacing[2])
        ds.SpacingBetweenSlices = _ds(spacing[2])
        ds.PixelSpacing = [_ds(spacing[1]), _ds(spacing[0])]  # (between rows, between columns)
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows = int(image_hu.shape[1])
        ds.Columns = int(image_hu.shape[0])
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1 if signed else 0
        if is_ct:
            ds.RescaleIntercept = _ds(rescale_intercept)
            ds.RescaleSlope = _ds(rescale_slope)
            ds.RescaleType = "HU"
            ds.WindowCenter = _ds(40)
            ds.WindowWidth = _ds(400)
        pixels = np.ascontiguousarray(stored[:, :, k].T)  # (rows, columns) = array axes (1, 0)
        ds.PixelData = pixels.tobytes()
        if syntax.is_compressed:
            try:
                ds.compress(syntax, pixels, generate_instance_uid=False)
            except (RuntimeError, ValueError, NotImplementedError) as err:
                raise ValueError(f"pydicom cannot encode transfer syntax {syntax.name} ({err})") from err

        path = out / f"IM{k + 1:04d}.dcm"
        atomic_write(path, functools.partial(_save_dicom, ds))
        paths.append(path)
    return paths
