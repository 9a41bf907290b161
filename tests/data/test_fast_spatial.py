"""FastSpacingd resamples (and Invertd inverts) what MONAI's Spacingd does, metadata included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, CropForegroundd, Invertd, Orientationd, Spacingd

from medfcn.data.fast_spatial import (
    FastSpacingd,
    FastSpatialResample,
    axis_aligned_map,
    resample_axis_aligned,
)


def _oblique_affine() -> torch.Tensor:
    th = 0.3
    rot = np.array([[np.cos(th), -np.sin(th), 0.0], [np.sin(th), np.cos(th), 0.0], [0.0, 0.0, 1.0]])
    a = np.eye(4)
    a[:3, :3] = rot @ np.diag([1.5, -0.8, 3.0])  # anisotropic, a flipped axis, oblique in-plane
    a[:3, 3] = [10.0, -4.0, 7.0]
    return torch.as_tensor(a)


def _image(seed: int = 0) -> MetaTensor:
    x = torch.rand((1, 37, 41, 29), generator=torch.Generator().manual_seed(seed))
    return MetaTensor(x, affine=_oblique_affine(), meta={"filename_or_obj": "case.nii.gz"})


def _chain(spacing: type, pixdim: tuple[float, ...], padding_mode: str) -> Compose:
    return Compose(
        [
            Orientationd("image", axcodes="RAS"),
            spacing("image", pixdim=pixdim, mode="bilinear", padding_mode=padding_mode, dtype=torch.float32),
            CropForegroundd(
                "image", source_key="image", select_fn=lambda v: v > 0.3, margin=2, allow_smaller=True
            ),
        ]
    )


@pytest.mark.parametrize("padding_mode", ["border", "zeros"])
@pytest.mark.parametrize("pixdim", [(1.0, 1.1, 1.7), (2.0, 0.5, 3.0)])
def test_forward_and_inverse_equal_monai(pixdim: tuple[float, ...], padding_mode: str) -> None:
    results = []
    for spacing in (Spacingd, FastSpacingd):
        pre = _chain(spacing, pixdim, padding_mode)
        d = pre({"image": _image()})
        probs = torch.rand((3, *d["image"].shape[1:]), generator=torch.Generator().manual_seed(1))
        pred = MetaTensor(probs / probs.sum(0, keepdim=True), affine=d["image"].affine)
        inv = Invertd("pred", transform=pre, orig_keys="image", nearest_interp=False)(
            {"image": d["image"], "pred": pred}
        )
        results.append((d["image"], inv["pred"]))
    (ref, ref_inv), (out, out_inv) = results
    assert out.shape == ref.shape and out.dtype == ref.dtype == torch.float32
    assert torch.allclose(out.as_tensor(), ref.as_tensor(), atol=1e-4)
    assert torch.allclose(out.affine, ref.affine)
    names = [op["class"] for op in ref.applied_operations]
    assert [op["class"] for op in out.applied_operations] == [
        n.replace("SpatialResample", "FastSpatialResample") for n in names
    ]
    assert out_inv.shape == ref_inv.shape == (3, 37, 41, 29)
    assert torch.allclose(out_inv.affine, _oblique_affine()) and torch.allclose(
        ref_inv.affine, _oblique_affine()
    )
    assert torch.allclose(out_inv.as_tensor(), ref_inv.as_tensor(), atol=1e-4)
    assert torch.equal(out_inv.as_tensor().argmax(0), ref_inv.as_tensor().argmax(0))
    assert out_inv.applied_operations == []


def test_inverse_takes_the_fast_path() -> None:
    """The forward record is popped by FastSpatialResample.inverse, not by MONAI's grid sample."""
    fast = FastSpacingd("image", pixdim=(1.0, 1.0, 1.0), dtype=torch.float32)
    assert isinstance(fast.spacing_transform.sp_resample, FastSpatialResample)
    assert isinstance(fast, Spacingd)  # every isinstance check on MONAI's class still holds
    d = fast({"image": _image()})
    assert d["image"].applied_operations[-1]["class"] == "FastSpatialResample"
    back = fast.inverse(d)["image"]
    assert back.shape == (1, 37, 41, 29) and back.applied_operations == []


