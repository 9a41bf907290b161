"""The flat base layer: one atomic writer for files and folders, one exception-to-line formatter."""

from __future__ import annotations

from pathlib import Path

import pytest

from medfcn._io import atomic_dir, atomic_write_text
from medfcn.errors import InputError, one_line, root_cause


def test_one_line_takes_the_first_non_empty_line() -> None:
    assert one_line(InputError("\n  scan.nii.gz: not a NIfTI file\nTraceback...")) == "scan.nii.gz: not a NIfTI file"
    assert one_line(ValueError("")) == "ValueError"
    assert one_line(KeyError("image")) == "'image'"


def test_one_line_of_the_root_cause_names_its_type() -> None:
    try:
        try:
            raise ValueError("patch_size must have 3 values\nmore detail")
        except ValueError as inner:
            raise RuntimeError("Failed to instantiate {'_target_': 'FCN'}") from inner
    except RuntimeError as err:
        assert one_line(root_cause(err), typed=True) == "ValueError: patch_size must have 3 values"
        assert root_cause(ValueError("x")).args == ("x",)
    assert one_line(ValueError(""), typed=True) == "ValueError"



def test_atomic_write_text_leaves_no_temp_file(tmp_path: Path) -> None:
    atomic_write_text(tmp_path / "a" / "x.json", "{}\n")
    assert (tmp_path / "a" / "x.json").read_text() == "{}\n"
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["x.json"]


def test_atomic_dir_appears_complete_or_not_at_all(tmp_path: Path) -> None:
    target = tmp_path / "case_0001"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "mask.nii.gz").write_bytes(b"half")
        raise RuntimeError("interrupted")
    assert not target.exists() and list(tmp_path.iterdir()) == []

    with atomic_dir(target) as tmp:
        (tmp / "mask.nii.gz").write_bytes(b"whole")
    assert (target / "mask.nii.gz").read_bytes() == b"whole"
    assert [p.name for p in tmp_path.iterdir()] == ["case_0001"]


def test_atomic_dir_replaces_only_when_asked(tmp_path: Path) -> None:
    target = tmp_path / "out"
    with atomic_dir(target) as tmp:
        (tmp / "v").write_text("1")
    with pytest.raises(FileExistsError), atomic_dir(target):
        pass
    with atomic_dir(target, replace=True) as tmp:
        (tmp / "v").write_text("2")
    assert (target / "v").read_text() == "2"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
