"""The folder walk of discovery: every regular file under a root once, and what it cannot follow.

Hidden names are ignored; symbolic links to folders are followed once (loops and links to folders
already walked are reported); the same file reached twice is kept once; devices, sockets and pipes,
unreadable folders and broken links become skip reasons. Also here: the names discovery gives (PHI-free
case ids, filesystem-safe stems) and the data files a detached header (``.mhd``/``.nhdr``) names.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import stat
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from medfcn.data.cases import Skipped

__all__ = ["FoundFile", "companion_files", "link_problem", "safe_id", "short_hash", "suffix", "walk"]

_WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", *(f"COM{i}" for i in range(10)), *(f"LPT{i}" for i in range(10))}



def _os_problem(err: OSError, denied: str, cannot: str) -> str:
    """A skip reason for an OS error: ``denied`` for a permission error, else ``cannot (strerror)``."""
    if isinstance(err, PermissionError):
        return denied
    return f"{cannot} ({err.strerror or type(err).__name__})"

def _posix(parent: str, name: str) -> str:
    return name if parent == "." else f"{parent}/{name}"


def link_problem(path: str) -> str | None:
    """Reason a symbolic link cannot be followed, or ``None``."""
    try:
        os.stat(path)
    except OSError as err:
        if err.errno == errno.ELOOP:
            return "symbolic link loop (cannot be resolved): not followed"
        if err.errno in (errno.ENOENT, errno.ENOTDIR):
            return "broken symbolic link (target missing)"
        if err.errno == errno.EACCES:
            return "permission denied (symbolic link target)"
        return f"symbolic link cannot be resolved ({err.strerror})"
    return None


@dataclass
class FoundFile:
    """A file found by :func:`walk`: its path, its name in reports and its real path."""

    path: Path
    rel: str
    real: str
    is_link: bool
    zip_depth: int = 0  # archives this file was extracted from
    shown: str | None = None  # the name in reports, where ``rel`` was changed to mark an archive


def walk(root: Path, skipped: list[Skipped]) -> list[FoundFile]:
    """All regular files under ``root`` (hidden names ignored), each real file once.

    Real folders are walked before folders reached through symbolic links, and a folder whose real
    path was already walked is reported and not entered again: this ends symbolic-link loops and
    avoids scanning a linked folder twice.
    """
    visited = {os.path.realpath(root)}
    files: list[FoundFile] = []
    stack: list[tuple[Path, str]] = [(root, ".")]
    linked_dirs: list[tuple[Path, str]] = []
    while stack or linked_dirs:
        if not stack:
            path, rel = linked_dirs.pop(0)
            real = os.path.realpath(path)
            if real in visited:
                skipped.append(
                    Skipped(
                        rel, "symbolic link to a folder already scanned (loop or duplicate): not followed"
                    )
                )
                continue
            visited.add(real)
            stack.append((path, rel))
        folder, rel = stack.pop()
        folder_real = os.path.realpath(folder)
        try:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as err:
            skipped.append(Skipped(rel, _os_problem(err, "permission denied (folder cannot be listed)", "cannot list folder")))
            continue
        subdirs: list[tuple[Path, str]] = []
        for entry in entries:
            if entry.name.startswith("."):  # hidden files and folders (.DS_Store, .git ...)
                continue
            erel = _posix(rel, entry.name)
            epath = Path(entry.path)
            try:
                is_link = entry.is_symlink()
                if is_link:
                    problem = link_problem(entry.path)
                    if problem:
                        skipped.append(Skipped(erel, problem))
                        continue
                mode = os.stat(entry.path).st_mode  # follows links
            except OSError as err:
                skipped.append(Skipped(erel, _os_problem(err, "permission denied", "cannot read")))
                continue
            if stat.S_ISDIR(mode):
                if is_link:
                    linked_dirs.append((epath, erel))
                    continue
                real = os.path.realpath(entry.path)
                if real in visited:  # reached again below a linked folder
                    skipped.append(
                        Skipped(
                            erel,
                            "folder already scanned (reached again through a symbolic link): not followed",
                        )
                    )
                    continue
                visited.add(real)
                subdirs.append((epath, erel))
            elif stat.S_ISREG(mode):
                # a plain file's real path is its folder's plus its name: one realpath per folder
                real = os.path.realpath(entry.path) if is_link else os.path.join(folder_real, entry.name)
                files.append(FoundFile(epath, erel, real, is_link))
            else:
                skipped.append(Skipped(erel, "not a regular file (device, socket or pipe)"))
        stack.extend(reversed(subdirs))  # depth first, in name order
    # The same file reached twice (a link to a file): keep the real path, else the first one seen.
    by_real: dict[str, list[FoundFile]] = {}
    for f in files:
        by_real.setdefault(f.real, []).append(f)
    unique: list[FoundFile] = []
    for group in by_real.values():
        keep = next((f for f in group if not f.is_link), group[0])
        unique.append(keep)
        for f in group:
            if f is not keep:
                skipped.append(Skipped(f.rel, f"link to a file already found ({keep.rel})"))
    unique.sort(key=lambda f: f.rel)
    return unique


def suffix(name: str, suffixes: Sequence[str]) -> str | None:
    lower = name.lower()
    return next((s for s in suffixes if lower.endswith(s)), None)


def safe_id(stem: str) -> str:
    """ASCII, filesystem-safe, not hidden, not a Windows device name: usable as a folder name."""
    text = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    text = re.sub(r"[^A-Za-z0-9._-]+", "_", text)
    text = re.sub(r"_+", "_", text).strip("._-")[:64].rstrip("._-")
    if not text:
        text = "case"
    if text.split(".")[0].upper() in _WINDOWS_RESERVED:
        text = f"{text}_"
    return text


def short_hash(text: str, n: int = 12) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:n]


def companion_files(path: Path) -> set[str]:
    """Data files a detached header (``.mhd``/``.nhdr``) names: part of that image, not junk."""
    out: set[str] = set()
    try:
        with open(path, encoding="latin-1") as fh:
            text = fh.read(8192)
    except OSError:
        return out
    for pattern in (r"^\s*ElementDataFile\s*=\s*(.+?)\s*$", r"^\s*data ?file\s*:\s*(.+?)\s*$"):
        for match in re.finditer(pattern, text, re.MULTILINE | re.IGNORECASE):
            value = match.group(1)
            if value.upper() not in ("LOCAL", "LIST") and not value.upper().startswith("LIST"):
                out.add(os.path.normpath(str(path.parent / value)))
    return out
