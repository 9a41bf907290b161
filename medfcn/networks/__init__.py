"""The FCN network family (2D/3D), classifier convolutionalisation and 2D->3D weight inflation.

* :mod:`~medfcn.networks.fcn`: the network (encoder, score heads, skip fusion decoder).
* :mod:`~medfcn.networks.layers`: its decoder layers (upsampling kernel, crop, sub-pixel upsampling, instance norm).
* :mod:`~medfcn.networks.convert`: classifier -> FCN, and 2D -> 3D weights.
"""

from __future__ import annotations

from medfcn.networks.convert import convolutionalise, inflate_2d_to_3d
from medfcn.networks.fcn import FCN, FCNDecoder, FCNEncoder
from medfcn.networks.layers import upsampling_weight

__all__ = ["FCN", "FCNDecoder", "FCNEncoder", "convolutionalise", "inflate_2d_to_3d", "upsampling_weight"]
