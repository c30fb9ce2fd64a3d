"""Where images come from: a folder, a tar archive read in place, or a list file.

A source lists its images as `ImageRecord`s (a stable key and an optional class label) without
reading them, and reads their bytes on demand; `iter_images` decodes them, skipping (and
reporting) the files that cannot be read. Pick a source from a path with `open_source`.

Nothing under a folder or in an archive vanishes silently: after `records()`, `listing()` says
what was left out and why (files that are not images by their extension, hidden files, folders
that could not be read, links not followed) and how the labels were read (`LabelReport`).

Names. Keys are the names the file system gives, as `str`: a name that is not valid UTF-8 (the
bytes ``caf\\xe9.jpg`` of a Latin-1 share) arrives with surrogate escapes (``'caf\\udce9.jpg'``,
what `os.fsdecode` gives) and goes back to the same bytes with `os.fsencode`; list files and
label files are read as bytes and decoded the same way. `printable` shows such a name on one
readable line, `escape_name` writes it reversibly (for TSV files).

Labels (the ``labels`` parameter; docs/folders.md has examples):

- ``"auto"`` (default): folders and archives as ``"folder"``, seeing through one folder that holds
  every image (``tar czf photos.tar.gz photos`` makes ``photos/<class>/x.jpg``): when a single
  top-level folder holds all the images and 2 or more folders inside it hold images, the classes
  are those inner folders (``photos/cat/x.jpg`` -> ``"cat"``), and the labels line says so. A
  list file: the labels written in it.
- ``"folder"``: the class folder, the first folder below the root (``photos/cat/2023/x.jpg`` ->
  ``"cat"``). When every top-level folder is a split folder (``train``, ``test``, ``val``, ...,
  see `SPLIT_FOLDERS`) holding class folders, the class folder is the one below it
  (``data/train/cat/x.jpg`` -> ``"cat"``). An image outside any class folder (a stray
  ``photos/cover.jpg``) gets no label, and `listing().labels` names it; the others keep theirs.
- ``"parent"``: the name of the folder holding the file (``photos/cat/2023/x.jpg`` -> ``"2023"``).
- ``"none"``: no labels.
- a path to a labels file (.tsv, .csv or .txt): ``name<TAB>label`` per line (``name,label`` in a
  .csv), the name relative to the source's root (a folder's or a list file's folder, or the
  member name in an archive), with "/" separators.
"""

from __future__ import annotations

import codecs
import csv
import errno
import os
import re
import tarfile
import warnings
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from PIL import Image

from hashsearch.data.decode import DEFAULT_MAX_PIXELS, DecodeError, decode_image

#: File name extensions (lower case) that folder and archive sources list as images.
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".jfif",
        ".png",
        ".bmp",
        ".gif",
        ".webp",
        ".tif",
        ".tiff",
        ".heic",
        ".heif",
        ".hif",
        ".avif",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
        ".ico",
    }
)
#: The accepted label modes (the `labels` parameter may also be the path of a labels file).
LABEL_MODES = ("auto", "folder", "parent", "none")
#: Top-level folder names taken as dataset splits, not classes, by the "folder" label rule
#: (when every top-level folder is one of them). Compared in lower case.
SPLIT_FOLDERS = frozenset(
    {
        "train",
        "training",
        "test",
        "testing",
        "val",
        "valid",
        "validation",
        "dev",
        "eval",
        "query",
        "queries",
        "gallery",
        "database",
    }
)
#: Archive name endings that `open_source` reads with `TarSource`.
TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")
#: List-file name endings that `open_source` reads with `ListSource`.
LIST_SUFFIXES = (".txt", ".lst", ".list", ".tsv", ".csv")

_ACCEPTED = (
    "a folder of images, a tar archive ("
    + ", ".join(TAR_SUFFIXES)
    + "), or a list file ("
    + ", ".join(LIST_SUFFIXES)
    + ") with one image path per line"
)


# -- names ------------------------------------------------------------------------------------


def _name_bytes(name: str) -> bytes | None:
    """The bytes a name stands for (surrogate escapes back to their bytes), None if it has none."""
    try:
        return name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that no file system gave (e.g. from JSON)
        return None


