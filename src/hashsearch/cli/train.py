"""`hashsearch train`: labelled images -> a model file that `index`, `add`, `eval` and `serve` take with --model."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
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
    cluster_hint,
    given,
    make_backbone,
    parse_spec,
    plural,
    show,
)


def train(
    ctx: typer.Context,
    source: str | None = typer.Argument(
        None, help="Labelled images: class folders, an archive, or a list file with labels (or --protocol)."
    ),
    out: Path = typer.Option(..., "--out", "-o", help="The model file to write (e.g. shoes.hsm)."),
    method: str = typer.Option(
        "hashnet",
        "--method",
        "-m",
        help="Hashing method (see `hashsearch list`): every one, deep or classic, with parameters as index and "
        "eval take them, e.g. 'itq[n_iter=20]' or 'dpsh[epochs=5]'. ritq trains its own ResNet-32 "
        "from scratch (32 px) and fits ITQ on its features; dhfi trains a ResNet-32 beside the backbone and "
        "fuses two DPSH codes of their features (the model holds both networks).",
    ),
    bits: int = typer.Option(48, "--bits", "-b", help=f"Code length in bits, {MIN_BITS} to {MAX_BITS}."),
    mode: str = typer.Option(
        "head",
        "--mode",
        help="head: the method learns on the backbone's frozen features (every method); finetune: a deep "
        "method (or dhfi) trains the backbone with its head and loss.",
    ),
    epochs: int | None = typer.Option(
        None,
        "--epochs",
        min=1,
        help="Deep methods and dhfi: training epochs (finetune: with the backbone); default the method's.",
    ),
    patience: int = typer.Option(
        5,
        "--patience",
        min=0,
        help="Deep methods: stop after this many epochs without a better validation mAP (0: never); finetune: "
        "in the joint stage (the head-alone stage runs all its epochs and keeps its best). In head mode a method "
        "that trains a number of optimiser steps (bihalf, greedyhash-unsup, bihalf-spectral: epochs=None) runs "
        "them all unless --patience is given (on flowers12, 5 stopped them at epoch 30-36 of 500: best "
        "validation mAP 0.73 against 0.82).",
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
        help="finetune mode: how the backbone trains: a name, key=value pairs (epochs, trunk_lr_scale, schedule, "
        "augment, ema, label_smoothing, start_size), or both: 'cpu,epochs=8'. The names: "
        # (the text of Recipe.describe, kept equal to endtoend.RECIPES by tests/cli/test_train.py)
        "paper (the default): epochs=the method's, trunk_lr_scale=0.1, schedule=constant, augment=crop-flip, "
        "ema=0, label_smoothing=0, start_size=full; "
        "cpu: paper with schedule=cosine, ema=0.99 (measured in benchmarks/results/recipe.md).",
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
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace the model file at --out if there is one (refused without it)."
    ),
    scratch_epochs: int | None = typer.Option(
        None,
        "--scratch-epochs",
        min=1,
        help="ritq, dhfi: epochs of training their ResNet-32 from scratch on the labelled images "
        "(default 15, as `hashsearch bench`).",
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
    validation mAP and stop early (--patience). A checkpoint is written to OUT.ckpt/ after every
    epoch (of a head on cached features, whose epochs take milliseconds: every 5 seconds and after
    the last): if the run is killed, the same command resumes where it stopped (--fresh starts
    over). The loss and validation-mAP curve is written beside the model (shoes.hsm:
    shoes-training.png). An existing OUT is replaced only with --overwrite.
    """
    from hashsearch.cli.commands import _labels
    from hashsearch.data.sources import open_source
    from hashsearch.experiments.training import check_recipe, train_model

    check_bits([bits])
    from hashsearch.hashing import hashers

    spec = method
    method, params = parse_spec(spec)
    if "device" in params:  # --device (default auto) always sets it: one in the brackets would be overridden
        raise typer.BadParameter(f"--method {spec!r}: give the device with --device, not in the brackets")
    for key, option, flag in (
        ("lr", "lr", "--lr"),
        ("batch_size", "train_batch", "--train-batch"),
        ("epochs", "epochs", "--epochs"),
    ):
        # finetune: --epochs is the joint stage's, the method's own epochs its head stage's (both may be given).
        if key in params and given(ctx, option) and not (key == "epochs" and mode == "finetune"):
            raise typer.BadParameter(
                f"--method {spec!r} and {flag} both set {key}; give it once ({flag} or in the brackets)"
            )
    trained_by_epochs = "epochs" in _params_of(method, bits, params)
    unused = [
        flag
        for name, flag in (
            ("epochs", "--epochs"),
            ("lr", "--lr"),
            ("train_batch", "--train-batch"),
            ("patience", "--patience"),
        )
        if given(ctx, name)
    ]
    if not trained_by_epochs and unused:  # itq, ksh, ... fit in one pass: the options would be ignored
        scratch = (
            " (its network's training: --scratch-epochs)" if None not in hashers.get(method).feature_backbones else ""
        )
        raise typer.BadParameter(
            f"--method {method} is fitted, not trained by epochs{scratch}: {', '.join(unused)} would not be used; "
            f"leave {'it' if len(unused) == 1 else 'them'} out, or train a deep method (hashnet, dpsh, ...)"
        )
    if None not in hashers.get(method).feature_backbones:
        # RITQ: every feature comes from its own network; the starting-backbone options would be ignored.
        unused = [
            flag
            for name, flag in (("backbone", "--backbone"), ("input_size", "--input-size"), ("weights", "--weights"))
            if given(ctx, name)
        ]
        if unused:
            nets = ", ".join(str(n) for n in hashers.get(method).feature_backbones)
            raise typer.BadParameter(
                f"--method {method} trains its own network ({nets}) from scratch and uses no other: leave "
                f"{', '.join(unused)} out"
            )
    if (source is None) == (protocol is None):
        raise typer.BadParameter("give the labelled images (SOURCE) or --protocol NAME, one of the two")
    if out.exists() and out.is_dir():
        raise typer.BadParameter(f"--out {show(out)} is a folder; give a model file name such as model.hsm")
    if out.exists() and not overwrite:  # before training, not after it
        raise typer.BadParameter(
            f"--out {show(out)} is an existing file; give another --out, or replace it with --overwrite"
        )
    if device not in ("cpu", "cuda", "auto") and not device.startswith("cuda:"):
        raise typer.BadParameter(f"--device {device!r}: use cpu, cuda (cuda:N) or auto")
    bb = make_backbone(backbone, input_size, weights)
    check_recipe(recipe, method, mode)  # before any data is read
    if protocol is not None:
        from hashsearch.experiments.jobs import load_split

        images, split = load_split(protocol, None, 1, 1, seed, log=lambda line: typer.echo(show(line)))
        train_records = split.train
    else:
        images, train_records = open_source(source, _labels(labels)), None
    if mode == "head" and epochs is None and not given(ctx, "patience") and _trains_by_steps(method, bits, params):
        # Epochs of a few steps each: 5 without a better validation mAP came at epoch 30-36 of 500 on flowers12
        # (864 training photos, 64 bits, seeds 0-2: best validation mAP 0.7818/0.7014/0.6987 against
        # 0.8622/0.8348/0.7666 for all 500), long before the steps that index and eval --method train.
        patience = 0
    with _fit_lines():  # the deep hashers' lines: training starts, its progress off a terminal, it ends
        result = train_model(
            images,
            out,
            method=method,
            params=params,
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
            scratch_epochs=scratch_epochs,
            log=lambda line: typer.echo(show(line)),
        )
    r = result.model.record
    for name, s in (r.get("scratch") or {}).items():
        again = f" (resumed after epoch {s['resumed_at']})" if s.get("resumed_at") else ""
        typer.echo(
            f"{name} trained from scratch: {plural(len(s['loss']), 'epoch')}{again}, "
            f"loss {s['loss'][0]:.3f} -> {s['loss'][-1]:.3f}"
        )
    for name, sub in (r.get("subnets") or {}).items():
        j = sub["epochs"]
        best = f", best validation mAP {max(j['val_map']):.4f} at epoch {j['best_epoch']}" if j["val_map"] else ""
        if sub.get("kept") == "head":
            best += (
                f", below its head stage's {max(sub['head_stage']['val_map']):.4f}: kept the head stage "
                "(its network as it started)"
            )
        typer.echo(
            f"subnetwork {name}: {plural(len(j['loss']), 'joint epoch')}"
            f"{', stopped early' if j['stopped_early'] else ''}{best}"
        )
    ep = r.get("epochs") or {}
    resumed = ""
    if result.resumed_at:  # finetune mode names the stage: "the head stage" or "the joint stage"
        where = f"the {result.resumed_stage} stage " if result.resumed_stage else ""
        resumed = f" (resumed {where}after epoch {result.resumed_at})"
    if ep.get("loss"):
        best = max(ep["val_map"]) if ep.get("val_map") else None
        typer.echo(
            f"trained {plural(len(ep['loss']), 'epoch')}"
            + resumed
            + (", stopped early" if ep.get("stopped_early") else "")
            + (
                f"; best validation mAP {best:.4f} at epoch {ep['best_epoch']}"
                if best is not None
                else "; no validation mAP (no labels to validate on): kept the last epoch"
            )
            + (
                f" (the head on frozen features: {r['frozen_val_map']:.4f})"
                if r.get("frozen_val_map") is not None
                else ""
            )
        )
        if r.get("kept") == "head":
            typer.echo(
                f"fine-tuning ended below the head stage on validation ({best:.4f} < {r['frozen_val_map']:.4f}): "
                f"kept the head stage's model (the head on the starting {r['backbone']['name']}, unchanged)"
            )
    elif r.get("val_map") is not None:
        typer.echo(f"fitted; validation mAP {r['val_map']:.4f}")
    for line in _advice(result.model, spec):
        typer.echo(line, err=True)
    typer.echo(f"wrote {show(out)}: {result.model.describe()}, {r['seconds']:.0f}s")
    if result.curve is not None:
        typer.echo(f"wrote {show(result.curve)}: training loss and validation mAP by epoch")
    elif ep.get("loss"):
        typer.echo("no training curve drawn: 1 epoch is one point (train 2 or more to see one)")


