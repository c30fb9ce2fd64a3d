"""Option parsing shared by the CLI commands (no logic of their own beyond parsing)."""

from __future__ import annotations

import typer

from hashsearch.backbones import DEFAULT_BACKBONE, create_backbone


def split_list(value: str, cast=str) -> list:
    """'a,b, c' -> ['a', 'b', 'c'] (with `cast` applied); commas inside brackets stay,
    so 'itq,dfeh[lambda_q=0,lambda_b=0]' is two methods."""
    import re

    try:
        return [cast(v.strip()) for v in re.split(r",(?![^\[]*\])", value) if v.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected a comma-separated list, got {value!r}") from None


def make_backbone(name: str, input_size: int, weights: str | None):
    try:
        return create_backbone(name, input_size=input_size, weights=weights)
    except (ValueError, FileNotFoundError) as e:
        raise typer.BadParameter(str(e)) from None


BackboneOpt = typer.Option(DEFAULT_BACKBONE, "--backbone", help="Feature extractor (see `hashsearch list`).")
InputSizeOpt = typer.Option(128, "--input-size", help="Backbone input resolution in pixels.")
WeightsOpt = typer.Option(None, "--weights", help="A local weights file for the backbone (default: the packaged ImageNet weights).")
CacheOpt = typer.Option(None, "--cache-dir", help="Cache folder of features and exported ONNX models (default $HASHSEARCH_CACHE or ~/.cache/hashsearch).")
BatchOpt = typer.Option(64, "--batch-size", min=1, help="Images per backbone batch.")
