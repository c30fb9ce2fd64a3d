"""The HTTP service: `create_app(collection_path, api_key=None, ...)` returns a FastAPI app.

Routes are thin: they parse, call `ServiceState` (which calls the library) and format.
FastAPI is imported here only, so `import hashsearch` works without the `serve` extra.
"""

from __future__ import annotations

import os
from pathlib import Path

from hashsearch.service.state import MAX_PIXELS, MAX_UPLOAD_BYTES, BadRequest, ServiceState

STATIC = Path(__file__).parent / "static"
#: Most files one POST /images may carry.
MAX_FILES = 256


def create_app(
    collection_path: str | os.PathLike,
    api_key: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    max_upload_bytes: int = MAX_UPLOAD_BYTES,
    max_pixels: int = MAX_PIXELS,
    eval_json: str | os.PathLike | None = None,
):
    """A FastAPI app serving the collection at `collection_path`.

    Parameters
    ----------
    api_key : str, optional
        Enables POST /images and DELETE /images/{id} for clients sending it as `X-API-Key`.
        Without it those routes answer 403; read routes are always open.
    cache_dir : path, optional
        Thumbnails and uploaded files (default: `<collection>.cache` beside the collection).
    max_upload_bytes, max_pixels : int
        Per-file upload limit (default 20 MB) and decoded pixel limit.
    eval_json : path, optional
        A benchmark JSON (from `hashsearch eval`) shown by the page's evaluation view.
    """
    from fastapi import FastAPI, Request
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles

    from hashsearch.service.routers import admin, images, search

    state = ServiceState(collection_path, api_key, cache_dir, max_upload_bytes, max_pixels, eval_json)
    app = FastAPI(title="hashsearch", description="Image search with learned binary hash codes.", version="1")
    app.state.hs = state

    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, exc: BadRequest):
        return JSONResponse({"detail": str(exc)}, status_code=exc.status)

    @app.middleware("http")
    async def _limit_body(request: Request, call_next):
        # Refuse oversized bodies before the multipart parser spools them.
        n = request.headers.get("content-length")
        limit = max_upload_bytes * (MAX_FILES if request.url.path == "/images" else 1) + 64 * 1024
        if n is not None and n.isdigit() and int(n) > limit:
            return JSONResponse({"detail": f"request body is {n} bytes; the limit is {limit} bytes"}, status_code=413)
        return await call_next(request)

    app.include_router(search.router)
    app.include_router(images.router)
    app.include_router(admin.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index_page():
        return FileResponse(STATIC / "index.html")

    return app
