"""The HTTP service: `create_app(collection_path, api_key=None, ...)` returns a FastAPI app.

Routes are thin: they parse, call `ServiceState` (which calls the library) and format. What a
request may cost is checked before a route runs (`guard.RequestGuard`). FastAPI is imported here
only, so `import hashsearch` works without the `serve` extra.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from hashsearch import __version__
from hashsearch.service.limits import MAX_FILES, Limits

STATIC = Path(__file__).parent / "static"
__all__ = ["create_app", "api_schema", "Limits", "MAX_FILES"]


def create_app(
    collection_path: str | os.PathLike,
    api_key: str | None = None,
    *,
    cache_dir: str | os.PathLike | None = None,
    eval_json: str | os.PathLike | None = None,
    allowed_hosts: list[str] | None = None,
    max_upload_bytes: int = Limits.max_upload_bytes,
    max_request_bytes: int = Limits.max_request_bytes,
    max_pixels: int = Limits.max_pixels,
    max_query_pixels: int = Limits.max_query_pixels,
    decode_slots: int = Limits.decode_slots,
    max_queued: int = Limits.max_queued,
    max_jobs: int = Limits.max_jobs,
    job_ttl_s: float = Limits.job_ttl_s,
):
    """A FastAPI app serving the collection at `collection_path`.

    Parameters
    ----------
    api_key : str, optional
        Enables POST /images and DELETE /images/{id} for clients sending it as `X-API-Key`
        (checked before the request body is read). Without it those routes answer 403; read
        routes are always open.
    cache_dir : path, optional
        Thumbnails (default: `<collection>.cache` beside the collection). Uploaded originals are
        stored in the collection folder (`<collection>/uploads`).
    eval_json : path, optional
        A benchmark JSON (from `hashsearch eval`) shown by the page's evaluation view.
    allowed_hosts : list of str, optional
        Host header values accepted (Starlette's TrustedHostMiddleware, against DNS rebinding);
        other requests get 400. None or ["*"]: any.
    max_upload_bytes, max_request_bytes, max_pixels, max_query_pixels, decode_slots, max_queued, max_jobs, job_ttl_s
        The fields of `Limits` (see there; each a positive number).

    Raises
    ------
    ValueError
        If a limit is not a positive number.
    CollectionError
        If the collection cannot be opened.
    """
    from starlette.middleware.trustedhost import TrustedHostMiddleware

    from hashsearch.service.guard import RequestGuard, SecurityHeaders
    from hashsearch.service.routers import images, search
    from hashsearch.service.state import ServiceState

    limits = Limits(
        max_upload_bytes, max_request_bytes, max_pixels, max_query_pixels, decode_slots, max_queued, max_jobs, job_ttl_s
    )
    state = ServiceState(collection_path, api_key, cache_dir, limits, eval_json)
    app = _api()
    app.state.hs = state
    # The last added runs first: hosts, then headers on every answer, then the guard.
    app.add_middleware(RequestGuard, state=state, routes=[*search.router.routes, *images.router.routes])
    app.add_middleware(SecurityHeaders)
    if allowed_hosts and "*" not in allowed_hosts:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    return app


def _api():
    """The FastAPI app with its routes and error handler, before it has a collection."""
    from fastapi.responses import FileResponse, JSONResponse
    from fastapi.staticfiles import StaticFiles
    from fastapi_offline import FastAPIOffline
    from starlette.concurrency import run_in_threadpool

    from hashsearch.service.routers import admin, duplicates, images, search
    from hashsearch.service.state import BadRequest

    class AsciiJSONResponse(JSONResponse):
        """JSON with every non-ASCII character escaped: a file name or label that is not UTF-8 (held as
        surrogate escapes) is then valid JSON ("caf\\udce9.jpg"), as `hashsearch search --json` writes it,
        where UTF-8 output cannot encode it at all."""

        def render(self, content) -> bytes:
            return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")

    @contextlib.asynccontextmanager
    async def lifespan(app):
        # The model and the search kernels are loaded before uvicorn reports itself started, so
        # the first search is as fast as the later ones (ServiceState.warm).
        hs = getattr(app.state, "hs", None)
        if hs is not None:
            await run_in_threadpool(hs.warm)
        yield

    # Swagger UI's files are served from this server (fastapi-offline ships them): /docs works offline.
    app = FastAPIOffline(
        lifespan=lifespan,
        title="hashsearch",
        description="Image search with learned binary hash codes.",
        version=__version__,
        redoc_url=None,
        favicon_url="/favicon.ico",
        swagger_ui_parameters={"validatorUrl": None},
        default_response_class=AsciiJSONResponse,
    )

    @app.exception_handler(BadRequest)
    async def _bad_request(request, exc: BadRequest):
        return AsciiJSONResponse({"detail": str(exc)}, status_code=exc.status, headers=exc.headers)

    app.include_router(search.router)
    app.include_router(images.router)
    app.include_router(admin.router)
    app.include_router(duplicates.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def index_page():
        return FileResponse(STATIC / "index.html")

    @app.get("/favicon.ico", include_in_schema=False)
    def favicon():
        return FileResponse(
            STATIC / "favicon.ico", media_type="image/x-icon", headers={"Cache-Control": "max-age=86400"}
        )

    return app


def api_schema() -> dict:
    """The service's OpenAPI schema (what GET /openapi.json answers), without opening a collection."""
    return _api().openapi()
