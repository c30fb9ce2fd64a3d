"""Indexed images: GET /images/{id} (file), GET /thumbs/{id}, GET /entries/{id}, POST /images, DELETE /images/{id}."""

from __future__ import annotations

from typing import List, Optional

from fastapi import APIRouter, File, Form, Header, Request, Response, UploadFile

router = APIRouter(tags=["images"])
_TYPES = {b"\xff\xd8": "image/jpeg", b"\x89P": "image/png", b"GI": "image/gif", b"BM": "image/bmp"}


@router.get("/entries/{image_id}")
def entry(request: Request, image_id: int):
    """The record of an indexed image: id, path, label."""
    return request.app.state.hs.entry(image_id)


@router.get("/images/{image_id}")
def image(request: Request, image_id: int):
    """The original file of an indexed image (found only through the index's records)."""
    data = request.app.state.hs.image_bytes(image_id)
    return Response(data, media_type=_TYPES.get(data[:2], "application/octet-stream"))


@router.get("/thumbs/{image_id}")
def thumb(request: Request, image_id: int):
    """A cached JPEG thumbnail (128 px) of an indexed image."""
    return Response(request.app.state.hs.thumbnail(image_id), media_type="image/jpeg",
                    headers={"Cache-Control": "max-age=3600"})


@router.post("/images")
async def add_images(
    request: Request,
    images: List[UploadFile] = File(..., description="image files to add"),
    labels: Optional[str] = Form(None, description="comma-separated labels, one per file, or one for all"),
    background: bool = Form(False, description="run as a job; poll GET /jobs/{id}"),
    x_api_key: Optional[str] = Header(None),
):
    """Add images (encoded with the collection's backbone and hasher); the collection is saved atomically."""
    from starlette.concurrency import run_in_threadpool

    from hashsearch.service import MAX_FILES
    from hashsearch.service.state import BadRequest

    hs = request.app.state.hs
    hs.check_key(x_api_key)
    if len(images) > MAX_FILES:
        raise BadRequest(413, f"{len(images)} files in one request; the limit is {MAX_FILES}")
    labs = [s.strip() or None for s in labels.split(",")] if labels else [None]
    if len(labs) == 1:
        labs = labs * len(images)
    if len(labs) != len(images):
        raise BadRequest(422, f"labels has {len(labs)} entries for {len(images)} files; give one per file or one for all")
    files = [(await f.read(hs.max_upload_bytes + 1), f.filename or "upload", f.content_type) for f in images]
    if background:
        return hs.start_add_job(files, labs).as_dict()
    return await run_in_threadpool(hs.add_uploads, files, labs)


@router.delete("/images/{image_id}")
def remove_image(request: Request, image_id: int, x_api_key: Optional[str] = Header(None)):
    """Remove an image from the index; the collection is saved atomically."""
    hs = request.app.state.hs
    hs.check_key(x_api_key)
    return hs.remove(image_id)
