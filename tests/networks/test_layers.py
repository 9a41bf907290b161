"""Tests of medfcn.networks.layers: the upsampling kernel, the crop to the skip's size, the sub-pixel
transposed convolution and the fast instance norm."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from medfcn.networks.layers import InstanceNorm, ScoreUpsample, match_size, upsampling_weight


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_upsampling_weight_is_diagonal_and_separable() -> None:
    w = upsampling_weight(3, 3, (4, 3))
    assert w.shape == (3, 3, 4, 3)
    assert w[0, 1].abs().sum() == 0 and w[2, 0].abs().sum() == 0
    torch.testing.assert_close(
        w[1, 1], torch.outer(torch.tensor([0.25, 0.75, 0.75, 0.25]), torch.tensor([0.5, 1, 0.5]))
    )


def test_match_size_crops_and_pads() -> None:
    x = _x(1, 2, 7, 4)
    y = match_size(x, [5, 6])
    assert y.shape == (1, 2, 5, 6)
    torch.testing.assert_close(y[..., :4], x[:, :, :5])
    assert y[..., 4:].abs().sum() == 0


@pytest.mark.parametrize(
    ("spatial_dims", "factor"),
    [
        (3, (2, 2, 2)),
        (3, (2, 2, 1)),
        (3, (3, 1, 2)),
        (3, (1, 1, 1)),
        (2, (2, 2)),
        (2, (4, 1)),
        (2, (3, 3)),
        (1, (2,)),
        (1, (3,)),
    ],
)
def test_subpixel_forward_equals_the_transposed_convolution(
    spatial_dims: int, factor: tuple[int, ...]
) -> None:
    """ScoreUpsample computes its transposed convolution as a sub-pixel convolution: same values, same
    gradients (input and weight), for every factor, including 1 and anisotropic ones."""
    up = ScoreUpsample(spatial_dims, 3, 4, factor, init="default").double()
    x = _x(2, 3, *[7, 6, 5][:spatial_dims]).double().requires_grad_(True)
    size = [
        s * f - 1 for s, f in zip(x.shape[2:], factor, strict=True)
    ]  # the crop of match_size is exercised too
    ref = match_size(up.conv(x), size)
    out = up(x, size)
    assert out.shape == ref.shape == (2, 4, *size)
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-12)
    g_ref = torch.autograd.grad((ref * ref.detach()).sum(), [x, up.conv.weight])
    g_out = torch.autograd.grad((out * ref.detach()).sum(), [x, up.conv.weight])
    for a, b in zip(g_out, g_ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


def test_subpixel_upsample_scripts_keeps_the_state_dict_and_agrees_under_bf16_autocast() -> None:
    up = ScoreUpsample(3, 3, 3, (2, 2, 2), init="bilinear").eval()
    assert list(up.state_dict()) == ["conv.weight"]  # checkpoints of the transposed conv load unchanged
    x = _x(1, 3, 5, 6, 7)
    scripted = torch.jit.script(up)
    with torch.no_grad():
        ref = match_size(up.conv(x), [10, 12, 13])
        torch.testing.assert_close(scripted(x, [10, 12, 13]), ref, atol=1e-6, rtol=1e-6)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = up(x, [10, 12, 13])
    assert low.dtype == torch.bfloat16
    torch.testing.assert_close(low.float(), ref, atol=0.05, rtol=0.02)


@pytest.mark.parametrize("affine", [True, False])
@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_instance_norm_equals_torch_instance_norm_in_values_and_gradients(
    spatial_dims: int, affine: bool
) -> None:


    ref = (nn.InstanceNorm2d if spatial_dims == 2 else nn.InstanceNorm3d)(5, eps=1e-4, affine=affine).double()
    if affine:
        with torch.no_grad():
            ref.weight.normal_()
            ref.bias.normal_()
    fast = InstanceNorm.from_instance_norm(ref).double()
    assert list(fast.state_dict()) == list(ref.state_dict())
    x = (_x(3, 5, *[9, 7, 6][:spatial_dims]) * 4 + 3).double().requires_grad_(True)
    for mode in (True, False):
        fast.train(mode)
        ref.train(mode)
        a, b = fast(x), ref(x)
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)
        params = [x, *([ref.weight, ref.bias] if affine else [])]
        fparams = [x, *([fast.weight, fast.bias] if affine else [])]
        for ga, gb in zip(
            torch.autograd.grad((a * b.detach()).sum(), fparams),
            torch.autograd.grad((b * b.detach()).sum(), params),
            strict=True,
        ):
            torch.testing.assert_close(ga, gb, atol=1e-9, rtol=1e-9)
    for mode in (True, False):  # torch refuses one spatial element in both modes, any batch size
        fast.train(mode)
        ref.train(mode)
        for batch in (1, 2):
            one = torch.zeros(batch, 5, *[1] * spatial_dims, dtype=torch.float64)
            with pytest.raises(ValueError, match="more than 1 spatial element"):
                ref(one)
            with pytest.raises(ValueError, match="more than 1 spatial element"):
                fast(one)


