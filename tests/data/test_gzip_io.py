"""Inflating ahead of time: the next gunzip of the same, unchanged file takes the bytes; anything else reads."""

from __future__ import annotations

import gzip
import os
import threading
from pathlib import Path

import pytest

from medfcn.data import gzip_io
from medfcn.data.gzip_io import GZIP_ERRORS, forget_ahead, gunzip, gunzip_ahead, gzip_writer


@pytest.fixture(autouse=True)
def _nothing_ahead() -> None:
    forget_ahead()


def _pending() -> set[str]:
    with gzip_io._lock:
        return set(gzip_io._ahead)


def test_the_bytes_inflated_ahead_are_taken_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(gzip.compress(b"voxels" * 1000))
    assert gunzip_ahead(path) is True
    assert gunzip_ahead(tmp_path / "." / "ct.nii.gz") is False  # the same file: one read-ahead at a time
    assert _pending() == {os.path.realpath(path)}
    reads: list[str] = []
    real = gzip_io._inflate
    monkeypatch.setattr(gzip_io, "_inflate", lambda p: reads.append(str(p)) or real(p))
    assert gunzip(path) == b"voxels" * 1000
    assert reads == [] and _pending() == set()  # taken from the read-ahead, not read again
    assert gunzip(path) == b"voxels" * 1000
    assert reads == [str(path)]  # a second call reads the file itself


def test_a_file_changed_after_the_read_ahead_is_read_again(tmp_path: Path) -> None:
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(gzip.compress(b"old"))
    assert gunzip_ahead(path)
    done = next(iter(gzip_io._ahead.values())).done
    assert done.wait(10)
    path.write_bytes(gzip.compress(b"the new content, longer"))
    os.utime(path, ns=(1, 1))
    assert gunzip(path) == b"the new content, longer"


def test_errors_of_the_read_ahead_are_raised_by_gunzip(tmp_path: Path) -> None:
    raw = gzip.compress(os.urandom(50_000))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    assert gunzip_ahead(cut)
    with pytest.raises(GZIP_ERRORS):
        gunzip(cut)
    assert gunzip_ahead(tmp_path / "missing.nii.gz") is False
    with pytest.raises(FileNotFoundError):
        gunzip(tmp_path / "missing.nii.gz")


def test_forget_drops_what_no_one_took_and_the_reader_waits_for_a_running_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(gzip.compress(b"abc"))
    assert gunzip_ahead(path)
    forget_ahead()
    assert _pending() == set()
    release = threading.Event()
    real = gzip_io._inflate

    def slow(p: str) -> bytes:
        release.wait(10)
        return real(p)

    monkeypatch.setattr(gzip_io, "_inflate", slow)
    assert gunzip_ahead(path)
    monkeypatch.setattr(gzip_io, "_inflate", lambda p: pytest.fail("read again instead of waiting"))
    threading.Timer(0.2, release.set).start()
    assert gunzip(path) == b"abc"  # waited for the background inflation


def test_gzip_writer_writes_what_gzip_reads(tmp_path: Path) -> None:
    path = tmp_path / "mask.nii.gz"
    with gzip_writer(path, level=1) as f:
        f.write(b"\x00\x01" * 5000)
    assert gzip.decompress(path.read_bytes()) == b"\x00\x01" * 5000 == gunzip(path)
