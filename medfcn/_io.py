"""File-system helpers of the base layer: atomic writes (every output medfcn creates goes to a temp file or
folder beside it and is renamed into place, so an interrupted run never leaves half a file under the final
name), and the file hasher."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "atomic_dir",
    "atomic_write",
    "atomic_write_json",
    "atomic_write_text",
    "file_sha256",
]

_UMASK = os.umask(0o022)  # read the process umask (os.umask sets and returns it) ...
os.umask(_UMASK)  # ... and put it back at once


def atomic_write(path: str | os.PathLike[str], write: Callable[[Path], object]) -> None:
    """Call ``write(tmp)`` on a temp file beside ``path`` (same suffixes), then rename it onto ``path``.

    The temp name starts with a dot and contains ``.tmp`` (``.mask.abc123.tmp.nii.gz``), so an interrupted
    run's leftovers are recognisable; the suffixes are kept because writers pick the format from them. The
    parent folder is created; the file gets the usual permissions (``mkstemp`` alone would make it 0600).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(Path(target.name).suffixes) or ".tmp"
    fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name.split('.')[0]}.", suffix=f".tmp{suffix}")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


@contextmanager
def atomic_dir(path: str | os.PathLike[str], *, replace: bool = False) -> Iterator[Path]:
    """Build a folder in a hidden temp folder beside ``path``; rename it onto ``path`` if the block succeeds.

    Yields the temp folder to fill. On an exception the temp folder is removed and ``path`` is untouched.
    An existing ``path`` is an error (``FileExistsError``) unless ``replace``, in which case it is swapped
    out only once the new folder is complete.
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() and not replace:
        raise FileExistsError(f"{target} already exists")
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_UMASK)
        if target.exists():
            old = target.with_name(f".{target.name}.old{os.getpid()}")
            os.replace(target, old)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` (UTF-8) atomically."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: str | os.PathLike[str], payload: Any, *, indent: int = 2) -> None:
    """Write ``payload`` as JSON (non-JSON values as ``str``) atomically, with a final newline."""
    atomic_write_text(path, json.dumps(payload, indent=indent, default=str) + "\n")


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The sha256 hex digest of a file, read in 1 MiB blocks (weights can be large)."""
    import hashlib

    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