_CONTROL = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}


def printable(name: str) -> str:
    """`name` on one readable line: bytes that are not UTF-8 as ``\\xNN``, control characters escaped.

    For messages and tables; not reversible when the name holds a backslash (use `escape_name`).
    ``printable('caf\\udce9.jpg') == 'caf\\\\xe9.jpg'``.
    """
    raw = _name_bytes(name)
    text = ascii(name)[1:-1] if raw is None else raw.decode("utf-8", "backslashreplace")
    if text.isprintable():
        return text
    return "".join(
        c if c.isprintable() else _CONTROL.get(c, f"\\x{ord(c):02x}" if ord(c) < 256 else f"\\u{ord(c):04x}")
        for c in text
    )


def escape_name(name: str) -> str:
    """`name` as one TSV field, reversibly (`unescape_name`): backslash, tab, newline, carriage
    return and other control characters escaped, bytes that are not UTF-8 as ``\\xNN``."""
    raw = _name_bytes(name)
    if raw is None:
        raw = name.encode("utf-8", "surrogatepass")
    text = raw.decode("utf-8", "surrogateescape")
    out = []
    for c in text:
        if c == "\\":
            out.append("\\\\")
        elif 0xDC80 <= ord(c) <= 0xDCFF:  # an escaped byte
            out.append(f"\\x{ord(c) - 0xDC00:02x}")
        elif c in _CONTROL:
            out.append(_CONTROL[c])
        elif not c.isprintable():
            out.append(f"\\U{ord(c):08x}" if ord(c) > 0xFFFF else f"\\u{ord(c):04x}")
        else:
            out.append(c)
    return "".join(out)


_UNESCAPE = re.compile(r"\\(\\|t|n|r|x[0-9a-fA-F]{2}|u[0-9a-fA-F]{4}|U[0-9a-fA-F]{8})")


def unescape_name(text: str) -> str:
    """The name that `escape_name` wrote as `text` (bytes that are not UTF-8 as surrogate escapes)."""

    def one(m: re.Match) -> str:
        e = m.group(1)
        if e == "\\":
            return "\\"
        if e in ("t", "n", "r"):
            return {"t": "\t", "n": "\n", "r": "\r"}[e]
        if e[0] == "x":
            return chr(0xDC00 + int(e[1:], 16))
        return chr(int(e[1:], 16))

    return _UNESCAPE.sub(one, text)


def plural(n: int, word: str, many: str | None = None) -> str:
    """'1 file', '2 files' (`many` for irregular plurals: plural(2, 'entry', 'entries'))."""
    return f"{n:,} {word if n == 1 else many or word + 's'}"


def _names(items: Sequence, limit: int, describe=lambda x: printable(x)) -> str:
    """The first `limit` items described, with how many more there are."""
    head = ", ".join(describe(x) for x in items[:limit])
    return head + (f" and {len(items) - limit:,} more" if len(items) > limit else "")


# -- reports ----------------------------------------------------------------------------------


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
        head = "; ".join(f"{printable(key)} ({printable(reason)})" for key, reason in self.skipped[:limit])
        more = f"; and {n - limit:,} more" if n > limit else ""
        return f"{plural(n, 'file')} skipped: {head}{more}"


