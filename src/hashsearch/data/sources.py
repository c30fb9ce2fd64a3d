"""Where images come from: a folder, a tar archive read in place, or a list file.

A source lists its images as `ImageRecord`s (a stable key and an optional class label) without
reading them, and reads their bytes on demand; `iter_images` decodes them, skipping (and
reporting) the files that cannot be read. Pick a source from a path with `open_source`.

Labels come from the one-folder-per-class layout that most image datasets use
(`root/<class>/<image>`): with ``labels="auto"`` a source labels each image with the name of the
folder holding it, unless some image sits directly in the root, in which case no image is
labelled. ``labels="parent"`` always uses the folder name, ``labels="none"`` never does.
"""

from __future__ import annotations

import csv
import os
import tarfile
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Iterable, Iterator, Sequence

from PIL import Image

from hashsearch.data.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image

#: File name extensions (lower case) that folder and archive sources list as images.
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
#: The accepted values of a source's `labels` parameter.
LABEL_MODES = ("auto", "parent", "none")
#: Archive name endings that `open_source` reads with `TarSource`.
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
#: List-file name endings that `open_source` reads with `ListSource`.
LIST_SUFFIXES = (".txt", ".lst", ".list", ".tsv", ".csv")

_ACCEPTED = (
    "a folder of images, a tar archive (" + ", ".join(TAR_SUFFIXES) + "), or a list file ("
    + ", ".join(LIST_SUFFIXES) + ") with one image path per line"
)


class BadImageWarning(UserWarning):
    """Warned once per file that is skipped because it cannot be read or decoded."""


@dataclass(frozen=True)
class ImageRecord:
    """One image of a source: a stable, human-readable key and its class label (or None).

    The key is a path (folder and list sources) or ``"<archive path>::<member name>"`` (archives).
    """

    key: str
    label: str | None = None


@dataclass
class SkipReport:
    """The files skipped while reading a source, with the reason for each."""

    skipped: list[tuple[str, str]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.skipped)

    def add(self, key: str, reason: str) -> None:
        """Record that the file `key` was skipped because of `reason`."""
        self.skipped.append((key, reason))

    def summary(self, limit: int = 5) -> str:
        """One line: how many files were skipped, and the first `limit` of them with reasons."""
        n = len(self.skipped)
        if n == 0:
            return "0 files skipped"
        head = "; ".join(f"{key} ({reason})" for key, reason in self.skipped[:limit])
        more = f"; and {n - limit} more" if n > limit else ""
        return f"{n} file{'s' if n != 1 else ''} skipped: {head}{more}"


ReadResult = tuple[ImageRecord, "bytes | None", "str | None"]


class ImageSource:
    """A collection of images: `records()` lists them, `iter_bytes` reads them.

    Subclasses implement `records` and `iter_bytes`. Neither decodes anything; use `iter_images`
    (or the feature extractor) for that.
    """

    def records(self) -> list[ImageRecord]:
        """Every image of the source, sorted by key (a listing: nothing is read or decoded)."""
        raise NotImplementedError

    def iter_bytes(self, records: Sequence[ImageRecord] | None = None) -> Iterator[ReadResult]:
        """Yield ``(record, data, error)`` for each record, in the order of `records`.

        `error` is None and `data` the file's bytes when the file could be read; otherwise `data`
        is None and `error` says why. A file that cannot be read never raises. With
        ``records=None``, every record in `read_order` (for folders and lists that is `records()`'s
        order; for an archive, the order of its members, so that it streams).
        """
        raise NotImplementedError

    def read_order(self, records: Sequence[ImageRecord]) -> list[ImageRecord]:
        """`records` reordered into the order that is fastest to read (stable otherwise).

        Callers that do not care about order can pass the result to `iter_bytes`; only archives
        reorder.
        """
        return list(records)

    def __len__(self) -> int:
        return len(self.records())


def _check_labels(labels: str) -> str:
    if labels not in LABEL_MODES:
        raise ValueError(f"labels must be one of {', '.join(map(repr, LABEL_MODES))}, got {labels!r}")
    return labels


def _labels_for(parts_list: Sequence[tuple[str, ...]], labels: str, root_name: str | None) -> list[str | None]:
    """Labels by the one-folder-per-class rule, given each image's path parts below the root."""
    if labels == "none":
        return [None] * len(parts_list)
    if labels == "auto" and any(len(parts) == 1 for parts in parts_list):
        return [None] * len(parts_list)
    return [parts[-2] if len(parts) > 1 else root_name for parts in parts_list]


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def _read_file(record: ImageRecord) -> ReadResult:
    try:
        return record, Path(record.key).read_bytes(), None
    except OSError as e:
        return record, None, f"cannot read the file ({e.strerror or e})"


