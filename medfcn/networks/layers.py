"""The layers of the FCN decoder that neither MONAI nor torch has: FCN's bilinear upsampling kernel, the crop
that aligns an upsampled score map with its skip, the sub-pixel transposed convolution
(:class:`ScoreUpsample`) and a faster instance norm for CPU inference.

:mod:`medfcn.networks.fcn` assembles them into the network.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from monai.networks.layers.factories import Conv
from torch import nn
from torch.nn import functional as F

__all__ = [
    "InstanceNorm",
    "ScoreUpsample",
    "aligned_interpolate",
    "match_size",
    "upsampling_weight",
    "use_fast_instance_norm",
]


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
