"""``medfcn bundle download``: large_files.yml over a loopback HTTP server and from local paths, hashes checked."""

from __future__ import annotations

import functools
import hashlib
import http.server
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _zoo import spleen_like

from medfcn.bundle.download import download_large_files, read_large_files
from medfcn.cli.main import app
from medfcn.engine.inference import Segmenter
from medfcn.errors import BundleError

runner = CliRunner()
LIVER = Path(__file__).resolve().parents[2] / "bundles" / "liver"


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A loopback HTTP server on a free port serving ``tmp_path/www`` (never the internet)."""
    www = tmp_path / "www"
    www.mkdir()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(www)))
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", www
    finally:
        httpd.shutdown()
        httpd.server_close()


def _published(tmp_path: Path) -> tuple[Path, Path, str]:
    """A spleen-like bundle whose weights were moved out (as the zoo's git tree has them): (bundle, file, md5)."""
    bundle = spleen_like(tmp_path / "bundle")
    weights = tmp_path / "model.pt"
    (bundle / "models" / "model.pt").rename(weights)
    return bundle, weights, hashlib.md5(weights.read_bytes()).hexdigest()


def _manifest(bundle: Path, url: str, md5: str | None) -> None:
    entry = {"path": "models/model.pt", "url": url, "hash_type": "md5"}
    if md5:
        entry["hash_val"] = md5
    (bundle / "large_files.yml").write_text(yaml.safe_dump({"large_files": [entry]}))


def test_download_over_http_checks_the_hash_then_the_bundle_runs(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, www = server
    bundle, weights, md5 = _published(tmp_path)
    (www / "model.pt").write_bytes(weights.read_bytes())
    _manifest(bundle, f"{url}/model.pt", md5)
    result = runner.invoke(app, ["bundle", "download", "--bundle", str(bundle)])
    assert result.exit_code == 0, result.output
    assert "models/model.pt: downloaded" in result.output and "hash ok" in result.output
    assert (bundle / "models" / "model.pt").read_bytes() == weights.read_bytes()
    assert Segmenter(bundle, device="cpu").weights == "models/model.pt"
    again = download_large_files(bundle)
    assert [r.status for r in again] == ["present"]


def test_hash_mismatch_writes_nothing_and_is_one_line(tmp_path: Path, server: tuple[str, Path]) -> None:
    url, www = server
    bundle, weights, md5 = _published(tmp_path)
    (www / "model.pt").write_bytes(weights.read_bytes()[:-10])  # a truncated upload
    _manifest(bundle, f"{url}/model.pt", md5)
    result = runner.invoke(app, ["bundle", "download", "--bundle", str(bundle)])
    assert result.exit_code == 1
    lines = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and f"does not match md5 {md5}" in lines[0] and "Traceback" not in result.output
    assert sorted(p.name for p in (bundle / "models").iterdir()) == []  # no temp file, no bad model.pt
    _manifest(bundle, f"{url}/missing.pt", md5)
    with pytest.raises(BundleError, match=r"could not download http://127.0.0.1:\d+/missing.pt: HTTP 404"):
        download_large_files(bundle)


def test_local_path_and_file_uri_without_hash(tmp_path: Path) -> None:
    bundle, weights, _ = _published(tmp_path)
    _manifest(bundle, "../model.pt", None)  # relative to the bundle, as a mirror next to it
    [r] = download_large_files(bundle)
    assert r.status == "downloaded" and not r.hash_checked
    _manifest(bundle, weights.as_uri(), None)
    [r] = download_large_files(bundle, overwrite=True)
    assert r.status == "downloaded" and (bundle / "models" / "model.pt").read_bytes() == weights.read_bytes()
    assert weights.is_file(), "the source is only read"


def test_bad_manifests(tmp_path: Path) -> None:
    bundle, _, _ = _published(tmp_path)
    with pytest.raises(BundleError, match=r"has no large_files\.yml"):
        download_large_files(bundle)
    (bundle / "large_files.yml").write_text(yaml.safe_dump({"large_files": [{"path": "../../etc/x", "url": "a"}]}))
    with pytest.raises(BundleError, match=r"path '../../etc/x' leaves the bundle folder"):
        read_large_files(bundle)
    (bundle / "large_files.yml").write_text("large_files:\n  - path: models/model.pt\n    url: x\n    hash_type: crc\n")
    with pytest.raises(BundleError, match="hash_type 'crc' is not one of md5"):
        read_large_files(bundle)


def test_liver_bundle_ships_a_manifest_and_data_license() -> None:
    [entry] = read_large_files(LIVER)
    assert entry.path == "models/model.pt" and entry.hash_type == "md5"
    text = (LIVER / "docs" / "data_license.txt").read_text()
    assert "CC BY-SA 4.0" in text and "Task03_Liver" in text
