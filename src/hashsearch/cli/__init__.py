"""The `hashsearch` command line: one command per stage, plus `demo` that chains them."""

from __future__ import annotations

import typer

from hashsearch.cli import bench, commands, serve

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Content-based image retrieval with learned binary hash codes.",
    pretty_exceptions_enable=False,
)
for fn in commands.ALL:
    app.command()(fn)
app.command()(serve.serve)
app.command()(bench.bench)


def main() -> None:
    """Console entry point: user errors print one clear line and exit 2, never a traceback."""
    import sys

    from hashsearch.collection import CollectionError

    try:
        app()
    except (ValueError, FileNotFoundError, CollectionError) as e:
        typer.secho(f"error: {e}", fg="red", err=True)
        sys.exit(2)
