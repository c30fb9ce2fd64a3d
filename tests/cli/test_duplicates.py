"""`hashsearch duplicates` end to end on a folder of real photos with planted copies: the groups,
the three output formats, and --move-to / --delete, which never touch a file without --yes."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from hashsearch.cli import app

_spec = importlib.util.spec_from_file_location(
    "planted_duplicates", Path(__file__).parents[1] / "planted_duplicates.py"
)
planted = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(planted)


def run(*args, code: int = 0, stdout_only: bool = False) -> str:
    """The command's output (stdout and stderr; with `stdout_only`, what a pipe would get)."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    return result.stdout if stdout_only else result.output


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    root = tmp_path_factory.mktemp("clidups")
    groups = planted.make_planted(root / "photos")
    # The feature cache is filled once here; every test below reads it.
    run("duplicates", root / "photos", "--cache-dir", root / "cache")
    return root, groups


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def fresh_copy(photos, tmp_path) -> Path:
    root, _ = photos
    shutil.copytree(root / "photos", tmp_path / "photos")
    return tmp_path / "photos"


def groups_of(text: str, folder: Path) -> list[list[str]]:
    out = json.loads(text)
    return sorted(sorted(os.path.relpath(m["path"], folder) for m in g["members"]) for g in out["groups"])


def test_json_lists_the_planted_groups(photos):
    root, groups = photos
    text = run("duplicates", root / "photos", "--json", "--cache-dir", root / "cache", stdout_only=True)
    assert groups_of(text, root / "photos") == sorted(map(sorted, groups))
    out = json.loads(text)
    assert out["n_duplicates"] == sum(len(g) - 1 for g in groups) and out["keep"] == "largest"
    member = out["groups"][0]["members"][0]
    assert member["keep"] and member["distance"] == 0 and member["bytes"] > 0 and member["width"] > 0


def n_images(folder: Path) -> int:
    return sum(1 for _ in folder.rglob("*.jpg"))


def test_table_and_csv(photos):
    root, groups = photos
    table = run("duplicates", root / "photos", "--cache-dir", root / "cache", stdout_only=True)
    n = n_images(root / "photos")
    assert f"{len(groups)} groups, {sum(len(g) - 1 for g in groups)} duplicates among {n} images" in table
    assert table.count("keep ") == len(groups)
    # One header row names the columns, above the first group.
    lines = table.splitlines()
    assert lines[0].split() == ["mark", "bits", "sim", "pixels", "bytes", "path"] and lines[1].startswith("group 0:")
    assert table.count("pixels") == 1
    text = run("duplicates", root / "photos", "--csv", "--cache-dir", root / "cache", stdout_only=True)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert len(rows) == sum(map(len, groups))
    # Booleans as JSON writes them, not Python's True/False.
    assert {r["keep"] for r in rows} == {"true", "false"}
    # exact: true for a member with the kept file's bytes, never for the kept file itself.
    kept = {r["group"]: Path(r["path"]).read_bytes() for r in rows if r["keep"] == "true"}
    assert [r["exact"] for r in rows] == [
        "true" if r["keep"] == "false" and Path(r["path"]).read_bytes() == kept[r["group"]] else "false" for r in rows
    ]
    assert "True" not in text and "False" not in text
    assert set(rows[0]) == {
        "group",
        "narrow",
        "keep",
        "id",
        "path",
        "distance",
        "similarity",
        "exact",
        "bytes",
        "width",
        "height",
    }


def test_move_and_delete_without_yes_touch_nothing(photos, tmp_path):
    root, groups = photos
    folder = fresh_copy(photos, tmp_path)
    before = snapshot(folder)
    result = CliRunner().invoke(
        app,
        [
            "duplicates",
            str(folder),
            "--json",
            "--include-narrow",
            "--move-to",
            str(tmp_path / "moved"),
            "--cache-dir",
            str(root / "cache"),
        ],
    )
    assert result.exit_code == 0, result.output
    text = result.stderr  # with --json, what would be done goes to stderr
    assert text.count("would move ") == sum(len(g) - 1 for g in groups) and "add --yes" in text
    # Each line says how close the file is to the one kept, as the table does.
    sims = {
        os.path.basename(m["path"]): m["similarity"] for g in json.loads(result.stdout)["groups"] for m in g["members"]
    }
    for line in text.splitlines():
        if line.startswith("would move "):
            name = os.path.basename(line.split(" -> ")[0][len("would move ") :])
            assert re.search(rf"\(group \d+(, narrow)?; similarity {sims[name]:.4f}, \d+ bits? from ", line), line
    assert not (tmp_path / "moved").exists()
    text = run("duplicates", folder, "--delete", "--include-narrow", "--keep", "newest", "--cache-dir", root / "cache")
    assert text.count("would delete ") == sum(len(g) - 1 for g in groups)
    assert snapshot(folder) == before