def _params_of(method: str, bits: int, params: dict) -> dict:
    """The parameters `method` takes with the spec's `params` ({} for a spec that fails: training
    says what is wrong with it)."""
    from hashsearch.hashing import create_hasher

    try:
        return create_hasher(method, n_bits=bits, **params).get_params()
    except (TypeError, ValueError):
        return {}


def _trains_by_steps(method: str, bits: int, params: dict) -> bool:
    """Whether `method` with the spec's `params` trains a number of optimiser steps rather than of
    epochs (the unsupervised deep methods' ``epochs=None``)."""
    got = _params_of(method, bits, params)
    return "epochs" in got and got["epochs"] is None


@contextlib.contextmanager
def _fit_lines() -> Iterator[None]:
    """Show the deep hashers' INFO lines on stderr for the block: as head-mode training starts and
    ends (with its time), and its progress every few seconds where the bar is hidden (stderr not a
    terminal), as `hashsearch index` shows them."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    loggers = [logging.getLogger(f"hashsearch.hashing.deep.{m}") for m in ("base", "unsupervised")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.removeHandler(handler)
            lg.setLevel(level)


def _advice(model, spec: str) -> list[str]:
    """The lines after training about what was fitted: too few images for the code length, and a
    cluster count (left at its default) other than the number of classes of the labelled images."""
    from hashsearch.hashing.unsupervised import few_images

    r, hasher = model.record, model.hasher
    lines = []
    data = r.get("data") or {}
    few = few_images(int(data.get("train") or 0), hasher.n_bits, hasher.name)
    if few is not None:
        lines.append(f"warning: {few}")
    hint = cluster_hint(hasher, len(data.get("classes") or []), spec, "train")
    if hint is not None:
        lines.append(hint)
    return lines