@dataclass
class LabelReport:
    """How a source's labels were read: the rule, the layout seen, and the images left unlabelled.

    Attributes
    ----------
    mode : str
        The rule asked for ("auto", "folder", "parent", "none", or the labels file's path).
    layout : str
        What was seen, in words ("one folder per class", ...).
    counts : dict
        label -> number of images, sorted by label.
    unlabelled : list of (key, why)
        The images that got no label, and why (not filled for ``labels="none"``).
    unmatched : list of str
        Names in a labels file that match no image of the source.
    """

    mode: str = "auto"
    layout: str = ""
    counts: dict[str, int] = field(default_factory=dict)
    unlabelled: list[tuple[str, str]] = field(default_factory=list)
    unmatched: list[str] = field(default_factory=list)

    def unlabelled_text(self, limit: int = 5) -> str:
        """``"N images have no label: key (why), ..."`` ("" when every image has one)."""
        n = len(self.unlabelled)
        if not n:
            return ""
        verb = "has" if n == 1 else "have"
        return f"{plural(n, 'image')} {verb} no label: " + _names(
            self.unlabelled, limit, lambda kw: f"{printable(kw[0])} ({printable(kw[1])})"
        )

    def summary(self, limit: int = 5) -> str:
        """One line: the layout, the classes with their counts, and the images without a label."""
        if self.mode == "none":
            return "labels: none (labels='none' was asked)"
        line = f"labels: {self.layout}"
        if self.counts:
            classes = sorted(self.counts.items())
            line += (
                f"; {plural(len(classes), 'class', 'classes')} ("
                + _names(classes, 8, lambda c: f"{printable(c[0])} {c[1]:,}")
                + ")"
            )
        text = self.unlabelled_text(limit)
        if text:
            line += "; " + text
        if self.unmatched:
            line += (
                f"; {plural(len(self.unmatched), 'name')} in the labels file "
                f"{'matches' if len(self.unmatched) == 1 else 'match'} no image: " + _names(self.unmatched, limit)
            )
        return line


@dataclass
class Listing:
    """What listing a source found beside its images (see `ImageSource.listing`).

    Attributes
    ----------
    labels : LabelReport
        How labels were read.
    not_images : list of str
        Keys of the files left out because their extension is not an image's (`IMAGE_EXTENSIONS`).
    hidden : list of str
        Keys of hidden files and folders (name starting with "."; a folder ends with "/"),
        left out with everything in them.
    problems : list of (key, reason)
        Entries that could not be listed or were not followed: a folder that cannot be read,
        a symbolic link to a folder, a broken link, a special file, an unsafe archive member.
        Indexing adds them to its skip report.
    """

    labels: LabelReport = field(default_factory=LabelReport)
    not_images: list[str] = field(default_factory=list)
    hidden: list[str] = field(default_factory=list)
    problems: list[tuple[str, str]] = field(default_factory=list)

    def left_out(self, limit: int = 5) -> str:
        """One line on the files left out by name ("" when none): not images (by extension), hidden."""
        parts = []
        if self.not_images:
            n = len(self.not_images)
            parts.append(
                f"{plural(n, 'file')} not {'an image' if n == 1 else 'images'} (by extension): "
                + _names(self.not_images, limit)
            )
        if self.hidden:
            parts.append(
                f"{plural(len(self.hidden), 'hidden file or folder', 'hidden files and folders')} "
                "left out: " + _names(self.hidden, limit)
            )
        return "; ".join(parts)


ReadResult = tuple[ImageRecord, "bytes | None", "str | None"]


# -- labels -----------------------------------------------------------------------------------


def _check_labels(labels: str | os.PathLike) -> str | Path:
    """A label mode (str), or the labels file's path (Path)."""
    if isinstance(labels, str) and labels in LABEL_MODES:
        return labels
    if isinstance(labels, (str, os.PathLike)):
        path = Path(labels).expanduser()
        if path.is_file():
            return path
    raise ValueError(
        f"labels must be one of {', '.join(map(repr, LABEL_MODES))} or the path of a labels file "
        f"(name<TAB>label per line), got {os.fspath(labels) if isinstance(labels, os.PathLike) else labels!r}"
        + (": no such file" if isinstance(labels, (str, os.PathLike)) else "")
    )


def _clean_rel(name: str) -> str:
    """A relative name as a labels file writes it, normalised: "/" separators, no "./"."""
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("", ".")]
    return "/".join(parts)