def test_move_with_yes_moves_all_but_the_one_kept(photos, tmp_path):
    root, groups = photos
    folder = fresh_copy(photos, tmp_path)
    before = snapshot(folder)
    run(
        "duplicates",
        folder,
        "--include-narrow",
        "--move-to",
        tmp_path / "moved",
        "--yes",
        "--keep",
        "shortest-path",
        "--cache-dir",
        root / "cache",
    )
    after = snapshot(folder)
    moved = sorted(str(p.relative_to(tmp_path / "moved")) for p in (tmp_path / "moved").rglob("*") if p.is_file())
    assert len(moved) == sum(len(g) - 1 for g in groups)
    assert len(after) == len(before) - len(moved) and not set(moved) & set(after)  # at their paths in the folder
    for g in groups:  # exactly one file of each group is left, and it is the shortest path
        left = [p for p in g if p in after]
        assert left == [min(g, key=lambda p: (len(str(folder / p)), str(folder / p)))]
    # Run again on what is left (20 different photos): no group.
    again = run("duplicates", folder, "--json", "--cache-dir", root / "cache", stdout_only=True)
    assert json.loads(again)["min_similarity"] == 0.5 and groups_of(again, folder) == []


def test_yes_leaves_the_groups_that_pass_only_narrowly(photos, tmp_path):
    """A third fresh user's --yes moved two groups the warning had named as narrow, both different photos:
    they are now left as they are, named, and counted, unless --include-narrow."""
    root, _ = photos
    folder = fresh_copy(photos, tmp_path)
    report = json.loads(run("duplicates", folder, "--json", "--cache-dir", root / "cache", stdout_only=True))
    narrow = [g for g in report["groups"] if g["narrow"]]
    assert narrow  # the planted set has one (see test_narrow_groups)
    left_alone = {m["path"] for g in narrow for m in g["members"] if not m["keep"]}
    before = snapshot(folder)
    result = CliRunner().invoke(
        app,
        ["duplicates", str(folder), "--move-to", str(tmp_path / "moved"), "--yes", "--cache-dir", str(root / "cache")],
    )
    assert result.exit_code == 0, result.output
    after = snapshot(folder)
    assert all(Path(p).relative_to(folder).as_posix() in after for p in left_alone)  # still there
    moved = {str(p) for p in (tmp_path / "moved").rglob("*") if p.is_file()}
    n_others = sum(len(g["members"]) - 1 for g in report["groups"])
    assert len(moved) == n_others - len(left_alone) and len(after) == len(before) - len(moved)
    left_lines = [
        line for line in result.stderr.splitlines() if line.startswith("left, its group passes only narrowly: ")
    ]
    assert len(left_lines) == len(left_alone) and all(", narrow;" in line for line in left_lines)
    assert (
        f"{len(left_alone)} files of narrow groups left as they are (--include-narrow moves them too)" in result.stderr
    )


def test_delete_with_yes_on_a_collection_removes_its_entries(photos, tmp_path):
    root, groups = photos
    folder = fresh_copy(photos, tmp_path)
    coll = tmp_path / "p.hsx"
    run(
        "index", folder, "--out", coll, "--method", "itq", "--bits", "64", "--keep-duplicates", "--labels", "none",
        "--cache-dir", root / "cache",
    )  # fmt: skip
    n = n_images(folder)
    run("duplicates", coll, "--delete", "--include-narrow", "--yes")
    n_dups = sum(len(g) - 1 for g in groups)
    assert len(snapshot(folder)) == n - n_dups
    info = run("info", coll)
    assert f"{n - n_dups}" in info
    # What is left is 20 different photos: no group at the default for a collection this small.
    again = json.loads(run("duplicates", coll, "--json", stdout_only=True))
    assert again["n_images"] == 20 and again["min_similarity"] == 0.5 and again["groups"] == []


