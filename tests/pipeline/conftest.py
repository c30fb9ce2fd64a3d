"""A small real folder holding bad files (CIFAR-10 JPEGs, one not-an-image, one truncated)."""

from __future__ import annotations

import shutil

import pytest


@pytest.fixture(scope="session")
def folder_with_bad(cifar_small, tmp_path_factory):
    root = tmp_path_factory.mktemp("with_bad")
    shutil.copytree(cifar_small / "test", root, dirs_exist_ok=True)
    (root / "cat" / "notes.jpg").write_bytes(b"this is not an image")
    good = sorted((root / "dog").glob("*.jpg"))[0].read_bytes()
    (root / "dog" / "truncated.jpg").write_bytes(good[: len(good) // 3][:200])
    shutil.copy(sorted((root / "cat").glob("*.jpg"))[0], root / "cat" / "duplicate.jpg")
    return root
