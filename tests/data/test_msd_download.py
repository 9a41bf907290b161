"""MSD downloads, from a server the test runs itself (medfcn.data.msd_download)."""

from __future__ import annotations

import functools
import hashlib
import http.server
import shutil
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from medfcn.data.msd import load_datalist, msd_tasks
from medfcn.data.msd_download import download_msd
from medfcn.data.synthetic import write_msd_dataset
from medfcn.errors import DataError


def _make_task_archive(folder: Path, task: str) -> tuple[Path, str]:
    """A small MSD-style tar archive (``<task>/dataset.json`` + one image/label pair) and its md5."""
    ds = write_msd_dataset(folder / "src" / task, num_train=1, num_test=0, shape=(12, 12, 8), seed=2)
    archive = folder / "www" / f"{task}.tar"
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w") as tar:
        tar.add(ds, arcname=task)
    return archive, hashlib.md5(archive.read_bytes()).hexdigest()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:  # keep pytest output clean
        pass


@pytest.fixture
def http_root(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Serve ``tmp_path/www`` on 127.0.0.1 from a thread; the server stops when the test ends."""
    www = tmp_path / "www"
    www.mkdir()
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(www))
    )
    server.timeout = 5
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", www
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_download_verifies_md5_and_extracts(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base_url, www = http_root
    archive, md5 = _make_task_archive(tmp_path / "build", "Task99_Tiny")
    shutil.copy(archive, www / archive.name)
    out = tmp_path / "data"
    target = download_msd("Task99_Tiny", out, url=f"{base_url}/Task99_Tiny.tar", md5=md5, progress=False)
    assert target == out / "Task99_Tiny"
    assert load_datalist(target)["training"][0]["image"].endswith("imagesTr/liver_000.nii.gz")
    assert sorted(p.name for p in out.iterdir()) == ["Task99_Tiny"]  # archive and staging folder cleaned up
    # Already there: no second download, even with the server gone.
    (www / archive.name).unlink()
    assert (
        download_msd("Task99_Tiny", out, url=f"{base_url}/Task99_Tiny.tar", md5=md5, progress=False) == target
    )


def test_download_with_wrong_md5_fails_and_leaves_nothing(
    tmp_path: Path, http_root: tuple[str, Path]
) -> None:
    base_url, www = http_root
    archive, _ = _make_task_archive(tmp_path / "build", "Task99_Tiny")
    shutil.copy(archive, www / archive.name)
    out = tmp_path / "data"
    with pytest.raises(DataError, match="does not match md5 0123456789abcdef0123456789abcdef"):
        download_msd(
            "Task99_Tiny", out, url=f"{base_url}/Task99_Tiny.tar", md5="0123456789abcdef" * 2, progress=False
        )
    assert list(out.iterdir()) == []


def test_download_from_an_archive_on_disk(tmp_path: Path) -> None:
    archive, md5 = _make_task_archive(tmp_path / "build", "Task99_Tiny")
    before = archive.read_bytes()
    with pytest.raises(DataError, match=f"Task99_Tiny from {archive} does not match md5"):
        download_msd("Task99_Tiny", tmp_path / "data", url=str(archive), md5="f" * 32)
    assert archive.read_bytes() == before  # the user's file is never removed or changed
    target = download_msd("Task99_Tiny", tmp_path / "data", url=archive.as_uri(), md5=md5)
    assert (target / "labelsTr" / "liver_000.nii.gz").is_file()
    assert archive.read_bytes() == before
    with pytest.raises(DataError, match="does not exist"):
        download_msd("Task98_Gone", tmp_path / "data", url=str(tmp_path / "nope.tar"))
    (tmp_path / "junk.tar").write_bytes(b"not a tar archive")
    with pytest.raises(DataError, match=r"cannot extract .*junk\.tar"):
        download_msd("Task97_Junk", tmp_path / "data", url=str(tmp_path / "junk.tar"))
    assert sorted(p.name for p in (tmp_path / "data").iterdir()) == ["Task99_Tiny"]


def test_download_offline_is_a_clear_error(tmp_path: Path, http_root: tuple[str, Path]) -> None:
    base_url, _ = http_root
    with pytest.raises(
        DataError, match=r"could not download Task99_Tiny from .*/missing.tar: .*404.*check your network"
    ):
        download_msd("Task99_Tiny", tmp_path / "data", url=f"{base_url}/missing.tar", progress=False)
    with socket.socket() as sock:  # a port nobody listens on: connection refused, like being offline
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    url = f"http://127.0.0.1:{port}/Task03_Liver.tar"
    with pytest.raises(
        DataError, match=rf"could not download Task03_Liver from {url}: .*download it by hand and pass --data"
    ):
        download_msd("Task03_Liver", tmp_path / "data", url=url, progress=False)
    assert not (tmp_path / "data" / "Task03_Liver").exists()


def test_download_knows_the_msd_tasks(tmp_path: Path) -> None:
    tasks = msd_tasks()
    assert tasks["Task03_Liver"][0].endswith("/Task03_Liver.tar") and len(tasks["Task03_Liver"][1]) == 32
    assert len(tasks) == 10
    with pytest.raises(DataError, match="unknown MSD task 'Task42_Brain'; choose one of Task01_BrainTumour"):
        download_msd("Task42_Brain", tmp_path)
