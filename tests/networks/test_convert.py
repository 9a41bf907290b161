"""Tests of convolutionalise (classifier -> FCN) and inflate_2d_to_3d (I3D inflation)."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from monai.networks.nets import Classifier
from torch import nn

from medfcn.networks import FCN, convolutionalise, inflate_2d_to_3d


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def vgg_like(padding: int = 1) -> nn.Sequential:
    """A torchvision-VGG-shaped classifier: features, adaptive pool, flatten, Linear-ReLU-Dropout x2, Linear."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=padding),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=padding),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool2d(4),
        nn.Flatten(),
        nn.Linear(16 * 4 * 4, 32),
        nn.ReLU(inplace=True),
        nn.Dropout(0.5),
        nn.Linear(32, 32),
        nn.BatchNorm1d(32),
        nn.ReLU(inplace=True),
        nn.Linear(32, 5),
    ).eval()


class ResNetLike(nn.Module):
    """torchvision-ResNet-shaped: conv body, global average pool, ``torch.flatten`` in forward, fc."""

    def __init__(self, spatial_dims: int = 3) -> None:
        super().__init__()
        conv = nn.Conv3d if spatial_dims == 3 else nn.Conv2d
        pool = nn.AdaptiveAvgPool3d if spatial_dims == 3 else nn.AdaptiveAvgPool2d
        self.body = conv(1, 8, 3, stride=2, padding=1)
        self.pool = pool(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(torch.relu(self.body(x)))
        return torch.log_softmax(self.fc(torch.flatten(x, 1)), dim=1)


@pytest.mark.parametrize(
    ("make", "shape", "bigger"),
    [
        (vgg_like, (2, 3, 16, 16), (1, 3, 40, 24)),
        (lambda: Classifier((1, 32, 32), 3, (4, 8, 16), (2, 2, 2)).eval(), (2, 1, 32, 32), (1, 1, 64, 48)),
        (
            lambda: Classifier((1, 16, 16, 16), 2, (4, 8), (2, 2), num_res_units=1).eval(),
            (1, 1, 16, 16, 16),
            (1, 1, 24, 16, 32),
        ),
        (lambda: ResNetLike(3).eval(), (1, 1, 16, 16, 16), (1, 1, 24, 20, 16)),
    ],
    ids=["vgg-like", "monai-classifier-2d", "monai-classifier-3d", "resnet-like-3d"],
)
def test_convolutionalised_classifier_reproduces_logits_and_slides(
    make: Any, shape: tuple[int, ...], bigger: tuple[int, ...]
) -> None:
    torch.manual_seed(0)
    model = make()
    fcn = convolutionalise(model, shape)
    assert not any(isinstance(m, nn.Linear) for m in fcn.modules())
    assert any(isinstance(m, nn.Linear) for m in model.modules())  # the original is left alone
    x = _x(*shape, seed=1)
    with torch.no_grad():
        ref = model(x)
        got = fcn(x)
        assert got.shape == (*ref.shape, *[1] * (len(shape) - 2))
        torch.testing.assert_close(got.flatten(1), ref, atol=1e-5, rtol=1e-5)
        score_map = fcn(_x(*bigger, seed=2))
    assert score_map.shape[:2] == (bigger[0], ref.shape[1])
    assert all(s > 1 for s in score_map.shape[2:][:1]) and score_map.numel() > ref.shape[1]


def test_each_score_map_position_is_the_classifier_on_that_window() -> None:
    """With unpadded convolutions the map is exactly the classifier slid with the network's stride (2)."""
    model = vgg_like(padding=0)  # 14 -> 12 -> 6 -> 4, AdaptiveAvgPool2d(4) is the identity at 14x14
    fcn = convolutionalise(model, (1, 3, 14, 14))
    big = _x(1, 3, 22, 20, seed=4)
    with torch.no_grad():
        score_map = fcn(big)
        assert score_map.shape == (1, 5, 5, 4)
        for i in range(5):
            for j in range(4):
                window = big[:, :, 2 * i : 2 * i + 14, 2 * j : 2 * j + 14]
                torch.testing.assert_close(score_map[:, :, i, j], model(window), atol=1e-5, rtol=1e-5)


def test_convolutionalise_keeps_the_training_mode() -> None:
    model = vgg_like().train()
    fcn = convolutionalise(model, (2, 3, 16, 16))
    assert fcn.training and model.training


class _TokenLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.conv(x)).mean((1, 2)).flatten(1)  # Linear over the last spatial axis


