"""The FCN network family (2D/3D), classifier convolutionalisation and 2D->3D weight inflation."""

from __future__ import annotations

from medfcn.networks.convert import convolutionalise, inflate_2d_to_3d
from medfcn.networks.fcn import FCN, FCNDecoder, FCNEncoder, upsampling_weight

__all__ = ["FCN", "FCNDecoder", "FCNEncoder", "convolutionalise", "inflate_2d_to_3d", "upsampling_weight"]
