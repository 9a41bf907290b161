"""gzip by ISA-L, and work done ahead of time: the next take of the same, unchanged file gets its result."""

from __future__ import annotations

import gzip
import os
import threading
from pathlib import Path

import pytest

from medfcn.data import ahead
from medfcn.data.gzip_io import GZIP_ERRORS, gunzip, gzip_writer


@pytest.fixture(autouse=True)
def _nothing_ahead() -> None:
    ahead.forget()


def test_the_result_of_work_ahead_is_taken_once(tmp_path: Path) -> None:
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(gzip.compress(b"voxels" * 1000))
    calls: list[str] = []
    work = lambda p: calls.append(p) or gunzip(p)  # noqa: E731
    assert ahead.start(path, "bytes", work) is True
    assert ahead.start(tmp_path / "." / "ct.nii.gz", "bytes", work) is False  # the same file and kind: once
    assert ahead.pending() == [("bytes", os.path.realpath(path))]
    assert ahead.take(path, "other kind") == (False, None)
    assert ahead.take(path, "bytes") == (True, b"voxels" * 1000)
    assert calls == [os.path.realpath(path)] and ahead.pending() == []
    assert ahead.take(path, "bytes") == (False, None)  # taken: a second take finds nothing


def test_a_file_changed_after_the_start_is_not_taken(tmp_path: Path) -> None:
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(gzip.compress(b"old"))
    assert ahead.start(path, "bytes", gunzip)
    path.write_bytes(gzip.compress(b"the new content, longer"))
    os.utime(path, ns=(1, 1))
    assert ahead.take(path, "bytes") == (False, None)
    assert ahead.start(tmp_path / "missing.nii.gz", "bytes", gunzip) is False


def test_errors_of_the_work_ahead_are_raised_by_take(tmp_path: Path) -> None:
    raw = gzip.compress(os.urandom(50_000))
    cut = tmp_path / "cut.nii.gz"
    cut.write_bytes(raw[: len(raw) // 2])
    assert ahead.start(cut, "bytes", gunzip)
    with pytest.raises(GZIP_ERRORS):
        ahead.take(cut, "bytes")
    with pytest.raises(GZIP_ERRORS):
        gunzip(cut)


def test_forget_drops_what_no_one_took_and_take_waits_for_running_work(tmp_path: Path) -> None:
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(gzip.compress(b"abc"))
    assert ahead.start(path, "bytes", gunzip)
    ahead.forget()
    assert ahead.pending() == []
    release = threading.Event()

    def slow(p: str) -> bytes:
        release.wait(10)
        return gunzip(p)

    assert ahead.start(path, "bytes", slow)
    threading.Timer(0.2, release.set).start()
    assert ahead.take(path, "bytes") == (True, b"abc")  # waited for the background work


def test_gzip_writer_writes_what_gzip_reads(tmp_path: Path) -> None:
    path = tmp_path / "mask.nii.gz"
    with gzip_writer(path, level=1) as f:
        f.write(b"\x00\x01" * 5000)
    assert gzip.decompress(path.read_bytes()) == b"\x00\x01" * 5000 == gunzip(path)
