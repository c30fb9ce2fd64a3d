"""`hashsearch duplicates`: groups of exact and near-duplicate images, and what to do with the extra copies."""

from __future__ import annotations

import csv
import json
import os
import shutil
import sys
from pathlib import Path

import typer

from hashsearch.cli.common import (
    BackboneOpt,
    BatchOpt,
    CacheOpt,
    InputSizeOpt,
    MaxPixelsOpt,
    WeightsOpt,
    check_bits,
    make_backbone,
    make_hasher,
    plural,
    show,
)

#: Method and code length of a folder indexed on the fly (measured: benchmarks/results/duplicates.md).
SOURCE_METHOD, SOURCE_BITS = "itq", 64


def _is_collection(path: str) -> bool:
    return (Path(path) / "CURRENT").is_file()


def _check_radius(radius: int | None, n_bits: int) -> None:
    if radius is not None and radius > n_bits:
        raise typer.BadParameter(f"--radius {radius}: at most the code length, {n_bits} bits")


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path` is `folder` or below it, symbolic links and relative parts resolved."""
    path, folder = path.expanduser().resolve(), folder.expanduser().resolve()
    return path == folder or folder in path.parents


def _check_move_to(move_to: Path | None, source: str, coll=None) -> None:
    """Refuse a --move-to folder inside the folder scanned or the collection folder, before anything
    is read or moved: the next run would scan the files moved there and find them again (a fresh
    user's rerun did). With a collection, a folder it was indexed from only gets a warning: its
    entries are removed, so a rerun on the collection does not see them; indexing that folder again would."""
    if move_to is None:
        return
    scanned = Path(source)
    if scanned.is_dir() and _inside(move_to, scanned):
        what = "the collection folder" if coll is not None else "the folder scanned"
        outside = scanned.expanduser().resolve()
        raise typer.BadParameter(
            f"--move-to {show(move_to)} is inside {what}, {show(source)}: the files moved there would "
            f"be found again as duplicates by the next run; give a folder outside it "
            f"(e.g. --move-to {show(outside.parent / (outside.name + '-duplicates'))})"
        )
    for root in [] if coll is None else [s["root"] for s in coll.sources()]:
        if _inside(move_to, Path(root)):
            typer.echo(
                f"warning: --move-to {show(move_to)} is inside {show(root)}, a folder {show(source)} was "
                f"indexed from: their entries are removed from it, but indexing {show(root)} again would "
                f"add the moved files back; a folder outside it avoids that",
                err=True,
            )
            return


def _open_or_build(source: str, radius, method, bits, backbone, input_size, weights, cache_dir, batch_size, max_pixels):
    """The collection at `source`, or one built in memory from the images of `source` (features cached).

    --radius is checked against the code length before any image is read (a folder's: its
    hasher's), so a radius beyond it fails at once, not after the folder is indexed."""
    from hashsearch.collection import Collection

    if _is_collection(source):
        coll = Collection.open(source)
        _check_radius(radius, coll.n_bits)
        return coll, True
    from hashsearch.data.sources import open_source
    from hashsearch.pipeline import build_collection

    check_bits([bits])
    hasher = make_hasher(method, bits, 0)  # before the backbone and the images: a bad spec fails at once
    _check_radius(radius, hasher.n_bits)
    coll, report = build_collection(
        open_source(source, "none"),
        make_backbone(backbone, input_size, weights),
        hasher,
        index="mih",
        cache_dir=cache_dir,
        batch_size=batch_size,
        max_pixels=max_pixels,
        keep_duplicates=True,  # exact copies are what this command is for
        progress=sys.stderr.isatty(),
    )
    for line in report.summary().splitlines()[:1]:
        typer.echo(show(line), err=True)  # stderr: stdout stays a table, JSON or CSV
    return coll, False


def _row(group: int, m, narrow: bool) -> dict:
    return {
        "group": group,
        "narrow": narrow,
        "keep": m.keep,
        "id": m.id,
        "path": m.path,
        "distance": m.distance,
        "similarity": m.similarity,
        "exact": m.exact,
        "bytes": m.bytes,
        "width": m.width,
        "height": m.height,
    }


def _print(report, as_json: bool, as_csv: bool) -> None:
    narrow = set(report.narrow_groups())
    rows = [_row(g, m, g in narrow) for g, group in enumerate(report.groups) for m in group.members]
    if as_json:
        out = {
            **report.summary(),
            "narrow_below": report.narrow_below(),  # as GET /duplicates gives it
            "groups": [
                {
                    "group": g,
                    "keep": group.keep.id,
                    "narrow": g in narrow,
                    "members": [_row(g, m, g in narrow) for m in group.members],
                }
                for g, group in enumerate(report.groups)
            ],
        }
        typer.echo(json.dumps(out, indent=1))  # ASCII: a name that is not UTF-8 as \udcXX
        return
    if as_csv:
        w = csv.DictWriter(sys.stdout, fieldnames=_FIELDS)
        w.writeheader()
        for r in rows:
            # true/false as JSON writes them (csv would write Python's True/False); None is empty.
            w.writerow({**{k: _csv_value(v) for k, v in r.items()}, "path": show(r["path"])})
        return
    if report.groups:
        typer.echo(_TABLE_HEADER)
    for g, group in enumerate(report.groups):
        typer.echo(f"group {g}: {plural(len(group.members), 'image')}")
        for m in group.members:
            sim = "" if m.similarity is None else _sim(m.similarity)
            size = "?" if m.width is None else f"{m.width}x{m.height}"
            nbytes = "?" if m.bytes is None else f"{m.bytes:,}"
            mark = "keep" if m.keep else ("exact" if m.exact else "")
            typer.echo(f"  {mark:<5} {m.distance:>4} {sim:>6} {size:>11} {nbytes:>12}  {show(m.path)}")
    sim = "" if report.min_similarity is None else f", similarity >= {report.min_similarity:g}"
    typer.echo(
        f"{plural(len(report.groups), 'group')}, {plural(report.n_duplicates, 'duplicate')} among "
        f"{plural(report.n_images, 'image')} (radius {report.radius} of {report.n_bits} bits{sim}; keep: {report.keep})"
    )


def _sim(value: float) -> str:
    """A similarity as the table, the move/delete lines and the narrow warning print it: 4 decimals,
    the value JSON and CSV give (`find_duplicates` rounds to 4, and `narrow_below` too), so a member
    printed below the warning's threshold is exactly one that makes its group narrow (with 2
    decimals a member at 0.5956 was printed 0.60 beside a warning of "below 0.6")."""
    return f"{value:.4f}"


#: What codes alone cost, measured at the codes-only default radius (2 of 64 bits): pairwise
#: precision in small folders of flowers12 photos (benchmarks/results/duplicates-codes-only-small.md)
#: and at 10,000 mixed images (duplicates-codes-only-10000.md); with the feature check, 0.98 there.
_CODES_ONLY_COST = (
    "on codes alone different photos share a group: at radius 2 of 64 bits (the default without the check) "
    "precision was 0.94 in folders of 30-800 photos and 0.18 at 10,000 images, at radius 16 0.10 and 0.02 "
    "(0.98 and 0.76 with the check: benchmarks/results/duplicates-codes-only-*.md)"
)


def _why_no_check(codes_only: bool, source: str) -> str:
    return (
        "--codes-only given"
        if codes_only
        else f"{show(source)} stores no features: index it again without --no-features to have the check"
    )


def _refuse_yes_on_codes_alone(codes_only: bool, source: str, radius: int | None, yes: bool) -> None:
    """--yes with codes only and no --radius given: refused (no radius is safe on codes alone, see
    `_CODES_ONLY_COST`); the dry run shows the groups, and an explicit --radius is the user's choice."""
    if yes and radius is None:
        raise typer.BadParameter(
            f"--yes without the feature check ({_why_no_check(codes_only, source)}) needs an explicit --radius: "
            f"{_CODES_ONLY_COST}; look at the groups without --yes, then give --radius R --yes"
        )


def _warn_codes_only(report, codes_only: bool, source: str) -> None:
    """One line on stderr whenever the feature check is off: why, and what it costs."""
    if report.min_similarity is not None:
        return
    typer.echo(
        f"warning: no feature check ({_why_no_check(codes_only, source)}): groups are codes within "
        f"{report.radius} of {report.n_bits} bits; {_CODES_ONLY_COST}; look at every group before moving or deleting",
        err=True,
    )


def _warn_narrow(report) -> None:
    """One line on stderr naming the groups that pass only narrowly (`DuplicateReport.narrow_groups`)."""
    narrow = report.narrow_groups()
    if not narrow:
        return
    below = report.narrow_below()
    shown = ", ".join(map(str, narrow[:10])) + (f" and {len(narrow) - 10} more" if len(narrow) > 10 else "")
    typer.echo(
        f"warning: {len(narrow)} of {plural(len(report.groups), 'group')} "
        f"{'passes' if len(narrow) == 1 else 'pass'} only narrowly ({'group' if len(narrow) == 1 else 'groups'} {shown}: "
        f"a similarity to the kept image below {_sim(below)}; different photos that look alike pass there): "
        f"look at them: --move-to and --delete leave them unless --include-narrow; or raise --min-similarity "
        f"(e.g. --min-similarity {below:g})",
        err=True,
    )


_FIELDS = ["group", "narrow", "keep", "id", "path", "distance", "similarity", "exact", "bytes", "width", "height"]
# The table's columns, named once above the groups: the mark (keep: the image kept; exact: the same
# bytes as it), the Hamming distance and the whitened similarity to the image kept, pixels, bytes.
_TABLE_HEADER = f"  {'mark':<5} {'bits':>4} {'sim':>6} {'pixels':>11} {'bytes':>12}  path"


def _csv_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    return "" if value is None else value


def _to_kept(m, kept, group: int, narrow: bool) -> str:
    """Which group a member is in (and whether it passes only narrowly: the warning names the group)
    and how it compares with the image kept, for the lines of a move or delete."""
    sim = "" if m.similarity is None else f"similarity {_sim(m.similarity)}, "
    mark = f"group {group}, narrow" if narrow else f"group {group}"
    return f"({mark}; {sim}{plural(m.distance, 'bit')} from {show(kept.path)})"


def _target(folder: Path, name: str, taken: set[Path]) -> Path:
    """A path in `folder` for a file named `name` that exists nowhere yet (name-1.jpg, name-2.jpg, ...)."""
    stem, suffix = os.path.splitext(name)
    candidate, n = folder / name, 0
    while candidate.exists() or candidate in taken:
        n += 1
        candidate = folder / f"{stem}-{n}{suffix}"
    taken.add(candidate)
    return candidate


def _relative_folder(key: str) -> Path:
    """The subfolder of a member's key (its path relative to the folder scanned, "/"-separated), kept
    under --move-to so that sub/a.png goes to DIR/sub/a.png; none for a key that leaves its folder."""
    parts = key.split("/")[:-1]
    if os.path.isabs(key) or any(p in ("", ".", "..") for p in parts):
        return Path()
    return Path(*parts) if parts else Path()


def _act(
    report, move_to: Path | None, delete: bool, yes: bool, err: bool, include_narrow: bool = False
) -> tuple[list[int], int]:
    """Move or delete every image not kept (only with `yes`; otherwise say what would happen).

    A file inside an archive is left as it is, and a file that no longer exists (moved or deleted
    since it was indexed) is named as missing: both are counted apart from the files that would be
    moved or deleted, in the dry run too. --move-to keeps each file's path relative to the folder
    scanned (its key) and is created only when a file is moved there. The groups that pass only
    narrowly are left as they are unless `include_narrow` (a fresh user's --yes moved two such
    groups, both different photos). Returns the ids of the files moved or deleted and the number
    that could not be (missing, or an error)."""
    from hashsearch.data.sources import split_key

    done, taken = [], set()
    verb = "move" if move_to is not None else "delete"
    narrow = set(report.narrow_groups())
    n_archive = n_missing = n_failed = n_to_do = n_narrow = 0
    for g, group in enumerate(report.groups):
        for m in group.others:
            how = _to_kept(m, group.keep, g, g in narrow)
            if g in narrow and not include_narrow:
                typer.echo(f"left, its group passes only narrowly: {show(m.path)} {how}", err=True)
                n_narrow += 1
                continue
            if split_key(m.path)[1] is not None:
                typer.echo(f"inside an archive, left as it is: {show(m.path)} {how}", err=True)
                n_archive += 1
                continue
            if not os.path.lexists(m.path):
                typer.echo(
                    f"missing: {show(m.path)} {how}: not found (moved or deleted since it was indexed), "
                    f"nothing to {verb}",
                    err=True,
                )
                n_missing += 1
                continue
            n_to_do += 1
            if move_to is not None:
                dest = _target(move_to / _relative_folder(m.key), os.path.basename(m.path), taken)
                what = f"{show(m.path)} -> {show(dest)} {how}"
            else:
                what = f"{show(m.path)} {how}"
            if not yes:
                typer.echo(f"would {verb} {what}", err=err)
                continue
            try:
                if move_to is not None:
                    dest.parent.mkdir(parents=True, exist_ok=True)
                    shutil.move(m.path, dest)
                else:
                    os.remove(m.path)
            except OSError as e:
                typer.echo(f"error: {show(m.path)}: cannot {verb} it ({e.strerror or e})", err=True)
                n_failed += 1
                continue
            typer.echo(f"{'moved' if move_to is not None else 'deleted'} {what}", err=err)
            done.append(m.id)
    apart = []
    if n_narrow:
        apart.append(
            f"{plural(n_narrow, 'file')} of narrow groups left as {'it is' if n_narrow == 1 else 'they are'} "
            f"(--include-narrow {verb}s them too)"
        )
    if n_missing:
        apart.append(f"{plural(n_missing, 'file')} missing")
    if n_archive:
        apart.append(
            f"{plural(n_archive, 'file')} inside an archive, left as {'it is' if n_archive == 1 else 'they are'}"
        )
    rest = f"; {', '.join(apart)}" if apart else ""
    if not yes:
        tail = "; add --yes to do it" if n_to_do else ""
        typer.echo(f"nothing changed: {plural(n_to_do, 'file')} would be {verb}d{rest}{tail}", err=True)
        return done, 0
    failed = n_missing + n_failed
    errors = f", {plural(n_failed, 'error')}" if n_failed else ""
    if failed:
        typer.echo(
            f"error: {len(done)} of {plural(n_to_do + n_missing, 'file')} {verb}d; {failed} could not be "
            f"({n_missing} missing{errors}){''.join('; ' + a for a in apart if not a.endswith(' missing'))}",
            err=True,
        )
    else:
        typer.echo(f"{verb}d {plural(len(done), 'file')}{rest}", err=True)
    return done, failed


def duplicates(
    source: str = typer.Argument(
        ..., help="A folder (recursive), archive or list file, indexed on the fly; or a collection folder (*.hsx)."
    ),
    radius: int | None = typer.Option(
        None,
        "--radius",
        "-r",
        min=0,
        help="Hamming radius of a near-duplicate pair (default: a quarter of the bits, 16 of 64; without the feature "
        "check a 32nd, 2 of 64, and --yes then needs --radius given: codes alone group different photos).",
    ),
    min_similarity: float | None = typer.Option(
        None,
        "--min-similarity",
        min=-1.0,
        max=1.0,
        help="Also require this cosine similarity of the whitened features (default where features are stored: "
        "0.4 from 4,000 images on, rising to 0.5 in folders of 1,000 images or fewer).",
    ),
    codes_only: bool = typer.Option(
        False,
        "--codes-only",
        help="No feature check: the Hamming radius alone (far more groups of different photos; a warning says so).",
    ),
    keep: str = typer.Option(
        "largest",
        "--keep",
        help="Which image of a group to keep. largest: the most pixels (width x height); among as many, the one "
        "most alike to the rest of its group, then the oldest file (in a group of two equally large images the "
        "older one is kept), then the most bytes. It keeps the biggest picture, not the "
        "original: an upscaled or bordered copy outweighs its original, and in benchmarks/results/"
        "duplicates-small.md, the files' times ignored, it kept the original in 211 of 488 groups, as often as a "
        "pick at random. "
        "oldest / newest: the file's modification time (--keep oldest keeps the originals where the copies "
        "were made after them). shortest-path: the shortest path. Look at the groups before --yes.",
    ),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    as_csv: bool = typer.Option(False, "--csv", help="Print CSV instead of a table."),
    move_to: Path | None = typer.Option(
        None,
        "--move-to",
        help="Move the images not kept into this folder (with --yes), one outside the folder or collection scanned "
        "(one inside it is refused: the next run would find the moved files again).",
    ),
    delete: bool = typer.Option(False, "--delete", help="Delete the images not kept (with --yes)."),
    include_narrow: bool = typer.Option(
        False,
        "--include-narrow",
        help="Move or delete in the groups that pass only narrowly too (left as they are by default: different "
        "photos that look alike pass there).",
    ),
    yes: bool = typer.Option(False, "--yes", help="Really move or delete; without it, only print what would happen."),
    method: str = typer.Option(
        SOURCE_METHOD,
        "--method",
        "-m",
        help="Hashing method for a folder (unsupervised), with parameters as eval takes them, e.g. 'itq[n_iter=20]'.",
    ),
    bits: int = typer.Option(SOURCE_BITS, "--bits", "-b", help="Code length for a folder."),
    backbone: str = BackboneOpt,
    input_size: int = InputSizeOpt,
    weights: str | None = WeightsOpt,
    cache_dir: Path | None = CacheOpt,
    batch_size: int = BatchOpt,
    max_pixels: int = MaxPixelsOpt,
):
    """Find groups of exact and near-duplicate images (re-encoded, resized, cropped, recoloured, marked, bordered).

    Two images pass when their codes are within --radius and (unless --codes-only) their features'
    similarity is at least --min-similarity, or when they are the same bytes. Every two images of a
    group pass: groups are joined most similar pair first, and never where a pair across them fails
    (so A~B and B~C put C with A and B only if A~C too; else C is left out or grouped elsewhere).

    Without --yes nothing is moved or deleted: --move-to and --delete print what they would do.
    With a collection, the entries of the files moved or deleted are removed from it.
    """
    from hashsearch.duplicates import KEEP_RULES, find_duplicates

    if keep not in KEEP_RULES:
        raise typer.BadParameter(f"--keep {show(keep)}: give one of {', '.join(KEEP_RULES)}")
    if as_json and as_csv:
        raise typer.BadParameter("--json and --csv: give one of them")
    if move_to is not None and delete:
        raise typer.BadParameter("--move-to and --delete: give one of them")
    if yes and move_to is None and not delete:
        raise typer.BadParameter("--yes confirms --move-to DIR or --delete; give one of them")
    if codes_only and min_similarity is not None:
        raise typer.BadParameter("--codes-only and --min-similarity: give one of them")
    if move_to is not None and move_to.exists() and not move_to.is_dir():
        raise typer.BadParameter(f"--move-to {show(move_to)} is a file; give a folder")
    if codes_only:
        _refuse_yes_on_codes_alone(codes_only, source, radius, yes)  # before the folder is indexed
    if not _is_collection(source):
        _check_move_to(move_to, source)  # before the folder is indexed
    coll, is_collection = _open_or_build(
        source, radius, method, bits, backbone, input_size, weights, cache_dir, batch_size, max_pixels
    )
    if is_collection:
        _check_move_to(move_to, source, coll)
    if not coll.store_features:
        if min_similarity is not None:
            raise typer.BadParameter(
                f"--min-similarity {min_similarity:g}: {show(source)} stores no features (indexed with "
                "--no-features); index it again without --no-features, or leave out --min-similarity"
            )
        _refuse_yes_on_codes_alone(codes_only, source, radius, yes)
    similarity = None if codes_only else ("auto" if min_similarity is None else min_similarity)
    report = find_duplicates(coll, radius, min_similarity=similarity, keep=keep)
    _warn_codes_only(report, codes_only, source)
    if move_to is None and not delete:
        _print(report, as_json, as_csv)
        _warn_narrow(report)
        return
    if as_json or as_csv:
        _print(report, as_json, as_csv)
    _warn_narrow(report)  # before anything is moved or deleted
    done, failed = _act(report, move_to, delete, yes, err=as_json or as_csv, include_narrow=include_narrow)
    if done and is_collection:
        coll.remove(done)
        coll.save(source)
        typer.echo(f"removed {plural(len(done), 'entry', 'entries')} from {show(source)}", err=True)
    if failed:
        raise typer.Exit(1)
