"""`hashsearch bench`: every method x bit length on a protocol, the papers' numbers beside ours."""

from __future__ import annotations

from pathlib import Path

import typer

from hashsearch.cli.commands import _command_line
from hashsearch.cli.common import (
    MAX_BITS,
    MIN_BITS,
    BackboneOpt,
    BatchOpt,
    CacheOpt,
    InputSizeOpt,
    WeightsOpt,
    bits_list,
    make_backbone,
    split_list,
)


def bench(
    protocol: str = typer.Option("cifar10-1k", "--protocol", "-p", help="A named protocol (see `hashsearch list`)."),
    methods: str = typer.Option("all", "--methods", "-m", help="Comma-separated methods, or 'all'."),
    bits: str = typer.Option(
        "12,16,24,32,48,64", "--bits", "-b", help=f"Comma-separated code lengths, each {MIN_BITS} to {MAX_BITS}."
    ),
    seed: int = typer.Option(0, "--seed"),
    out: Path | None = typer.Option(
        None, "--out", help="Write <out>.md, <out>.json and plots (default benchmarks/results/<protocol>)."
    ),
    backbone: str = BackboneOpt,
    input_size: int = InputSizeOpt,
    weights: str | None = WeightsOpt,
    cache_dir: Path | None = CacheOpt,
    batch_size: int = BatchOpt,
    mode: str = typer.Option(
        "head",
        "--mode",
        help="'head' (frozen backbone, cached features) or 'finetune' "
        "(each deep method's head trains first, then the backbone with it).",
    ),
    finetune_epochs: int | None = typer.Option(
        None,
        "--finetune-epochs",
        min=1,
        help="With --mode finetune: epochs of training the backbone with the head (default: the method's epochs).",
    ),
):
    """Benchmark hashing methods on a protocol and write a report with the published numbers beside ours."""
    from hashsearch.experiments.bench import bench as run_bench

    run_bench(
        protocol=protocol,
        methods=split_list(methods),
        bits=bits_list(bits),
        seed=seed,
        out=out or Path("benchmarks/results") / protocol,
        backbone=make_backbone(backbone, input_size, weights),
        cache_dir=cache_dir,
        batch_size=batch_size,
        command=_command_line(),
        mode=mode,
        finetune_epochs=finetune_epochs,
    )
