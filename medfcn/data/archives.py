"""Zip archives of studies (what PACS exports and web viewers download): extracted to a temporary folder.

:func:`medfcn.data.discovery.find_cases` treats a ``.zip`` file (or any file that starts like one) as a
folder: :func:`extract_zip` unpacks it into a fresh temporary folder outside the input and the output,
discovery walks that folder as if it were ``<archive>/`` (case sources and skip paths read
``study.zip/series/...``), and the :class:`TemporaryTree` removes it when the discovery report is closed,
garbage-collected, or the interpreter exits, whatever happened in between. The archive itself is only
read.

Extraction rather than reading members in place: SimpleITK/GDCM and nibabel need file paths, and one
extraction costs what a read of every member would cost anyway.

What is refused, each with one line (:class:`ArchiveError`): a file that is not a zip archive, a
password-protected (encrypted) archive, members with an unsupported compression method, a corrupt
archive (bad CRC, truncated), an archive whose content would not fit in the temporary folder's free
space. Members whose names would land outside the extraction folder (absolute paths, ``..``) are not
extracted and are reported one by one.

Example:
    >>> tree, unsafe = extract_zip(Path("study.zip"))  # doctest: +SKIP
    >>> sorted(p.name for p in tree.path.iterdir())  # doctest: +SKIP
    ['DICOM']
    >>> tree.close()  # doctest: +SKIP
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
import zipfile
from pathlib import Path, PurePosixPath

from medfcn.errors import one_line

__all__ = ["ArchiveError", "TemporaryTree", "extract_zip", "looks_like_zip"]

_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header, or the end record of an empty archive
_HEADROOM = 1.05  # extraction needs the members' size plus a little for the file system


class ArchiveError(Exception):
    """An archive that cannot be opened (the message is the one-line reason)."""


class TemporaryTree:
    """A temporary folder that is removed by :meth:`close`, at garbage collection or at exit.

    Attributes:
        path: the folder.
    """

    def __init__(self, prefix: str = "medfcn-", dir: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(tempfile.mkdtemp(prefix=prefix, dir=dir))
        self._finalizer = weakref.finalize(self, shutil.rmtree, str(self.path), ignore_errors=True)

    def close(self) -> None:
        """Remove the folder now (idempotent)."""
        self._finalizer()

    @property
    def closed(self) -> bool:
        """Whether the folder has been removed."""
        return not self._finalizer.alive

    def __reduce__(self) -> tuple[type, tuple[()]]:  # pragma: no cover - never shipped to another process
        raise TypeError("a TemporaryTree belongs to the process that made it and cannot be pickled")


def looks_like_zip(path: Path, name: str | None = None) -> bool:
    """A ``.zip`` name, or a file that starts with a zip signature."""
    if (name or path.name).lower().endswith(".zip"):
        return True
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _ZIP_MAGIC
    except OSError:
        return False


def _safe_member(name: str) -> bool:
    """A member name that stays inside the extraction folder."""
    posix = PurePosixPath(name.replace("\\", "/"))
    return not posix.is_absolute() and ".." not in posix.parts and not (posix.parts and ":" in posix.parts[0])


def extract_zip(
    path: Path, *, temp_root: str | os.PathLike[str] | None = None
) -> tuple[TemporaryTree, list[str]]:
    """Extract a zip archive into a new :class:`TemporaryTree`.

    Args:
        path: the archive (only read).
        temp_root: where to make the temporary folder (default: the system's temporary folder).

    Returns:
        ``(tree, unsafe)``: the extracted tree, and the member names not extracted because they would
        land outside it (absolute paths, ``..``).

    Raises:
        ArchiveError: not a zip archive, encrypted, unsupported compression, corrupt, or too large for
            the free space; the partial extraction is removed before raising.
    """
    try:
        archive = zipfile.ZipFile(path)
    except zipfile.BadZipFile as err:
        raise ArchiveError(f"not a zip archive ({err})") from err
    except (OSError, EOFError) as err:
        raise ArchiveError(f"cannot read the zip archive ({getattr(err, 'strerror', None) or err})") from err
    with archive:
        members = [m for m in archive.infolist() if not m.is_dir()]
        if any(m.flag_bits & 0x1 for m in members):
            raise ArchiveError(
                "encrypted (password-protected) zip archive: extract it with its password first"
            )
        unsupported = sorted({m.compress_type for m in members} - set(_SUPPORTED_METHODS))
        if unsupported:
            raise ArchiveError(
                f"zip archive uses unsupported compression method {unsupported[0]} (e.g. Deflate64): "
                "re-zip it with standard deflate or extract it first"
            )
        safe = [m for m in members if _safe_member(m.filename)]
        unsafe = [m.filename for m in members if not _safe_member(m.filename)]
        need = sum(m.file_size for m in safe)
        base = Path(temp_root) if temp_root is not None else Path(tempfile.gettempdir())
        free = shutil.disk_usage(base).free
        if need * _HEADROOM > free:
            raise ArchiveError(
                f"zip archive holds {need / 2**30:.1f} GiB, more than the {free / 2**30:.1f} GiB free in "
                f"{base}: extract it elsewhere or free space"
            )
        tree = TemporaryTree(prefix="medfcn-zip-", dir=temp_root)
        try:
            for m in safe:
                archive.extract(m, tree.path)
        except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError, OSError, ValueError) as err:
            tree.close()
            raise ArchiveError(f"corrupt zip archive ({type(err).__name__}: {one_line(err)})") from err
        except NotImplementedError as err:  # a compression method zipfile knows but cannot decode here
            tree.close()
            raise ArchiveError(f"zip archive uses an unsupported compression method ({err})") from err
        except BaseException:
            tree.close()
            raise
    return tree, unsafe


def _methods() -> tuple[int, ...]:
    methods = [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]
    for name in ("ZIP_BZIP2", "ZIP_LZMA"):
        method = getattr(zipfile, name, None)
        if method is not None:
            methods.append(int(method))
    return tuple(methods)


_SUPPORTED_METHODS = _methods()
