"""``medfcn bundle``: work with a bundle folder's files (``download``: the weights its large_files.yml lists)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from medfcn.cli._common import bundle_option, new_app, quiet_option, user_errors

__all__ = ["app", "download"]

app = new_app(help="Bundle folders: fetch the large files (weights) a bundle lists.", no_args_is_help=True)


def _size(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e5 else f"{n / 1e3:.1f} kB"


@app.command()
def download(
    bundle: Annotated[
        Path, bundle_option("Bundle folder with a large_files.yml (path, url, hash_val, hash_type per file).")
    ],
    overwrite: Annotated[
        bool,
        typer.Option("--overwrite", help="Fetch again even files already present with the right hash."),
    ] = False,
    quiet: Annotated[bool, quiet_option()] = False,
) -> None:
    """Fetch the files listed in the bundle's large_files.yml (an http(s) URL, a file:// URI or a local path).

    Each file is written under a temporary name, its hash checked where large_files.yml gives one, then
    renamed into place; a file already present with the right hash is kept.
    """
    from medfcn.bundle.download import Fetched, download_large_files

    def report(r: Fetched) -> None:
        if not quiet:
            check = "hash ok" if r.hash_checked else "no hash given"
            typer.echo(f"{r.path}: {r.status} ({_size(r.size)}, {check})")

    with user_errors():
        results = download_large_files(bundle, overwrite=overwrite, report=report)
    if not quiet:
        fetched = sum(r.status == "downloaded" for r in results)
        typer.echo(f"{fetched} downloaded, {len(results) - fetched} already present")
