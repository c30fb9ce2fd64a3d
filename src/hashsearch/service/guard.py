"""What the service checks before a route reads a byte of the request body (pure ASGI middleware).

`RequestGuard` runs for every HTTP request, between the server and FastAPI:

1. a route that needs the API key (its endpoint marked `needs_key`) is refused (401/403) from the
   headers alone, before any of the body is received: a client without the key cannot make the
   server read or store its upload;
2. an upload route (its endpoint marked with `max_files`) is refused with 503 and Retry-After
   when `Limits.max_pending_uploads` upload requests are already decoding or queued;
3. the body is counted on the stream as the route reads it, chunked or not: past the request's
   limit (`Limits.body_limit`) or, in a multipart body, past `Limits.max_upload_bytes` in one
   file or `MAX_FILES` files, the request is answered 413 at once and its connection closed; a
   `Content-Length` above the limit is refused before reading;
4. every request to a mutating route is logged on the ``hashsearch.service.access`` logger:
   time, client, route, status and the ids it added, found as duplicates or removed.

`SecurityHeaders` adds the usual response headers (no MIME sniffing, no framing, no referrer,
a content security policy that allows only this server's own scripts, styles and images).
"""

from __future__ import annotations

import json
import logging
import time

from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.exceptions import HTTPException
from starlette.routing import Match

from hashsearch.service.state import ServiceState

access_log = logging.getLogger("hashsearch.service.access")
#: Largest body of a route that takes no upload, and largest non-file field of a form.
SMALL_BODY = 64 * 1024


class BodyTooLarge(HTTPException):
    """Raised from `receive` when the body passes a limit; answered 413 with the connection closed."""

    def __init__(self, message: str) -> None:
        super().__init__(413, message, headers={"Connection": "close"})


class _BodyMeter:
    """Counts a request body as it streams in: in all, and per part of a multipart form."""

    def __init__(self, headers: dict[bytes, bytes], limit: int, max_file: int, max_files: int, route: str) -> None:
        self.total, self.limit, self.max_file, self.max_files, self.route = 0, limit, max_file, max_files, route
        self.parser = None
        kind, params = parse_options_header(headers.get(b"content-type", b""))
        if kind == b"multipart/form-data" and params.get(b"boundary"):
            self.files = 0
            self._header = [b"", b""]
            self._filename: str | None = None
            self._size = 0
            self.parser = MultipartParser(
                params[b"boundary"],
                {
                    "on_part_begin": self._part_begin,
                    "on_header_field": lambda d, s, e: self._add_header(0, d[s:e]),
                    "on_header_value": lambda d, s, e: self._add_header(1, d[s:e]),
                    "on_header_end": self._header_end,
                    "on_headers_finished": self._headers_finished,
                    "on_part_data": self._part_data,
                },
            )

    def feed(self, chunk: bytes) -> None:
        self.total += len(chunk)
        if self.total > self.limit:
            raise BodyTooLarge(
                f"the request body is over the limit of {self.limit:,} bytes for {self.route}; "
                "send fewer or smaller files (limits: max_upload_bytes per file, max_request_bytes per request)"
            )
        if self.parser is not None and chunk:
            try:
                self.parser.write(chunk)
            except BodyTooLarge:
                raise
            except Exception:  # a malformed form: FastAPI's own parser reports it
                self.parser = None

    def _part_begin(self) -> None:
        self._filename, self._size, self._header = None, 0, [b"", b""]

    def _add_header(self, which: int, data: bytes) -> None:
        self._header[which] += data[:4096]

    def _header_end(self) -> None:
        name, value = self._header
        if name.strip().lower() == b"content-disposition":
            _, params = parse_options_header(value)
            if b"filename" in params:
                self._filename = params[b"filename"].decode("utf-8", "replace")[:200]
        self._header = [b"", b""]

    def _headers_finished(self) -> None:
        if self._filename is not None:
            self.files += 1
            if self.files > self.max_files:
                raise BodyTooLarge(
                    f"more than {self.max_files} files in one request to {self.route}; send them in several requests"
                )

    def _part_data(self, data: bytes, start: int, end: int) -> None:
        self._size += end - start
        if self._filename is not None and self._size > self.max_file:
            raise BodyTooLarge(
                f"file {self._filename!r} is over the per-file limit of {self.max_file:,} bytes "
                "(max_upload_bytes; hashsearch serve --max-upload-mb); send a smaller file"
            )
        if self._filename is None and self._size > SMALL_BODY:
            raise BodyTooLarge(f"a form field is over {SMALL_BODY:,} bytes; form fields are short (labels, flags)")


def _refusal(status: int, message: str, extra: dict[str, str] | None = None):
    body = json.dumps({"detail": message}).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
        (b"connection", b"close"),
    ]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    return (
        {"type": "http.response.start", "status": status, "headers": headers},
        {"type": "http.response.body", "body": body},
    )