def _read_lines(path: Path, what: str) -> list[tuple[int, str]]:
    """(line number, text) of a text file read as bytes: UTF-8 (a BOM is dropped), or UTF-16
    with a BOM; bytes that are not UTF-8 become surrogate escapes (`os.fsdecode`), so a Latin-1
    file still names its files exactly."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ValueError(f"cannot read the {what} {printable(str(path))}: {e.strerror or e}") from None
    if data.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        try:
            lines = re.split(r"\r\n|\r|\n", data.decode("utf-16"))
        except UnicodeDecodeError as e:
            raise ValueError(f"the {what} {printable(str(path))} starts as UTF-16 but is not ({e})") from None
    else:
        if data.startswith(codecs.BOM_UTF8):
            data = data[len(codecs.BOM_UTF8) :]
        lines = [os.fsdecode(line) for line in re.split(rb"\r\n|\r|\n", data)]
    return [(i, line) for i, line in enumerate(lines, 1)]


_HEADER_WORDS = ("path", "file", "filename", "image", "name", "key")


def _read_table(path: Path, what: str) -> Iterator[tuple[int, list[str], str]]:
    """(line number, fields, line) of each entry of a list or labels file: ``path`` or
    ``path<TAB>label`` (``path,label`` with CSV quoting in a .csv, whose header row is dropped);
    blank lines and lines starting with "#" are skipped."""
    is_csv = path.suffix.lower() == ".csv"
    first = True
    for lineno, line in _read_lines(path, what):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        fields = next(csv.reader([line])) if is_csv else line.split("\t")
        fields = [f.strip() for f in fields]
        if first and is_csv and fields[0].lower() in _HEADER_WORDS:
            first = False
            continue  # a header row
        first = False
        if len(fields) > 2 or not fields[0]:
            sep = "," if is_csv else "<TAB>"
            raise ValueError(
                f"{printable(str(path))}, line {lineno}: expected 'path' or 'path{sep}label', got '{printable(line)}'"
            )
        yield lineno, fields, line


def _read_labels_file(path: Path) -> dict[str, str]:
    """name (normalised, see `_clean_rel`) -> label, from a labels file."""
    out: dict[str, tuple[str, int]] = {}
    for lineno, fields, _ in _read_table(path, "labels file"):
        if len(fields) != 2 or not fields[1]:
            raise ValueError(f"{printable(str(path))}, line {lineno}: expected 'name<TAB>label', got no label")
        name = _clean_rel(fields[0])
        if name in out and out[name][0] != fields[1]:
            raise ValueError(
                f"{printable(str(path))}: '{printable(fields[0])}' has label {out[name][0]!r} on line "
                f"{out[name][1]} and {fields[1]!r} on line {lineno}; give each image one label"
            )
        out.setdefault(name, (fields[1], lineno))
    return {k: v for k, (v, _) in out.items()}


def _assign_labels(
    keys: Sequence[str],
    rels: Sequence[tuple[str, ...] | None],
    mode: str | Path,
    where: str,
    written: Sequence[tuple[str | None, int]] | None = None,
) -> tuple[list[str | None], LabelReport]:
    """Labels by `mode` for images at `rels` (path parts below the root, None when outside it).

    `where` names the root in reasons ("the source folder"); `written` holds the (label, line)
    a list file gives each image, for "auto".
    """
    n = len(keys)
    report = LabelReport(mode=str(mode))
    labels: list[str | None] = [None] * n
    why: list[str | None] = [None] * n
    if isinstance(mode, Path):
        table = _read_labels_file(mode)
        used = set()
        for i, (key, parts) in enumerate(zip(keys, rels)):
            name = "/".join(parts) if parts is not None else None
            for candidate in (name, _clean_rel(key)):
                if candidate is not None and candidate in table:
                    labels[i] = table[candidate]
                    used.add(candidate)
                    break
            else:
                why[i] = f"not in {mode.name}"
        report.layout = f"from the labels file {printable(str(mode))}"
        report.unmatched = sorted(set(table) - used)
    elif mode == "none":
        report.layout = "none"
    elif written is not None and mode == "auto":
        for i, (label, lineno) in enumerate(written):
            labels[i] = label
            if label is None:
                why[i] = f"no label on line {lineno} of the list file"
        report.layout = "written in the list file" if any(labels) else "none: the list file gives no labels"
        if not any(labels):
            why = [None] * n
    elif mode == "parent":
        for i, parts in enumerate(rels):
            if parts is None:
                labels[i] = Path(keys[i]).parent.name or None
            elif len(parts) > 1:
                labels[i] = parts[-2]
            if labels[i] is None:
                why[i] = f"directly in {where}: no folder to name it"
        report.layout = "the folder holding each image"
    else:  # "folder", or "auto" for folders and archives

        def split_at(depth: int) -> set[str] | None:
            """The split folders (train/, test/, ...) at `depth` when every folder there is one and holds
            class folders; else None."""
            tops = {p[depth] for p in rels if p is not None and len(p) > depth + 1}
            deeper = any(p is not None and len(p) > depth + 2 for p in rels)
            return tops if tops and deeper and all(t.lower() in SPLIT_FOLDERS for t in tops) else None

        splits = split_at(0)
        depth = 1 if splits else 0
        wrapper = None
        if mode == "auto" and not splits:
            # One folder holding every image (`tar czf photos.tar.gz photos`) names no class: the class
            # folders are the ones inside it, when there are 2 or more (one class either way otherwise).
            tops = {p[0] if len(p) > 1 else None for p in rels if p is not None}
            inner = {p[1] for p in rels if p is not None and len(p) > 2}
            if len(tops) == 1 and None not in tops and len(inner) >= 2 and all(p is not None for p in rels):
                wrapper = next(iter(tops))
                splits = split_at(1)
                depth = 2 if splits else 1
        nested = False
        for i, parts in enumerate(rels):
            if parts is None:
                why[i] = f"outside {where}"
            elif len(parts) > depth + 1:
                labels[i] = parts[depth]
                nested = nested or len(parts) > depth + 2
            elif splits and len(parts) == depth + 1:
                why[i] = f"directly in the split folder {printable('/'.join(parts[:-1]))}/, not in a class folder"
            elif wrapper is not None:
                why[i] = f"directly in {printable(wrapper)}/, the folder holding every image, not in a class folder"
            else:
                why[i] = f"directly in {where}, not in a class folder"
        if not any(lab is not None for lab in labels):
            report.layout = f"none: no image is in a class folder below {where}"
            why = [None] * n
        else:
            report.layout = (
                "class folders under the split folders " + ", ".join(f"{printable(t)}/" for t in sorted(splits))
                if splits
                else "one folder per class"
            )
            if wrapper is not None:
                report.layout = (
                    f"{report.layout} inside {printable(wrapper)}/, the one folder holding every image "
                    "(--labels folder labels them all by it)"
                )
            if nested:
                report.layout += " (an image in a subfolder takes its class folder's name)"
    for i, lab in enumerate(labels):
        if lab is not None:
            report.counts[lab] = report.counts.get(lab, 0) + 1
        elif why[i] is not None:
            report.unlabelled.append((keys[i], why[i]))
    report.counts = dict(sorted(report.counts.items()))
    return labels, report


def _is_image_name(name: str) -> bool:
    return PurePosixPath(name).suffix.lower() in IMAGE_EXTENSIONS


def _read_file(record: ImageRecord) -> ReadResult:
    try:
        return record, Path(record.key).read_bytes(), None
    except OSError as e:
        if e.errno == errno.ELOOP:
            return record, None, _LINK_LOOP
        if os.path.islink(record.key) and not os.path.exists(record.key):
            return record, None, "a broken symbolic link (its target does not exist)"
        return record, None, f"cannot read the file ({e.strerror or e})"


_LINK_LOOP = "a symbolic link loop (the link leads back to itself): not followed"


# -- sources ----------------------------------------------------------------------------------


class ImageSource:
    """A collection of images: `records()` lists them, `iter_bytes` reads them.

    Subclasses implement `records`, `iter_bytes` and `root`. Neither decodes anything; use
    `iter_images` (or the feature extractor) for that.
    """

    _listing_report: Listing | None = None

    def records(self) -> list[ImageRecord]:
        """Every image of the source, sorted by key (a listing: nothing is read or decoded)."""
        raise NotImplementedError

    @property
    def root(self) -> str:
        """The absolute folder the source's keys are relative to (`os.path.abspath`, links not
        resolved): a folder source's folder, or the folder holding the archive or the list file."""
        raise NotImplementedError

    def listing(self) -> Listing:
        """What the last `records()` left out and how it read the labels (lists the source if
        it was not listed yet)."""
        if self._listing_report is None:
            self.records()
        return self._listing_report

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


