"""`hashsearch duplicates` end to end on a folder of real photos with planted copies: the groups,
the three output formats, and --move-to / --delete, which never touch a file without --yes."""

from __future__ import annotations

import csv
import importlib.util
import io
import json
import os
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


def test_table_and_csv(photos):
    root, groups = photos
    table = run("duplicates", root / "photos", "--cache-dir", root / "cache")
    assert f"{len(groups)} groups, {sum(len(g) - 1 for g in groups)} duplicates among 45 images" in table
    assert table.count("keep ") == len(groups)
    rows = list(
        csv.DictReader(
            io.StringIO(run("duplicates", root / "photos", "--csv", "--cache-dir", root / "cache", stdout_only=True))
        )
    )
    assert len(rows) == sum(map(len, groups))
    assert {r["keep"] for r in rows} == {"True", "False"}
    assert set(rows[0]) == {
        "group",
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
    text = run("duplicates", folder, "--move-to", tmp_path / "moved", "--cache-dir", root / "cache")
    assert text.count("would move ") == sum(len(g) - 1 for g in groups) and "add --yes" in text
    assert not (tmp_path / "moved").exists()
    text = run("duplicates", folder, "--delete", "--keep", "newest", "--cache-dir", root / "cache")
    assert text.count("would delete ") == sum(len(g) - 1 for g in groups)
    assert snapshot(folder) == before


def test_move_with_yes_moves_all_but_the_one_kept(photos, tmp_path):
    root, groups = photos
    folder = fresh_copy(photos, tmp_path)
    before = snapshot(folder)
    run(
        "duplicates",
        folder,
        "--move-to",
        tmp_path / "moved",
        "--yes",
        "--keep",
        "shortest-path",
        "--cache-dir",
        root / "cache",
    )
    after = snapshot(folder)
    moved = sorted(p.name for p in (tmp_path / "moved").iterdir())
    assert len(moved) == sum(len(g) - 1 for g in groups)
    assert len(after) == len(before) - len(moved)
    for g in groups:  # exactly one file of each group is left, and it is the shortest path
        left = [p for p in g if p in after]
        assert left == [min(g, key=lambda p: (len(str(folder / p)), str(folder / p)))]
    # No planted group has two files left (a look-alike pair of photos without copies may be: in a
    # 20-photo folder a dandelion copy and a colts-foot photo have whitened similarity 0.41).
    assert not _planted_pairs_left(
        run("duplicates", folder, "--json", "--cache-dir", root / "cache", stdout_only=True), folder, groups
    )


def test_delete_with_yes_on_a_collection_removes_its_entries(photos, tmp_path):
    root, groups = photos
    folder = fresh_copy(photos, tmp_path)
    coll = tmp_path / "p.hsx"
    run(
        "index", folder, "--out", coll, "--method", "itq", "--bits", "64", "--keep-duplicates", "--labels", "none",
        "--cache-dir", root / "cache",
    )  # fmt: skip
    run("duplicates", coll, "--delete", "--yes")
    n_dups = sum(len(g) - 1 for g in groups)
    assert len(snapshot(folder)) == 45 - n_dups
    info = run("info", coll)
    assert f"{45 - n_dups}" in info
    # No planted group has two files left (two iris photos without copies have similarity 0.46 here).
    assert not _planted_pairs_left(run("duplicates", coll, "--json", stdout_only=True), folder, groups)


def _planted_pairs_left(text: str, folder: Path, groups) -> list[list[str]]:
    """The groups found that hold two files of one planted group."""
    return [g for g in groups_of(text, folder) if any(len(set(g) & p) > 1 for p in groups)]


def test_usage_errors_are_one_line(photos, tmp_path):
    root, _ = photos
    folder = root / "photos"
    for args, words in [
        (["--move-to", tmp_path / "m", "--delete"], "--move-to and --delete"),
        (["--yes"], "--yes confirms"),
        (["--json", "--csv"], "--json and --csv"),
        (["--keep", "biggest"], "--keep biggest"),
        (["--radius", "65"], "--radius 65"),
    ]:
        text = run("duplicates", folder, *args, "--cache-dir", root / "cache", code=2)
        assert words in text and "Traceback" not in text


def test_help_states_the_grouping_rule():
    text = " ".join(run("duplicates", "--help").split())
    assert "Every two images of a group pass" in text and "A~B and B~C" in text
