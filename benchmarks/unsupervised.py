"""Unsupervised deep hashing (issue 22.1) beside the classic unsupervised hashers, trained without labels.

On cifar10-1k (1,000 queries, 5,000 training images, 59,000-image database, CIFAR-10 (JPEG)) and
flowers12 (240 queries, 480 training photos, 720-photo database), over frozen EfficientNet-Lite0
features at 128 px (read from the feature cache when present): every method is fitted on the
training images' features *without their labels*; labels serve only to score the rankings.
Metrics: mAP@ALL (ties by database id, as in benchmarks/results/cifar10-1k.md) and mAP@1000 (the
unsupervised papers' convention), at 16, 32 and 64 bits, with fit time; plus the ranking by cosine
similarity of the (centred) 1280-d float features, the signal the deep methods learn from.

    python benchmarks/unsupervised.py          # writes benchmarks/results/unsupervised.md

`--fit-on database` fits every hasher on the database's features instead (still without labels),
which is what `hashsearch index` does with an unlabelled collection: it learns from the images it
indexes. Its results: benchmarks/results/unsupervised-database.md, command inside.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch

from hashsearch.backbones import create_backbone
from hashsearch.data.protocols import cifar10_root, flowers12_root, load_protocol
from hashsearch.data.sources import open_source
from hashsearch.evaluation.metrics import evaluate, evaluate_distances, relevance
from hashsearch.evaluation.report import machine_description
from hashsearch.experiments import split_features
from hashsearch.hashing import create_hasher

CLASSIC = ("lsh", "itq", "sh", "sph")
DEEP = ("bihalf", "greedyhash-unsup", "ssdh", "bihalf-spectral")
BITS = (16, 32, 64)
PROTOCOLS = {"cifar10-1k": cifar10_root, "flowers12": flowers12_root}
OUT = Path(__file__).parent / "results" / "unsupervised.md"


def cosine_scores(feats) -> tuple[dict, dict]:
    """mAP@ALL and mAP@1000 of ranking the database by cosine similarity of centred float features."""
    mu = feats.train.features.mean(0)
    q = feats.query.features - mu
    d = feats.database.features - mu
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    dist = (1 - q @ d.T).astype(np.float64)
    rel = relevance(feats.query.labels, feats.database.labels)
    return evaluate_distances(dist, rel), evaluate_distances(dist, rel, k_map=1000)


def run(
    protocol: str, methods: list[str], bits: tuple[int, ...], fit_on: str = "train", log=print
) -> tuple[list[dict], dict]:
    """One row per (method, bits) on `protocol`: mAP@ALL, mAP@1000, fit seconds; and the run's facts.

    `fit_on`: "train" (the protocol's training images) or "database" (the images searched)."""
    t0 = time.perf_counter()
    split = load_protocol(protocol, seed=0)
    backbone = create_backbone("efficientnet-lite0", input_size=128)
    feats = split_features(open_source(PROTOCOLS[protocol]()), split, backbone, progress=False)
    log(f"{split.summary()}: features in {feats.seconds:.0f}s ({feats.n_cached} cached, {feats.n_computed} computed)")
    Xt = feats.train.features if fit_on == "train" else feats.database.features
    Xq, yq, Xd, yd = feats.query.features, feats.query.labels, feats.database.features, feats.database.labels
    rows = []
    full, top = cosine_scores(feats)
    rows.append(
        {"method": "cosine (float features)", "bits": None, "map": full["map"], "map1000": top["map"], "fit_s": 0.0}
    )
    for method in methods:
        for b in bits:
            hasher = create_hasher(method, n_bits=b, seed=0)
            if hasher.supervised:
                raise ValueError(f"{method} needs labels; this benchmark compares methods that train without them")
            t = time.perf_counter()
            hasher.fit(Xt)  # no labels
            fit_s = time.perf_counter() - t
            qc, dc = hasher.encode(Xq), hasher.encode(Xd)
            m_all = evaluate(qc, dc, yq, yd)["map"]
            m_1000 = evaluate(qc, dc, yq, yd, k_map=1000)["map"]
            rows.append({"method": method, "bits": b, "map": m_all, "map1000": m_1000, "fit_s": fit_s})
            log(f"{protocol} {method:>16} {b:>2} bits  mAP@all {m_all:.4f}  mAP@1000 {m_1000:.4f}  fit {fit_s:.1f}s")
    facts = {
        "split": split,
        "n_train": len(Xt),
        "fit_on": fit_on,
        "n_query": len(Xq),
        "n_database": len(Xd),
        "n_cached": feats.n_cached,
        "n_computed": feats.n_computed,
        "seconds": time.perf_counter() - t0,
    }
    return rows, facts


def table(rows: list[dict], key: str, bits: tuple[int, ...]) -> list[str]:
    lines = ["| method | " + " | ".join(f"{b} bits" for b in bits) + " |", "|---|" + "---:|" * len(bits)]
    for method in dict.fromkeys(r["method"] for r in rows):
        cells = {r["bits"]: r[key] for r in rows if r["method"] == method}
        if None in cells:  # float features: one value, not per code length
            lines.append(f"| {method} | " + " | ".join(f"{cells[None]:.4f}" for _ in bits) + " |")
        else:
            lines.append(f"| {method} | " + " | ".join(f"{cells[b]:.4f}" for b in bits) + " |")
    return lines


def report(results: dict, bits: tuple[int, ...], command: str, total: float, fit_on: str = "train") -> str:
    fitted = (
        "the protocol's training images"
        if fit_on == "train"
        else "the database's images (the images searched, as `hashsearch index` does with an unlabelled collection)"
    )
    out = [
        "# Unsupervised hashing: deep methods on the one training loop vs the classic hashers",
        "",
        f"Command: `{command}`",
        f"Machine: {machine_description()}; torch on 1 thread. Total wall time {total:.0f}s. Fit times are wall "
        "times on a machine that other jobs may share.",
        "Backbone: efficientnet-lite0 at 128 px, frozen ImageNet weights (features from the feature cache where present).",
        f"Every hasher is fitted on {fitted} **without labels** (`hasher.fit(features)`); "
        "labels only score the rankings. One seed (0). mAP@ALL breaks ranking ties by database id.",
        "",
    ]
    for protocol, (rows, facts) in results.items():
        split = facts["split"]
        out += [
            f"## {protocol}",
            "",
            f"Protocol: {split.name} (seed {split.seed}): {split.description}",
            f"Features: {facts['n_cached']} read from the cache, {facts['n_computed']} computed; "
            f"this protocol's run took {facts['seconds']:.0f}s.",
            "",
            "### mAP@ALL",
            "",
            *table(rows, "map", bits),
            "",
            "### mAP@1000"
            + (" (the database has fewer than 1,000 images: equal to mAP@ALL)" if facts["n_database"] <= 1000 else ""),
            "",
            *table(rows, "map1000", bits),
            "",
            f"### Fit time (seconds, {facts['n_train']:,} images)",
            "",
            *table([r for r in rows if r["bits"] is not None], "fit_s", bits),
            "",
        ]
        itq = {r["bits"]: r["map"] for r in rows if r["method"] == "itq"}
        best = max(
            (r for r in rows if r["bits"] == max(bits) and r["method"] in DEEP), key=lambda r: r["map"], default=None
        )
        if best is not None and max(bits) in itq:
            gap = best["map"] - itq[max(bits)]
            out.append(
                f"Best deep method at {max(bits)} bits: {best['method']} {best['map']:.4f} mAP@ALL, "
                f"{gap:+.4f} vs ITQ's {itq[max(bits)]:.4f} (goal on cifar10-1k: +0.10)."
            )
            out.append("")
    if fit_on == "train":
        out += [
            "Fitted on the database instead (what `hashsearch index` does with an unlabelled collection): "
            "benchmarks/results/unsupervised-database.md.",
            "",
        ]
    out += [
        "## The papers' numbers",
        "",
        "None is quoted beside ours: BiHalf (AAAI 2021), GreedyHash (NeurIPS 2018) and SSDH (IJCAI 2018) train on "
        "VGG features of the images (fine-tuned end to end or not, depending on the paper), while every row here is a "
        "hash layer on frozen EfficientNet-Lite0 features at 128 px; the protocols do not match, and their tables "
        "were not at hand to quote. `bihalf-spectral` "
        "is ours (BiHalf's layer and loss on spectral-cluster pseudo-labels; it is told the number of clusters, 10, "
        "which on flowers12 is not its 12 species).",
        "",
    ]
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    parser.add_argument("--methods", nargs="+", default=[*CLASSIC, *DEEP])
    parser.add_argument("--bits", nargs="+", type=int, default=list(BITS))
    parser.add_argument("--fit-on", choices=["train", "database"], default="train")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    torch.set_num_threads(1)  # a shared machine; a hash layer on cached features trains in seconds
    t0 = time.perf_counter()
    results = {p: run(p, args.methods, tuple(args.bits), args.fit_on) for p in args.protocols}
    command = "python benchmarks/unsupervised.py" + (
        ""
        if args.out == OUT
        and args.fit_on == "train"
        and args.protocols == list(PROTOCOLS)
        and args.methods == [*CLASSIC, *DEEP]
        and tuple(args.bits) == BITS
        else " "
        + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items()
        )
    )
    text = report(results, tuple(args.bits), command, time.perf_counter() - t0, args.fit_on)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