class FolderSource(ImageSource):
    """The images under a folder, found recursively.

    Files whose extension is one of `IMAGE_EXTENSIONS` (any case) are listed; the others are
    counted in `listing().not_images`. Hidden files and folders (name starting with ".") are
    left out (`listing().hidden`); symbolic links to folders are not followed and folders that
    cannot be read are reported (`listing().problems`). A key is ``str(root / relative path)``,
    with `root` as given.

    Parameters
    ----------
    root : str or os.PathLike
        The folder.
    labels : {"auto", "folder", "parent", "none"} or path
        How images get a class label (see the module docstring).
    """

    def __init__(self, root: str | os.PathLike, labels: str | os.PathLike = "auto") -> None:
        self.folder = root
        self.labels = _check_labels(labels)

    @property
    def root(self) -> str:
        return os.path.abspath(Path(self.folder).expanduser())

    def _root(self) -> Path:
        root = Path(self.folder).expanduser()
        if not root.is_dir():
            raise ValueError(
                f"FolderSource root '{printable(str(self.folder))}' is not a folder; give an existing folder of images"
            )
        return root

    def records(self) -> list[ImageRecord]:
        root = self._root()
        listing = Listing()
        rels: list[tuple[str, ...]] = []
        stack: list[tuple[str, tuple[str, ...]]] = [(str(root), ())]
        while stack:
            folder, parts = stack.pop()
            try:
                with os.scandir(folder) as it:
                    entries = list(it)
            except OSError as e:
                if not parts:
                    raise ValueError(f"cannot read the folder {printable(folder)}: {e.strerror or e}") from None
                listing.problems.append((folder + os.sep, f"cannot read the folder ({e.strerror or e})"))
                continue
            for entry in entries:
                try:
                    if entry.name.startswith("."):
                        listing.hidden.append(entry.path + (os.sep if entry.is_dir(follow_symlinks=False) else ""))
                    elif entry.is_dir(follow_symlinks=False):
                        stack.append((entry.path, parts + (entry.name,)))
                    elif entry.is_symlink() and entry.is_dir():
                        listing.problems.append(
                            (entry.path, "a symbolic link to a folder: not followed (give the folder itself)")
                        )
                    elif not _is_image_name(entry.name):
                        listing.not_images.append(entry.path)
                    elif entry.is_file() or (entry.is_symlink() and not os.path.exists(entry.path)):
                        rels.append(parts + (entry.name,))  # a broken link is reported when it is read
                    else:
                        listing.problems.append((entry.path, "not a regular file (a device, socket or pipe)"))
                except OSError as e:  # following a link that loops, or an entry gone meanwhile
                    why = _LINK_LOOP if e.errno == errno.ELOOP else f"cannot be read ({e.strerror or e})"
                    listing.problems.append((entry.path, why))
        rels.sort()
        keys = [str(root.joinpath(*parts)) for parts in rels]
        found, listing.labels = _assign_labels(keys, rels, self.labels, "the source folder")
        listing.not_images.sort()
        listing.hidden.sort()
        listing.problems.sort()
        self._listing_report = listing
        return sorted((ImageRecord(k, lab) for k, lab in zip(keys, found)), key=lambda r: r.key)

    def iter_bytes(self, records: Sequence[ImageRecord] | None = None) -> Iterator[ReadResult]:
        for record in self.records() if records is None else records:
            yield _read_file(record)

    def __repr__(self) -> str:
        return f"FolderSource('{printable(str(self.folder))}', labels={str(self.labels)!r})"


