"""`hashsearch serve`: the HTTP API and web page over one collection."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def serve(
    collection: Path = typer.Argument(..., help="the collection folder (*.hsx) to serve"),
    host: str = typer.Option("127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)"),
    port: int = typer.Option(8000, help="TCP port"),
    api_key: Optional[str] = typer.Option(
        None, envvar="HASHSEARCH_API_KEY",
        help="enables POST /images and DELETE /images/{id} for clients sending it as X-API-Key (or set HASHSEARCH_API_KEY)",
    ),
    cache_dir: Optional[Path] = typer.Option(None, help="thumbnails and uploads (default <collection>.cache)"),
    max_upload_mb: float = typer.Option(20.0, help="per-file upload limit in MB"),
    eval_json: Optional[Path] = typer.Option(None, "--eval", help="benchmark JSON for the page's evaluation view"),
) -> None:
    """Serve a collection: web page at /, API documented at /docs."""
    import uvicorn

    from hashsearch.service import create_app

    app = create_app(collection, api_key, cache_dir=cache_dir, max_upload_bytes=int(max_upload_mb * 1024 * 1024), eval_json=eval_json)
    typer.echo(f"serving {collection} ({len(app.state.hs.coll)} images) at http://{host}:{port}/ "
               f"(mutations {'enabled' if api_key else 'disabled: no API key'})")
    uvicorn.run(app, host=host, port=port, log_level="warning")
