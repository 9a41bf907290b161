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
network spends its time in the encoder, whose first convolution already works at 1/2 resolution.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.blocks import Convolution, ResidualUnit
from monai.networks.layers.factories import Conv
from torch import nn
from torch.nn import functional as F

__all__ = [
    "FCN",
    "FCNDecoder",
    "FCNEncoder",
    "FuseStep",
    "InstanceNorm",
    "ScoreUpsample",
    "aligned_interpolate",
    "match_size",
    "upsampling_weight",
    "use_fast_instance_norm",
]

_FUSIONS = ("sum", "concat")
_UPSAMPLE_INITS = ("bilinear", "trilinear", "linear", "default")
_PADDING_MODES = ("zeros", "replicate", "reflect", "circular")


def _as_tuple(value: int | Sequence[int], n: int, name: str) -> tuple[int, ...]:
    """Broadcast an int to ``n`` dims, or check that a sequence has ``n`` entries."""
    if isinstance(value, int):
        out: tuple[int, ...] = (value,) * n
    else:
        out = tuple(int(v) for v in value)
        if len(out) != n:
            raise ValueError(
                f"{name} must be an int or have {n} entries (one per spatial dim), got {value!r}"
            )
    if any(v < 1 for v in out):
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return out


def upsampling_weight(in_channels: int, out_channels: int, kernel_size: Sequence[int]) -> torch.Tensor:
    """N-D (bi/tri)linear interpolation kernel for a transposed convolution, FCN's ``get_upsampling_weight``.

    Channel ``c`` of the input is upsampled into channel ``c`` of the output (a diagonal in the first two
    dims); other channel pairs get zero weight. Along each spatial dim the kernel is the 1-D tent
    ``1 - |t - centre| / factor`` with ``factor = (k + 1) // 2``, and the N-D kernel is the outer product of the
    1-D ones (``centre = factor - 1`` for odd ``k``, ``factor - 0.5`` for even ``k``). With ``stride = factor``
    it performs linear interpolation away from the borders: ``align_corners=True`` geometry for the odd
    kernels :class:`ScoreUpsample` uses, ``align_corners=False`` for FCN's even ``2 * factor`` kernels.

    Args:
        in_channels: input channels of the transposed convolution.
        out_channels: output channels of the transposed convolution.
        kernel_size: kernel size per spatial dim.

    Returns:
        A tensor of shape ``(in_channels, out_channels, *kernel_size)`` (PyTorch's ConvTranspose layout).
    """
    filt = torch.ones(())
    for k in kernel_size:
        factor = (k + 1) // 2
        centre = factor - 1 if k % 2 == 1 else factor - 0.5
        og = torch.arange(k, dtype=torch.float64)
        f1 = 1.0 - (og - centre).abs() / factor
        filt = filt.unsqueeze(-1) * f1 if filt.dim() > 0 else f1
    weight = torch.zeros((in_channels, out_channels, *kernel_size), dtype=torch.float64)
    for c in range(min(in_channels, out_channels)):
        weight[c, c] = filt
    return weight.float()


def match_size(x: torch.Tensor, size: list[int]) -> torch.Tensor:
    """Crop (trailing side) or zero-pad ``x`` so that its spatial shape is exactly ``size``.

    This plays the role of the original FCN's offset ``Crop`` layer: the transposed convolutions here are
    padded so that the upsampled map is aligned with the skip at index 0 and is never smaller than the
    skip, so cropping the trailing voxels is the exact alignment. The pad branch only guards unusual
    configurations. Scriptable and traceable (the crop uses ``narrow`` with the dynamic target size).

    Args:
        x: tensor ``(B, C, *spatial)``.
        size: target spatial size, ``len(size) == x.dim() - 2``.

    Returns:
        A tensor ``(B, C, *size)``.
    """
    if not torch.jit.is_tracing():
        # A trace would freeze this data-dependent branch; the crop below is what the network needs.
        pads: list[int] = []
        need_pad = False
        for d in range(len(size) - 1, -1, -1):  # F.pad lists the last dim first
            diff = size[d] - x.shape[2 + d]
            if diff > 0:
                need_pad = True
                pads += [0, diff]
            else:
                pads += [0, 0]
        if need_pad:
            x = F.pad(x, pads)
    for d in range(len(size)):
        x = x.narrow(2 + d, 0, size[d])
    return x


def aligned_interpolate(x: torch.Tensor, size: list[int], factor: list[int], mode: str) -> torch.Tensor:
    """Linearly interpolate a map whose sample ``j`` sits at input position ``factor * j`` to ``size``.

    Same geometry as :class:`ScoreUpsample` with the interpolation init, but parameter-free and with
    the trailing voxels past the last sample replicated instead of tapered (used for deep supervision).

    Args:
        x: ``(B, C, *s)`` with ``s[d] == ceil(size[d] / factor[d])``.
        size: target spatial size.
        factor: reduction of ``x`` relative to the target, per spatial dim.
        mode: ``"linear"``, ``"bilinear"`` or ``"trilinear"`` to match the number of spatial dims.

    Returns:
        ``(B, C, *size)``.
    """
    inner: list[int] = []
    for d in range(len(size)):
        inner.append((x.shape[2 + d] - 1) * factor[d] + 1)
    y = F.interpolate(x, size=inner, mode=mode, align_corners=True)
    pads: list[int] = []
    for d in range(len(size) - 1, -1, -1):
        pads += [0, max(size[d] - inner[d], 0)]
    return match_size(F.pad(y, pads, mode="replicate"), size)