class ListSource(ImageSource):
    """The images named in a text file, one per line.

    Each line is ``path`` or ``path<TAB>label`` (in a .csv file, ``path,label`` with CSV quoting;
    a first row ``path,label`` is taken as a header). Blank lines and lines starting with "#"
    are ignored. A relative path is relative to the list file's folder; the key is that path
    joined to the list file's folder as given (an absolute path is kept as written). Files are
    not checked when listing: a missing one is reported when read.

    The file is read as bytes: UTF-8 (with or without a BOM), UTF-16 with a BOM, and names that
    are not UTF-8 (a list written in Latin-1) name their files exactly (see the module docstring).

    Parameters
    ----------
    path : str or os.PathLike
        The list file.
    labels : {"auto", "folder", "parent", "none"} or path
        "auto" takes the labels written in the file (None where a line has none); "folder" and
        "parent" read them from the paths below the list file's folder, as a folder source
        would; "none" drops all labels; a labels file maps paths (as written) to labels.
    """

    def __init__(self, path: str | os.PathLike, labels: str | os.PathLike = "auto") -> None:
        self.path = path
        self.labels = _check_labels(labels)

    @property
    def root(self) -> str:
        return os.path.dirname(os.path.abspath(Path(self.path).expanduser()))

    def records(self) -> list[ImageRecord]:
        path = Path(self.path).expanduser()
        base = path.parent
        seen: dict[str, tuple[str | None, int, tuple[str, ...] | None]] = {}
        for lineno, fields, _ in _read_table(path, "list file"):
            written = Path(fields[0]).expanduser()
            key = str(written if written.is_absolute() else base / written)
            label = fields[1] if len(fields) == 2 and fields[1] else None
            if key in seen and seen[key][0] != label:
                raise ValueError(
                    f"{printable(str(self.path))}: '{printable(fields[0])}' is listed with label {seen[key][0]!r} on line "
                    f"{seen[key][1]} and {label!r} on line {lineno}; give each image one label"
                )
            rel = os.path.relpath(os.path.abspath(key), os.path.abspath(base))
            parts = None if rel == os.pardir or rel.startswith(os.pardir + os.sep) else tuple(Path(rel).parts)
            seen.setdefault(key, (label, lineno, parts))
        keys = sorted(seen)
        found, report = _assign_labels(
            keys, [seen[k][2] for k in keys], self.labels, "the list file's folder", written=[seen[k][:2] for k in keys]
        )
        self._listing_report = Listing(labels=report)
        return [ImageRecord(k, lab) for k, lab in zip(keys, found)]

    def iter_bytes(self, records: Sequence[ImageRecord] | None = None) -> Iterator[ReadResult]:
        for record in self.records() if records is None else records:
            yield _read_file(record)

    def __repr__(self) -> str:
        return f"ListSource('{printable(str(self.path))}', labels={str(self.labels)!r})"


