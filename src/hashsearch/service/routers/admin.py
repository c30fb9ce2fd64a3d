"""GET /stats, GET /health, GET /jobs/{id}, GET /evaluation."""

from __future__ import annotations

from fastapi import APIRouter, Path, Request

router = APIRouter(tags=["admin"])


@router.get("/stats")
def stats(request: Request):
    """Size, bits, method, backbone, labels, and the collection's stored stats (mAP when known)."""
    return request.app.state.hs.stats()


@router.get("/health")
def health(request: Request):
    """Liveness: the collection is open; `count` as it is now (after a change made by another process too)."""
    hs = request.app.state.hs
    hs.refresh()
    return {"status": "ok", "count": len(hs.coll)}


@router.get("/jobs/{job_id}")
def job(request: Request, job_id: str = Path(..., max_length=64, description="the id POST /images returned")):
    """Progress of a background add: state, done/total, new ids, duplicates, per-file errors."""
    return request.app.state.hs.job(job_id).as_dict()


@router.get("/evaluation")
def evaluation(request: Request):
    """The benchmark JSON given with --eval (rows of method, bits, metrics incl. the PR curve)."""
    return request.app.state.hs.evaluation()
