"""Routers split by concern: search, images (records, files, thumbnails, add/remove), admin (stats, health, jobs).

Two marks on an endpoint tell the request guard (`hashsearch.service.guard`) what to check before
the route runs: `needs_key` (the API key, from the headers, before any body is read) and
`takes_files(n)` (an upload route: at most `n` files, admitted against the decode queue).
"""

from __future__ import annotations

from fastapi import Path, Query

from hashsearch.service.limits import MAX_ID, MAX_K


def needs_key(endpoint):
    """Mark a route as mutating: the guard refuses it without the API key, and logs it."""
    endpoint.needs_key = True
    return endpoint


def takes_files(n: int):
    """Mark a route as an upload route carrying up to `n` files."""

    def mark(endpoint):
        endpoint.max_files = n
        return endpoint

    return mark


#: The id of an indexed image: an int64 >= 0 (others are a 422, never a 500).
IMAGE_ID = Path(..., ge=0, le=MAX_ID, description="the id of an indexed image (0 to 2**63-1)")
K = Query(10, ge=1, le=MAX_K, description=f"number of results (1-{MAX_K})")
RADIUS = Query(
    None,
    ge=0,
    le=4096,
    description="Hamming radius: only results within it (with rerank: the candidate radius); at most the code length",
)
RERANK = Query(
    None, ge=1, le=100_000, description="coarse-to-fine: re-rank this many Hamming candidates by feature distance"
)
LABEL = Query(None, max_length=1000, description="keep only results with this label")