def test_after_a_delete_the_default_groups_no_look_alike_photos(photos, tmp_path):
    """The fresh user's finding: after a cleanup, a rerun grouped different photos (at 0.4 in a
    small folder) that a second --delete --yes would delete. At the default for 20 images (0.5):
    no group; at 0.4 an iris copy and another iris photo (whitened similarity 0.46) are one, and
    the warning names it as passing narrowly."""
    root, groups = photos
    folder = fresh_copy(photos, tmp_path)
    run("duplicates", folder, "--delete", "--include-narrow", "--yes", "--cache-dir", root / "cache")
    again = json.loads(run("duplicates", folder, "--json", "--cache-dir", root / "cache", stdout_only=True))
    assert again["n_images"] == 20 and again["min_similarity"] == 0.5 and again["groups"] == []
    result = CliRunner().invoke(
        app, ["duplicates", str(folder), "--json", "--min-similarity", "0.4", "--cache-dir", str(root / "cache")]
    )
    false = groups_of(result.stdout, folder)
    assert len(false) == 1 and not _planted_pairs_left(result.stdout, folder, groups), false
    assert {os.path.basename(p) for p in false[0]} == {"c6-text.jpg", "iris-1.jpg"}
    assert "warning: 1 of 1 group passes only narrowly (group 0: " in result.stderr  # below 0.4 + 0.1


def _planted_pairs_left(text: str, folder: Path, groups) -> list[list[str]]:
    """The groups found that hold two files of one planted group."""
    return [g for g in groups_of(text, folder) if any(len(set(g) & p) > 1 for p in groups)]


def test_groups_that_pass_narrowly_are_named_in_one_warning(photos, tmp_path):
    root, _ = photos
    folder = fresh_copy(photos, tmp_path)
    for args in ([], ["--min-similarity", "0.6", "--include-narrow", "--move-to", tmp_path / "m"]):
        result = CliRunner().invoke(
            app, ["duplicates", str(folder), "--json", *map(str, args), "--cache-dir", str(root / "cache")]
        )
        assert result.exit_code == 0, result.output
        out = json.loads(result.stdout)
        # Groups with a member less than 0.1 above the threshold to the kept image.
        above = round(out["min_similarity"] + 0.1, 4)
        narrow = [g["group"] for g in out["groups"] if min(m["similarity"] for m in g["members"]) < above]
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
        if not narrow:
            assert not warnings, result.stderr
            continue
        assert len(warnings) == 1, result.stderr
        named = f"({'group' if len(narrow) == 1 else 'groups'} {', '.join(map(str, narrow))}:"
        assert f"warning: {len(narrow)} of {len(out['groups'])} group" in warnings[0] and named in warnings[0]
        assert f"--min-similarity {above:g}" in warnings[0]
        if args:
            assert len(narrow) >= 3  # at 0.6 several planted copies are within 0.1 of it
        # The table (what a user reads; --move-to prints none) shows the same groups below the
        # threshold the warning prints.
        table = CliRunner().invoke(
            app, ["duplicates", str(folder), *map(str, args[:2]), "--cache-dir", str(root / "cache")]
        )
        sims, below, named = _table_against_warning(table.stdout, table.stderr)
        assert named == narrow and [g for g, s in sims.items() if any(float(v) < float(below) for v in s)] == narrow
    assert not (tmp_path / "m").exists()


def _table_against_warning(table: str, stderr: str) -> tuple[dict[int, list[str]], str | None, list[int]]:
    """The similarities the table prints for the members not kept, per group; the threshold the
    narrow warning prints; and the groups it names."""
    sims: dict[int, list[str]] = {}
    group = -1
    for line in table.splitlines():
        if line.startswith("group "):
            group = int(line.split()[1].rstrip(":"))
            sims[group] = []
        elif line.startswith("  ") and line.split()[0] not in ("keep", "mark"):
            sims[group].append(line.split()[2 if line.split()[0] == "exact" else 1])
    warning = re.search(r"only narrowly \(groups? ([\d, ]+): a similarity to the kept image below ([\d.]+);", stderr)
    if warning is None:
        return sims, None, []
    return sims, warning.group(2), [int(g) for g in warning.group(1).split(", ")]