class FolderSource(ImageSource):
    """The images under a folder, found recursively.

    Files whose extension is one of `IMAGE_EXTENSIONS` (any case) are listed, other files are
    not; hidden files and folders (name starting with ".") are skipped, and symbolic links to
    folders are not followed. A key is ``str(root / relative path)``, with `root` as given.

    Parameters
    ----------
    root : str or os.PathLike
        The folder.
    labels : {"auto", "parent", "none"}
        How images get a class label (see the module docstring). With "parent", an image
        directly in the root is labelled with the root folder's own name.
    """

    def __init__(self, root: str | os.PathLike, labels: str = "auto") -> None:
        self.root = root
        self.labels = _check_labels(labels)

    def _root(self) -> Path:
        root = Path(self.root).expanduser()
        if not root.is_dir():
            raise ValueError(f"FolderSource root {str(self.root)!r} is not a folder; give an existing folder of images")
        return root

    def records(self) -> list[ImageRecord]:
        root = self._root()
        rels: list[tuple[str, ...]] = []
        stack: list[tuple[str, tuple[str, ...]]] = [(str(root), ())]
        while stack:
            folder, parts = stack.pop()
            try:
                entries = list(os.scandir(folder))
            except OSError as e:
                warnings.warn(f"skipping folder {folder}: {e.strerror or e}", BadImageWarning, stacklevel=2)
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir(follow_symlinks=False):
                    stack.append((entry.path, parts + (entry.name,)))
                elif _is_image_name(entry.name) and entry.is_file():
                    rels.append(parts + (entry.name,))
        found = _labels_for(rels, self.labels, root.resolve().name)
        records = [ImageRecord(str(root.joinpath(*parts)), label) for parts, label in zip(rels, found)]
        return sorted(records, key=lambda r: r.key)

    def iter_bytes(self, records: Sequence[ImageRecord] | None = None) -> Iterator[ReadResult]:
        for record in self.records() if records is None else records:
            yield _read_file(record)

    def __repr__(self) -> str:
        return f"FolderSource({str(self.root)!r}, labels={self.labels!r})"


class ListSource(ImageSource):
    """The images named in a text file, one per line.

    Each line is ``path`` or ``path<TAB>label`` (in a .csv file, ``path,label`` with CSV quoting;
    a first row ``path,label`` is taken as a header). Blank lines and lines starting with "#"
    are ignored. A relative path is relative to the list file's folder; the key is that path
    joined to the list file's folder as given (an absolute path is kept as written). Files are
    not checked when listing: a missing one is reported when read.

    Parameters
    ----------
    path : str or os.PathLike
        The list file (UTF-8).
    labels : {"auto", "parent", "none"}
        "auto" takes the labels written in the file (None where a line has none), "parent"
        labels each image with the name of the folder holding it, "none" drops all labels.
    """

    def __init__(self, path: str | os.PathLike, labels: str = "auto") -> None:
        self.path = path
        self.labels = _check_labels(labels)

    def records(self) -> list[ImageRecord]:
        path = Path(self.path).expanduser()
        try:
            text = path.read_text(encoding="utf-8-sig")
        except OSError as e:
            raise ValueError(f"cannot read the list file {str(self.path)!r}: {e.strerror or e}") from None
        except UnicodeDecodeError as e:
            raise ValueError(f"the list file {str(self.path)!r} is not UTF-8 text ({e})") from None
        is_csv = path.suffix.lower() == ".csv"
        base = path.parent
        seen: dict[str, tuple[str | None, int]] = {}
        first = True
        for lineno, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            fields = next(csv.reader([line])) if is_csv else line.split("\t")
            fields = [f.strip() for f in fields]
            if first and is_csv and fields[0].lower() in ("path", "file", "filename", "image"):
                first = False
                continue  # a header row
            first = False
            if len(fields) > 2 or not fields[0]:
                sep = "," if is_csv else "<TAB>"
                raise ValueError(
                    f"{self.path}, line {lineno}: expected 'path' or 'path{sep}label', got {line!r}"
                )
            written = Path(fields[0]).expanduser()
            key = str(written if written.is_absolute() else base / written)
            if self.labels == "none":
                label = None
            elif self.labels == "parent":
                label = Path(key).parent.name or None
            else:
                label = fields[1] if len(fields) == 2 and fields[1] else None
            if key in seen and seen[key][0] != label:
                raise ValueError(
                    f"{self.path}: {fields[0]!r} is listed with label {seen[key][0]!r} on line "
                    f"{seen[key][1]} and {label!r} on line {lineno}; give each image one label"
                )
            seen.setdefault(key, (label, lineno))
        return sorted((ImageRecord(k, lab) for k, (lab, _) in seen.items()), key=lambda r: r.key)

    def iter_bytes(self, records: Sequence[ImageRecord] | None = None) -> Iterator[ReadResult]:
        for record in self.records() if records is None else records:
            yield _read_file(record)

    def __repr__(self) -> str:
        return f"ListSource({str(self.path)!r}, labels={self.labels!r})"


