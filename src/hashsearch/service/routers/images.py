"""Indexed images: GET /images/{id} (file), GET /thumbs/{id}, GET /entries (a page of records),
GET /entries/{id}, POST /images, DELETE /images/{id}."""

from __future__ import annotations

from fastapi import APIRouter, File, Form, Query, Request, Response, Security, UploadFile
from fastapi.security import APIKeyHeader
from starlette.concurrency import run_in_threadpool

from hashsearch.service.routers import IMAGE_ID, needs_key, takes_files
from hashsearch.service.state import MAX_FILES, MAX_LIST, BadRequest

router = APIRouter(tags=["images"])
_TYPES = {
    b"\xff\xd8": "image/jpeg",
    b"\x89P": "image/png",
    b"GI": "image/gif",
    b"BM": "image/bmp",
    b"RI": "image/webp",
    b"II": "image/tiff",
    b"MM": "image/tiff",
}
#: The API key header (checked by the request guard before the body is read; declared here for the schema).
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="the server's API key (--api-key)")


@router.get("/entries")
def entries(
    request: Request,
    offset: int = Query(0, ge=0, le=2**62, description="records skipped, in id order (past the end: an empty page)"),
    limit: int = Query(100, ge=1, le=MAX_LIST, description=f"records in this answer (1-{MAX_LIST})"),
):
    """A page of the collection's records in id order (id, key, label), and `total`, the number of images.

    Ids are not reused, so paging with offset = offset + limit visits every image once while the
    collection does not change; after a remove, later records move up by one."""
    return request.app.state.hs.list_entries(offset, limit)


@router.get("/entries/{image_id}")
def entry(request: Request, image_id: int = IMAGE_ID):
    """The record of an indexed image: id, key (its path relative to the folder it was indexed from), label."""
    return request.app.state.hs.entry(image_id)


@router.get("/images/{image_id}")
def image(request: Request, image_id: int = IMAGE_ID):
    """The original file of an indexed image (found only through the index's records)."""
    data = request.app.state.hs.image_bytes(image_id)
    return Response(data, media_type=_TYPES.get(data[:2], "application/octet-stream"))


@router.get("/thumbs/{image_id}")
def thumb(request: Request, image_id: int = IMAGE_ID):
    """A cached JPEG thumbnail (128 px) of an indexed image."""
    return Response(
        request.app.state.hs.thumbnail(image_id), media_type="image/jpeg", headers={"Cache-Control": "max-age=3600"}
    )


@router.post("/images")
@needs_key
@takes_files(MAX_FILES)
async def add_images(
    request: Request,
    images: list[UploadFile] = File(..., description=f"image files to add (at most {MAX_FILES})"),
    labels: str | None = Form(
        None, max_length=60_000, description="comma-separated labels, one per file, or one for all"
    ),
    background: bool = Form(False, description="run as a job; poll GET /jobs/{id}"),
    keep_duplicates: bool = Form(False, description="add files whose content the collection already holds"),
    x_api_key: str | None = Security(API_KEY),
):
    """Add images (through the collection's backbone and hasher); the collection is saved atomically.

    Returns the new ids, `duplicates` (files whose content is already indexed: their existing id,
    not added again unless `keep_duplicates`), per-file `errors`, and the new count."""
    hs = request.app.state.hs
    hs.check_key(x_api_key)
    if len(images) > MAX_FILES:
        raise BadRequest(413, f"{len(images)} files in one request; the limit is {MAX_FILES}")
    labs = [s.strip() or None for s in labels.split(",")] if labels else [None]
    if len(labs) == 1:
        labs = labs * len(images)
    if len(labs) != len(images):
        raise BadRequest(
            422, f"labels has {len(labs)} entries for {len(images)} files; give one per file or one for all"
        )
    files = [(await f.read(hs.limits.max_upload_bytes + 1), f.filename or "upload", f.content_type) for f in images]
    if background:
        job = hs.start_add_job(files, labs, keep_duplicates)
        request.state.hs_write = {"job": job.id, "files": len(files)}
        return job.as_dict()
    out = await run_in_threadpool(hs.add_uploads, files, labs, None, keep_duplicates)
    request.state.hs_write = {
        "ids": out["ids"],
        "duplicates": [d["id"] for d in out["duplicates"]],
        "errors": len(out["errors"]),
    }
    return out


@router.delete("/images/{image_id}")
@needs_key
def remove_image(request: Request, image_id: int = IMAGE_ID, x_api_key: str | None = Security(API_KEY)):
    """Remove an image from the index, and the uploaded original and thumbnail the service stored for it;
    the collection is saved atomically."""
    hs = request.app.state.hs
    hs.check_key(x_api_key)
    request.state.hs_write = {"ids": [image_id]}
    out = hs.remove(image_id)
    return out
