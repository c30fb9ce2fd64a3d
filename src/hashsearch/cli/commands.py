"""The CLI commands: each parses its options, calls the library, and formats the answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List, Optional

import typer

from hashsearch.cli.common import (
    BackboneOpt,
    BatchOpt,
    CacheOpt,
    InputSizeOpt,
    WeightsOpt,
    make_backbone,
    split_list,
)


def index(
    source: str = typer.Argument(..., help="A folder (recursive), a .tar/.tar.gz archive, or a list file of paths [TAB label]."),
    out: Path = typer.Option(..., "--out", "-o", help="The collection folder to write (e.g. photos.hsx)."),
    method: str = typer.Option("itq", "--method", "-m", help="Hashing method (see `hashsearch list`)."),
    bits: int = typer.Option(64, "--bits", "-b", min=1, max=4096, help="Code length in bits."),
    seed: int = typer.Option(0, "--seed"),
    backend: str = typer.Option("flat", "--index", help="Index back end (see `hashsearch list`)."),
    no_features: bool = typer.Option(False, "--no-features", help="Do not store features (disables --rerank)."),
    backbone: str = BackboneOpt,
    input_size: int = InputSizeOpt,
    weights: Optional[str] = WeightsOpt,
    cache_dir: Optional[Path] = CacheOpt,
    batch_size: int = BatchOpt,
    engine: str = typer.Option("local", "--engine", help="local (worker processes on this machine) or ray (Ray Data)."),
    address: Optional[str] = typer.Option(None, "--address", help="With --engine ray: a Ray cluster (auto, ray://HOST:10001); default a local Ray."),
    runtime: str = typer.Option("onnx", "--runtime", help="Inference runtime for encoding: onnx or torch."),
    int8: bool = typer.Option(False, "--int8", help="Quantize the backbone to int8 (ONNX), calibrated on 256 of your images."),
):
    """Index a collection of images: features, hash codes, and a searchable index."""
    from hashsearch.data.sources import open_source
    from hashsearch.hashing import create_hasher
    from hashsearch.pipeline import build_collection

    if address and engine != "ray":
        raise typer.BadParameter(f"--address {address!r} needs --engine ray (got --engine {engine!r})")
    bb = make_backbone(backbone, input_size, weights)
    hasher = create_hasher(method, n_bits=bits, seed=seed)
    coll, report = build_collection(
        open_source(source), bb, hasher, index=backend, store_features=not no_features,
        cache_dir=cache_dir, batch_size=batch_size, engine=engine, runtime=runtime, int8=int8,
        **({"address": address} if address else {}),
    )
    coll.save(out)
    typer.echo(report.summary())
    typer.echo(f"wrote {out}: {len(coll)} entries, {method} {bits} bits, {bb.name} at {input_size}px")


def search(
    collection: Path = typer.Argument(..., help="A collection folder written by `hashsearch index`."),
    queries: List[Path] = typer.Argument(..., help="Query image file(s)."),
    k: int = typer.Option(10, "-k", min=1, help="Neighbours to return."),
    rerank: Optional[int] = typer.Option(None, "--rerank", min=1, help="Coarse-to-fine: re-rank up to this many Hamming candidates by feature distance."),
    radius: Optional[int] = typer.Option(None, "--radius", min=0, help="Hamming radius (lookup, or the candidate radius with --rerank)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    cache_dir: Optional[Path] = CacheOpt,
):
    """Find the nearest indexed images of each query image (encoded as the collection's were)."""
    from hashsearch.collection import Collection
    from hashsearch.data.decode import decode_image
    from hashsearch.pipeline import encode_queries

    coll = Collection.open(collection)
    images = [decode_image(p.read_bytes(), str(p)) for p in queries]
    res = coll.search(encode_queries(coll.backbone, images, coll.encoder(cache_dir)), k=k, rerank=rerank, radius=radius)
    out = []
    for qi, q in enumerate(queries):
        hits = [
            {"rank": r + 1, "id": int(i), "distance": float(d), "key": e["key"], "label": e["label"]}
            for r, (i, d, e) in enumerate(zip(res.ids[qi], res.distances[qi], coll.entries(res.ids[qi])))
            if e is not None
        ]
        out.append({"query": str(q), "results": hits})
    if as_json:
        typer.echo(json.dumps(out, indent=1))
        return
    kind = "re-rank (L2)" if rerank else "hamming"
    for item in out:
        typer.echo(f"query {item['query']}")
        typer.echo(f"  {'rank':>4} {kind:>12} {'label':<12} path")
        for h in item["results"]:
            dist = f"{h['distance']:.3f}" if rerank else f"{int(h['distance'])}"
            typer.echo(f"  {h['rank']:>4} {dist:>12} {str(h['label']):<12} {h['key']}")


def info(collection: Path = typer.Argument(..., help="A collection folder.")):
    """Describe a collection: size, code length, method, backbone, labels."""
    from hashsearch.collection import Collection

    typer.echo(json.dumps(Collection.open(collection).info(), indent=1))


def add(
    collection: Path = typer.Argument(...),
    source: str = typer.Argument(..., help="Images to add (folder, archive or list file)."),
    cache_dir: Optional[Path] = CacheOpt,
    batch_size: int = BatchOpt,
):
    """Add images to a collection, encoded with its own backbone and hasher."""
    from hashsearch.collection import Collection
    from hashsearch.data.sources import open_source
    from hashsearch.pipeline import add_images

    coll = Collection.open(collection)
    ids, report = add_images(coll, open_source(source), cache_dir=cache_dir, batch_size=batch_size)
    coll.save(collection)
    typer.echo(report.summary())
    typer.echo(f"added ids {ids.min() if len(ids) else '-'}..{ids.max() if len(ids) else '-'}; {len(coll)} entries now")


def remove(collection: Path = typer.Argument(...), ids: List[int] = typer.Argument(..., help="Entry ids to remove.")):
    """Remove entries from a collection by id."""
    from hashsearch.collection import Collection

    coll = Collection.open(collection)
    n = coll.remove(ids)
    coll.save(collection)
    typer.echo(f"removed {n} of {len(ids)} ids; {len(coll)} entries now")


def eval(  # noqa: A001 - the command is called eval
    protocol: Optional[str] = typer.Option(None, "--protocol", "-p", help="A named protocol (see `hashsearch list`)."),
    data: Optional[str] = typer.Option(None, "--data", help="Your own labelled folder/archive/list, split per class instead of --protocol."),
    queries_per_class: int = typer.Option(100, "--queries-per-class", min=1),
    train_per_class: int = typer.Option(500, "--train-per-class", min=1),
    method: str = typer.Option("lsh,pcah,pca-rr,itq,dlbhc", "--method", "-m", help="Comma-separated methods."),
    bits: str = typer.Option("16,32,48,64", "--bits", "-b", help="Comma-separated code lengths."),
    seed: int = typer.Option(0, "--seed"),
    out: Optional[Path] = typer.Option(None, "--out", help="Write <out>.md, <out>.json and plots."),
    backbone: str = BackboneOpt,
    input_size: int = InputSizeOpt,
    weights: Optional[str] = WeightsOpt,
    cache_dir: Optional[Path] = CacheOpt,
    batch_size: int = BatchOpt,
):
    """Evaluate hashing methods on a seeded split: mAP, tie-aware mAP, P@k, precision within radius 2."""
    from hashsearch.evaluation.experiment import run_and_report

    if (protocol is None) == (data is None):
        raise typer.BadParameter("give exactly one of --protocol NAME or --data PATH")
    run_and_report(
        protocol=protocol, data=data, queries_per_class=queries_per_class, train_per_class=train_per_class,
        methods=split_list(method), bits=split_list(bits, int), seed=seed, out=out,
        backbone=make_backbone(backbone, input_size, weights), cache_dir=cache_dir, batch_size=batch_size,
        command=_command_line(),
    )


def demo(
    out: Optional[Path] = typer.Option(None, "--out", help="Where to write the demo collection (default <cache>/demo.hsx)."),
    cache_dir: Optional[Path] = CacheOpt,
):
    """The main job on real data: CIFAR-10 (JPEG) `cifar10-demo` split, ITQ and DLBHC, index, queries."""
    from hashsearch.data.protocols import cache_dir as default_cache
    from hashsearch.evaluation.experiment import demo as run_demo

    run_demo(out=out or Path(cache_dir or default_cache()) / "demo.hsx", cache_dir=cache_dir)


def list_plugins():
    """List the registered methods, backbones, index back ends and protocols."""
    from hashsearch.backbones import list_backbones
    from hashsearch.data.protocols import list_protocols
    from hashsearch.hashing import hashers, list_hashers
    from hashsearch.index import list_indexes

    typer.echo("methods:   " + ", ".join(f"{m}{' (supervised)' if hashers.get(m).supervised else ''}" for m in list_hashers()))
    typer.echo("backbones: " + ", ".join(list_backbones()))
    typer.echo("indexes:   " + ", ".join(list_indexes()))
    typer.echo("protocols: " + ", ".join(list_protocols()))


list_plugins.__name__ = "list"


def _command_line() -> str:
    import shlex
    import sys

    return "hashsearch " + " ".join(shlex.quote(a) for a in sys.argv[1:])


ALL = [index, search, info, add, remove, eval, demo, list_plugins]