@dataclass(frozen=True)
class _Member:
    position: int  # index among all members, in archive order
    name: str  # as stored in the archive
    size: int
    offset: int  # of the data in the uncompressed stream
    sparse: bool


_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def _clean_member_name(name: str) -> str | None:
    """The member's path without "./" prefixes, or None for names that are unsafe or hidden."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("/", ".")]
    if not parts or any(p == ".." or p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return "/".join(parts)


class TarSource(ImageSource):
    """The images in a tar archive (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz), read in place.

    Nothing is extracted to disk. Members are listed like `FolderSource` lists files (image
    extensions only, hidden names skipped, same label rule on member paths; with "parent" a
    member at the archive's top level has no label). A key is ``"<path>::<member name>"``.

    Reading. A compressed archive can only be read front to back, so `iter_bytes` reads it in
    sequential passes: ``iter_bytes()`` (all records) streams every member in archive order in
    one pass, holding one member at a time. For a given list of records the members are yielded
    in that list's order: a member that arrives before its turn is held in a buffer of at most
    `buffer_bytes`; one that does not fit is left for another pass. A list in archive order
    (see `read_order`) therefore takes one pass and no buffer, and any order takes bounded
    memory. An uncompressed .tar is read by seeking, in any order, without passes.

    The member listing (one pass over the archive) is kept after the first call and redone if
    the file changes.

    Parameters
    ----------
    path : str or os.PathLike
        The archive.
    labels : {"auto", "parent", "none"}
        How images get a class label.
    buffer_bytes : int
        Most member bytes held at once while reordering a compressed archive (default 32 MiB).
    """

    def __init__(self, path: str | os.PathLike, labels: str = "auto", buffer_bytes: int = 32 << 20) -> None:
        self.path = path
        self.labels = _check_labels(labels)
        self.buffer_bytes = buffer_bytes
        self._cache: tuple[tuple[int, int], bool, dict[str, _Member]] | None = None

    # -- listing ---------------------------------------------------------------------------

    def _file(self) -> Path:
        path = Path(self.path).expanduser()
        if not path.is_file():
            raise ValueError(f"TarSource path {str(self.path)!r} is not a file; give an existing tar archive")
        return path

    @property
    def _prefix(self) -> str:
        return str(Path(self.path).expanduser()) + "::"

    def _listing(self) -> tuple[bool, dict[str, _Member]]:
        """(compressed, clean member name -> member) in archive order, cached per file version."""
        path = self._file()
        st = path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if self._cache is not None and self._cache[0] == stamp:
            return self._cache[1], self._cache[2]
        with open(path, "rb") as f:
            magic = f.read(6)
        compressed = magic.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00"))
        members: dict[str, _Member] = {}
        try:
            for position, info in _stream(path):
                name = _clean_member_name(info.name)
                if not info.isreg() or name is None or not _is_image_name(name):
                    continue
                members.pop(name, None)  # a later copy of a name replaces the earlier (tar semantics)
                members[name] = _Member(position, info.name, info.size, info.offset_data, info.issparse())
        except _ARCHIVE_ERRORS as e:
            raise ValueError(f"{path} is not a readable tar archive ({type(e).__name__}: {e})") from None
        self._cache = (stamp, compressed, members)
        return compressed, members

    def records(self) -> list[ImageRecord]:
        _, members = self._listing()
        names = list(members)
        found = _labels_for([tuple(n.split("/")) for n in names], self.labels, None)
        prefix = self._prefix
        return sorted((ImageRecord(prefix + n, lab) for n, lab in zip(names, found)), key=lambda r: r.key)

    def read_order(self, records: Sequence[ImageRecord]) -> list[ImageRecord]:
        _, members = self._listing()
        prefix, last = self._prefix, float("inf")

        def position(r: ImageRecord) -> float:
            m = members.get(r.key[len(prefix):]) if r.key.startswith(prefix) else None
            return m.position if m is not None else last

        return sorted(records, key=position)

    # -- reading ---------------------------------------------------------------------------

    def iter_bytes(self, records: Sequence[ImageRecord] | None = None) -> Iterator[ReadResult]:
        compressed, members = self._listing()
        if records is None:
            records = self.read_order(self.records())
        records = list(records)
        prefix = self._prefix
        wanted: list[_Member | None] = [
            members.get(r.key[len(prefix):]) if r.key.startswith(prefix) else None for r in records
        ]
        if compressed:
            yield from self._iter_passes(records, wanted)
        else:
            yield from self._iter_seek(records, wanted)

    def _missing(self, record: ImageRecord) -> ReadResult:
        return record, None, f"not an image member of the archive {self.path}"

    def _iter_seek(self, records: list[ImageRecord], wanted: list[_Member | None]) -> Iterator[ReadResult]:
        with open(self._file(), "rb") as f:
            for record, member in zip(records, wanted):
                if member is None:
                    yield self._missing(record)
                elif member.sparse:
                    yield record, None, "sparse archive members are not supported; repack the archive"
                else:
                    try:
                        f.seek(member.offset)
                        data = f.read(member.size)
                    except OSError as e:
                        yield record, None, f"cannot read the archive ({e.strerror or e})"
                        continue
                    if len(data) != member.size:
                        yield record, None, f"the archive is truncated ({len(data)} of {member.size} bytes)"
                    else:
                        yield record, data, None

    def _iter_passes(self, records: list[ImageRecord], wanted: list[_Member | None]) -> Iterator[ReadResult]:
        n = len(records)
        # archive position -> indices into `records` still to be read from there, ascending
        pending: dict[int, list[int]] = {}
        for i, member in enumerate(wanted):
            if member is not None:
                pending.setdefault(member.position, []).append(i)
        held: dict[int, bytes] = {}
        held_bytes = 0
        turn = 0  # index of the next record to yield

        def release() -> Iterator[ReadResult]:
            nonlocal turn, held_bytes
            while turn < n:
                if wanted[turn] is None:
                    yield self._missing(records[turn])
                elif turn in held:
                    data = held.pop(turn)
                    held_bytes -= len(data)
                    yield records[turn], data, None
                else:
                    return
                turn += 1

        yield from release()
        while turn < n:
            start = turn
            try:
                for position, data in _stream_data(self._file(), pending):
                    waiting = []
                    for i in pending.pop(position):
                        if i == turn:
                            yield records[i], data, None
                            turn += 1
                            yield from release()
                        elif held_bytes + len(data) <= self.buffer_bytes:
                            held[i] = data
                            held_bytes += len(data)
                        else:
                            waiting.append(i)  # read again in a later pass
                    if waiting:
                        pending[position] = waiting
                    if not pending:
                        break
            except _ARCHIVE_ERRORS as e:
                reason = f"cannot read the archive ({type(e).__name__}: {e})"
                yield from self._fail_rest(records, wanted, held, turn, reason)
                return
            if turn == start:
                # Every pass yields at least the record whose turn it is, unless its member was
                # not where the listing said: the file changed under us.
                reason = "the archive changed while it was read; list it again"
                yield from self._fail_rest(records, wanted, held, turn, reason)
                return

    def _fail_rest(self, records, wanted, held, turn, reason) -> Iterator[ReadResult]:
        for i in range(turn, len(records)):
            if wanted[i] is None:
                yield self._missing(records[i])
            elif i in held:
                yield records[i], held.pop(i), None
            else:
                yield records[i], None, reason

    def __repr__(self) -> str:
        return f"TarSource({str(self.path)!r}, labels={self.labels!r})"


def _stream(path: Path) -> Iterator[tuple[int, tarfile.TarInfo]]:
    """(position, member) for every member, in one sequential pass ("r|*": any compression)."""
    with tarfile.open(path, "r|*") as tar:
        position = 0
        while (info := tar.next()) is not None:
            # Stream mode never looks back, but tarfile keeps every TarInfo it has seen; for a
            # 60,000-member archive that is tens of MB, so drop them as we go.
            tar.members.clear()
            yield position, info
            position += 1


def _stream_data(path: Path, positions: dict[int, list[int]]) -> Iterator[tuple[int, bytes]]:
    """(position, bytes) of the members at `positions` (checked live), in one sequential pass."""
    with tarfile.open(path, "r|*") as tar:
        position = 0
        while (info := tar.next()) is not None:
            tar.members.clear()
            if position in positions:
                f = tar.extractfile(info)
                yield position, f.read() if f is not None else b""
            position += 1


def open_source(spec: str | os.PathLike | ImageSource, labels: str = "auto") -> ImageSource:
    """The image source that `spec` names: a folder, a tar archive, or a list file.

    Parameters
    ----------
    spec : str, os.PathLike or ImageSource
        A path (an ImageSource is returned as is).
    labels : {"auto", "parent", "none"}
        Passed to the source (see the module docstring).

    Raises
    ------
    ValueError
        If `spec` does not exist or is not one of the accepted kinds.

    Examples
    --------
    >>> source = open_source("photos/")  # doctest: +SKIP
    >>> source.records()[:2]  # doctest: +SKIP
    [ImageRecord(key='photos/cat/1.jpg', label='cat'), ImageRecord(key='photos/cat/2.jpg', label='cat')]
    """
    if isinstance(spec, ImageSource):
        return spec
    _check_labels(labels)
    path = Path(spec).expanduser()
    if not path.exists():
        raise ValueError(f"image source {str(spec)!r} does not exist; give {_ACCEPTED}")
    if path.is_dir():
        return FolderSource(spec, labels)
    lower = path.name.lower()
    if lower.endswith(TAR_SUFFIXES):
        return TarSource(spec, labels)
    if lower.endswith(LIST_SUFFIXES):
        return ListSource(spec, labels)
    if path.is_file() and tarfile.is_tarfile(path):
        return TarSource(spec, labels)
    hint = " (a single image: put it in a folder, or name it in a .txt list)" if _is_image_name(lower) else ""
    raise ValueError(f"image source {str(spec)!r} is of an unknown kind{hint}; give {_ACCEPTED}")


def iter_images(
    source: ImageSource,
    records: Sequence[ImageRecord] | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    report: SkipReport | None = None,
) -> Iterator[tuple[ImageRecord, Image.Image]]:
    """Yield ``(record, RGB image)`` for each record that reads and decodes, in `iter_bytes` order.

    A file that cannot be read or decoded is skipped with a `BadImageWarning`
    ("skipping <key>: <reason>") and added to `report`; it never raises.
    """
    for record, data, error in source.iter_bytes(records):
        if error is None:
            try:
                yield record, decode_image(data, record.key, max_pixels)
                continue
            except DecodeError as e:
                error = e.reason
        warnings.warn(f"skipping {record.key}: {error}", BadImageWarning, stacklevel=2)
        if report is not None:
            report.add(record.key, error)


def count_labels(records: Iterable[ImageRecord]) -> dict[str | None, int]:
    """How many records carry each label (None for unlabelled), sorted by label."""
    counts: dict[str | None, int] = {}
    for r in records:
        counts[r.label] = counts.get(r.label, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: (kv[0] is None, kv[0] or "")))


#: Separates an archive's path from a member's name in a key: ``"<archive path>::<member name>"``.
ARCHIVE_SEP = "::"


def split_key(key: str) -> tuple[str, str | None]:
    """``(file path, archive member or None)`` of a source key (see `ImageRecord`)."""
    path, sep, member = key.partition(ARCHIVE_SEP)
    return (path, member) if sep else (key, None)


def read_key(key: str) -> bytes:
    """The bytes of the image that a source key names: a file, or a member of a tar archive.

    Raises
    ------
    OSError
        If the file or the archive cannot be read, or the archive has no such member (the
        message names the key).
    """
    path, member = split_key(key)
    if member is None:
        return Path(path).read_bytes()
    try:
        with tarfile.open(path) as tar:
            f = tar.extractfile(member)
            if f is None:
                raise OSError(f"{key}: not a regular file in the archive")
            return f.read()
    except KeyError:
        raise OSError(f"{key}: the archive has no member {member!r}") from None
    except (tarfile.TarError, EOFError, zlib.error) as e:
        raise OSError(f"{key}: cannot read the archive ({type(e).__name__}: {e})") from None