class RequestGuard:
    """API key, upload admission, streamed body limits and the write log (see the module docstring).

    Parameters
    ----------
    app : ASGI app
        The app inside (FastAPI's router stack).
    state : ServiceState
        Holds the key, the limits and the upload admission counter.
    routes : list of starlette.routing.Route
        The app's routes (e.g. of its APIRouters); those whose endpoint is marked are checked.
    """

    def __init__(self, app, state: ServiceState, routes) -> None:
        self.app, self.state = app, state
        self.routes = [
            r
            for r in routes
            if getattr(r, "endpoint", None) is not None
            and (getattr(r.endpoint, "needs_key", False) or getattr(r.endpoint, "max_files", None))
        ]

    def _endpoint(self, scope):
        """The marked endpoint this request is for (path and method), else None."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match == Match.FULL:
                return route.endpoint
        return None

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        endpoint = self._endpoint(scope)
        writes = getattr(endpoint, "needs_key", False)
        route = f"{scope['method']} {scope['path']}"
        headers = dict(scope["headers"])
        scope.setdefault("state", {})
        status = [0]

        async def refuse(code: int, message: str, extra: dict[str, str] | None = None) -> None:
            start, body = _refusal(code, message, extra)
            status[0] = code
            await send(start)
            await send(body)

        # A body the app did not read to its end is not read afterwards either: the answer
        # closes the connection (else the server would read and discard it to reuse the connection).
        body_left = [headers.get(b"content-length", b"0") not in (b"", b"0") or b"transfer-encoding" in headers]

        async def send_seen(message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                if body_left[0]:
                    message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
            await send(message)

        try:
            if writes:
                key = headers.get(b"x-api-key")
                problem = self.state.key_problem(None if key is None else key.decode("latin-1"))
                if problem is not None:
                    return await refuse(*problem)
            max_files = getattr(endpoint, "max_files", None)
            limits = self.state.limits
            limit = SMALL_BODY if max_files is None else limits.body_limit(max_files)
            length = headers.get(b"content-length", b"")
            if length.isdigit() and int(length) > limit:
                return await refuse(
                    413,
                    f"the request body is {int(length):,} bytes, over the limit of {limit:,} "
                    f"bytes for {route}; send fewer or smaller files",
                )
            meter = _BodyMeter(headers, limit, limits.max_upload_bytes, max_files or 0, route)

            async def receive_counted():
                message = await receive()
                if message["type"] == "http.request":
                    meter.feed(message.get("body", b""))
                    body_left[0] = body_left[0] and message.get("more_body", False)
                return message

            if max_files is None:
                return await self.app(scope, receive_counted, send_seen)
            if not self.state.admit_upload():
                return await refuse(
                    503,
                    f"the server is busy with {limits.max_pending_uploads} uploads (decode_slots + "
                    "max_queued); retry in a few seconds",
                    {"Retry-After": "2"},
                )
            try:
                await self.app(scope, receive_counted, send_seen)
            except BodyTooLarge as e:
                if status[0]:
                    raise
                await refuse(413, e.detail)
            finally:
                self.state.release_upload()
        finally:
            if writes:
                client = scope.get("client") or ("-", 0)
                done = scope.get("state", {}).get("hs_write", {})
                access_log.info(
                    "%s write %s from %s:%s -> %d %s",
                    time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                    route,
                    client[0],
                    client[1],
                    status[0],
                    json.dumps(done, separators=(",", ":")),
                )


#: The page and the API: only this server's scripts and styles (style properties that the page's
#: own script sets are not governed by style-src), images from here, blob: (the query preview) and data:.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data: blob:; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
#: /docs: Swagger UI starts from an inline script and styles some elements inline.
CSP_DOCS = CSP.replace("script-src 'self'", "script-src 'self' 'unsafe-inline'").replace(
    "style-src 'self'", "style-src 'self' 'unsafe-inline'"
)
SECURITY_HEADERS = [
    (b"x-content-type-options", b"nosniff"),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
]


class SecurityHeaders:
    """Adds `SECURITY_HEADERS` and a content security policy to every HTTP response."""

    def __init__(self, app, docs_paths: tuple[str, ...] = ("/docs",)) -> None:
        self.app, self.docs_paths = app, docs_paths

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        csp = (CSP_DOCS if scope["path"] in self.docs_paths else CSP).encode()

        async def send_with_headers(message) -> None:
            if message["type"] == "http.response.start":
                names = {k.lower() for k, _ in message.get("headers", [])}
                extra = [(k, v) for k, v in [*SECURITY_HEADERS, (b"content-security-policy", csp)] if k not in names]
                message = {**message, "headers": [*message.get("headers", []), *extra]}
            await send(message)

        await self.app(scope, receive, send_with_headers)
