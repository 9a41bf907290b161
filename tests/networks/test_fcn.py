"""Tests of medfcn.networks.FCN: shapes at any size, gradients, interpolation init, export, errors."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np
import pytest
import torch
from monai.losses import DeepSupervisionLoss, DiceCELoss
from torch import nn
from torch.nn import functional as F

from medfcn.networks import FCN, FCNDecoder, FCNEncoder, upsampling_weight
from medfcn.networks.layers import ScoreUpsample, aligned_interpolate

SMALL = {"channels": (4, 8, 8, 16, 16)}  # 5 stages, total stride 32: the default layout with few channels


def _x(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


class BaseFCNTest:
    """Checks every configuration must pass; subclasses set ``spatial_dims``, ``kwargs`` and ``sizes``.

    Sizes are odd / not divisible by the total stride 32 on purpose (at least one axis >= 33 so that the
    deepest stage keeps more than one voxel for instance norm).
    """

    spatial_dims: int = 2
    kwargs: ClassVar[dict[str, Any]] = {}
    sizes: ClassVar[list[tuple[int, ...]]] = []

    def make(self, **over: Any) -> FCN:
        torch.manual_seed(0)
        return FCN(
            spatial_dims=self.spatial_dims, in_channels=1, out_channels=3, **{**SMALL, **self.kwargs, **over}
        )

    @pytest.mark.parametrize("fused", [0, 1, 2, 3, 4])
    def test_output_shape_equals_input_shape(self, fused: int) -> None:
        net = self.make(fused_stages=fused).eval()
        with torch.no_grad():
            for i, size in enumerate(self.sizes):
                batch = 1 if i % 2 == 0 else 2
                y = net(_x(batch, 1, *size))
                assert y.shape == (batch, 3, *size)
                assert torch.isfinite(y).all()

    def test_train_mode_shape_and_gradients_reach_every_parameter(self) -> None:
        net = self.make().train()
        y = net(_x(2, 1, *self.sizes[0]))
        assert y.shape == (2, 3, *self.sizes[0])
        (y * _x(*y.shape, seed=1)).sum().backward()
        no_grad = [n for n, p in net.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
        assert no_grad == []

    def test_eval_is_deterministic_and_batch_independent(self) -> None:
        net = self.make().eval()
        x = _x(2, 1, *self.sizes[0])
        with torch.no_grad():
            both = net(x)
            single = net(x[1:])
        torch.testing.assert_close(both[1:], single, atol=1e-5, rtol=1e-5)

    def test_torchscript_and_trace_equal_eager_at_a_new_size(self) -> None:
        net = self.make().eval()
        scripted = torch.jit.script(net)
        traced = torch.jit.trace(net, _x(1, 1, *[40] * self.spatial_dims))
        new = _x(2, 1, *self.sizes[-1], seed=3)
        with torch.no_grad():
            ref = net(new)
            torch.testing.assert_close(scripted(new), ref, atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(traced(new), ref, atol=1e-5, rtol=1e-5)


class TestFCN2DSum(BaseFCNTest):
    spatial_dims = 2
    kwargs: ClassVar[dict[str, Any]] = {"fusion": "sum"}
    sizes: ClassVar[list[tuple[int, ...]]] = [(37, 41), (33, 18), (5, 35), (64, 33)]


class TestFCN2DConcat(BaseFCNTest):
    spatial_dims = 2
    kwargs: ClassVar[dict[str, Any]] = {"fusion": "concat", "blocks": 2, "dropout": 0.1}
    sizes: ClassVar[list[tuple[int, ...]]] = [(35, 39), (49, 7)]


class TestFCN1D(BaseFCNTest):
    """1D (signals, profiles along a line): issue 17 found ``FCN(spatial_dims=1)`` accepted but failing."""

    spatial_dims = 1
    kwargs: ClassVar[dict[str, Any]] = {"fusion": "concat", "blocks": 1}
    sizes: ClassVar[list[tuple[int, ...]]] = [(67,), (101,), (33,)]


class TestFCN3DSum(BaseFCNTest):
    spatial_dims = 3
    kwargs: ClassVar[dict[str, Any]] = {"blocks": 1}
    sizes: ClassVar[list[tuple[int, ...]]] = [(33, 19, 23), (35, 7, 13)]


class TestFCN3DAnisotropicConcat(BaseFCNTest):
    spatial_dims = 3
    kwargs: ClassVar[dict[str, Any]] = {
        "blocks": 1,
        "fusion": "concat",
        "strides": ((2, 2, 1), 2, (2, 2, 1), 2, 2),  # thick-slice CT: depth downsampled 8x, in-plane 32x
        "norm": "batch",
    }
    sizes: ClassVar[list[tuple[int, ...]]] = [(33, 21, 9), (37, 17, 5)]


def test_default_fcn_handles_a_96_patch_and_reports_its_encoder() -> None:
    net = FCN().eval()
    assert net.encoder.out_channels == (16, 32, 64, 128, 256)
    assert net.encoder.reductions[-1] == (32, 32, 32)
    assert net.fused_stages == 4
    with torch.no_grad():
        assert net(torch.zeros(1, 1, 96, 96, 96)).shape == (1, 3, 96, 96, 96)


def test_decoder_sizes_itself_from_the_encoder_description() -> None:
    enc = FCNEncoder(2, 2, (6, 10, 12), ((2, 2), (2, 2), (3, 3)), (1, 1, 1), (3, 3), "instance", "relu", None)
    dec = FCNDecoder(2, enc.out_channels, enc.strides, out_channels=5, fused_stages=2, kernel_size=(3, 3))
    x = _x(1, 2, 50, 31)
    feats = enc(x)
    assert [f.shape[1] for f in feats] == [6, 10, 12]
    assert [tuple(f.shape[2:]) for f in feats] == [(25, 16), (13, 8), (5, 3)]  # ceil division per stage
    assert dec(feats, [50, 31]).shape == (1, 5, 50, 31)
    assert enc.reductions == ((2, 2), (4, 4), (12, 12))


def test_frozen_upsampling_has_no_gradient_and_the_rest_trains() -> None:
    net = FCN(spatial_dims=2, freeze_upsample=True, **SMALL)
    frozen = {n for n, p in net.named_parameters() if not p.requires_grad}
    assert frozen and all(".up.conv." in n or n.startswith("decoder.final.") for n in frozen)
    assert len(frozen) == net.fused_stages + 1  # one transposed conv per fusion plus the final one
    net(_x(1, 1, 40, 36)).sum().backward()
    for n, p in net.named_parameters():
        assert (p.grad is None) == (n in frozen), n


def _ramp(sizes: list[int]) -> torch.Tensor:
    """A smooth ramp with a different slope per axis, two channels (the second scaled by -3)."""
    coords = torch.meshgrid(*[torch.arange(n, dtype=torch.float32) for n in sizes], indexing="ij")
    ramp = sum((d + 1.5) * c for d, c in enumerate(coords)) + 2.0
    return torch.stack([ramp, -3 * ramp])[None]


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("factor", [2, 3, 4])
def test_bilinear_init_reproduces_a_ramp_away_from_the_borders(spatial_dims: int, factor: int) -> None:
    """Sample a ramp where a stride-f encoder centres its outputs (every f-th voxel), upsample it back."""
    sizes = [29, 31, 23][:spatial_dims]  # none a multiple of the factor
    fine = _ramp(sizes)
    coarse = fine[(slice(None), slice(None), *[slice(None, None, factor)] * spatial_dims)]
    assert list(coarse.shape[2:]) == [math.ceil(n / factor) for n in sizes]
    up = ScoreUpsample(spatial_dims, 2, 2, (factor,) * spatial_dims, init="bilinear")
    with torch.no_grad():
        y = up(coarse, sizes)
    assert list(y.shape[2:]) == sizes
    # exact, aligned interpolation up to the last coarse sample on every axis (only trailing voxels taper)
    inner = (slice(None), slice(None), *[slice(0, (c - 1) * factor + 1) for c in coarse.shape[2:]])
    torch.testing.assert_close(y[inner], fine[inner], atol=1e-4, rtol=1e-5)
    # the parameter-free variant used for deep supervision agrees, and replicates the trailing voxels
    mode = "bilinear" if spatial_dims == 2 else "trilinear"
    z = aligned_interpolate(coarse, sizes, [factor] * spatial_dims, mode)
    torch.testing.assert_close(z[inner], fine[inner], atol=1e-4, rtol=1e-5)
    assert torch.isfinite(z).all() and list(z.shape[2:]) == sizes


def test_fcn_upsampling_is_aligned_with_the_encoder_stride() -> None:
    """An FCN-32s-like net whose encoder just samples its input passes a ramp through unshifted."""
    net = FCN(
        spatial_dims=2,
        in_channels=1,
        out_channels=1,
        channels=(1, 1),
        strides=(2, 2),
        kernel_size=1,
        blocks=1,
        norm=None,
        act=None,
        fused_stages=0,
    ).eval()
    # each residual unit becomes "take the voxel at the stride": conv branch 0, residual 1x1 conv weight 1
    with torch.no_grad():
        for name, p in net.named_parameters():
            if name.endswith("residual.weight") or name == "decoder.score.weight":
                p.fill_(1.0)
            elif "encoder" in name or name == "decoder.score.bias":
                p.zero_()
    x = _ramp([37, 42])[:, :1]
    with torch.no_grad():
        y = net(x)
    inner = (slice(None), slice(None), slice(0, 37), slice(0, 41))  # up to the last coarse sample (stride 4)
    torch.testing.assert_close(y[inner], x[inner], atol=1e-4, rtol=1e-5)


def test_default_init_is_not_interpolation() -> None:
    up = ScoreUpsample(2, 2, 2, (2, 2), init="default")
    assert not torch.allclose(up.conv.weight, upsampling_weight(2, 2, (3, 3)))


def test_deep_supervision_only_in_training() -> None:
    net = FCN(spatial_dims=2, deep_supervision=True, fused_stages=3, **SMALL)
    x = _x(2, 1, 37, 45)
    y = net.train()(x)
    assert y.shape == (2, 4, 3, 37, 45)  # final logits + 3 coarser score maps
    target = torch.randint(0, 3, (2, 1, 37, 45))
    loss = DeepSupervisionLoss(DiceCELoss(to_onehot_y=True, softmax=True))(list(torch.unbind(y, 1)), target)
    loss.backward()
    assert torch.isfinite(loss)
    with torch.no_grad():
        assert net.eval()(x).shape == (2, 3, 37, 45)
    scripted = torch.jit.script(net.eval())
    assert scripted(x).shape == (2, 3, 37, 45)


def test_onnx_export_with_dynamic_spatial_axes_equals_eager(tmp_path: Any) -> None:
    ort = pytest.importorskip("onnxruntime")
    net = FCN(spatial_dims=3, blocks=1, **SMALL).eval()
    path = tmp_path / "fcn.onnx"
    axes = {0: "batch", 2: "x", 3: "y", 4: "z"}
    torch.onnx.export(
        net,
        (_x(1, 1, 40, 40, 40),),
        str(path),
        dynamo=False,
        input_names=["image"],
        output_names=["logits"],
        dynamic_axes={"image": axes, "logits": axes},
        opset_version=17,
    )
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    new = _x(2, 1, 37, 45, 19, seed=5)  # new batch and odd sizes, none a multiple of 32
    (got,) = sess.run(None, {"image": new.numpy()})
    with torch.no_grad():
        ref = net(new).numpy()
    assert got.shape == ref.shape == (2, 3, 37, 45, 19)
    np.testing.assert_allclose(got, ref, atol=1e-4, rtol=1e-4)


def test_bundle_style_json_arguments() -> None:
    from monai.bundle import ConfigParser

    cfg = {
        "network_def": {
            "_target_": "medfcn.networks.FCN",
            "spatial_dims": 3,
            "in_channels": 1,
            "out_channels": 3,
            "channels": [4, 8, 8, 16, 16],
            "strides": [[2, 2, 1], 2, 2, 2, 2],
            "blocks": [1, 1, 1, 1, 1],
            "norm": ["instance", {"affine": True}],
            "act": ["leakyrelu", {"negative_slope": 0.01, "inplace": True}],
            "dropout": 0.0,
            "upsample_init": "bilinear",
            "freeze_upsample": False,
            "fusion": "sum",
            "fused_stages": 4,
            "deep_supervision": False,
        }
    }
    net = ConfigParser(cfg).get_parsed_content("network_def").eval()
    assert isinstance(net, FCN)
    with torch.no_grad():
        assert net(_x(1, 1, 33, 35, 11)).shape == (1, 3, 33, 35, 11)


def test_a_small_fcn_learns_to_segment_discs() -> None:
    """Not a speed test: a tiny 2D FCN fits a two-class disc segmentation in a few dozen steps."""
    torch.manual_seed(0)
    n, size = 8, 40
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images, labels = [], []
    for i in range(n):
        cy, cx, r = 12 + 2 * i, 26 - 2 * i, 6 + i % 4
        disc = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).long()
        images.append(disc.float() + 0.3 * torch.randn(size, size))
        labels.append(disc)
    x, y = torch.stack(images)[:, None], torch.stack(labels)
    net = FCN(spatial_dims=2, out_channels=2, channels=(8, 16, 16, 32), strides=2, blocks=1)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(60):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = net.eval()(x).argmax(1)
    inter = ((pred == 1) & (y == 1)).sum().item()
    dice = 2 * inter / ((pred == 1).sum().item() + (y == 1).sum().item())
    assert dice > 0.85, dice


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"fused_stages": 5}, "fused_stages must be between 0 and 4"),
        ({"fused_stages": -1}, "fused_stages"),
        ({"strides": (2, 2, 2)}, "one entry per stage"),
        ({"strides": ((2, 2), 2, 2, 2, 2)}, "each stride"),
        ({"strides": 0}, "each stride must be >= 1"),
        ({"blocks": (1, 1)}, "blocks"),
        ({"blocks": 0}, "blocks"),
        ({"channels": ()}, "channels"),
        ({"channels": (4, 0)}, "channels"),
        ({"kernel_size": 4}, "kernel_size must be odd"),
        ({"fusion": "add"}, "fusion must be one of"),
        ({"upsample_init": "nearest"}, "upsample_init"),
        ({"padding_mode": "edge"}, "padding_mode"),
        ({"dropout": 1.5}, "dropout"),
        ({"spatial_dims": 4}, "spatial_dims"),
        ({"out_channels": 0}, "out_channels"),
    ],
)
def test_invalid_arguments_raise_clear_value_errors(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        FCN(**{"spatial_dims": 3, **kwargs})


def test_parameter_count_is_dominated_by_the_deep_stages() -> None:
    """Guards the cheap-decoder design: the decoder holds a small share of the weights."""
    net = FCN()
    total = sum(p.numel() for p in net.parameters())
    decoder = sum(p.numel() for p in net.decoder.parameters())
    assert decoder < 0.01 * total
    assert math.isclose(total, 9.36e6, rel_tol=0.05)


def test_fcn_uses_the_fast_instance_norm_and_loads_torch_instance_norm_checkpoints() -> None:
    """A network whose norms are torch's InstanceNorm3d (e.g. a checkpoint of bundle 0.2.0) has the same
    state-dict keys and shapes; loaded into the FCN it gives the same logits."""
    from medfcn.networks.layers import InstanceNorm, use_fast_instance_norm

    net = FCN(3, 1, 3, **SMALL).eval()
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(isinstance(m, InstanceNorm) for m in norms)
    assert not any(isinstance(m, nn.modules.instancenorm._InstanceNorm) for m in net.modules())
    # a MONAI UNet with instance norm: swapping keeps its keys, shapes and outputs
    from monai.networks.nets import UNet

    unet = UNet(3, 1, 2, (4, 8, 16), (2, 2), norm=("instance", {"affine": True})).eval()
    with torch.no_grad():
        for m in unet.modules():
            if isinstance(m, nn.InstanceNorm3d):
                m.weight.normal_()
                m.bias.normal_()
    x = _x(1, 1, 20, 16, 12)
    with torch.no_grad():
        before = unet(x)
        keys = {k: v.shape for k, v in unet.state_dict().items()}
        use_fast_instance_norm(unet)
        assert {k: v.shape for k, v in unet.state_dict().items()} == keys
        assert any(isinstance(m, InstanceNorm) for m in unet.modules())
        torch.testing.assert_close(unet(x), before, atol=1e-5, rtol=1e-5)
