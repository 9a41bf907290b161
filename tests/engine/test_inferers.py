"""MirroredSlidingWindowInferer: the sliding window averaged over mirror images, as nnU-Net's test-time mirroring."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SlidingWindowInferer

from medfcn.bundle import Bundle, load_bundle
from medfcn.engine.inferers import MirroredSlidingWindowInferer
from medfcn.engine.inferers import tta_axes as _tta_axes
from medfcn.errors import InputError


class _Lopsided(torch.nn.Module):
    """Not mirror-symmetric: output = input * a ramp along every axis, so mirroring changes the result."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ramp = sum(
            torch.arange(n, dtype=x.dtype).reshape([-1 if i == d else 1 for i in range(x.ndim - 2)])
            for d, n in enumerate(x.shape[2:])
        )
        return torch.cat([x * ramp, -x], dim=1)


def _kw() -> dict[str, object]:
    return {"roi_size": (8, 8, 8), "sw_batch_size": 2, "overlap": 0.25, "mode": "gaussian"}


def test_no_mirror_axes_is_the_plain_sliding_window() -> None:
    x = torch.randn(1, 1, 13, 11, 9)
    net = _Lopsided()
    expected = SlidingWindowInferer(**_kw())(x, net)
    torch.testing.assert_close(MirroredSlidingWindowInferer(**_kw())(x, net), expected)


@pytest.mark.parametrize("axes", [(0,), (0, 2)])
def test_mirrored_passes_are_flipped_back_and_averaged(axes: tuple[int, ...]) -> None:
    x = torch.randn(1, 1, 13, 11, 9)
    net = _Lopsided()
    plain = SlidingWindowInferer(**_kw())
    expected = plain(x, net)
    for a in axes:
        expected = expected + torch.flip(plain(torch.flip(x, [2 + a]), net), [2 + a])
    expected = expected / (1 + len(axes))
    got = MirroredSlidingWindowInferer(**_kw(), mirror_axes=axes)(x, net)
    torch.testing.assert_close(got, expected)
    assert not torch.allclose(got, plain(x, net))  # the lopsided network does see a difference


def test_mirror_axes_are_checked() -> None:
    with pytest.raises(ValueError, match="distinct"):
        MirroredSlidingWindowInferer(**_kw(), mirror_axes=[0, 0])
    with pytest.raises(ValueError, match="2D input"):
        MirroredSlidingWindowInferer(roi_size=(8, 8), mirror_axes=[2])(torch.zeros(1, 1, 8, 8), _Lopsided())


def test_segmenter_tta_never_mirrors_an_axis_the_bundle_inferer_mirrors() -> None:
    assert _tta_axes(False, 3, (0,)) is None
    assert _tta_axes(True, 3, ()) == (0, 1, 2)
    assert _tta_axes(True, 3, (0,)) == (1, 2)
    assert _tta_axes([0], 3, (0,)) == ()
    with pytest.raises(InputError, match=r"0\.\.2"):
        _tta_axes([3], 3, ())


def test_segmenter_tta_mirrors_only_axes_the_training_flipped(caplog: pytest.LogCaptureFixture) -> None:
    # All-axis mirroring of the hippocampus model scored Dice 0.81/0.74 against 0.889/0.870 for left-right
    # only (5-fold CV): anterior and posterior swap places in an anterior-posterior mirror image.
    assert _tta_axes(True, 3, (), trained=(0,)) == (0,)
    assert _tta_axes(True, 3, (), trained=None) == (0, 1, 2)  # no train.json: the user asked, all axes
    assert _tta_axes((1,), 3, (), trained=(0,)) == (1,)  # explicit axes are the user's choice
    with caplog.at_level("WARNING"):
        assert _tta_axes(True, 3, (), trained=()) == ()
    assert "never learned" in caplog.text


def test_trained_flips_are_read_from_the_shipped_bundles_train_configs() -> None:
    from pathlib import Path

    bundles = Path(__file__).resolve().parents[2] / "bundles"
    assert load_bundle(bundles / "hippocampus").trained_flips(3) == (0,)
    assert load_bundle(bundles / "liver").trained_flips(3) == ()  # the liver recipe never flips
    assert Bundle(root=Path("/nonexistent"), metadata={}).trained_flips(3) is None