def test_non_diagonal_map_and_nearest_fall_back_to_monai() -> None:
    img = _image()
    ref = Spacingd("image", pixdim=(1.0, 1.0, 1.0), mode="nearest", dtype=torch.float32)({"image": img})[
        "image"
    ]
    out = FastSpacingd("image", pixdim=(1.0, 1.0, 1.0), mode="nearest", dtype=torch.float32)({"image": img})[
        "image"
    ]
    assert torch.equal(out.as_tensor(), ref.as_tensor())  # nearest ties follow MONAI's own float32 grid
    rot = np.eye(4)
    rot[:2, :2] = [[0.0, -1.0], [1.0, 0.0]]
    assert axis_aligned_map(rot) is None
    assert axis_aligned_map(np.diag([2.0, -0.5, 1.0, 1.0])) is not None


def test_separable_resample_matches_grid_sample_with_offsets() -> None:
    """Shifted and scaled axes, both paddings, against torch's grid_sample on the same voxel map."""
    x = torch.rand((2, 9, 11, 7), generator=torch.Generator().manual_seed(3))
    scales, offsets, size = [0.7, 1.3, -1.0], [-0.6, 0.25, 6.4], [15, 9, 8]
    for padding in ("border", "zeros"):
        coords = [
            s * torch.arange(n, dtype=torch.float64) + o
            for s, o, n in zip(scales, offsets, size, strict=True)
        ]
        norm = [(2 * c + 1) / n - 1 for c, n in zip(coords, x.shape[1:], strict=True)]  # align_corners=False
        gx, gy, gz = torch.meshgrid(*norm, indexing="ij")
        grid = torch.stack([gz, gy, gx], -1)[None].float()  # grid_sample wants (z, y, x) last
        ref = torch.nn.functional.grid_sample(
            x[None], grid, mode="bilinear", padding_mode=padding, align_corners=False
        )[0]
        out = resample_axis_aligned(x, scales, offsets, size, mode="bilinear", padding_mode=padding)
        assert out.shape == ref.shape
        assert torch.allclose(out, ref, atol=1e-5), padding


def _gathered(x: torch.Tensor, dim: int, taps: list[torch.Tensor], weights: list[torch.Tensor | None]) -> torch.Tensor:
    """The reference: sum over taps of ``x`` gathered along ``dim`` times the tap's weight, in float64."""
    shape = [1] * x.ndim
    shape[dim] = -1
    total = torch.zeros(())
    for idx, wt in zip(taps, weights, strict=True):
        g = torch.index_select(x.double(), dim, idx)
        total = total + (g if wt is None else g * wt.double().view(shape))
    return total


@pytest.mark.parametrize("mode, padding", [("bilinear", "zeros"), ("bilinear", "border"), ("nearest", "zeros")])
@pytest.mark.parametrize("dim", [0, 1, 2])
def test_plane_and_band_passes_equal_the_gathered_sum(mode: str, padding: str, dim: int) -> None:
    """The per-plane pass (axes 0, 1) and the banded matrix product (last axis) give the gathered weighted sum:
    to float32 rounding for linear taps, exactly for nearest taps; the last axis of non-finite data falls back
    to gathering (a zero weight times inf would spread NaN)."""
    from medfcn.data.fast_spatial import _axis_taps, _resample_axis

    x = torch.from_numpy(np.random.default_rng(dim).normal(0, 50, (23, 19, 37)).astype(np.float32))
    for n_out, scale, offset in ((41, 0.53, -1.7), (15, 1.6, 0.4), (70, 0.5, 3.2)):  # up, down, past the edge
        taps, weights = _axis_taps(x.shape[dim], n_out, scale, offset, mode, padding)
        got = _resample_axis(x, dim, taps, weights)
        ref = _gathered(x, dim, taps, weights)
        assert got.shape == ref.shape and got.dtype == torch.float32
        if mode == "nearest":
            assert torch.equal(got, ref.float())
        else:
            assert torch.allclose(got.double(), ref, atol=1e-4, rtol=1e-6)
        into = torch.full(tuple(ref.shape), 7.0)
        assert _resample_axis(x, dim, taps, weights, out=into) is into and torch.equal(into, got)
    if dim == 2:
        y = x.clone()
        y[3, 4, 5] = float("inf")
        taps, weights = _axis_taps(37, 30, 1.2, 0.0, mode, padding)
        got = _resample_axis(y, 2, taps, weights)
        assert torch.isnan(got).sum() <= 2 and torch.isfinite(got[:3]).all() and torch.isfinite(got[4:]).all()
