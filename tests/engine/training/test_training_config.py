"""Checks before a training is built: overrides (medfcn.engine.training.config)."""

from __future__ import annotations

import pytest

from medfcn.engine.training import parse_overrides
from medfcn.errors import InputError


def test_parse_overrides_json_and_strings() -> None:
    got = parse_overrides(["lr=0.01", "patch_size=[64, 64, 32]", "name=abc", "flag=true", "a#b=$@x + 1"])
    assert got == {"lr": 0.01, "patch_size": [64, 64, 32], "name": "abc", "flag": True, "a#b": "$@x + 1"}
    with pytest.raises(InputError, match="key=value"):
        parse_overrides(["no_equals_sign"])
