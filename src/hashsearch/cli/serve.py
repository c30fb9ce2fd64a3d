"""`hashsearch serve`: the HTTP API and web page over one collection."""

from __future__ import annotations

from pathlib import Path

import typer

from hashsearch.cli.common import plural
from hashsearch.service.limits import Limits

_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def allowed_host_list(host: str, allowed_hosts: str | None) -> list[str] | None:
    """The Host header values `serve` accepts: those given (comma-separated; "*": any), else the
    loopback names when listening on a loopback address (a page on another site cannot reach the
    server through a DNS name it rebinds to 127.0.0.1), else any (None)."""
    if allowed_hosts is None:
        return ["localhost", "127.0.0.1"] if host in _LOOPBACK else None
    return [h.strip() for h in allowed_hosts.split(",") if h.strip()]


def serve(
    collection: Path = typer.Argument(..., help="the collection folder (*.hsx) to serve"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)"),
    port: int = typer.Option(8000, min=1, max=65535, help="TCP port"),
    api_key: str | None = typer.Option(
        None,
        envvar="HASHSEARCH_API_KEY",
        help="enables POST /images and DELETE /images/{id} for clients sending it as X-API-Key (or set HASHSEARCH_API_KEY)",
    ),
    cache_dir: Path | None = typer.Option(
        None, help="thumbnails (default <collection>.cache); uploads go to <collection>/uploads"
    ),
    max_upload_mb: float = typer.Option(
        Limits.max_upload_bytes / 2**20, min=0.001, help="largest uploaded file, in MiB"
    ),
    max_request_mb: float = typer.Option(
        Limits.max_request_bytes / 2**20, min=0.001, help="largest POST /images body (all files), in MiB"
    ),
    max_pixels: int = typer.Option(
        Limits.max_pixels, min=1, help="largest width*height of an image added through the API"
    ),
    max_query_pixels: int = typer.Option(Limits.max_query_pixels, min=1, help="largest width*height of a query image"),
    decode_slots: int = typer.Option(
        Limits.decode_slots, min=1, help="images decoded and their features extracted at once (bounds memory)"
    ),
    max_queued: int = typer.Option(
        Limits.max_queued, min=1, help="upload requests waiting for a decode slot; more get 503"
    ),
    max_jobs: int = typer.Option(Limits.max_jobs, min=1, help="background adds running at once; more get 503"),
    job_ttl: float = typer.Option(Limits.job_ttl_s, min=1, help="seconds a finished background job stays readable"),
    allowed_hosts: str | None = typer.Option(
        None,
        help="comma-separated Host header values to accept (against DNS rebinding); '*' accepts any. "
        "Default: localhost,127.0.0.1 when --host is a loopback address, else any",
    ),
    eval_json: Path | None = typer.Option(None, "--eval", help="benchmark JSON for the page's evaluation view"),
    model: Path | None = typer.Option(
        None,
        "--model",
        help="a trained model file: refused unless it built the collection (queries always go through the collection's own model)",
    ),
) -> None:
    """Serve a collection: web page at /, API documented at /docs (works offline)."""
    import logging
    import sys

    import uvicorn

    from hashsearch.service import create_app

    hosts = allowed_host_list(host, allowed_hosts)
    listener = _listen(host, port)  # before the collection loads: a taken port is one line, at once
    # One line per write (time, client, route, status, ids) and per failed save, on stderr.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    service_log = logging.getLogger("hashsearch.service")
    service_log.addHandler(handler)
    service_log.setLevel(logging.INFO)
    app = create_app(
        collection,
        api_key,
        cache_dir=cache_dir,
        eval_json=eval_json,
        allowed_hosts=hosts,
        max_upload_bytes=int(max_upload_mb * 2**20),
        max_request_bytes=int(max_request_mb * 2**20),
        max_pixels=max_pixels,
        max_query_pixels=max_query_pixels,
        decode_slots=decode_slots,
        max_queued=max_queued,
        max_jobs=max_jobs,
        job_ttl_s=job_ttl,
    )
    if model is not None:
        from hashsearch.model import TrainedModel

        given, built = TrainedModel.load(model).id, app.state.hs.coll.model_id
        if given != built:
            raise ValueError(
                f"{collection} was built "
                + (f"by model {built[:12]}" if built else "without a trained model (a stock backbone)")
                + f", not by {model} (model {given[:12]}); serve it without --model (queries always go through the "
                f"collection's own model), or serve a collection made by `hashsearch index FOLDER --model {model}`"
            )
    typer.echo(
        f"serving {collection} ({plural(len(app.state.hs.coll), 'image')}) at http://{host}:{port}/ "
        f"(mutations {'enabled' if api_key else 'disabled: no API key'}; "
        f"hosts {'any' if not hosts or '*' in hosts else ', '.join(hosts)})"
    )
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[listener])


def _listen(host: str, port: int):
    """A socket bound to (host, port), or a ValueError saying why not (taken, not this machine's)."""
    import socket

    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        raise ValueError(
            f"cannot listen on {host}:{port}: {e.strerror or e}; choose another --port, "
            "or an address of this machine with --host"
        ) from None
    return sock
