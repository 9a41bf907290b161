"""Turn classifiers into fully convolutional networks, and seed 3D networks with 2D weights.

* :func:`convolutionalise` is FCN's "convolutionalization" (Long et al. 2015, section 3.1): the fully
  connected layers of a classification network become convolutions, so the network slides over inputs
  larger than the one it was trained on and returns a map of class scores instead of one vector.
* :func:`inflate_2d_to_3d` is I3D's inflation (Carreira and Zisserman 2017): every 2D kernel of a network
  is repeated (``"average"``) or placed at the centre (``"center"``) along a new depth axis, so a 3D network
  of the same configuration starts from 2D weights.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from monai.networks.layers.factories import Conv, Norm, Pool
from monai.networks.utils import copy_model_state
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp
from torch.nn import functional as F

__all__ = ["convolutionalise", "inflate_2d_to_3d"]

# N-D layer types through MONAI's factories, as the FCN builds its own layers
_ADAPTIVE_AVG = tuple(Pool[Pool.ADAPTIVEAVG, d] for d in (1, 2, 3))
_ADAPTIVE_MAX = tuple(Pool[Pool.ADAPTIVEMAX, d] for d in (1, 2, 3))
_ADAPTIVE_FUNCS = {
    F.adaptive_avg_pool1d: "avg",
    F.adaptive_avg_pool2d: "avg",
    F.adaptive_avg_pool3d: "avg",
    F.adaptive_max_pool1d: "max",
    F.adaptive_max_pool2d: "max",
    F.adaptive_max_pool3d: "max",
}
_SOFTMAX_FUNCS = (F.softmax, F.log_softmax, torch.softmax, torch.log_softmax)
_ELEMENTWISE_FUNCS = (
    operator.add,
    operator.mul,
    operator.sub,
    F.relu,
    F.leaky_relu,
    F.gelu,
    F.silu,
    F.elu,
    F.dropout,
    torch.relu,
    torch.sigmoid,
    torch.tanh,
)
_FLATTEN_METHODS = ("view", "reshape", "flatten")
_FLATTEN_FUNCS = (torch.flatten, torch.reshape)
# modules that act per feature (or per element) and so work unchanged on a (B, F, *1s) map
_ELEMENTWISE_MODULES = (
    nn.ReLU,
    nn.LeakyReLU,
    nn.PReLU,
    nn.ELU,
    nn.GELU,
    nn.SiLU,
    nn.Sigmoid,
    nn.Tanh,
    nn.Identity,
    nn.Dropout,
    nn.AlphaDropout,
)


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = getattr(node, "meta", {}).get("tensor_meta") if isinstance(node, fx.Node) else None
    return tuple(meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _set_module(root: nn.Module, target: str, module: nn.Module) -> None:
    parent_name, _, name = target.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, name, module)


def _pool_replacement(kind: str, in_size: tuple[int, ...], out_size: tuple[int, ...], nd: int) -> nn.Module:
    """A fixed pooling equal to an adaptive pooling at the original size, sliding at larger sizes."""
    if in_size == out_size:
        return nn.Identity()
    if any(i % o for i, o in zip(in_size, out_size, strict=True)):
        raise ValueError(
            f"cannot convolutionalise an adaptive pooling from {in_size} to {out_size}: "
            "the feature-map size is not a multiple of the pooled size"
        )
    kernel = tuple(i // o for i, o in zip(in_size, out_size, strict=True))
    # a global pooling (output 1) slides with stride 1 so the score map is dense at larger inputs
    stride = tuple(1 if o == 1 else k for k, o in zip(kernel, out_size, strict=True))
    pool = Pool[Pool.AVG if kind == "avg" else Pool.MAX, nd]
    return pool(kernel_size=kernel, stride=stride)


def convolutionalise(model: nn.Module, input_shape: Sequence[int], *, atol: float = 1e-4) -> nn.Module:
    """Return a fully convolutional copy of a classifier (FCN's convolutionalisation).

    The classifier is traced with ``torch.fx`` and its shapes recorded at ``input_shape``. Then:

    * the first ``nn.Linear`` after a flatten of a ``(B, C, *S)`` feature map becomes a convolution with
      kernel ``S`` (weights reshaped, no padding), and the flatten is removed;
    * later ``nn.Linear`` layers become 1x1 convolutions, ``nn.BatchNorm1d`` on those vectors the N-D batch
      norm, and ``Softmax``/``LogSoftmax`` over the feature dim keep working over channels;
    * adaptive poolings (``AdaptiveAvgPool2d((1, 1))`` of ResNets, ``AdaptiveAvgPool2d(7)`` of VGG) become the
      fixed pooling they perform at ``input_shape`` (global ones slide with stride 1);
    * reshapes that are no-ops at ``input_shape`` (e.g. MONAI ``Regressor``'s final ``reshape``) are dropped.

    At ``input_shape`` the result returns ``(B, K, 1, ..., 1)`` whose ``flatten(1)`` equals the classifier's
    ``(B, K)`` output; this is checked on a random input before returning. At a larger input it returns a
    score map ``(B, K, *s)`` with one classification per window position (the network's total stride apart).

    Args:
        model: a classifier taking ``(B, C, *spatial)`` and returning ``(B, K)``; it is not modified.
        input_shape: the input shape the classifier was built for, batch included, e.g. ``(1, 3, 32, 32)``.
        atol: tolerance of the built-in equality check.

    Returns:
        A ``torch.fx.GraphModule`` (an ``nn.Module``) in the same train/eval mode as ``model``.

    Raises:
        ValueError: if the model cannot be traced, has a Linear that is not fed by a flattened feature map
            or by another converted layer, or if the converted network does not reproduce the classifier.
    """
    shape = tuple(int(s) for s in input_shape)
    nd = len(shape) - 2
    if nd not in (1, 2, 3):
        raise ValueError(
            f"input_shape must be (B, C, *spatial) with 1-3 spatial dims, got {tuple(input_shape)}"
        )
    was_training = model.training
    model = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types for data-dependent control flow
        raise ValueError(f"cannot trace {type(model).__name__} with torch.fx: {exc}") from exc
    example = torch.randn(shape)
    with torch.no_grad():
        ShapeProp(gm).propagate(example)
        expected = model(example)
    if not isinstance(expected, torch.Tensor) or expected.dim() != 2:
        raise ValueError(f"{type(model).__name__} must return (B, K) logits, got {type(expected).__name__}")
    modules = dict(gm.named_modules())

    # state of each node: ("map", S) for a feature map flattened later, ("flat", S) for its flatten,
    # ("vec", ()) for the output of a converted layer and anything computed per element from it
    state: dict[fx.Node, tuple[str, tuple[int, ...]]] = {}
    drop: list[fx.Node] = []  # nodes replaced by their input

    def tensor_inputs(node: fx.Node) -> list[fx.Node]:
        return [a for a in node.all_input_nodes if _shape(a) is not None]

    for node in list(gm.graph.nodes):
        ins = tensor_inputs(node)
        in_states = [state[a] for a in ins if a in state]
        out_shape = _shape(node)
        mod = modules.get(node.target) if node.op == "call_module" else None  # type: ignore[arg-type]

        # adaptive pooling in front of the classifier head
        pool_kind = None
        if mod is not None and isinstance(mod, _ADAPTIVE_AVG + _ADAPTIVE_MAX):
            pool_kind = "avg" if isinstance(mod, _ADAPTIVE_AVG) else "max"
        elif node.op == "call_function" and node.target in _ADAPTIVE_FUNCS:
            pool_kind = _ADAPTIVE_FUNCS[node.target]  # type: ignore[index]
        if pool_kind is not None and ins and out_shape is not None:
            in_shape = _shape(ins[0])
            assert in_shape is not None
            new = _pool_replacement(pool_kind, in_shape[2:], out_shape[2:], nd)
            target = f"_fcn_pool_{len(drop)}_{node.name}"
            gm.add_submodule(target, new)
            with gm.graph.inserting_after(node):
                repl = gm.graph.call_module(target, (ins[0],))
            node.replace_all_uses_with(repl)
            repl.meta = dict(node.meta)
            drop.append(node)
            continue

        is_flatten = (
            (mod is not None and isinstance(mod, nn.Flatten))
            or (node.op == "call_method" and node.target in _FLATTEN_METHODS)
            or (node.op == "call_function" and node.target in _FLATTEN_FUNCS)
        )
        if is_flatten and ins:
            in_shape = _shape(ins[0])
            if in_shape is not None and out_shape is not None:
                if in_shape == out_shape:  # a no-op reshape at the original size
                    if ins[0] in state:
                        state[node] = state[ins[0]]
                    node.replace_all_uses_with(ins[0])
                    drop.append(node)
                    continue
                if len(in_shape) == nd + 2 and len(out_shape) == 2 and ins[0] not in state:
                    state[node] = ("flat", tuple(in_shape[1:]))
                    node.replace_all_uses_with(ins[0])
                    drop.append(node)
                    # the map now flows where the flat vector did: remember how to treat the next Linear
                    state[ins[0]] = ("flat", tuple(in_shape[1:]))
                    continue
            if in_states:
                raise ValueError(f"cannot convolutionalise the reshape {node.format_node()}")

        if mod is not None and isinstance(mod, nn.Linear):
            src = state.get(ins[0]) if ins else None
            if src is None:
                raise ValueError(
                    f"the Linear layer {node.target!r} is not fed by a flattened feature map or by another "
                    "converted layer; cannot convolutionalise it"
                )
            if src[0] == "flat":
                kernel: tuple[int, ...] = src[1][1:]
                in_ch = src[1][0]
            else:
                kernel = (1,) * nd
                in_ch = mod.in_features
            conv = Conv[Conv.CONV, nd](in_ch, mod.out_features, kernel_size=kernel, bias=mod.bias is not None)  # type: ignore[arg-type]
            with torch.no_grad():
                conv.weight.copy_(mod.weight.reshape(mod.out_features, in_ch, *kernel))
                if mod.bias is not None:
                    assert conv.bias is not None
                    conv.bias.copy_(mod.bias)
            _set_module(gm, str(node.target), conv)
            state[node] = ("vec", ())
            continue

        if not in_states or (out_shape is None and node.op != "output"):
            # shape arithmetic (x.shape[0], x.size(1)) is not data: the final equality check guards it
            continue
        if mod is not None and isinstance(mod, nn.BatchNorm1d):
            bn = Norm[Norm.BATCH, nd](mod.num_features, mod.eps, mod.momentum, mod.affine, mod.track_running_stats)
            bn.load_state_dict(mod.state_dict())
            _set_module(gm, str(node.target), bn)
            state[node] = ("vec", ())
            continue
        if mod is not None and isinstance(mod, (nn.Softmax, nn.LogSoftmax)):
            if mod.dim not in (1, -1, None):
                raise ValueError(f"cannot convolutionalise {node.target!r}: softmax over dim {mod.dim}")
            mod.dim = 1  # the feature dim of (B, K) is the channel dim of (B, K, *s)
            state[node] = ("vec", ())
            continue
        if (node.op == "call_function" and node.target in _SOFTMAX_FUNCS) or (
            node.op == "call_method" and node.target in ("softmax", "log_softmax")
        ):
            dim = node.kwargs.get("dim", node.args[1] if len(node.args) > 1 else None)
            if dim not in (1, -1):
                raise ValueError(f"cannot convolutionalise {node.format_node()}: softmax over dim {dim}")
            node.kwargs = {**node.kwargs, "dim": 1}
            if len(node.args) > 1:
                node.args = (node.args[0], 1, *node.args[2:])
            state[node] = ("vec", ())
            continue
        elementwise = (
            (mod is not None and isinstance(mod, _ELEMENTWISE_MODULES))
            or (node.op == "call_function" and node.target in _ELEMENTWISE_FUNCS)
            or (node.op == "call_method" and node.target in ("relu", "sigmoid", "tanh", "contiguous"))
        )
        if elementwise and all(s[0] == in_states[0][0] for s in in_states):
            state[node] = in_states[0] if in_states[0][0] != "flat" else ("flat", in_states[0][1])
            continue
        if node.op == "output":
            continue
        raise ValueError(
            f"cannot convolutionalise {node.format_node()}: it operates on the flattened classifier features"
        )

    for node in reversed(drop):
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    gm.eval()  # modules created above start in training mode
    with torch.no_grad():
        got = gm(example)
    if got.shape[:2] != expected.shape or any(s != 1 for s in got.shape[2:]):
        raise ValueError(
            f"convolutionalised output has shape {tuple(got.shape)}, expected {tuple(expected.shape)}"
        )
    if not torch.allclose(got.flatten(1), expected, atol=atol, rtol=1e-4):
        err = (got.flatten(1) - expected).abs().max().item()
        raise ValueError(f"convolutionalised network differs from the classifier (max abs error {err:.3g})")
    return gm.train(was_training)


def _state_dict(source: nn.Module | Mapping[str, torch.Tensor]) -> Mapping[str, torch.Tensor]:
    return source.state_dict() if isinstance(source, nn.Module) else source


def inflate_2d_to_3d(
    source: nn.Module | Mapping[str, torch.Tensor],
    model_3d: nn.Module,
    mode: Literal["average", "center"] = "average",
) -> nn.Module:
    """Load 2D weights into a 3D network of the same configuration, I3D style; depth is the last axis.

    Every 3D parameter whose 2D counterpart lacks the last (depth) kernel axis is inflated:

    * convolutions, ``mode="average"``: the 2D kernel divided by ``kd`` at every depth tap (I3D's
      "repeat and rescale"); ``mode="center"``: the 2D kernel at the central tap, zeros elsewhere;
    * transposed convolutions (FCN upsampling), either mode: the 2D kernel at ``stride`` consecutive depth taps
      starting at the padding, so each output slice receives exactly one tap (nearest-neighbour along depth);
    * everything else (biases, norm parameters and buffers, 1x1x1 heads) is copied unchanged.

    When is the 3D network's answer on a volume of identical slices the 2D answer on each slice?

    * ``"center"``: exactly, for any padding, with any depth-invariant normalisation (instance, batch in
      eval, group, layer norm over channels), since no kernel mixes slices;
    * ``"average"``: exactly when depth padding reproduces the slices (``FCN(padding_mode="replicate")``,
      for both the 2D and the 3D network) or the depth kernel is 1. With zero padding, the first and last
      slices see ``(kd - 1) / kd`` of the signal; without normalisation layers that is the "up to scale"
      difference, and with instance norm the per-volume statistics shift all slices a little.

    Args:
        source: the 2D network or its ``state_dict``.
        model_3d: the 3D network to fill (same module names; modified in place and returned).
        mode: ``"average"`` or ``"center"``.

    Returns:
        ``model_3d`` with the inflated weights loaded.

    Raises:
        ValueError: for an unknown mode, missing or unexpected keys, or shapes that do not inflate.
    """
    if mode not in ("average", "center"):
        raise ValueError(f"mode must be 'average' or 'center', got {mode!r}")
    src = _state_dict(source)
    target = model_3d.state_dict()
    missing = sorted(set(target) - set(src))
    unexpected = sorted(set(src) - set(target))
    if missing or unexpected:
        raise ValueError(
            f"2D and 3D networks differ: missing in 2D {missing[:5]}, not in 3D {unexpected[:5]} "
            "(build both with the same configuration)"
        )
    # MONAI copies every entry of the same shape (biases, norms, 1x1x1 heads); the kernels are inflated here
    new, _, to_inflate = copy_model_state(model_3d, src, inplace=False)
    for key in to_inflate:
        t3 = target[key]
        s2 = src[key].to(dtype=t3.dtype)
        if s2.dim() + 1 != t3.dim() or tuple(t3.shape[:-1]) != tuple(s2.shape):
            raise ValueError(
                f"cannot inflate {key!r}: 2D shape {tuple(s2.shape)} vs 3D shape {tuple(t3.shape)}"
            )
        kd = t3.shape[-1]
        owner_name = key.rpartition(".")[0]
        owner = model_3d.get_submodule(owner_name) if owner_name else model_3d
        out = torch.zeros_like(t3)
        if isinstance(owner, nn.ConvTranspose3d):
            stride, pad = int(owner.stride[-1]), int(owner.padding[-1])
            if pad + stride > kd:
                raise ValueError(
                    f"cannot inflate {key!r}: depth kernel {kd} < padding {pad} + stride {stride}"
                )
            out[..., pad : pad + stride] = s2.unsqueeze(-1)
        elif mode == "average":
            out[...] = s2.unsqueeze(-1) / kd
        else:
            out[..., kd // 2] = s2
        new[key] = out
    model_3d.load_state_dict(new)
    return model_3d
