"""The jobs behind `hashsearch eval` and `hashsearch demo`: they chain library calls and print."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from hashsearch.backbones import Backbone, create_backbone
from hashsearch.collection import Collection
from hashsearch.data.decode import DEFAULT_MAX_PIXELS
from hashsearch.data.protocols import load_protocol, protocol_data, protocol_root, split_by_class
from hashsearch.data.sources import IMAGE_EXTENSIONS, open_source, printable
from hashsearch.evaluation.report import machine_description, plot_pr_curves, plot_results, write_results
from hashsearch.experiments.features import FeatureProvider, split_features
from hashsearch.experiments.runner import parse_method, run_methods
from hashsearch.hashing import create_hasher

#: `load_split`'s queries per class when none is given: at most this many ...
AUTO_QUERIES = 100
#: ... and at most this share of the smallest class (the rest is the database).
AUTO_QUERY_SHARE = 5
#: `load_split`'s training images per class when none is given: at most this many, and at most what
#: the smallest class keeps after its queries (training images are drawn from the database).
AUTO_TRAIN = 500


def load_split(
    protocol: str | None,
    data: str | None,
    queries_per_class: int | None,
    train_per_class: int | None,
    seed: int,
    labels: str = "auto",
    log=print,
):
    """(source, split) for a named protocol or for the user's own labelled images.

    With `data`, `labels` says how its images get labels (see `hashsearch.data.sources`); the
    line saying how they were read is logged, and images without a label are left out of the
    split and named. `train_per_class` 0 draws no training images (a trained model's
    evaluation). With `data`, `queries_per_class` None draws `AUTO_QUERIES` per class, or a fifth
    (`AUTO_QUERY_SHARE`) of the smallest class when that is fewer, and `train_per_class` None
    draws `AUTO_TRAIN`, or what the smallest class keeps after its queries when that is fewer;
    both log how many. Raises
    ValueError when no image has a label (saying what layout was seen), every label is the same
    (mAP would be 1.0 whatever the codes), or a class has too few images for the split (naming
    --queries-per-class and --train-per-class).
    """
    if protocol is not None:
        split = load_protocol(protocol, seed=seed)
        return open_source(protocol_root(protocol)), split
    source = open_source(data, labels)
    records = source.records()
    listing = source.listing()
    log(listing.labels.summary())
    labelled = [r for r in records if r.label is not None]
    if not records:
        found = listing.left_out()
        raise ValueError(
            f"--data {printable(str(data))}: no image in it (looked for files ending "
            f"{', '.join(sorted(IMAGE_EXTENSIONS))}, any case{'; found ' + found if found else ''}); an evaluation "
            "needs labelled images, each class in a folder of its own (photos/cat/..., photos/dog/...)"
        )
    if not labelled:
        raise ValueError(
            f"--data {printable(str(data))}: no image has a label (labels: {listing.labels.layout}); an evaluation needs "
            "classes: put each class's images in a folder of its own (photos/cat/..., photos/dog/...), write "
            "'path<TAB>label' lines in a list file, or pass a labels file with --labels FILE"
        )
    classes = sorted({r.label for r in labelled})
    if len(classes) < 2:
        raise ValueError(
            f"--data {printable(str(data))}: every labelled image is of one class ({printable(classes[0])}; labels: "
            f"{listing.labels.layout}), and with one class every database image is relevant to every query, so "
            "mAP would be 1.0 whatever the codes: an evaluation needs at least 2 classes. If the class folders "
            "are the folders holding the images, pass --labels parent; else give each class a folder of its "
            "own or a labels file (--labels FILE)"
        )
    if len(labelled) < len(records):
        log(f"left out of the evaluation: {listing.labels.unlabelled_text()}")
    sizes = {c: sum(r.label == c for r in labelled) for c in classes}
    small = min(classes, key=lambda c: (sizes[c], c))
    if queries_per_class is None:
        queries_per_class = max(1, min(AUTO_QUERIES, sizes[small] // AUTO_QUERY_SHARE))
        log(
            f"queries: {queries_per_class} per class (at most {AUTO_QUERIES}, and a fifth of the smallest class, "
            f"{printable(small)} with {sizes[small]:,}; set --queries-per-class to choose)"
        )
    if train_per_class is None:
        train_per_class = max(1, min(AUTO_TRAIN, sizes[small] - queries_per_class))
        log(
            f"training images: {train_per_class} per class (at most {AUTO_TRAIN}, and what the smallest class keeps "
            f"after its queries; set --train-per-class to choose)"
        )
    # A trained model's evaluation (no training split) keeps at least one image of each class in the database.
    need = queries_per_class + (train_per_class or 1)
    if sizes[small] < need:
        took = (
            f"--queries-per-class {queries_per_class} and --train-per-class {train_per_class} of each class"
            if train_per_class
            else f"--queries-per-class {queries_per_class} of each class as queries and 1 more for the database"
        )
        raise ValueError(
            f"--data {printable(str(data))}: class {printable(small)!r} has {sizes[small]:,} labelled "
            f"{'image' if sizes[small] == 1 else 'images'}, and the split takes {took} ({need:,} in all); "
            f"lower {'them' if train_per_class else '--queries-per-class'}, or add images"
        )
    split = split_by_class(
        labelled, queries_per_class, train_per_class, seed=seed, name=f"custom:{printable(str(data))}"
    )
    return source, split


def run_and_report(
    *,
    protocol: str | None,
    data: str | None,
    queries_per_class: int | None,
    train_per_class: int | None,
    methods: Sequence[str],
    bits: Sequence[int],
    seed: int,
    out: Path | None,
    backbone: Backbone,
    cache_dir=None,
    batch_size: int = 64,
    command: str = "",
    log=print,
    labels: str = "auto",
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> list[dict]:
    """Evaluate every method x bits on the split; write <out>.md/.json and plots when `out` is given.

    `labels` (with `data`), and `queries_per_class` / `train_per_class` None (sized from the smallest
    class), as in `load_split`; `max_pixels`: the largest image decoded (larger
    ones are skipped and reported).
    """
    for m in methods:
        parse_method(m)  # fail on an unknown method before the long feature pass
    t0 = time.perf_counter()
    source, split = load_split(protocol, data, queries_per_class, train_per_class, seed, labels=labels, log=log)
    log(split.summary())
    provider = FeatureProvider(
        source, split, backbone, cache_dir=cache_dir, batch_size=batch_size, seed=seed, log=log, max_pixels=max_pixels
    )
    feats = provider.features(None)
    if len(feats.skipped):
        log(feats.skipped.summary())
    rows = run_methods(provider, methods, bits, seed=seed, log=log)
    total = time.perf_counter() - t0
    if out is not None:
        out = Path(out)
        notes = "\n".join(
            [
                f"Command: `{command}`" if command else "",
                f"Protocol: {split.name} (seed {split.seed}): {split.description}",
                f"Data: {protocol_data(protocol)}" if protocol else f"Data: {printable(str(data))}",
                f"Backbone: {backbone.name} at {backbone.preprocess.input_size}px, frozen ImageNet weights; features of "
                f"{feats.n_images} distinct images in {feats.seconds:.0f}s ({feats.n_computed} computed, "
                f"{feats.n_cached} read from the feature cache).",
                f"Machine: {machine_description()}. Total wall time {total:.0f}s.",
                f"Skipped files: {len(feats.skipped)}.",
                *trained_notes(provider),
            ]
        )
        write_results(rows, out, title=f"Retrieval on {split.name}", notes=notes)
        plot_results(rows, out.with_name(out.name + "-map.png"))
        plot_pr_curves(rows, max(bits), out.with_name(out.name + f"-pr{max(bits)}.png"))
        log(f"wrote {out}.md, {out}.json and plots")
    return rows


def trained_notes(provider: FeatureProvider) -> list[str]:
    """A line per backbone the run trained from scratch (for RITQ and DHFI): images, epochs, time, loss."""
    return [
        f"Backbone {name} trained from scratch on {t['images']} training images, {t['epochs']} epochs, in "
        f"{t['seconds']:.0f}s (cross-entropy {t['loss'][0]:.3f} -> {t['loss'][-1]:.3f}); weights {t['weights']}."
        for name, t in provider.trained.items()
    ]


def demo(out: Path, cache_dir=None, log=print) -> None:
    """`make demo`: the cifar10-demo split end to end, on real CIFAR-10 (JPEG) images: ITQ, DLBHC
    and HashNet on frozen features, a collection searched, then a model trained with its backbone
    (`hashsearch train --mode finetune`, 2 epochs) and what it adds over the frozen features."""
    from hashsearch.experiments.training import evaluate_model, train_model

    backbone = create_backbone("efficientnet-lite0", input_size=128)
    source, split = load_split("cifar10-demo", None, 0, 0, seed=0)
    log(f"{split.name}: {split.description}")
    feats = split_features(source, split, backbone, cache_dir=cache_dir)
    rows = run_methods(feats, ["itq", "dlbhc", "hashnet"], [48], log=log)

    log("\nIndexing the database with DLBHC (48 bits)...")
    hasher = create_hasher("dlbhc", n_bits=48).fit(feats.train.features, feats.train.labels)
    coll = Collection.create(backbone, hasher)
    db = feats.database
    coll.add(db.features, [r.key for r in db.records], [r.label for r in db.records], db.digests)
    coll.save(out)
    log(f"wrote {out} ({len(coll)} images)")

    q = feats.query
    picks = [int(np.flatnonzero(q.labels == c)[0]) for c in range(0, len(feats.classes), 3)]
    for i in picks:
        log(f"\nquery {q.records[i].key} ({q.records[i].label})")
        for rerank in (None, 200):
            res = coll.search(q.features[i : i + 1], k=8, rerank=rerank)
            labels = [e["label"] for e in coll.entries(res.ids[0])]
            hits = sum(lab == q.records[i].label for lab in labels)
            how = "coarse-to-fine (200)" if rerank else "Hamming ranking     "
            log(f"{how}: {hits}/8 same class: {', '.join(labels)}")

    model_path = out.with_suffix(".hsm")
    recipe = "cpu,epochs=2"
    log(
        f"\nTraining a model: HashNet 48 bits with its backbone on the training images "
        f"(hashsearch train --protocol cifar10-demo --mode finetune --recipe {recipe}; a few minutes on 2 cores)..."
    )
    trained = train_model(
        source,
        model_path,
        method="hashnet",
        bits=48,
        backbone=backbone,
        mode="finetune",
        recipe=recipe,
        records=split.train,
        protocol="cifar10-demo",
        fresh=True,
        cache_dir=cache_dir,
        log=log,
    )
    tuned = evaluate_model(
        trained.model,
        protocol="cifar10-demo",
        data=None,
        queries_per_class=0,
        seed=0,
        out=None,
        cache_dir=cache_dir,
        log=lambda line: None,
    )
    log(f"wrote {model_path} ({trained.model.describe()})")

    log("\nSummary (cifar10-demo, mAP over the 9,800-image database):")
    for r in rows:
        log(f"  {r['method']:>6} {r['bits']} bits: mAP {r['metrics']['map']:.4f}, P@100 {r['metrics']['p@100']:.4f}")
    m = tuned["metrics"]
    frozen = next(r["metrics"]["map"] for r in rows if r["method"] == "hashnet")
    log(
        f"  hashnet 48 bits, trained model (backbone fine-tuned {trained.model.record['seconds'] / 60:.1f} min): "
        f"mAP {m['map']:.4f}, P@100 {m['p@100']:.4f}: {m['map'] - frozen:+.4f} over the same method on frozen features"
    )
    log(f"\nTry: .venv/bin/hashsearch search {out} {q.records[picks[0]].key} -k 10 --rerank 200")
    log(f"     .venv/bin/hashsearch info {out}")
    log(f"     .venv/bin/hashsearch serve {out}    # the web page, http://127.0.0.1:8000/")
    log(f"     .venv/bin/hashsearch index FOLDER --model {model_path} --out photos.hsx   # the trained model")
