"""Small file helpers shared by the stages: checksums, durable writes, saved files' headers."""

from __future__ import annotations

import errno
import filecmp
import hashlib
import logging
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


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


def file_identity(path: str | os.PathLike) -> tuple[int, int, int, int]:
    """(device, inode, size in bytes, modification time in ns) of a file: which file it is, and a
    cheap sign that it was not replaced or rewritten since (a hard link changes none of them).

    Raises OSError (FileNotFoundError...) if the file cannot be stat'ed.
    """
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def share_file(src: str | os.PathLike, dest: str | os.PathLike, identity: tuple | None = None) -> str | None:
    """Give the new name `dest` the bytes of `src` without writing them: a hard link (`os.link`), or
    a copy where the file system refuses links (another device, no hard links, too many links).

    Only for files nothing writes into once written (a collection's generation files): a link
    shares one inode, so a write through either name would change both.

    Parameters
    ----------
    identity : tuple, optional
        `file_identity(src)` as recorded when `src` was known to hold the wanted bytes; a `src`
        that is no longer that file (replaced, rewritten) is not used.

    Returns
    -------
    "linked", "copied", or None when `src` is missing or not the recorded file (nothing is made
    at `dest` then: the caller writes it). Which one, and why, goes to the debug log.

    Raises
    ------
    OSError
        If `dest` exists, or the copy fails (disk full...): nothing is left at `dest`.
    """
    src, dest = Path(src), Path(dest)
    try:
        if identity is not None and file_identity(src) != tuple(identity):
            log.debug("%s: not shared, %s changed since it was recorded; writing it", dest, src)
            return None
        os.link(src, dest)
    except FileNotFoundError:
        log.debug("%s: not shared, %s is gone; writing it", dest, src)
        return None
    except OSError as e:
        if e.errno == errno.EEXIST:
            raise
        log.debug("%s: the file system refused a hard link to %s (%s); copying it", dest, src, e.strerror or e)
    else:
        # What was linked must be the recorded inode (src could have been replaced just before).
        if identity is not None and file_identity(dest) != tuple(identity):
            os.unlink(dest)
            log.debug("%s: not shared, %s was replaced while linking; writing it", dest, src)
            return None
        log.debug("%s: hard-linked from %s", dest, src)
        return "linked"
    try:
        shutil.copyfile(src, dest)
        if identity is not None and file_identity(src) != tuple(identity):
            raise FileNotFoundError(errno.ENOENT, "changed while being copied", str(src))
    except FileNotFoundError:
        Path(dest).unlink(missing_ok=True)
        log.debug("%s: not shared, %s is gone or changed; writing it", dest, src)
        return None
    except BaseException:
        Path(dest).unlink(missing_ok=True)
        raise
    log.debug("%s: copied from %s", dest, src)
    return "copied"


def same_content(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True if two files hold the same data: the same bytes, or, for two zip archives (.npz,
    .hsm), the same members in the same order with the same bytes (np.savez stamps each member
    with the time it was written, so two saves of equal arrays differ in their headers alone).

    Reads both files whole: for small files. Raises OSError if one cannot be read.
    """
    if os.path.getsize(a) == os.path.getsize(b) and filecmp.cmp(a, b, shallow=False):
        return True
    if not (zipfile.is_zipfile(a) and zipfile.is_zipfile(b)):
        return False
    try:
        with zipfile.ZipFile(a) as za, zipfile.ZipFile(b) as zb:
            names = za.namelist()
            return names == zb.namelist() and all(za.read(n) == zb.read(n) for n in names)
    except (zipfile.BadZipFile, ValueError, EOFError):
        return False


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
