"""POST /search (upload a query image) and GET /search/{id} (more like this)."""

from __future__ import annotations

from typing import Optional

from fastapi import APIRouter, File, Query, Request, UploadFile

router = APIRouter(tags=["search"])

K = Query(10, description="number of results (1-1000)")
RADIUS = Query(None, description="Hamming radius: only results within it (with rerank: the candidate radius)")
RERANK = Query(None, description="coarse-to-fine: re-rank this many Hamming candidates by feature distance")
LABEL = Query(None, description="keep only results with this label")


@router.post("/search")
async def search_upload(
    request: Request,
    image: UploadFile = File(..., description="the query image (JPEG, PNG, ...)"),
    k: int = K, radius: Optional[int] = RADIUS, rerank: Optional[int] = RERANK, label: Optional[str] = LABEL,
):
    """Neighbours of an uploaded image: ids, paths, labels, Hamming (and re-rank) distances."""
    data = await image.read(request.app.state.hs.max_upload_bytes + 1)
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(
        request.app.state.hs.search_upload, data, image.filename or "upload", image.content_type,
        k=k, radius=radius, rerank=rerank, label=label,
    )


@router.get("/search/{image_id}")
def search_by_id(request: Request, image_id: int, k: int = K, radius: Optional[int] = RADIUS,
                 rerank: Optional[int] = RERANK, label: Optional[str] = LABEL):
    """More like this: neighbours of an indexed image (itself excluded)."""
    return request.app.state.hs.search_id(image_id, k=k, radius=radius, rerank=rerank, label=label)
