"""`hashsearch train`: labelled images -> a model file that `index`, `add`, `eval` and `serve` take with --model."""

from __future__ import annotations

from pathlib import Path

import typer

from hashsearch.cli.common import (
    MAX_BITS,
    MIN_BITS,
    BackboneOpt,
    CacheOpt,
    InputSizeOpt,
    LabelsOpt,
    MaxPixelsOpt,
    WeightsOpt,
    check_bits,
    make_backbone,
    show,
)


def train(
    source: str | None = typer.Argument(
        None, help="Labelled images: class folders, an archive, or a list file with labels (or --protocol)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The model file to write (e.g. shoes.hsm)."),
    method: str = typer.Option("hashnet", "--method", "-m", help="Hashing method (see `hashsearch list`)."),
    bits: int = typer.Option(48, "--bits", "-b", help=f"Code length in bits, {MIN_BITS} to {MAX_BITS}."),
    mode: str = typer.Option(
        "head",
        "--mode",
        help="head: the method learns on the backbone's frozen features (every method); finetune: a deep "
        "method trains the backbone with its head and loss.",
    ),
    epochs: int | None = typer.Option(
        None,
        "--epochs",
        min=1,
        help="Deep methods: training epochs (finetune: with the backbone); default the method's.",
    ),
    patience: int = typer.Option(
        5,
        "--patience",
        min=0,
        help="Deep methods: stop after this many epochs without a better validation mAP (0: never).",
    ),
    val_fraction: float = typer.Option(0.1, "--val-fraction", help="Share of each class held out for validation."),
    seed: int = typer.Option(0, "--seed", help="Seed of the validation split and of training."),
    device: str = typer.Option(
        "auto", "--device", help="Where deep methods train: cpu, cuda, or auto (cuda if available)."
    ),
    lr: float | None = typer.Option(None, "--lr", help="Learning rate (default: the method's)."),
    train_batch: int | None = typer.Option(
        None, "--train-batch", min=1, help="Images per training step (default: the method's)."
    ),
    recipe: str | None = typer.Option(
        None,
        "--recipe",
        help="finetune mode: how the backbone trains: a name (paper, cpu), key=value pairs "
        "(epochs, trunk_lr_scale, schedule, augment, ema, label_smoothing, start_size), or both: 'cpu,epochs=8'. "
        "Default: paper.",
    ),
    protocol: str | None = typer.Option(
        None,
        "--protocol",
        "-p",
        help="Train on a named protocol's training split (e.g. cifar10-1k) instead of SOURCE; "
        "`hashsearch eval --model` then measures it on that protocol.",
    ),
    fresh: bool = typer.Option(
        False,
        "--fresh",
        help="Discard the checkpoint a killed run of the same --out left, instead of resuming from it.",
    ),
    backbone: str = BackboneOpt,
    input_size: int = InputSizeOpt,
    weights: str | None = WeightsOpt,
    labels: str = LabelsOpt,
    cache_dir: Path | None = CacheOpt,
    max_pixels: int = MaxPixelsOpt,
):
    """Train a hashing model on labelled images and save it as one file.

    A seeded share of each class is held out; deep methods keep the epoch with the best
    validation mAP and stop early (--patience). A checkpoint is written after every epoch
    to OUT.ckpt/: if the run is killed, the same command resumes where it stopped (--fresh
    starts over). The loss and validation-mAP curve is written beside the model
    (shoes.hsm: shoes-training.png).
    """
    from hashsearch.cli.commands import _labels
    from hashsearch.data.sources import open_source
    from hashsearch.experiments.training import train_model

    check_bits([bits])
    if (source is None) == (protocol is None):
        raise typer.BadParameter("give the labelled images (SOURCE) or --protocol NAME, one of the two")
    if out.exists() and out.is_dir():
        raise typer.BadParameter(f"--out {show(out)} is a folder; give a model file name such as model.hsm")
    if device not in ("cpu", "cuda", "auto") and not device.startswith("cuda:"):
        raise typer.BadParameter(f"--device {device!r}: use cpu, cuda (cuda:N) or auto")
    bb = make_backbone(backbone, input_size, weights)
    if protocol is not None:
        from hashsearch.experiments.jobs import load_split

        images, split = load_split(protocol, None, 1, 1, seed, log=lambda line: typer.echo(show(line)))
        train_records = split.train
    else:
        images, train_records = open_source(source, _labels(labels)), None
    result = train_model(
        images,
        out,
        method=method,
        bits=bits,
        backbone=bb,
        mode=mode,
        epochs=epochs,
        patience=patience or None,
        val_fraction=val_fraction,
        seed=seed,
        device=device,
        lr=lr,
        batch_size=train_batch,
        recipe=recipe,
        records=train_records,
        protocol=protocol,
        fresh=fresh,
        cache_dir=cache_dir,
        max_pixels=max_pixels,
        log=lambda line: typer.echo(show(line)),
    )
    r = result.model.record
    ep = r.get("epochs") or {}
    resumed = ""
    if result.resumed_at:  # finetune mode names the stage: "the head stage" or "the joint stage"
        where = f"the {result.resumed_stage} stage " if result.resumed_stage else ""
        resumed = f" (resumed {where}after epoch {result.resumed_at})"
    if ep.get("loss"):
        typer.echo(
            f"trained {len(ep['loss'])} epochs"
            + resumed
            + (", stopped early" if ep.get("stopped_early") else "")
            + (
                f"; best validation mAP {r['val_map']:.4f} at epoch {ep['best_epoch']}"
                if r.get("val_map") is not None
                else "; no validation mAP (no labels to validate on): kept the last epoch"
            )
            + (
                f" (the head on frozen features: {r['frozen_val_map']:.4f})"
                if r.get("frozen_val_map") is not None
                else ""
            )
        )
    elif r.get("val_map") is not None:
        typer.echo(f"fitted; validation mAP {r['val_map']:.4f}")
    typer.echo(f"wrote {show(out)}: {result.model.describe()}, {r['seconds']:.0f}s")
    if result.curve is not None:
        typer.echo(f"wrote {show(result.curve)}: training loss and validation mAP by epoch")
