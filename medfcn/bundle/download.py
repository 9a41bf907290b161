"""Fetch a bundle's large files (weights) as listed in its ``large_files.yml``, as the model zoo does.

The model zoo keeps weights out of git and lists them in ``large_files.yml`` (or ``.yaml``/``.json``)
at the bundle root::

    large_files:
      - path: "models/model.pt"
        url: "https://.../model.pt"
        hash_val: "be4fa95e236df91766147c112ee6fafd"
        hash_type: "md5"

:func:`download_large_files` fetches each entry into the bundle: from an ``http(s)://`` URL, a
``file://`` URI or a local path (absolute, or relative to the bundle). The file is written to a
temporary name beside its target, its hash checked where one is given (``md5``, ``sha1``,
``sha256``, ``sha512``), and only then renamed into place, so a failed or corrupt download never
leaves a file under the final name. A file that is already present with the right hash is kept.

MONAI's ``download_large_files`` does the same job with its downloader; this one is medfcn's so that
a local mirror path works, nothing is written on a hash mismatch, and errors are one line.

Example:
    >>> from medfcn.bundle.download import download_large_files
    >>> [(r.path, r.status) for r in download_large_files("bundles/liver")]  # doctest: +SKIP
    [('models/model.pt', 'present')]
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import unquote, urlparse

from medfcn._io import atomic_write
from medfcn.errors import BundleError, one_line

__all__ = ["LARGE_FILES_NAMES", "Fetched", "LargeFile", "download_large_files", "read_large_files"]

LARGE_FILES_NAMES = ("large_files.yml", "large_files.yaml", "large_files.json")
"""Where a bundle lists its large files, in the order they are looked for."""

_HASHES = ("md5", "sha1", "sha256", "sha512")
_CHUNK = 1 << 20


@dataclass(frozen=True)
class LargeFile:
    """One entry of ``large_files.yml``: bundle-relative ``path``, ``url``, optional hash."""

    path: str
    url: str
    hash_val: str | None = None
    hash_type: str = "md5"


@dataclass(frozen=True)
class Fetched:
    """What :func:`download_large_files` did with one entry.

    Attributes:
        path: bundle-relative path.
        status: ``downloaded`` (fetched now) or ``present`` (kept: already there, hash matching).
        hash_checked: whether a hash was given and matched.
        size: bytes of the file.
    """

    path: str
    status: Literal["downloaded", "present"]
    hash_checked: bool
    size: int


def _manifest(root: Path) -> Path | None:
    for name in LARGE_FILES_NAMES:
        if (root / name).is_file():
            return root / name
    return None


def read_large_files(bundle: str | os.PathLike[str]) -> list[LargeFile]:
    """The entries of the bundle's ``large_files.yml`` (``[]`` when it has none).

    Raises:
        BundleError: unreadable file, an entry without ``path``/``url``, a path leaving the bundle, or an
            unknown hash type.
    """
    root = Path(bundle).resolve()
    file = _manifest(root)
    if file is None:
        return []
    try:
        text = file.read_text(encoding="utf-8")
        if file.suffix == ".json":
            data: Any = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as err:  # OSError, JSON/YAML syntax errors: the file is unusable either way
        raise BundleError(f"{file}: cannot be read ({one_line(err)})") from err
    entries = data.get("large_files") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise BundleError(f'{file}: expected a "large_files" list of {{path, url, hash_val, hash_type}}')
    out = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("path"), str) or not isinstance(entry.get("url"), str):
            raise BundleError(f"{file}: entry {i} needs a path and a url, found {entry!r}")
        target = (root / entry["path"]).resolve()
        if not target.is_relative_to(root):
            raise BundleError(f"{file}: entry {i} path {entry['path']!r} leaves the bundle folder")
        hash_type = str(entry.get("hash_type") or "md5").lower()
        if hash_type not in _HASHES:
            raise BundleError(f"{file}: entry {i} hash_type {hash_type!r} is not one of {', '.join(_HASHES)}")
        hash_val = entry.get("hash_val")
        out.append(LargeFile(entry["path"], entry["url"], str(hash_val) if hash_val else None, hash_type))
    return out


def _digest(path: Path, hash_type: str) -> str:
    h = hashlib.new(hash_type)
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(_CHUNK), b""):
            h.update(chunk)
    return h.hexdigest()


def _local_source(url: str, root: Path) -> Path | None:
    """The file behind a ``file://`` URI or a plain path (relative to the bundle), else ``None``."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if "://" in url:
        return None
    p = Path(url).expanduser()
    return p if p.is_absolute() else root / p


def _fetch(url: str, root: Path, dest: Path, timeout: float) -> None:
    local = _local_source(url, root)
    if local is not None:
        if not local.is_file():
            raise BundleError(f"{local} does not exist (the url of a large file); check large_files.yml")
        shutil.copyfile(local, dest)
        return
    if urlparse(url).scheme not in ("http", "https"):
        raise BundleError(f"cannot fetch {url}: only http(s)://, file:// and local paths are supported")
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response, dest.open("wb") as fh:
            shutil.copyfileobj(response, fh, _CHUNK)
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        reason = f"HTTP {err.code} {err.reason}" if isinstance(err, urllib.error.HTTPError) else getattr(err, "reason", None) or err
        raise BundleError(f"could not download {url}: {reason}; check the network or fetch it by hand") from err


def _fetch_checked(entry: LargeFile, root: Path, dest: Path, timeout: float) -> None:
    """Fetch ``entry`` into ``dest`` and check its hash: a mismatch raises, so nothing is renamed into place."""
    _fetch(entry.url, root, dest, timeout)
    if entry.hash_val is not None:
        got = _digest(dest, entry.hash_type)
        if got != entry.hash_val.lower():
            raise BundleError(
                f"{entry.path} from {entry.url} does not match {entry.hash_type} {entry.hash_val} "
                f"(got {got}); the download is corrupt or another version, nothing was written"
            )


def download_large_files(
    bundle: str | os.PathLike[str],
    *,
    overwrite: bool = False,
    timeout: float = 60.0,
    report: Callable[[Fetched], None] | None = None,
) -> list[Fetched]:
    """Fetch every file of the bundle's ``large_files.yml`` that is missing or has another hash.

    Args:
        bundle: bundle folder.
        overwrite: fetch again even files that are present with the right hash.
        timeout: seconds to wait for an HTTP server.
        report: called after each file (the CLI prints a line).

    Returns:
        One :class:`Fetched` per entry.

    Raises:
        BundleError: no ``large_files.yml``, a source that cannot be fetched, or a hash mismatch (the
            fetched data is discarded; a file already in place is left as it was).
    """
    root = Path(bundle).resolve()
    if not root.is_dir():
        raise BundleError(f"{bundle}: not a bundle folder")
    entries = read_large_files(root)
    if not entries:
        raise BundleError(f"{root} has no large_files.yml listing files to download")
    results = []
    for entry in entries:
        target = root / entry.path
        if target.is_file() and not overwrite and (
            entry.hash_val is None or _digest(target, entry.hash_type) == entry.hash_val.lower()
        ):
            result = Fetched(entry.path, "present", entry.hash_val is not None, target.stat().st_size)
        else:
            atomic_write(target, functools.partial(_fetch_checked, entry, root, timeout=timeout))
            result = Fetched(entry.path, "downloaded", entry.hash_val is not None, target.stat().st_size)
        results.append(result)
        if report is not None:
            report(result)
    return results