@dataclass(frozen=True)
class _Member:
    position: int  # index among all members, in archive order
    name: str  # as stored in the archive
    size: int
    offset: int  # of the data in the uncompressed stream
    sparse: bool


_ARCHIVE_ERRORS = (tarfile.TarError, OSError, EOFError, zlib.error)


def _member_parts(name: str) -> list[str]:
    return [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("/", ".")]


def _clean_member_name(name: str) -> str | None:
    """The member's path without "./" prefixes, or None for names that are unsafe or hidden."""
    parts = _member_parts(name)
    if not parts or any(p == ".." or p.startswith(".") or p == "__MACOSX" for p in parts):
        return None
    return "/".join(parts)


class TarSource(ImageSource):
    """The images in a tar archive (.tar, .tar.gz, .tgz, .tar.bz2, .tar.xz), read in place.

    Nothing is extracted to disk. Members are listed like `FolderSource` lists files (image
    extensions only, the rest counted in `listing()`; hidden names and macOS's ``__MACOSX``
    left out; links and unsafe names (``..``) reported; the same label rule on member paths).
    A key is ``"<path>::<member name>"``; a member name that is not UTF-8 arrives with
    surrogate escapes, as `tarfile` decodes it.

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
    labels : {"auto", "folder", "parent", "none"} or path
        How images get a class label (see the module docstring).
    buffer_bytes : int
        Most member bytes held at once while reordering a compressed archive (default 32 MiB).
    """

    def __init__(
        self, path: str | os.PathLike, labels: str | os.PathLike = "auto", buffer_bytes: int = 32 << 20
    ) -> None:
        self.path = path
        self.labels = _check_labels(labels)
        self.buffer_bytes = buffer_bytes
        self._cache: tuple[tuple[int, int], bool, dict[str, _Member], Listing] | None = None

    @property
    def root(self) -> str:
        return os.path.dirname(os.path.abspath(Path(self.path).expanduser()))

    # -- listing ---------------------------------------------------------------------------

    def _file(self) -> Path:
        path = Path(self.path).expanduser()
        if not path.is_file():
            raise ValueError(
                f"TarSource path '{printable(str(self.path))}' is not a file; give an existing tar archive"
            )
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
        left = Listing()
        prefix = self._prefix
        try:
            for position, info in _stream(path):
                if info.isdir():
                    continue
                name = _clean_member_name(info.name)
                if name is None:
                    parts = _member_parts(info.name)
                    if not parts or ".." in parts:
                        left.problems.append(
                            (prefix + info.name, "an unsafe member name (it climbs out with ..): not read")
                        )
                    else:
                        left.hidden.append(prefix + info.name)
                elif not _is_image_name(name):
                    left.not_images.append(prefix + name)
                elif info.issym() or info.islnk():
                    left.problems.append((prefix + name, "a link inside the archive: not followed"))
                elif not info.isreg():
                    left.problems.append((prefix + name, "not a regular file in the archive"))
                else:
                    members.pop(name, None)  # a later copy of a name replaces the earlier (tar semantics)
                    members[name] = _Member(position, info.name, info.size, info.offset_data, info.issparse())
        except _ARCHIVE_ERRORS as e:
            raise ValueError(
                f"{printable(str(path))} is not a readable tar archive ({type(e).__name__}: {e})"
            ) from None
        for items in (left.not_images, left.hidden, left.problems):
            items[:] = sorted(set(items))
        self._cache = (stamp, compressed, members, left)
        return compressed, members

    def records(self) -> list[ImageRecord]:
        _, members = self._listing()
        names = sorted(members)
        prefix = self._prefix
        keys = [prefix + n for n in names]
        found, labels = _assign_labels(
            keys, [tuple(n.split("/")) for n in names], self.labels, "the archive's top level"
        )
        left = self._cache[3]
        self._listing_report = Listing(labels, list(left.not_images), list(left.hidden), list(left.problems))
        return [ImageRecord(k, lab) for k, lab in zip(keys, found)]

    def read_order(self, records: Sequence[ImageRecord]) -> list[ImageRecord]:
        _, members = self._listing()
        prefix, last = self._prefix, float("inf")

        def position(r: ImageRecord) -> float:
            m = members.get(r.key[len(prefix) :]) if r.key.startswith(prefix) else None
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
            members.get(r.key[len(prefix) :]) if r.key.startswith(prefix) else None for r in records
        ]
        if compressed:
            yield from self._iter_passes(records, wanted)
        else:
            yield from self._iter_seek(records, wanted)

    def _missing(self, record: ImageRecord) -> ReadResult:
        return record, None, f"not an image member of the archive {printable(str(self.path))}"

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
        return f"TarSource('{printable(str(self.path))}', labels={str(self.labels)!r})"


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


def open_source(spec: str | os.PathLike | ImageSource, labels: str | os.PathLike = "auto") -> ImageSource:
    """The image source that `spec` names: a folder, a tar archive, or a list file.

    Parameters
    ----------
    spec : str, os.PathLike or ImageSource
        A path (an ImageSource is returned as is).
    labels : {"auto", "folder", "parent", "none"} or path of a labels file
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
        raise ValueError(f"image source '{printable(str(spec))}' does not exist; give {_ACCEPTED}")
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
    raise ValueError(f"image source '{printable(str(spec))}' is of an unknown kind{hint}; give {_ACCEPTED}")


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
        warnings.warn(f"skipping {printable(record.key)}: {error}", BadImageWarning, stacklevel=2)
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