def test_the_table_shows_which_members_are_below_the_warnings_threshold(capsys):
    """A fresh user's table printed 0.60 for a member at 0.5956 beside a warning of "a similarity to
    the kept image below 0.6": the table and the warning print similarities the same way (4
    decimals, as --json), so the members below the threshold printed are those of the groups named."""
    from hashsearch.cli.duplicates import _print, _warn_narrow
    from hashsearch.duplicates import DuplicateReport, Group, Member

    def group(first: int, *others: float) -> Group:
        kept = Member(first, f"k{first}.jpg", None, f"/p/k{first}.jpg", "d", similarity=1.0, keep=True)
        rest = [Member(first + 1 + k, "c.jpg", None, f"/p/c{first + k}.jpg", "e", 3, s) for k, s in enumerate(others)]
        return Group([kept, *rest])

    report = DuplicateReport([group(0, 0.5956), group(10, 0.7, 0.6), group(20, 0.8, 0.5999)], 16, 0.5, "largest", 64, 9)
    _print(report, as_json=False, as_csv=False)
    _warn_narrow(report)
    out = capsys.readouterr()
    sims, below, named = _table_against_warning(out.out, out.err)
    assert below is not None and named == report.narrow_groups() == [0, 2]
    assert [g for g, s in sims.items() if any(float(v) < float(below) for v in s)] == named, (out.out, out.err)
    assert "0.5956" in out.out and "0.5999" in out.out


def test_usage_errors_are_one_line(photos, tmp_path):
    root, _ = photos
    folder = root / "photos"
    for args, words in [
        (["--include-narrow", "--move-to", tmp_path / "m", "--delete", "--include-narrow"], "--move-to and --delete"),
        (["--yes"], "--yes confirms"),
        (["--json", "--csv"], "--json and --csv"),
        (["--keep", "biggest"], "--keep biggest"),
        (["--radius", "65"], "--radius 65"),
    ]:
        text = run("duplicates", folder, *args, "--cache-dir", root / "cache", code=2)
        assert words in text and "Traceback" not in text


