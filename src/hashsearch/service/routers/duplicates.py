"""GET /duplicates: groups of exact and near-duplicate images of the served collection (docs/duplicates.md)."""

from __future__ import annotations

import time

from fastapi import APIRouter, Query, Request

from hashsearch.service.state import BadRequest

router = APIRouter(tags=["duplicates"])


@router.get("/duplicates")
def duplicates(
    request: Request,
    radius: int | None = Query(
        None,
        ge=0,
        le=4096,
        description="Hamming radius of a near-duplicate pair (default: a quarter of the code length with the feature "
        "check, a 32nd of it, 2 of 64 bits, with codes_only or a collection without features)",
    ),
    min_similarity: float | None = Query(
        None,
        ge=0.0,
        le=1.0,
        description="also require this cosine similarity of the whitened stored features (default where stored: "
        "0.4 from 4,000 images on, rising to 0.5 at 1,000 images and fewer); every two images of a group pass the test",
    ),
    codes_only: bool = Query(False, description="no feature check: the Hamming radius alone"),
    keep: str = Query(
        "largest", pattern="^(largest|oldest|newest|shortest-path)$", description="which image of a group to keep"
    ),
    limit: int = Query(100, ge=1, le=1000, description="groups in this answer (1-1000)"),
    offset: int = Query(0, ge=0, le=2**31, description="groups skipped (largest groups first)"),
):
    """Groups of duplicates: ids, keys, Hamming distance and similarity to the image kept, file and pixel sizes."""
    from hashsearch.duplicates import find_duplicates, whiten_collection

    hs = request.app.state.hs
    t = time.perf_counter()
    with hs.lock.read():
        coll = hs.coll
        if radius is not None and radius > coll.n_bits:
            raise BadRequest(422, f"radius must be between 0 and n_bits={coll.n_bits}, got {radius}")
        if min_similarity is not None and not coll.store_features:
            raise BadRequest(422, "min_similarity needs stored features: this collection has none")
        similarity = None if codes_only else ("auto" if min_similarity is None else min_similarity)
        # Whitened once per state of the collection (until the next add or remove), not per request.
        whitened = hs.derived("whitened", lambda: whiten_collection(coll))
        report = find_duplicates(coll, radius, min_similarity=similarity, keep=keep, whitened=whitened)
    page = report.groups[offset : offset + limit]
    narrow = set(report.narrow_groups())
    return {
        **report.summary(),
        "narrow_below": report.narrow_below(),
        "offset": offset,
        "limit": limit,
        "groups": [
            {
                "group": offset + g,
                "size": len(group.members),
                "keep": group.keep.id,
                # A member below narrow_below: different photos that look alike pass there (look before deleting).
                "narrow": offset + g in narrow,
                "members": [
                    {
                        "id": m.id,
                        "key": m.key,
                        "label": m.label,
                        "keep": m.keep,
                        "exact": m.exact,
                        "distance": m.distance,
                        "similarity": m.similarity,
                        "bytes": m.bytes,
                        "width": m.width,
                        "height": m.height,
                    }
                    for m in group.members
                ],
            }
            for g, group in enumerate(page)
        ],
        "took_ms": round(1000 * (time.perf_counter() - t), 3),
    }