class InstanceNorm(nn.GroupNorm):
    """Instance normalisation computed by ``GroupNorm`` with one group per channel.

    The same maths as ``nn.InstanceNormNd`` without running statistics (per sample and channel, biased
    variance, ``eps`` inside the square root, optional per-channel affine), the same parameter names and
    shapes (``weight``, ``bias``), so checkpoints load either way. The reason is speed: PyTorch computes
    ``InstanceNormNd`` as ``batch_norm`` on a ``(1, B * C, ...)`` view, which on CPU is several times slower
    than the ``group_norm`` kernel (2 x 12 x 48³ fp32: about 2.5 ms vs 0.5 ms on the benchmark CPU; the
    whole bundle network about 8 % faster in fp32). As ``InstanceNormNd`` it refuses a single spatial
    element (in training and in eval mode: the variance would be zero), where ``GroupNorm`` would refuse
    it only for a batch of one.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = False) -> None:
        super().__init__(num_features, num_features, eps=eps, affine=affine)

    @classmethod
    def from_instance_norm(cls, norm: nn.modules.instancenorm._InstanceNorm) -> InstanceNorm:
        """An equivalent module for ``norm`` (which must not track running statistics), same weights."""
        out = cls(norm.num_features, eps=norm.eps, affine=norm.affine)
        if norm.affine:
            out = out.to(norm.weight)  # device and dtype first: the copy must not round
            with torch.no_grad():
                out.weight.copy_(norm.weight)
                out.bias.copy_(norm.bias)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not torch.jit.is_tracing():  # a trace (ONNX export) would freeze this shape check as a constant
            spatial = 1
            for n in x.shape[2:]:
                spatial *= n
            if spatial == 1:  # torch's InstanceNormNd refuses it in eval mode too (and says "when training")
                raise ValueError(
                    f"Expected more than 1 spatial element when training, got input size {list(x.shape)}"
                )
        # the aten op F.group_norm calls, without its batch-size check (a subset of the one above)
        return torch.group_norm(
            x, self.num_groups, self.weight, self.bias, self.eps, torch.backends.cudnn.enabled
        )


def use_fast_instance_norm(module: nn.Module) -> nn.Module:
    """Replace every ``nn.InstanceNormNd`` without running statistics in ``module`` by :class:`InstanceNorm`.

    Modules that track running statistics (a different thing in eval mode) are left alone.

    Returns:
        ``module``, changed in place.
    """
    for name, child in module.named_children():
        if isinstance(child, nn.modules.instancenorm._InstanceNorm) and not child.track_running_stats:
            setattr(module, name, InstanceNorm.from_instance_norm(child))
        else:
            use_fast_instance_norm(child)
    return module


class ScoreUpsample(nn.Module):
    """Transposed convolution that upsamples a score map by an integer factor per spatial dim.

    Geometry: an encoder convolution with stride ``f`` and "same" padding centres its output ``j`` on input
    ``f * j``. The transposed convolution here (kernel ``2f - 1``, padding ``f - 1``, output padding ``f - 1``)
    puts coarse sample ``j`` back at fine position ``f * j`` and returns exactly ``f`` times the input size,
    so the upsampled map is aligned with the skip at index 0 and never smaller than it (the encoder gives
    ``ceil(m / f)``): cropping the trailing voxels is the exact alignment, the job of the original FCN's
    offset ``Crop`` layer. With the interpolation init it is linear interpolation with ``align_corners=True``
    between the coarse samples; past the last coarse sample (at most ``f - 1`` trailing voxels) the value
    tapers linearly, like a zero-padded border. A factor of 1 is a 1x1 convolution (identity at init).

    Args:
        spatial_dims: 1, 2 or 3.
        in_channels: channels of the incoming map.
        out_channels: channels of the result.
        factor: upsampling factor per spatial dim.
        init: ``"bilinear"`` (alias ``"trilinear"``/``"linear"``) sets interpolation weights as FCN does;
            ``"default"`` keeps PyTorch's random initialisation.
        freeze: keep the weights fixed (``requires_grad=False``), as FCN's final fixed interpolation layer.
    """

    def __init__(
        self,
        spatial_dims: int,
        in_channels: int,
        out_channels: int,
        factor: Sequence[int],
        init: str = "bilinear",
        freeze: bool = False,
    ) -> None:
        super().__init__()
        self.factor = tuple(int(f) for f in factor)
        kernel = tuple(2 * f - 1 for f in self.factor)
        pad = tuple(f - 1 for f in self.factor)
        conv_t = Conv[Conv.CONVTRANS, spatial_dims]
        self.conv = conv_t(
            in_channels,
            out_channels,
            kernel_size=kernel,
            stride=self.factor,
            padding=pad,
            output_padding=pad,
            bias=False,
        )
        if init != "default":
            with torch.no_grad():
                self.conv.weight.copy_(upsampling_weight(in_channels, out_channels, kernel))
        if freeze:
            self.conv.weight.requires_grad_(False)
        self.spatial_dims = int(spatial_dims)
        index, taps = _subpixel_index(self.factor)
        # not persistent: nothing new in the state dict; a buffer, so that a trace (ONNX) sees no torch.tensor
        self.register_buffer("subpixel_index", torch.tensor(index, dtype=torch.long), persistent=False)
        self.taps = taps
        self.n_phases = math.prod(self.factor)
        # F.pad lists the last dim first: one zero at the front of every kernel dim, and T - 1 zeros
        # after every spatial dim of the input (the sub-pixel kernel reads x[m] and x[m + 1])
        self.kernel_pad = [1, 0] * self.spatial_dims
        self.input_pad = [p for t in reversed(taps) for p in (0, t - 1)]
        d = self.spatial_dims
        self.shuffle = [0, 1] + [j for i in range(d) for j in (2 + d + i, 2 + i)]

    def subpixel_weight(self) -> torch.Tensor:
        """The transposed convolution's weight as a stride-1 convolution with one output per phase.

        Output channel ``c * P + p`` (``P = prod(factor)`` phases, ``p`` row-major over the per-dim
        residues ``r``) holds the taps that produce fine position ``f * m + r`` from coarse samples ``m``
        and ``m + 1``: kernel index ``r + f - 1`` and (for ``r >= 1``) ``r - 1`` of the transposed kernel.
        """
        w = self.conv.weight
        cin, cout = w.shape[0], w.shape[1]
        index = self.subpixel_index
        flat = F.pad(w, self.kernel_pad).flatten(2).index_select(2, index)  # type: ignore[arg-type]
        flat = flat.reshape(cin, cout, self.n_phases, -1).permute(1, 2, 0, 3)
        shape: list[int] = [cout * self.n_phases, cin]
        shape.extend(self.taps)
        return flat.reshape(shape)

    def forward(self, x: torch.Tensor, size: list[int]) -> torch.Tensor:
        """Upsample ``x`` (B, C_in, *s) and crop/pad to ``size`` -> (B, C_out, *size).

        Computed as the equivalent sub-pixel convolution (a stride-1 convolution whose output channels
        are the ``prod(factor)`` phases of the fine grid, then a pixel shuffle) rather than by
        ``self.conv``: the same values and gradients to rounding (tested), but a transposed convolution
        with a handful of channels runs badly on oneDNN (3 -> 3 channels, 48³ -> 96³: 32 ms vs 8 ms fp32 on
        the benchmark CPU). ``self.conv`` keeps the weight, so checkpoints are unchanged.
        """
        weight = self.subpixel_weight()
        xp = F.pad(x, self.input_pad)
        if self.spatial_dims == 3:
            y = F.conv3d(xp, weight)
        elif self.spatial_dims == 2:
            y = F.conv2d(xp, weight)
        else:
            y = F.conv1d(xp, weight)
        b, cout = y.shape[0], y.shape[1] // self.n_phases
        phases: list[int] = [b, cout]  # (B, C, f_1, .., f_d, s_1, .., s_d)
        fine: list[int] = [b, cout]  # (B, C, f_1 * s_1, .., f_d * s_d)
        for d in range(self.spatial_dims):
            phases.append(self.factor[d])
            fine.append(y.shape[2 + d] * self.factor[d])
        for d in range(self.spatial_dims):
            phases.append(y.shape[2 + d])
        y = y.reshape(phases).permute(self.shuffle).reshape(fine)
        return match_size(y, size)


def _subpixel_index(factor: Sequence[int]) -> tuple[list[int], list[int]]:
    """Gather index from a front-padded, flattened transposed kernel into the sub-pixel kernel layout.

    For stride ``f``, kernel ``2f - 1``, padding and output padding ``f - 1``, fine output ``f * m + r``
    receives coarse sample ``m`` through kernel index ``r + f - 1`` and sample ``m + 1`` through index
    ``r - 1`` (none for ``r = 0``). With one zero padded in front of each kernel dim these are indices
    ``r + f`` and ``r`` (``0`` is the zero). A factor of 1 is a 1x1 kernel: one tap, index 1.

    Returns:
        The flat index (phases row-major, then taps row-major) and the number of taps per dim.
    """
    import itertools

    per_dim: list[list[list[int]]] = []
    taps: list[int] = []
    padded = [2 * f for f in factor]  # kernel 2f - 1, plus the zero in front
    for f in factor:
        per_dim.append([[r + f, r] for r in range(f)] if f > 1 else [[1]])
        taps.append(2 if f > 1 else 1)
    strides = [1] * len(factor)
    for d in range(len(factor) - 2, -1, -1):
        strides[d] = strides[d + 1] * padded[d + 1]
    index: list[int] = []
    for phase in itertools.product(*[range(f) for f in factor]):
        for tap in itertools.product(*[range(t) for t in taps]):
            index.append(sum(per_dim[d][phase[d]][tap[d]] * strides[d] for d in range(len(factor))))
    return index, taps


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
