"""gzip by ISA-L: :func:`gunzip` and :func:`gzip_writer` (this module imports neither PyTorch nor MONAI).

ISA-L (``isal.igzip``) inflates the same deflate streams about twice as fast as zlib and deflates at level 1
about 4x as fast; plain :mod:`gzip` serves where the ``isal`` wheel is missing. Both release the GIL while
they work, which is what lets ``medfcn infer`` inflate its first scan during the start-up
(:mod:`medfcn.data.ahead`).

Example:
    >>> import gzip, tempfile, pathlib
    >>> path = pathlib.Path(tempfile.mkdtemp()) / "x.gz"
    >>> _ = path.write_bytes(gzip.compress(b"voxels"))
    >>> gunzip(path)
    b'voxels'
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path
from typing import Any

__all__ = ["GZIP_ERRORS", "gunzip", "gzip_writer"]

_igzip: Any = None
_isal_errors: tuple[Any, ...] = ()
try:  # ISA-L: the same deflate streams, inflated about twice as fast as zlib
    from isal import igzip, igzip_lib

    _igzip, _isal_errors = igzip, (igzip_lib.IsalError,)
except ImportError:  # pragma: no cover - isal is a dependency; a platform without its wheel still reads
    pass
#: what a truncated or corrupt gzip stream raises, from zlib or from ISA-L
GZIP_ERRORS: tuple[type[BaseException], ...] = (EOFError, zlib.error, gzip.BadGzipFile, *_isal_errors)


def gunzip(path: str | os.PathLike[str]) -> bytes:
    """The inflated content of a gzip file (every member), by ISA-L when it is installed.

    Raises:
        EOFError, zlib.error, gzip.BadGzipFile, isal's ``IsalError``: truncated or corrupt data
        (:data:`GZIP_ERRORS`); ``OSError``: an unreadable file.
    """
    raw = Path(path).read_bytes()
    return _igzip.decompress(raw) if _igzip is not None else gzip.decompress(raw)  # type: ignore[no-any-return]


def gzip_writer(path: str | os.PathLike[str], level: int = 1) -> Any:
    """A binary file object that deflates into ``path`` (a gzip file), by ISA-L when it is installed.

    ISA-L's level 1 deflated a 512x512x300 uint8 mask 4x faster than zlib's level 1 (nibabel's default),
    into a slightly smaller file that inflates to the same bytes.
    """
    if _igzip is not None:
        return _igzip.open(str(path), "wb", compresslevel=level)
    return gzip.open(str(path), "wb", compresslevel=level)  # pragma: no cover - isal is a dependency