def _users_copies(folder: Path) -> bytes:
    """The fresh user's copies of one flowers12 photo (a sunflower: a species the planted set does
    not hold) in `folder`/user: a quality-30 re-encode, a 10% crop, a 0.5x resize, a border, an
    exact copy and a horizontally flipped quality-90 re-encode. Returns the photo's bytes."""
    import tarfile

    from PIL import Image, ImageOps

    with tarfile.open(planted.ARCHIVE) as tar:
        first = min((m for m in tar.getmembers() if m.isfile() and "/sunflower/" in m.name), key=lambda m: m.name)
        data = tar.extractfile(first).read()
    user = folder / "user"
    user.mkdir()
    (user / "photo.jpg").write_bytes(data)
    im = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = im.size
    im.save(user / "q30.jpg", quality=30)
    im.crop((w // 20, h // 20, w - w // 20, h - h // 20)).save(user / "crop.jpg", quality=90)
    im.resize((w // 2, h // 2), Image.Resampling.BICUBIC).save(user / "half.jpg", quality=90)
    ImageOps.expand(im, border=w // 10, fill=(255, 255, 255)).save(user / "border.jpg", quality=90)
    shutil.copyfile(user / "photo.jpg", user / "copy-of-photo.jpg")
    im.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(user / "flipped.jpg", quality=90)
    return data


def test_largest_keeps_the_original_over_a_flipped_copy_with_more_bytes(photos, tmp_path):
    """A fresh user's --keep largest (the default) kept the flipped copy re-encoded at quality 90 (more
    bytes than the original, the same pixels) and --move-to --yes moved the original away. Among
    the equally large, the member most alike to the rest of its group is kept (then the most bytes);
    --help says what 'largest' compares and what to use instead."""
    root, _ = photos
    folder = fresh_copy(photos, tmp_path)
    data = _users_copies(folder)
    assert (folder / "user" / "flipped.jpg").stat().st_size > len(data)  # the user's situation
    out = json.loads(run("duplicates", folder, "--json", "--cache-dir", root / "cache", stdout_only=True))
    group = next(g for g in out["groups"] if any("/user/flipped" in m["path"] for m in g["members"]))
    kept = next(m for m in group["members"] if m["keep"])
    assert Path(kept["path"]).read_bytes() == data, [(m["path"], m["bytes"]) for m in group["members"]]
    run(
        "duplicates",
        folder,
        "--include-narrow",
        "--move-to",
        tmp_path / "moved",
        "--yes",
        "--cache-dir",
        root / "cache",
    )
    left = [p.name for p in (folder / "user").iterdir() if p.read_bytes() == data]
    assert len(left) == 1 and (tmp_path / "moved" / "user" / "flipped.jpg").exists()
    text = " ".join(run("duplicates", "--help").split())
    assert "It keeps the biggest picture, not the original" in text and "--keep oldest" in text


def test_move_to_inside_the_folder_scanned_is_refused_before_anything_moves(photos, tmp_path):
    """A fresh user's --move-to inside the folder scanned: the files moved there were found again as
    duplicates by the next run. Refused (with or without --yes), naming the option, the folder and
    the fix, before the folder is indexed; nothing moves."""
    root, groups = photos
    folder = fresh_copy(photos, tmp_path)
    before = snapshot(folder)
    for inside, yes in [(folder / "dups", ["--yes"]), (folder / "copies" / ".." / "dups", []), (folder, ["--yes"])]:
        cache = tmp_path / "cache-unused"
        text = run("duplicates", folder, "--include-narrow", "--move-to", inside, *yes, "--cache-dir", cache, code=2)
        assert f"--move-to {inside} is inside the folder scanned, {folder}:" in " ".join(text.split()), text
        assert f"give a folder outside it (e.g. --move-to {folder}-duplicates)" in " ".join(text.split())
        assert not cache.exists() and snapshot(folder) == before and not (folder / "dups").exists()
    # A collection: a folder inside the collection folder is refused; one inside the folder it was
    # indexed from is allowed, with a warning (its entries go, so a rerun on it does not see them).
    coll = tmp_path / "p.hsx"
    run(
        "index", folder, "--out", coll, "--method", "itq", "--bits", "64", "--keep-duplicates", "--labels", "none",
        "--cache-dir", root / "cache",
    )  # fmt: skip
    text = " ".join(run("duplicates", coll, "--include-narrow", "--move-to", coll / "dups", "--yes", code=2).split())
    assert f"--move-to {coll / 'dups'} is inside the collection folder, {coll}:" in text
    assert snapshot(folder) == before
    result = CliRunner().invoke(
        app, ["duplicates", str(coll), "--include-narrow", "--move-to", str(folder / "dups"), "--yes"]
    )
    assert result.exit_code == 0, result.output
    assert f"warning: --move-to {folder / 'dups'} is inside {folder}, a folder {coll} was indexed from" in " ".join(
        result.stderr.split()
    )
    assert len([p for p in (folder / "dups").rglob("*") if p.is_file()]) == sum(len(g) - 1 for g in groups)
    assert json.loads(run("duplicates", coll, "--json", stdout_only=True))["groups"] == []


def test_a_radius_beyond_the_code_length_fails_before_the_folder_is_indexed(photos, tmp_path):
    """A fresh user's --radius 100 was refused only after the whole folder was indexed (minutes on a
    big folder). The code length is known from --bits (or the collection) before: nothing is read,
    so the feature cache given is never created."""
    root, _ = photos
    for args, bits in [(["--radius", "100"], 64), (["--radius", "40", "--bits", "32"], 32)]:
        cache = tmp_path / f"cache-{bits}"
        result = CliRunner().invoke(app, ["duplicates", str(root / "photos"), *args, "--cache-dir", str(cache)])
        assert result.exit_code == 2, result.output
        assert f"{args[1]}: at most the code length, {bits} bits" in result.output and "Traceback" not in result.output
        assert not cache.exists() and "images" not in result.stderr.split("--radius")[0]
    # A collection: its code length, from the collection opened, before anything else.
    coll = tmp_path / "p.hsx"
    run(
        "index", root / "photos", "--out", coll, "--method", "itq", "--bits", "32", "--labels", "none",
        "--cache-dir", root / "cache",
    )  # fmt: skip
    text = run("duplicates", coll, "--radius", "33", code=2)
    assert "--radius 33: at most the code length, 32 bits" in text


def test_help_states_the_grouping_rule():
    text = " ".join(run("duplicates", "--help").split())
    assert "Every two images of a group pass" in text and "A~B and B~C" in text


def _planted_mixes(text: str, folder: Path, groups) -> list[list[str]]:
    """The groups found that hold files of two planted groups, or a photo planted without copies."""
    of = {p: k for k, g in enumerate(groups) for p in g}
    return [g for g in groups_of(text, folder) if len({of.get(p, p) for p in g}) > 1]


def test_codes_only_has_its_own_radius_a_warning_and_no_yes_without_radius(photos, tmp_path):
    """A fresh user's --codes-only at the default radius (a quarter of the bits) grouped half of a
    folder of photos, silently, and --move-to --yes would have moved them. Without the feature check
    the default radius is 2 of 64 bits (benchmarks/results/duplicates-codes-only-small.md), one
    warning line says why the check is off and what it costs, and --yes needs --radius given."""
    root, groups = photos
    folder = fresh_copy(photos, tmp_path)
    before = snapshot(folder)
    result = CliRunner().invoke(
        app, ["duplicates", str(folder), "--codes-only", "--json", "--cache-dir", str(root / "cache")]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["radius"] == 2 and out["min_similarity"] is None and out["groups"]
    assert _planted_mixes(result.stdout, folder, groups) == []
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith("warning: no feature check (--codes-only given)"), warnings
    assert "precision was 0.94" in warnings[0] and "within 2 of 64 bits" in warnings[0]
    # At 16 bits the codes alone mix photos in this folder: what the old default did.
    loose = run(
        "duplicates",
        folder,
        "--codes-only",
        "--radius",
        "16",
        "--json",
        "--cache-dir",
        root / "cache",
        stdout_only=True,
    )
    assert _planted_mixes(loose, folder, groups)
    text = " ".join(
        run(
            "duplicates",
            folder,
            "--codes-only",
            "--include-narrow",
            "--move-to",
            tmp_path / "m",
            "--yes",
            "--cache-dir",
            tmp_path / "c",
            code=2,
        ).split()
    )
    assert "--yes without the feature check (--codes-only given) needs an explicit --radius" in text
    assert not (tmp_path / "c").exists() and not (tmp_path / "m").exists() and snapshot(folder) == before
    run(
        "duplicates",
        folder,
        "--codes-only",
        "--radius",
        "2",
        "--include-narrow",
        "--move-to",
        tmp_path / "m",
        "--yes",
        "--cache-dir",
        root / "cache",
    )
    assert len(list((tmp_path / "m").rglob("*.jpg"))) == out["n_duplicates"]


def test_a_collection_without_features_warns_every_time_and_needs_a_radius_for_yes(photos, tmp_path):
    """A collection indexed with --no-features dropped the check silently (a fresh user's group 0
    was 10 different photos, stderr empty)."""
    root, groups = photos
    folder = fresh_copy(photos, tmp_path)
    coll = tmp_path / "nf.hsx"
    run(
        "index", folder, "--out", coll, "--method", "itq", "--bits", "64", "--keep-duplicates", "--labels", "none",
        "--no-features", "--cache-dir", root / "cache",
    )  # fmt: skip
    for args in ([], ["--csv"], ["--delete", "--include-narrow"]):
        result = CliRunner().invoke(app, ["duplicates", str(coll), *args])
        assert result.exit_code == 0, result.output
        warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: no feature check")]
        assert len(warnings) == 1, result.stderr
        assert f"({coll} stores no features: index it again without --no-features" in warnings[0]
        assert "precision was 0.94" in warnings[0] and "within 2 of 64 bits" in warnings[0]
    n = n_images(folder)
    text = " ".join(run("duplicates", coll, "--delete", "--include-narrow", "--yes", code=2).split())
    assert f"--yes without the feature check ({coll} stores no features" in text and "--radius R --yes" in text
    assert n_images(folder) == n
    text = run("duplicates", coll, "--min-similarity", "0.5", code=2)
    assert "stores no features" in text and "Traceback" not in text


def test_largest_keeps_the_older_of_two_equally_large_images(photos, tmp_path):
    """A fresh user's --keep largest kept the copy in groups of two images with as many pixels: a
    mirror saved at quality 92 (more bytes than the original) and a PNG copy of the same pixels in
    sub/. In a group of two both are as alike to the other, so bytes decided; the older file (the
    originals were 30 days older, as copies are made after their originals) now comes before bytes."""
    import tarfile

    from PIL import Image

    root, _ = photos
    folder = fresh_copy(photos, tmp_path)
    with tarfile.open(planted.ARCHIVE) as tar:
        suns = sorted((m for m in tar.getmembers() if m.isfile() and "/sunflower/" in m.name), key=lambda m: m.name)
        a, b = (tar.extractfile(m).read() for m in suns[:2])
    user = folder / "user"
    (user / "sub").mkdir(parents=True)
    (user / "a.jpg").write_bytes(a)
    (user / "b.jpg").write_bytes(b)
    Image.open(io.BytesIO(a)).transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(user / "a-mirror.jpg", quality=92)
    Image.open(io.BytesIO(b)).save(user / "sub" / "b.png")
    old = (user / "a.jpg").stat().st_mtime - 30 * 86400
    for name in ("a.jpg", "b.jpg"):
        os.utime(user / name, (old, old))
    assert (user / "a-mirror.jpg").stat().st_size > len(a) and (user / "sub" / "b.png").stat().st_size > len(b)
    out = json.loads(run("duplicates", folder, "--json", "--cache-dir", root / "cache", stdout_only=True))
    for original, copy in (("a.jpg", "a-mirror.jpg"), ("b.jpg", "sub/b.png")):
        group = next(g for g in out["groups"] if any(m["path"].endswith(f"/user/{copy}") for m in g["members"]))
        paths = sorted(os.path.relpath(m["path"], user) for m in group["members"])
        assert paths == sorted([original, copy])
        kept = next(m for m in group["members"] if m["keep"])
        assert kept["path"].endswith(f"/user/{original}"), group["members"]
    text = " ".join(run("duplicates", "--help").split())
    assert "the oldest file" in text


def test_move_lines_json_and_csv_name_each_group_and_whether_it_is_narrow(photos, tmp_path):
    """In --move-to/--delete mode no table is printed, yet the narrow warning names group numbers:
    each 'would move' line carries its group number and a narrow mark; --json has `narrow` per
    group and `narrow_below`, --csv a narrow column, as GET /duplicates has them."""
    root, _ = photos
    folder = fresh_copy(photos, tmp_path)
    args = [str(folder), "--min-similarity", "0.75", "--cache-dir", str(root / "cache")]
    out = json.loads(run("duplicates", *args, "--json", stdout_only=True))
    assert out["narrow_below"] == 0.85
    narrow = [g["group"] for g in out["groups"] if any(m["similarity"] < 0.85 for m in g["members"] if not m["keep"])]
    assert 2 <= len(narrow) < len(out["groups"]) and [g["group"] for g in out["groups"] if g["narrow"]] == narrow
    assert all(m["narrow"] == g["narrow"] for g in out["groups"] for m in g["members"])
    rows = list(csv.DictReader(io.StringIO(run("duplicates", *args, "--csv", stdout_only=True))))
    assert [r["narrow"] for r in rows] == ["true" if int(r["group"]) in narrow else "false" for r in rows]
    group_of = {m["path"]: g["group"] for g in out["groups"] for m in g["members"] if not m["keep"]}
    result = CliRunner().invoke(app, ["duplicates", *args, "--include-narrow", "--move-to", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith("would move ")]
    assert len(lines) == len(group_of)
    marked = set()
    for line in lines:
        path = line[len("would move ") :].split(" -> ")[0]
        g = group_of[path]
        assert f"(group {g}, narrow; similarity " in line if g in narrow else f"(group {g}; similarity " in line
        marked |= {g} if ", narrow;" in line else set()
    assert sorted(marked) == narrow
    assert f"(groups {', '.join(map(str, narrow))}:" in result.stderr


def test_files_moved_away_are_named_missing_and_a_yes_that_cannot_move_them_fails(photos, tmp_path):
    """A collection whose files were moved away: the dry run promised 'would move' for files that
    no longer exist, and --yes printed an error per file and exited 0. They are named missing in
    the dry run, counted apart, and --yes exits 1 with a summary line."""
    root, groups = photos
    folder = fresh_copy(photos, tmp_path)
    coll = tmp_path / "p.hsx"
    run(
        "index", folder, "--out", coll, "--method", "itq", "--bits", "64", "--keep-duplicates", "--labels", "none",
        "--cache-dir", root / "cache",
    )  # fmt: skip
    out = json.loads(run("duplicates", coll, "--json", stdout_only=True))
    others = [m["path"] for g in out["groups"] for m in g["members"] if not m["keep"]]
    gone = others[:2]
    for p in gone:
        os.remove(p)
    result = CliRunner().invoke(app, ["duplicates", str(coll), "--include-narrow", "--move-to", str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    for p in gone:
        assert f"missing: {p} (group " in result.output and f"would move {p} " not in result.output
    n = len(others)
    assert f"nothing changed: {n - 2} files would be moved; 2 files missing; add --yes to do it" in result.stderr
    result = CliRunner().invoke(
        app, ["duplicates", str(coll), "--include-narrow", "--move-to", str(tmp_path / "m"), "--yes"]
    )
    assert result.exit_code == 1, result.output
    assert f"error: {n - 2} of {n} files moved; 2 could not be (2 missing)" in result.stderr
    assert len(list((tmp_path / "m").rglob("*.jpg"))) == n - 2


def test_an_archive_is_counted_apart_and_no_folder_is_made_for_nothing(photos, tmp_path):
    """An archive as the source: the dry run said 'N files would be moved', --yes left every one as
    it is without a summary and made an empty --move-to folder."""
    import tarfile

    root, groups = photos
    archive = tmp_path / "photos.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(root / "photos", arcname="photos")
    n = sum(len(g) - 1 for g in groups)
    text = run("duplicates", archive, "--include-narrow", "--move-to", tmp_path / "m", "--cache-dir", root / "cache")
    assert f"nothing changed: 0 files would be moved; {n} files inside an archive, left as they are\n" in text
    assert "would move" not in text and "add --yes" not in text
    result = CliRunner().invoke(
        app,
        [
            "duplicates",
            str(archive),
            "--include-narrow",
            "--move-to",
            str(tmp_path / "m"),
            "--yes",
            "--cache-dir",
            str(root / "cache"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert f"moved 0 files; {n} files inside an archive, left as they are" in result.stderr
    assert not (tmp_path / "m").exists()


def test_moved_files_keep_their_path_relative_to_the_folder_scanned(photos, tmp_path):
    """Moved files lost their subfolder (sub/copy.png -> dups/copy.png): they keep it (dups/sub/copy.png),
    and a name taken there still gets -1."""
    root, groups = photos
    folder = fresh_copy(photos, tmp_path)
    moved = tmp_path / "moved"
    out = json.loads(run("duplicates", folder, "--json", "--cache-dir", root / "cache", stdout_only=True))
    others = sorted(os.path.relpath(m["path"], folder) for g in out["groups"] for m in g["members"] if not m["keep"])
    assert any("/" in p for p in others)
    taken = moved / others[0]
    taken.parent.mkdir(parents=True)
    taken.write_bytes(b"already there")
    text = run("duplicates", folder, "--include-narrow", "--move-to", moved, "--cache-dir", root / "cache")
    stem, suffix = os.path.splitext(others[0])
    assert f"-> {moved / (stem + '-1' + suffix)} " in text
    for p in others[1:]:
        assert f"would move {folder / p} -> {moved / p} " in text
    run("duplicates", folder, "--include-narrow", "--move-to", moved, "--yes", "--cache-dir", root / "cache")
    assert sorted(str(p.relative_to(moved)) for p in moved.rglob("*.jpg")) == sorted(
        [others[0], stem + "-1" + suffix, *others[1:]]
    )
    assert taken.read_bytes() == b"already there"
