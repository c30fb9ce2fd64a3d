"""The unseen-classes protocol: training classes and retrieval classes are disjoint."""

from __future__ import annotations

import pytest

from hashsearch.data.protocols import Split, list_protocols
from hashsearch.data.sources import ImageRecord
from hashsearch.data.unseen import unseen_classes


def _split():
    def recs(part, n):
        return [ImageRecord(f"{part}/{c}/{i}", c) for c in "abcdefghij" for i in range(n)]

    train, query = recs("train", 5), recs("test", 2)
    return Split("toy", train, query, sorted(train + recs("db", 3), key=lambda r: r.key), 0, "toy split.")


def test_registered():
    assert "unseen-classes" in list_protocols()


def test_classes_are_disjoint_and_counts_right():
    s = unseen_classes(_split(), n_unseen=3, seed=1)
    seen, held = {r.label for r in s.train}, {r.label for r in s.query}
    assert len(seen) == 7 and len(held) == 3 and not seen & held
    assert {r.label for r in s.database} == held
    assert len(s.query) == 6 and len(s.database) == 3 * (5 + 3)
    assert unseen_classes(_split(), 3, seed=1) == s  # seeded
    assert "unseen" in s.description.lower()


@pytest.mark.parametrize("n", [0, 9, 2.5])
def test_bad_n_unseen(n):
    with pytest.raises(ValueError, match="n_unseen"):
        unseen_classes(_split(), n_unseen=n)
