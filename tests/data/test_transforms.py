"""FastAsDiscrete(d) gives exactly what MONAI's AsDiscrete(d) gives, metadata included."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import AsDiscrete, AsDiscreted

from medfcn.data.transforms import FastAsDiscrete, FastAsDiscreted, channel_argmax


def _meta_probs(shape: tuple[int, ...], seed: int = 0) -> MetaTensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(shape, generator=g)
    affine = torch.tensor([[0.0, -1.5, 0, 10], [1.2, 0, 0, -4], [0, 0, 3.0, 7], [0, 0, 0, 1]], dtype=torch.float64)
    mt = MetaTensor(x, affine=affine, meta={"filename_or_obj": "case.nii.gz"})
    mt.applied_operations.append({"class": "Spacing", "id": 1})
    return mt


@pytest.mark.parametrize("shape", [(3, 37, 41, 29), (2, 5, 7), (4, 1, 1, 1)])
def test_argmax_equals_monai_with_metadata(shape: tuple[int, ...]) -> None:
    x = _meta_probs(shape)
    ref = AsDiscrete(argmax=True)(x)
    out = FastAsDiscrete(argmax=True)(x)
    assert isinstance(out, MetaTensor)
    assert out.shape == ref.shape == (1, *shape[1:])
    assert out.dtype == ref.dtype
    assert torch.equal(out, ref)
    assert torch.equal(out.affine, ref.affine)
    assert out.meta["filename_or_obj"] == "case.nii.gz"
    assert out.applied_operations == ref.applied_operations


def test_ties_and_nan_follow_torch_argmax() -> None:
    nan = float("nan")
    x = torch.tensor(
        [
            [1.0, nan, 0.5, 0.2, 0.3],
            [1.0, 0.3, nan, 0.2, 0.3],
            [0.0, nan, 0.5, 0.2, 0.4],
        ]
    )
    assert torch.equal(channel_argmax(x, 0, keepdim=False), torch.argmax(x, 0))
    assert channel_argmax(x, 0, keepdim=False).tolist() == [0, 0, 1, 0, 2]  # first maximum wins a tie


def test_dictionary_version_with_onehot_and_mixed_keys() -> None:
    pred = _meta_probs((3, 9, 8, 7), seed=1)
    label = MetaTensor(torch.randint(0, 3, (1, 9, 8, 7)).float(), affine=pred.affine)
    kw = {"keys": ["pred", "label"], "argmax": [True, False], "to_onehot": 3}
    ref = AsDiscreted(**kw)({"pred": pred, "label": label})
    out = FastAsDiscreted(**kw)({"pred": pred, "label": label})
    for key in ("pred", "label"):
        assert out[key].shape == ref[key].shape == (3, 9, 8, 7)
        assert torch.equal(out[key], ref[key])


def test_numpy_input_and_dtype_kwarg() -> None:
    x = np.random.default_rng(0).random((3, 6, 5, 4)).astype(np.float32)
    ref = AsDiscrete(argmax=True, dtype=torch.uint8)(x)
    out = FastAsDiscrete(argmax=True, dtype=torch.uint8)(x)
    assert out.dtype == ref.dtype == torch.uint8
    assert torch.equal(torch.as_tensor(out), torch.as_tensor(ref))


def test_without_argmax_it_is_monai() -> None:
    x = _meta_probs((2, 4, 4, 4), seed=2)
    assert torch.equal(FastAsDiscrete(threshold=0.5)(x), AsDiscrete(threshold=0.5)(x))
