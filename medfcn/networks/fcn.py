"""The FCN family: a strided residual encoder, 1x1 score heads and transposed-convolution skip fusion.

This generalises Long, Shelhamer and Darrell's Fully Convolutional Networks (FCN-32s/16s/8s, CVPR 2015)
to any number of encoder stages, any number of fused skip stages and to 2D or 3D inputs through one code
path (``spatial_dims``). Layer types come from MONAI's factories and blocks (``Conv``, ``ResidualUnit``), so
``norm``/``act``/``dropout`` accept the same values as MONAI networks (e.g. ``("instance", {"affine": True})``).

Data flow for ``FCN(channels=(16, 32, 64, 128, 256), strides=2, fused_stages=4)`` on a 96³ patch::

    x (B, 1, 96, 96, 96)
    stage 0  strided stem  -> (B, 16, 48³)  ─ score head ─┐
    stage 1                -> (B, 32, 24³)  ─ score head ─┤
    stage 2                -> (B, 64, 12³)  ─ score head ─┤    sum fusion, coarse to fine:
    stage 3                -> (B, 128, 6³)  ─ score head ─┤    up(score) cropped to the skip's size + head(skip)
    stage 4 (deepest)      -> (B, 256, 3³)  ─ score head ─┘
    final transposed conv x2, crop to the input size -> logits (B, out_channels, 96, 96, 96)

Only the score maps (``out_channels`` channels) are upsampled, so the decoder costs almost nothing: the
network spends its time in the encoder, whose first convolution already works at 1/2 resolution. The decoder's
layers (upsampling kernel, crop, sub-pixel upsampling) are in :mod:`medfcn.networks.layers`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers.factories import Conv
from monai.utils import ensure_tuple_rep
from torch import nn

from medfcn.networks.layers import ScoreUpsample, aligned_interpolate, use_fast_instance_norm

__all__ = ["FCN", "FCNDecoder", "FCNEncoder", "FuseStep"]

_FUSIONS = ("sum", "concat")
_UPSAMPLE_INITS = ("bilinear", "trilinear", "linear", "default")
_PADDING_MODES = ("zeros", "replicate", "reflect", "circular")


def _as_tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """Broadcast an int to ``n`` dims, or check that a sequence has ``n`` entries (MONAI's
    ``ensure_tuple_rep``, with the parameter's name in the error)."""
    try:
        out = tuple(int(v) for v in ensure_tuple_rep(value, n))
    except ValueError:
        raise ValueError(
            f"{name} must be an int or have {n} entries (one per spatial dim), got {value!r}"
        ) from None
    if any(v < 1 for v in out):
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return out


class FCNEncoder(nn.Module):
    """Stages of MONAI ``ResidualUnit`` blocks; the first block of each stage carries the stage's stride.

    Stage 0's first block is the stem: with the default stride 2 its convolutions already run at 1/2
    resolution, which keeps CPU cost low (no many-channel convolution at full resolution).

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: input channels.
        channels: output channels per stage.
        strides: stride per stage (int, or one int per spatial dim for anisotropic data).
        blocks: residual units per stage (each unit is two convolutions plus a residual path).
        kernel_size: convolution kernel size (int or per dim).
        norm, act, dropout: as in MONAI's ``ResidualUnit``.

    Attributes:
        out_channels: channels of each stage's output, for sizing a decoder.
        strides: per-stage stride tuples.
        reductions: cumulative downsampling factor of each stage output relative to the input, per dim.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        channels: Sequence[int],
        strides: Sequence[Sequence[int]],
        blocks: Sequence[int],
        kernel_size: Sequence[int],
        norm: tuple | str | None,
        act: tuple | str | None,
        dropout: tuple | str | float | None,
    ) -> None:
        super().__init__()
        self.out_channels: tuple[int, ...] = tuple(channels)
        self.strides: tuple[tuple[int, ...], ...] = tuple(tuple(s) for s in strides)
        reductions = []
        acc = [1] * spatial_dims
        for s in self.strides:
            acc = [a * b for a, b in zip(acc, s, strict=True)]
            reductions.append(tuple(acc))
        self.reductions: tuple[tuple[int, ...], ...] = tuple(reductions)
        stages = []
        prev = in_channels
        for c, s, n in zip(channels, self.strides, blocks, strict=True):
            units = []
            for i in range(n):
                units.append(
                    ResidualUnit(
                        spatial_dims,
                        prev if i == 0 else c,
                        c,
                        strides=s if i == 0 else 1,
                        kernel_size=kernel_size,
                        subunits=2,
                        act=act,
                        norm=norm,
                        dropout=dropout,
                    )
                )
            prev = c
            stages.append(nn.Sequential(*units))
        self.stages = nn.ModuleList(stages)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Return the output of every stage, finest first: ``[(B, channels[i], *spatial_i)]``."""
        feats: list[torch.Tensor] = []
        for stage in self.stages:
            x = stage(x)
            feats.append(x)
        return feats


class FuseStep(nn.Module):
    """One FCN fusion: upsample coarse scores to the skip's size and fuse them with the skip's scores.

    ``"sum"``: ``up(score) + head(skip)`` (FCN-16s/8s). ``"concat"``: features are concatenated before
    scoring, ``head(conv(cat(up(score), skip)))`` with one norm/act convolution at the skip resolution.
    """

    def __init__(
        self,
        spatial_dims: int,
        skip_channels: int,
        out_channels: int,
        factor: Sequence[int],
        fusion: str,
        upsample_init: str,
        freeze_upsample: bool,
        kernel_size: Sequence[int],
        norm: tuple | str | None,
        act: tuple | str | None,
    ) -> None:
        super().__init__()
        self.concat = fusion == "concat"
        self.up = ScoreUpsample(
            spatial_dims, out_channels, out_channels, factor, upsample_init, freeze_upsample
        )
        if self.concat:
            self.mix: nn.Module = Convolution(
                spatial_dims,
                skip_channels + out_channels,
                skip_channels,
                kernel_size=kernel_size,
                act=act,
                norm=norm,
            )
        else:
            self.mix = nn.Identity()
        self.head = Conv[Conv.CONV, spatial_dims](skip_channels, out_channels, kernel_size=1)

    def forward(self, score: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """Fuse coarse ``score`` (B, K, *s_coarse) with ``skip`` (B, C, *s_skip) -> (B, K, *s_skip)."""
        size = list(skip.shape[2:])
        up = self.up(score, size)
        if self.concat:
            return self.head(self.mix(torch.cat([up, skip], dim=1)))
        return up + self.head(skip)


class FCNDecoder(nn.Module):
    """Score heads, skip fusion and the final upsampling, sized from an encoder's per-stage description.

    Args:
        spatial_dims: 1, 2 or 3.
        encoder_channels: the encoder's ``out_channels`` (one entry per stage, finest first).
        encoder_strides: the encoder's per-stage stride tuples.
        out_channels: number of classes (score channels).
        fused_stages: how many skip stages (just above the deepest) are fused: 0 is FCN-32s-like.
        fusion, upsample_init, freeze_upsample, kernel_size, norm, act: see :class:`FCN`.
        deep_supervision: also return the intermediate score maps (training mode only).
    """

    def __init__(
        self,
        spatial_dims: int,
        encoder_channels: Sequence[int],
        encoder_strides: Sequence[Sequence[int]],
        out_channels: int,
        fused_stages: int,
        fusion: str = "sum",
        upsample_init: str = "bilinear",
        freeze_upsample: bool = False,
        kernel_size: Sequence[int] = (3, 3, 3),
        norm: tuple | str | None = ("instance", {"affine": True}),
        act: tuple | str | None = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        deep_supervision: bool = False,
    ) -> None:
        super().__init__()
        n = len(encoder_channels)
        self.num_stages = n
        self.fused_stages = fused_stages
        self.deep_supervision = deep_supervision
        self.interp_mode = {1: "linear", 2: "bilinear", 3: "trilinear"}[spatial_dims]
        conv = Conv[Conv.CONV, spatial_dims]
        self.score = conv(encoder_channels[-1], out_channels, kernel_size=1)
        steps = []
        for i in range(fused_stages):
            coarse = n - 1 - i  # stage whose scores are upsampled
            skip = coarse - 1
            steps.append(
                FuseStep(
                    spatial_dims,
                    encoder_channels[skip],
                    out_channels,
                    encoder_strides[coarse],
                    fusion,
                    upsample_init,
                    freeze_upsample,
                    kernel_size,
                    norm,
                    act,
                )
            )
        self.steps = nn.ModuleList(steps)
        finest = n - 1 - fused_stages
        final_factor = [1] * spatial_dims
        for s in encoder_strides[: finest + 1]:
            final_factor = [a * b for a, b in zip(final_factor, s, strict=True)]
        self.final = ScoreUpsample(
            spatial_dims, out_channels, out_channels, final_factor, upsample_init, freeze_upsample
        )
        # input-to-stage reduction of each deep-supervision score map (the one entering fusion step i)
        reductions: list[list[int]] = []
        acc = [1] * spatial_dims
        for s in encoder_strides:
            acc = [a * b for a, b in zip(acc, s, strict=True)]
            reductions.append(list(acc))
        self.aux_factors: list[list[int]] = [reductions[n - 1 - i] for i in range(fused_stages)]

    def forward(self, feats: list[torch.Tensor], size: list[int]) -> torch.Tensor:
        """Decode encoder features (finest first) to logits of spatial ``size``.

        Returns:
            ``(B, out_channels, *size)``; in training with deep supervision, ``(B, 1 + fused_stages,
            out_channels, *size)`` with the final logits first (DynUNet's convention).
        """
        score = self.score(feats[-1])
        aux: list[torch.Tensor] = []
        for i, step in enumerate(self.steps):
            if self.deep_supervision and self.training:
                aux.append(score)
            score = step(score, feats[self.num_stages - 2 - i])
        out = self.final(score, size)
        if self.deep_supervision and self.training:
            outs = [out]
            for j in range(
                len(aux) - 1, -1, -1
            ):  # finest first: DeepSupervisionLoss weights decay with depth
                outs.append(aligned_interpolate(aux[j], size, self.aux_factors[j], self.interp_mode))
            return torch.stack(outs, dim=1)
        return out


class FCN(nn.Module):
    """Fully Convolutional Network for 2D/3D segmentation (FCN-32s/16s/8s generalised to N stages).

    Args:
        spatial_dims: 1, 2 or 3 (one code path).
        in_channels: input channels (1 for CT).
        out_channels: classes, i.e. logit channels (3 for background/liver/tumour).
        channels: encoder channels per stage; the number of stages is ``len(channels)``.
        strides: downsampling per stage, an int for every stage, or one entry per stage, each an int or one
            int per spatial dim (e.g. ``(2, 2, 1)`` for thick-slice CT). Stage 0's stride is the stem's: keep it
            2 so that no convolution runs at full resolution.
        blocks: residual units per stage (int for every stage, or one per stage, each >= 1). A unit is two
            ``kernel_size`` convolutions with norm/dropout/act plus a residual connection (MONAI
            ``ResidualUnit``).
        fused_stages: skip stages fused into the deepest stage's scores, from coarse to fine; ``0`` is
            FCN-32s-like, ``len(channels) - 1`` (the default, ``None``) fuses every stage (finest output).
        kernel_size: encoder convolution kernel size (int or per dim).
        norm: normalisation, any MONAI ``Norm`` factory spec, e.g. ``("instance", {"affine": True})`` or
            ``"batch"``; ``None`` for none.
        act: activation, any MONAI ``Act`` factory spec.
        dropout: dropout probability in every encoder convolution (0 disables it).
        upsample_init: ``"bilinear"`` (alias ``"trilinear"``) initialises the transposed convolutions as
            linear interpolation, as FCN does; ``"default"`` leaves PyTorch's random init.
        freeze_upsample: keep the transposed-convolution weights fixed (``requires_grad=False``).
        fusion: ``"sum"`` adds score maps (FCN); ``"concat"`` concatenates the upsampled scores with the skip
            features and applies a norm/act convolution before the 1x1 score head (a bit more compute).
        deep_supervision: in training mode, return ``(B, 1 + fused_stages, out_channels, *spatial)`` with the
            final logits at index 0 and the coarser score maps interpolated to the input size after it (use
            ``torch.unbind(out, 1)`` for MONAI's ``DeepSupervisionLoss``). Eval mode always returns logits.
        padding_mode: padding of the (non-transposed) convolutions (``"zeros"``, ``"replicate"``, ``"reflect"``,
            ``"circular"``); ``"replicate"`` makes :func:`~medfcn.networks.inflate_2d_to_3d` with
            ``mode="average"`` exact on volumes of identical slices.

    Input/output:
        ``forward(x)`` with ``x`` of shape ``(B, in_channels, *spatial)``, any spatial size (odd and
        non-divisible sizes included) returns logits ``(B, out_channels, *spatial)``. With instance norm
        the deepest stage must keep more than one voxel in training (input > ``prod(strides) / 2`` on at
        least one axis), as for every instance-normed network.

    Example:
        >>> net = FCN(spatial_dims=3, in_channels=1, out_channels=3)
        >>> net(torch.zeros(1, 1, 37, 41, 29)).shape
        torch.Size([1, 3, 37, 41, 29])
    """

    def __init__(
        self,
        spatial_dims: int = 3,
        in_channels: int = 1,
        out_channels: int = 3,
        channels: Sequence[int] = (16, 32, 64, 128, 256),
        strides: int | Sequence[int | Sequence[int]] = 2,
        blocks: int | Sequence[int] = (1, 1, 2, 2, 2),
        fused_stages: int | None = None,
        kernel_size: int | Sequence[int] = 3,
        norm: tuple | str | None = ("instance", {"affine": True}),
        act: tuple | str | None = ("leakyrelu", {"negative_slope": 0.01, "inplace": True}),
        dropout: float = 0.0,
        upsample_init: str = "bilinear",
        freeze_upsample: bool = False,
        fusion: str = "sum",
        deep_supervision: bool = False,
        padding_mode: str = "zeros",
    ) -> None:
        super().__init__()
        if spatial_dims not in (1, 2, 3):
            raise ValueError(f"spatial_dims must be 1, 2 or 3, got {spatial_dims!r}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}")
        chans = tuple(int(c) for c in channels)
        n = len(chans)
        if n < 1 or any(c < 1 for c in chans):
            raise ValueError(f"channels must be a non-empty sequence of positive ints, got {channels!r}")
        if isinstance(strides, int):
            stride_list: list[int | Sequence[int]] = [strides] * n
        else:
            stride_list = list(strides)
        if len(stride_list) != n:
            raise ValueError(f"strides needs one entry per stage ({n} stages from channels), got {strides!r}")
        stride_t = tuple(_as_tuple(s, spatial_dims, "each stride") for s in stride_list)
        block_t = (blocks,) * n if isinstance(blocks, int) else tuple(int(b) for b in blocks)
        if len(block_t) != n or any(b < 1 for b in block_t):
            raise ValueError(
                f"blocks must be an int >= 1 or one int >= 1 per stage ({n} stages), got {blocks!r}"
            )
        if fused_stages is None:
            fused_stages = n - 1
        if not 0 <= fused_stages <= n - 1:
            raise ValueError(
                f"fused_stages must be between 0 and {n - 1} (number of stages minus one), got {fused_stages}"
            )
        kernel_t = _as_tuple(kernel_size, spatial_dims, "kernel_size")
        if any(k % 2 == 0 for k in kernel_t):
            raise ValueError(f"kernel_size must be odd so that 'same' padding exists, got {kernel_size!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}")
        if upsample_init not in _UPSAMPLE_INITS:
            raise ValueError(f"upsample_init must be one of {_UPSAMPLE_INITS}, got {upsample_init!r}")
        if fusion not in _FUSIONS:
            raise ValueError(f"fusion must be one of {_FUSIONS}, got {fusion!r}")
        if padding_mode not in _PADDING_MODES:
            raise ValueError(f"padding_mode must be one of {_PADDING_MODES}, got {padding_mode!r}")
        self.spatial_dims = spatial_dims
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.fused_stages = fused_stages
        self.deep_supervision = deep_supervision
        drop: float | None = float(dropout) if dropout else None
        self.encoder = FCNEncoder(
            spatial_dims, in_channels, chans, stride_t, block_t, kernel_t, norm, act, drop
        )
        self.decoder = FCNDecoder(
            spatial_dims,
            self.encoder.out_channels,
            self.encoder.strides,
            out_channels,
            fused_stages,
            fusion=fusion,
            upsample_init=upsample_init,
            freeze_upsample=freeze_upsample,
            kernel_size=kernel_t,
            norm=norm,
            act=act,
            deep_supervision=deep_supervision,
        )
        use_fast_instance_norm(self)  # MONAI's "instance" norm, computed by the faster group_norm kernel
        if padding_mode != "zeros":
            # MONAI's blocks do not take a padding mode; nn.ConvNd reads the attribute at call time.
            for m in self.modules():
                if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    m.padding_mode = padding_mode  # type: ignore[assignment]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Segment ``x`` (B, in_channels, *spatial) -> logits (B, out_channels, *spatial)."""
        size = list(x.shape[2:])
        return self.decoder(self.encoder(x), size)

    def extra_repr(self) -> str:
        return f"spatial_dims={self.spatial_dims}, fused_stages={self.fused_stages}"
