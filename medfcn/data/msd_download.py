"""Fetch a Medical Segmentation Decathlon task (``medfcn data download Task03_Liver``): MONAI's download and
md5 check, extracted all or nothing into ``<root>/<task>``; an archive already on disk is verified and
extracted without being moved.
"""

from __future__ import annotations

import os
import tarfile
from pathlib import Path

from medfcn._io import atomic_dir
from medfcn.data.msd import msd_tasks
from medfcn.errors import DataError, one_line

__all__ = ["download_msd"]


def download_msd(
    task: str,
    root: str | os.PathLike[str],
    *,
    url: str | None = None,
    md5: str | None = None,
    progress: bool = True,
    keep_archive: bool = False,
) -> Path:
    """Download and extract an MSD task (e.g. ``Task03_Liver``) with MONAI's download utilities.

    The archive is fetched into ``root`` (MONAI downloads to a temporary file first), its md5 verified,
    and extracted into a temporary folder inside ``root`` that is renamed to ``root/<task>`` only once
    complete. If ``root/<task>/dataset.json`` already exists nothing is downloaded.

    Args:
        task: MSD task name, one of :func:`msd_tasks` unless ``url`` is given.
        root: folder that receives ``<task>/``.
        url: override the download URL: a mirror, or an archive already on disk (a path or ``file://``
            URI; it is verified and extracted, never moved or deleted).
        md5: expected md5 of the archive; defaults to MONAI's for known tasks, unchecked otherwise.
        progress: show MONAI's download progress bar.
        keep_archive: keep ``root/<task>.tar`` after extraction (the liver task is about 27 GB).

    Returns:
        ``root/<task>``, holding ``dataset.json`` and the images.

    Raises:
        DataError: unknown task without ``url``, download failure (offline, HTTP error), md5 mismatch,
            or an archive that does not contain ``<task>/dataset.json``.
    """
    root = Path(root)
    target = root / task
    if (target / "dataset.json").is_file():
        return target
    tasks = msd_tasks()
    if url is None:
        if task not in tasks:
            raise DataError(
                f"unknown MSD task {task!r}; choose one of {', '.join(sorted(tasks))} or pass --url"
            )
        url = tasks[task][0]
    if md5 is None and task in tasks:
        md5 = tasks[task][1]
    if target.exists():
        raise DataError(f"{target} exists but has no dataset.json; remove or rename it, then download again")
    root.mkdir(parents=True, exist_ok=True)
    local = _local_archive(url)
    archive = local if local is not None else root / f"{task}.tar"
    with atomic_dir(target) as staging:  # all or nothing: an interrupted download leaves no half dataset
        if local is not None:
            _extract_local(task, local, staging, md5)
        else:
            _download(task, url, archive, staging, md5, progress)
        extracted = staging / task
        if not (extracted / "dataset.json").is_file():
            found = sorted(p.name for p in staging.iterdir())
            raise DataError(f"the archive from {url} has no {task}/dataset.json (top level holds {found})")
        # the archive's one top folder, <task>/, becomes the target itself
        for entry in list(extracted.iterdir()):
            entry.rename(staging / entry.name)
        extracted.rmdir()
    if local is None and not keep_archive:
        archive.unlink(missing_ok=True)
    return target


def _local_archive(url: str) -> Path | None:
    """The local file behind ``url`` (``file://`` URI or plain path), or None for a network URL."""
    from urllib.parse import unquote, urlparse

    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    return Path(url) if "://" not in url else None  # no scheme: a path on disk


def _md5_mismatch(task: str, source: str, md5: str | None) -> DataError:
    return DataError(
        f"{task} from {source} does not match md5 {md5}; the file is corrupt or another version: "
        "download it again or pass the right --md5"
    )


def _extract_local(task: str, archive: Path, staging: Path, md5: str | None) -> None:
    """Verify and extract an archive the user already has (it is never modified or removed)."""
    from monai.apps.utils import check_hash, extractall

    if not archive.is_file():
        raise DataError(f"{archive} does not exist; pass the path of the downloaded {task}.tar")
    if md5 and not check_hash(archive, md5, "md5"):
        raise _md5_mismatch(task, str(archive), md5)
    try:
        extractall(archive, staging, file_type="tar")
    except (OSError, ValueError, RuntimeError, tarfile.TarError) as err:
        raise DataError(
            f"cannot extract {archive} ({one_line(err, typed=True)}); is it a .tar archive?"
        ) from err


def _download(task: str, url: str, archive: Path, staging: Path, md5: str | None, progress: bool) -> None:
    """Fetch with MONAI (temp file, then md5 check) and extract into ``staging``."""
    from monai.apps import download_and_extract
    from monai.apps.utils import HashCheckError

    try:
        download_and_extract(
            url,
            filepath=archive,
            output_dir=staging,
            hash_val=md5,
            hash_type="md5",
            file_type="tar",
            progress=progress,
        )
    # Network libraries, OSError, tarfile and MONAI's RuntimeError/ValueError all mean "it failed"; each
    # becomes one DataError that keeps the reason.
    except Exception as err:
        reason = one_line(err)
        if isinstance(err, HashCheckError):
            archive.unlink(missing_ok=True)  # a corrupt archive must not be trusted by the next run
            raise _md5_mismatch(task, url, md5) from err
        raise DataError(
            f"could not download {task} from {url}: {reason}; check your network or download it by "
            "hand and pass --data"
        ) from err
