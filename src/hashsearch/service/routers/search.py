"""POST /search (upload a query image) and GET /search/{id} (more like this)."""

from __future__ import annotations

from fastapi import APIRouter, File, Request, UploadFile
from starlette.concurrency import run_in_threadpool

from hashsearch.service.routers import IMAGE_ID, LABEL, RADIUS, RERANK, K, takes_files

router = APIRouter(tags=["search"])


@router.post("/search")
@takes_files(1)
async def search_upload(
    request: Request,
    image: UploadFile = File(..., description="the query image (JPEG, PNG, ...)"),
    k: int = K,
    radius: int | None = RADIUS,
    rerank: int | None = RERANK,
    label: str | None = LABEL,
):
    """Neighbours of an uploaded image: ids, keys, labels, Hamming (and re-rank) distances."""
    hs = request.app.state.hs
    data = await image.read(hs.limits.max_upload_bytes + 1)
    return await run_in_threadpool(
        hs.search_upload,
        data,
        image.filename or "upload",
        image.content_type,
        k=k,
        radius=radius,
        rerank=rerank,
        label=label,
    )


@router.get("/search/{image_id}")
def search_by_id(
    request: Request,
    image_id: int = IMAGE_ID,
    k: int = K,
    radius: int | None = RADIUS,
    rerank: int | None = RERANK,
    label: str | None = LABEL,
):
    """More like this: neighbours of an indexed image (itself excluded)."""
    return request.app.state.hs.search_id(image_id, k=k, radius=radius, rerank=rerank, label=label)
