"""Small file helpers shared by the stages: checksums, durable writes, saved files' headers."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_path(path: str | os.PathLike) -> None:
    """Flush a file's (or a folder's entries') data to disk."""
    fd = os.open(Path(path), os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_header(meta: Any, fmt: str, version: int, where: str | os.PathLike) -> dict:
    """`meta` (a saved artefact's parsed header) as a dict, if it declares `fmt` and `version`.

    The one header check of every file hashsearch writes (collection manifest, index, hasher):
    a missing or other format or version is an error, never read as a guess.

    Raises
    ------
    ValueError
        If `meta` is not a dict, or its "format" or "version" is missing or not `fmt` / `version`;
        the message names `where` (the file) and both versions.
    """
    if not isinstance(meta, dict):
        raise ValueError(f"{where} is damaged: its header is {type(meta).__name__}, not a JSON object")
    if meta.get("format") != fmt or meta.get("version") != version:
        raise ValueError(
            f"{where} has format {meta.get('format')!r} version {meta.get('version')!r}; this hashsearch "
            f"reads {fmt!r} version {version} (rebuild it with this version, or use the hashsearch that wrote it)"
        )
    return meta