def test_unconvertible_models_raise_value_error() -> None:
    with pytest.raises(ValueError, match="not fed by a flattened feature map"):
        convolutionalise(_TokenLinear().eval(), (1, 1, 8, 8))
    with pytest.raises(ValueError, match="input_shape"):
        convolutionalise(vgg_like(), (3, 16))
    with pytest.raises(ValueError, match="must return \\(B, K\\)"):
        convolutionalise(nn.Conv2d(1, 2, 3).eval(), (1, 1, 8, 8))


# --- inflation ---------------------------------------------------------------------------------------

CFG: dict[str, Any] = {"in_channels": 1, "out_channels": 3, "channels": (4, 8, 8), "strides": 2, "blocks": 1}


def _pair(padding_mode: str, **over: Any) -> tuple[FCN, FCN]:
    torch.manual_seed(0)
    net2 = FCN(spatial_dims=2, padding_mode=padding_mode, **{**CFG, **over}).eval()
    # random norm affine parameters, so that they matter in the comparison
    with torch.no_grad():
        for n, p in net2.named_parameters():
            if ".adn.N." in n:
                p.add_(0.3 * torch.randn_like(p))
    net3 = FCN(spatial_dims=3, padding_mode=padding_mode, **{**CFG, **over}).eval()
    return net2, net3


@pytest.mark.parametrize(
    ("mode", "padding_mode", "fusion"),
    [("center", "zeros", "sum"), ("average", "replicate", "sum"), ("average", "replicate", "concat")],
)
def test_inflated_network_gives_the_2d_answer_on_every_identical_slice(
    mode: str, padding_mode: str, fusion: str
) -> None:
    net2, net3 = _pair(padding_mode, fusion=fusion)
    inflate_2d_to_3d(net2, net3, mode=mode)  # type: ignore[arg-type]
    x2 = _x(2, 1, 21, 19)
    x3 = x2[..., None].expand(2, 1, 21, 19, 7).contiguous()  # 7 identical slices along depth (last axis)
    with torch.no_grad():
        y2, y3 = net2(x2), net3(x3)
    assert y3.shape == (2, 3, 21, 19, 7)
    for d in range(7):
        torch.testing.assert_close(y3[..., d], y2, atol=1e-4, rtol=1e-4)


def test_average_inflation_with_zero_padding_is_only_approximate() -> None:
    """Documents the condition: zero depth padding makes the border slices see 2/3 of the signal."""
    net2, net3 = _pair("zeros")
    inflate_2d_to_3d(net2.state_dict(), net3, mode="average")  # a state_dict works as well as a module
    x2 = _x(1, 1, 21, 19)
    with torch.no_grad():
        y2, y3 = net2(x2), net3(x2[..., None].expand(1, 1, 21, 19, 7).contiguous())
    assert (y3 - y2[..., None]).abs().max() > 1e-2


def test_inflated_kernels_have_the_documented_layout() -> None:
    net2, net3 = _pair("zeros")
    inflate_2d_to_3d(net2, net3, mode="average")
    w2 = net2.encoder.stages[0][0].conv.unit0.conv.weight
    w3 = net3.encoder.stages[0][0].conv.unit0.conv.weight
    torch.testing.assert_close(w3, w2[..., None].expand_as(w3) / 3)
    t2 = net2.decoder.final.conv.weight  # stride 2, kernel 3, padding 1: taps 1 and 2 along depth
    t3 = net3.decoder.final.conv.weight
    assert t3.shape[-1] == 3
    torch.testing.assert_close(t3[..., 1], t2)
    torch.testing.assert_close(t3[..., 2], t2)
    assert t3[..., 0].abs().sum() == 0
    inflate_2d_to_3d(net2, net3, mode="center")
    w3 = net3.encoder.stages[0][0].conv.unit0.conv.weight
    torch.testing.assert_close(w3[..., 1], w2)
    assert w3[..., 0].abs().sum() == 0


def test_inflation_rejects_mismatched_networks_and_modes() -> None:
    net2, net3 = _pair("zeros")
    other3 = FCN(spatial_dims=3, **{**CFG, "channels": (4, 8)})
    with pytest.raises(ValueError, match="same configuration"):
        inflate_2d_to_3d(net2, other3)
    wider3 = FCN(spatial_dims=3, **{**CFG, "channels": (4, 8, 12)})
    with pytest.raises(ValueError, match="cannot inflate"):
        inflate_2d_to_3d(net2, wider3)
    with pytest.raises(ValueError, match="mode must be"):
        inflate_2d_to_3d(net2, net3, mode="repeat")  # type: ignore[arg-type]
