"""Which method `hashsearch index` fits on a folder without labels, by folder size: ITQ vs bihalf-spectral.

`hashsearch index FOLDER` learns its hash codes from the folder's own images, without labels.
Most folders people index are small: tens to hundreds of photos of a few kinds of thing. This
benchmark draws such folders from real photos and scores each method as a user would meet it:

- flowers12 (../shared/datasets/flowers12-960.tar.gz): folders of 2, 4 or 12 species x 10, 40 or
  80 photos each (20 to 960 photos; `FOLDERS`); CIFAR-10 (JPEG), drawn from the cifar10-1k
  protocol's 5,000 training images: 500 and 2,000 of them (10 classes, equal numbers). 5,000 is
  cifar10-1k itself (benchmarks/unsupervised.py), where the rule keeps bihalf-spectral as it was.
- Features: efficientnet-lite0 at 128 px, frozen, as `index` computes them, read from the
  feature cache (each photo encoded once, then cached).
- Every method is fitted on the folder's features **without labels**; each photo then queries
  the folder less itself (leave-one-out), and labels only score the ranking: mAP@ALL at 64
  bits, `index`'s default code length (ties by database id).
- Fit seconds as a ratio to ITQ's on the same folder, measured side by side in one run.

Methods: itq; bihalf-spectral as it was the default (10 clusters, at least 2,000 optimiser
steps); the candidate fixes: bihalf-spectral with its cluster count chosen from the data
(`n_clusters=auto`, the eigengap of the kNN graph), bihalf-spectral with 500 optimiser steps
instead of 2,000; and the rule `index` now applies (`hashsearch.hashing.unsupervised.
choose_index_method`), whose rows are those of the method it picks at that size.

The rule's threshold was chosen on seed 100 (`--seeds 100`, its table of thresholds in
benchmarks/results/unsupervised-small-selection.md); benchmarks/results/unsupervised-small.md
reports seeds 0, 1 and 2, kept apart (the results files' tops give the exact commands run):

    python benchmarks/unsupervised_small.py --seeds 100 --out benchmarks/results/unsupervised-small-selection.md
    python benchmarks/unsupervised_small.py            # seeds 0 1 2 -> benchmarks/results/unsupervised-small.md

`--rows FILE.json` writes every measured row; `--from-rows FILE.json ...` prints the report from
such files (merged: e.g. one process per seed) without fitting anything.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from hashsearch.backbones import create_backbone
from hashsearch.data.protocols import cifar10_root, flowers12_root, load_protocol
from hashsearch.data.sources import open_source
from hashsearch.evaluation.metrics import evaluate
from hashsearch.evaluation.report import machine_description
from hashsearch.experiments.runner import parse_method
from hashsearch.hashing import create_hasher
from hashsearch.hashing.unsupervised import ITQ_BELOW, choose_index_method
from hashsearch.pipeline.local import extract_features

OUT = Path(__file__).parent / "results" / "unsupervised-small.md"
SEEDS = (0, 1, 2)
BITS = 64
#: The folders, in the order measured (the ones nearest the questions first: a partial run still answers):
#: (dataset, classes, images per class). flowers12 has 12 species of 80 photos; CIFAR-10 10 classes.
FOLDERS = (
    ("flowers12", 4, 40),
    ("flowers12", 12, 10),
    ("flowers12", 4, 80),
    ("flowers12", 12, 40),
    ("cifar10", 10, 50),
    ("flowers12", 2, 80),
    ("flowers12", 2, 10),
    ("flowers12", 12, 80),
    ("cifar10", 10, 200),
)
#: Row label -> the spec fitted on a folder of n images. The candidate fixes are fitted on the choosing
#: seeds only (`--methods all`); the reported seeds need only what the rule picks from (`--methods rule`).
METHODS = {
    "itq": lambda n: "itq",
    "bihalf-spectral (10 clusters, 2,000 steps)": lambda n: "bihalf-spectral",
    "bihalf-spectral[n_clusters=auto]": lambda n: "bihalf-spectral[n_clusters=auto]",
    "bihalf-spectral, 500 steps": lambda n: f"bihalf-spectral[epochs={max(30, math.ceil(500 / math.ceil(n / 256)))}]",
}
ITQ, CURRENT = "itq", "bihalf-spectral (10 clusters, 2,000 steps)"
RULE = "rule (index's default now)"
#: The rule's row: the row of the method `choose_index_method` picks at the folder's size.
RULE_SOURCE = {"itq": ITQ, "bihalf-spectral": CURRENT}


def load_features(log=print) -> dict:
    """{"flowers12": (X, y), "cifar10": (X, y)}: every flowers12 photo, and cifar10-1k's 5,000 training images."""
    backbone = create_backbone("efficientnet-lite0", input_size=128)
    out, facts = {}, {}
    for name, protocol, root in (("flowers12", "flowers12", flowers12_root), ("cifar10", "cifar10-1k", cifar10_root)):
        split = load_protocol(protocol, seed=0)
        parts = (split.query, split.database) if name == "flowers12" else (split.train,)
        records = list({r.key: r for part in parts for r in part}.values())
        ex = extract_features(open_source(root()), backbone, records, progress=False)
        out[name] = (ex.features, np.unique([r.label for r in ex.records], return_inverse=True)[1].astype(np.int64))
        facts[name] = {"n": len(ex.records), "cached": ex.n_cached, "computed": ex.n_computed}
        log(f"{name}: {len(ex.records)} images ({ex.n_cached} cached, {ex.n_computed} computed)")
    return out, facts


def folders(data: dict, seed: int):
    """(dataset, n_classes, per_class, indices) of every folder of `FOLDERS`, drawn with `seed`:
    the classes (flowers12's species; all of CIFAR-10's), then the images of each."""
    for dataset, c, per in FOLDERS:
        y = data[dataset][1]
        rng = np.random.default_rng([seed, c, per] if dataset == "flowers12" else [seed, c * per])
        chosen = rng.choice(np.unique(y), c, replace=False) if dataset == "flowers12" else np.unique(y)
        idx = np.concatenate([rng.choice(np.flatnonzero(y == s), per, replace=False) for s in chosen])
        yield dataset, c, per, np.sort(idx)


def measure(data: dict, seeds, methods=tuple(METHODS), datasets=("flowers12", "cifar10"), rows_file=None, log=print):
    """One row per (folder, seed, method): mAP@ALL (leave-one-out) at BITS, fit seconds, clusters used.

    Each row is also appended to `rows_file` (JSON lines) as it is measured."""
    rows = []
    warm = data["flowers12"][0][:40]
    for spec in ("itq", "bihalf-spectral[epochs=2]"):  # imports and first-call set-up, not timed
        name, params = parse_method(spec)
        create_hasher(name, n_bits=BITS, **params).fit(warm)
    for seed in seeds:
        for dataset, n_classes, per, idx in folders(data, seed):
            if dataset not in datasets:
                continue
            X, y = data[dataset][0][idx], data[dataset][1][idx]
            n = len(idx)
            for label in methods:
                spec_of = METHODS[label]
                name, params = parse_method(spec_of(n))
                hasher = create_hasher(name, n_bits=BITS, **{"seed": seed, **params})
                t = time.perf_counter()
                hasher.fit(X)  # no labels
                fit_s = time.perf_counter() - t
                codes = hasher.encode(X)
                m = evaluate(codes, codes, y, y, exclude=np.arange(n))["map"]
                clusters = getattr(hasher, "n_clusters_", None)
                rows.append(
                    {
                        "dataset": dataset,
                        "classes": n_classes,
                        "per_class": per,
                        "n": n,
                        "seed": seed,
                        "method": label,
                        "map": m,
                        "fit_s": fit_s,
                        "clusters": clusters,
                    }
                )
                if rows_file is not None:
                    with open(rows_file, "a") as f:
                        f.write(json.dumps(rows[-1]) + "\n")
                log(
                    f"seed {seed} {dataset} {n_classes:>2}x{per:<3} n={n:<5} {label:<44} mAP@ALL {m:.4f}  "
                    f"fit {fit_s:6.2f}s" + (f"  clusters {clusters}" if clusters else "")
                )
    return rows


def with_rule(rows: list[dict]) -> list[dict]:
    """`rows` plus the rule's: at each folder and seed, the row of the method `choose_index_method` picks."""
    out = list(rows)
    for r in rows:
        chosen, _ = choose_index_method(r["n"])
        if r["method"] == RULE_SOURCE[chosen]:
            out.append({**r, "method": RULE})
    return out


def _cells(rows):
    return list(dict.fromkeys((r["dataset"], r["classes"], r["per_class"], r["n"]) for r in rows))


def _get(rows, cell, method):
    d, c, p, n = cell
    return [
        r for r in rows if (r["dataset"], r["classes"], r["per_class"], r["n"], r["method"]) == (d, c, p, n, method)
    ]


def _by_seed(rows, cell, method, key):
    return {r["seed"]: r[key] for r in _get(rows, cell, method)}


#: The largest size the rule may send to ITQ: flowers12's protocol fits on 480 training images, where
#: bihalf-spectral's 0.7791 against ITQ's 0.6969 (benchmarks/results/unsupervised.md) must stay.
KEEP_FROM = 480


def _gain(rows, cell, method=CURRENT) -> float:
    """Mean over the seeds of `method`'s mAP@ALL minus ITQ's on `cell`."""
    itq, got = _by_seed(rows, cell, ITQ, "map"), _by_seed(rows, cell, method, "map")
    return float(np.mean([got[s] - itq[s] for s in itq]))


def pick_threshold(rows: list[dict]) -> int | None:
    """The smallest drawn size from which bihalf-spectral (as it was) ranked at least as well as ITQ on
    every folder (mean over the seeds), if it is at most KEEP_FROM: the rule's ITQ_BELOW on the choosing seeds."""
    cells = _cells(rows)
    for t in sorted({c[3] for c in cells}):
        if t <= KEEP_FROM and all(_gain(rows, c) >= 0 for c in cells if c[3] >= t):
            return t
    return None


def threshold_table(rows: list[dict]) -> list[str]:
    """ITQ below n images, bihalf-spectral (as it was) from n on: gains over ITQ, fit time, per threshold."""
    cells = _cells(rows)
    sizes = sorted({c[3] for c in cells})
    lines = [
        "| ITQ below (images) | mean mAP@ALL gain over ITQ | worst folder's gain | folders worse than ITQ by > 0.01 "
        "| worst gain of bihalf-spectral from this size on | mean fit time / ITQ's |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for t in [0, *sizes, sizes[-1] + 1]:
        gains, ratios, worse = [], [], 0
        for cell in cells:
            src = ITQ if cell[3] < t else CURRENT
            g = _gain(rows, cell, src)
            gains.append(g)
            worse += g < -0.01
            itq_s = _by_seed(rows, cell, ITQ, "fit_s")
            src_s = _by_seed(rows, cell, src, "fit_s")
            ratios.append(float(np.mean([src_s[s] / itq_s[s] for s in itq_s])))
        from_t = [_gain(rows, c) for c in cells if c[3] >= t]
        lines.append(
            f"| {t:,} | {np.mean(gains):+.4f} | {min(gains):+.4f} | {worse} of {len(cells)} | "
            + (f"{min(from_t):+.4f}" if from_t else "-")
            + f" | {np.mean(ratios):.1f}x |"
        )
    return lines


def cell_table(rows: list[dict], dataset: str) -> list[str]:
    methods = list(dict.fromkeys(r["method"] for r in rows))
    lines = [
        "| folder (classes x images each) | images | "
        + " | ".join(f"{m}" for m in methods)
        + " | rule picks | "
        + " | ".join(f"fit / ITQ: {m}" for m in methods if m not in (ITQ,))
        + " |",
        "|---|---:|" + "---:|" * len(methods) + "---|" + "---:|" * (len(methods) - 1),
    ]
    for cell in _cells(rows):
        if cell[0] != dataset:
            continue
        itq_map = _by_seed(rows, cell, ITQ, "map")
        maps = []
        for m in methods:
            v = list(_by_seed(rows, cell, m, "map").values())
            best = m != ITQ and np.mean(v) < np.mean(list(itq_map.values())) - 0.01
            maps.append(f"{np.mean(v):.4f} ± {np.std(v):.3f}" + (" (<ITQ)" if best else ""))
        itq_s = _by_seed(rows, cell, ITQ, "fit_s")
        ratios = []
        for m in methods:
            if m == ITQ:
                continue
            s = _by_seed(rows, cell, m, "fit_s")
            ratios.append(f"{np.mean([s[k] / itq_s[k] for k in s]):.1f}x")
        picked, _ = choose_index_method(cell[3])
        lines.append(
            f"| {cell[1]} x {cell[2]} | {cell[3]:,} | "
            + " | ".join(maps)
            + f" | {picked} | "
            + " | ".join(ratios)
            + " |"
        )
    return lines


def clusters_line(rows: list[dict]) -> str:
    auto = [r for r in rows if r["method"] == "bihalf-spectral[n_clusters=auto]" and r["clusters"]]
    if not auto:
        return ""
    parts = []
    for cell in _cells(auto):
        ks = sorted(r["clusters"] for r in _get(auto, cell, "bihalf-spectral[n_clusters=auto]"))
        parts.append(f"{cell[0]} {cell[1]}x{cell[2]}: {'/'.join(map(str, ks))}")
    return "Clusters the eigengap chose (per seed), against the true class count: " + "; ".join(parts) + "."


def summary(rows: list[dict]) -> list[str]:
    cells = _cells(rows)
    out = []
    for m in dict.fromkeys(r["method"] for r in rows):
        if m == ITQ:
            continue
        gains, ratios = [], []
        for cell in cells:
            itq, got = _by_seed(rows, cell, ITQ, "map"), _by_seed(rows, cell, m, "map")
            gains.append((float(np.mean([got[s] - itq[s] for s in itq])), cell))
            its, ms = _by_seed(rows, cell, ITQ, "fit_s"), _by_seed(rows, cell, m, "fit_s")
            ratios.append(float(np.mean([ms[s] / its[s] for s in its])))
        worst = min(gains)
        n_worse = sum(g < -0.01 for g, _ in gains)
        out.append(
            f"| {m} | {np.mean([g for g, _ in gains]):+.4f} | {worst[0]:+.4f} ({worst[1][0]} {worst[1][1]}x{worst[1][2]}) "
            f"| {n_worse} of {len(cells)} | {np.median(ratios):.1f}x |"
        )
    return [
        "| method | mean mAP@ALL gain over ITQ (all folders) | worst folder's gain | folders worse than ITQ by > 0.01 "
        "| median fit time / ITQ's |",
        "|---|---:|---:|---:|---:|",
        *out,
    ]


def complete(rows: list[dict]) -> list[dict]:
    """The rows of the folders measured by every method on every seed (a stopped run's last folder is not)."""
    methods, seeds = {r["method"] for r in rows}, {r["seed"] for r in rows}
    full = {c for c in _cells(rows) if all(set(_by_seed(rows, c, m, "map")) == seeds for m in methods)}
    return [r for r in rows if (r["dataset"], r["classes"], r["per_class"], r["n"]) in full]


def report(rows: list[dict], facts: dict, command: str, total: float, seeds) -> str:
    rows = with_rule(complete(rows))
    _, why = choose_index_method(ITQ_BELOW - 1)
    out = [
        "# `hashsearch index` without labels: ITQ or bihalf-spectral, by folder size",
        "",
        f"Command: `{command}`",
        f"Machine: {machine_description()}; torch on 1 thread; a shared machine (other jobs may have run beside it). "
        + (f"Total wall time {total:.0f}s. " if total == total else "Stopped before the end (see Data). ")
        + "Fit times are given only as ratios to ITQ's on the same folder and seed, "
        "measured side by side in this one run.",
        "Data: flowers12 (../shared/datasets/flowers12-960.tar.gz; 12 species of the Oxford 17 flowers, 80 photos "
        "each): folders of a few species x a number of photos each, species and photos drawn with the seed; "
        "CIFAR-10 (JPEG), the cifar10-1k protocol's 5,000 training images: folders of all 10 classes x a number "
        "each. Folders measured (classes x images each): "
        + ", ".join(f"{d} {c}x{p}" for d, c, p, _ in _cells(rows))
        + (
            f" (of `FOLDERS`' {len(FOLDERS)}: the run was stopped before the rest)"
            if len(_cells(rows)) < len(FOLDERS)
            else ""
        )
        + ".",
        "Features: efficientnet-lite0 at 128 px, frozen ImageNet weights, as `hashsearch index` computes them ("
        + ", ".join(
            f"{k}: {v['n']} images, {v['cached']} from the feature cache, {v['computed']} computed"
            for k, v in facts.items()
        )
        + ").",
        f"Each method is fitted on the folder's features **without labels** at {BITS} bits (index's default); every "
        "photo then queries the folder less itself (leave-one-out) and labels only score: mAP@ALL, ties by database "
        f"id. Seeds {', '.join(map(str, seeds))} (the folder drawn and the hasher's seed); each cell is the mean ± "
        "standard deviation over them. (<ITQ): more than 0.01 below ITQ.",
        "",
        f"The rule (`hashsearch.hashing.unsupervised.choose_index_method`): {why}. Its threshold was chosen on "
        "seed 100 (benchmarks/results/unsupervised-small-selection.md, its threshold table)"
        + (": this file." if set(seeds) == {100} else ", not on the seeds here.")
        + " Rows marked `rule` are the rows of the method it picks.",
        "",
        "## Summary over every folder",
        "",
        *summary(rows),
        "",
        "## flowers12 folders",
        "",
        *cell_table(rows, "flowers12"),
        "",
        "## CIFAR-10 folders",
        "",
        *cell_table(rows, "cifar10"),
        "",
        clusters_line(rows),
        "",
        "## ITQ below a size, bihalf-spectral (as it was) from it on",
        "",
        "Each threshold applied to every folder above; the folder sizes drawn are the thresholds tried (any "
        "threshold between two of them sends the same folders to ITQ).",
        "",
        *threshold_table([r for r in rows if r["method"] != RULE]),
        "",
        f"The choice: the smallest size from which bihalf-spectral ranked at least as well as ITQ on every folder "
        f"(a default must not be worse than the simple method), and at most {KEEP_FROM} (flowers12's protocol "
        "fits 480 training images, where bihalf-spectral's 0.7791 against ITQ's 0.6969 in "
        "benchmarks/results/unsupervised.md must stay): "
        + (lambda t: "none" if t is None else f"{t:,} images")(pick_threshold([r for r in rows if r["method"] != RULE]))
        + f" on these seeds; the rule's threshold is {ITQ_BELOW:,}.",
        "",
    ]
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=list(SEEDS))
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument(
        "--methods",
        choices=["rule", "all"],
        default="rule",
        help="rule: itq and bihalf-spectral as it was (what the rule picks from); all: the candidate fixes too",
    )
    parser.add_argument("--datasets", nargs="+", choices=["flowers12", "cifar10"], default=["flowers12", "cifar10"])
    parser.add_argument(
        "--rows", type=Path, default=None, help="also append every measured row to this JSON-lines file"
    )
    parser.add_argument(
        "--from-rows", type=Path, nargs="+", default=None, help="report the rows of these JSON files; fit nothing"
    )
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    if args.from_rows:
        lines = [json.loads(x) for f in args.from_rows for x in f.read_text().splitlines() if x.strip()]
        saved = [x for x in lines if "command" in x]
        rows = [x for x in lines if "method" in x]
        facts, seeds = saved[0]["facts"], sorted({r["seed"] for r in rows})
        ends = [x["seconds"] for x in lines if "seconds" in x]
        total = max(ends) if len(ends) == len(saved) else float("nan")  # nan: a run stopped before its end
        command = " ; ".join(s["command"] for s in saved)
        if len(saved) > 1:
            command += (
                " (run side by side, one process per seed), then `python benchmarks/unsupervised_small.py "
                f"--from-rows {' '.join(map(str, args.from_rows))}"
                + ("" if args.out == OUT else f" --out {args.out}")
                + "`"
            )
    else:
        data, facts = load_features()
        command = "python benchmarks/unsupervised_small.py" + "".join(
            f" {a}" for a in map(shlex.quote, sys.argv[1:] if argv is None else argv)
        )
        if args.rows:  # first the run's facts, then each row as it is measured, then the wall time
            with open(args.rows, "a") as f:
                f.write(json.dumps({"facts": facts, "command": command}) + "\n")
        methods = (ITQ, CURRENT) if args.methods == "rule" else tuple(METHODS)
        rows = measure(data, args.seeds, methods, tuple(args.datasets), args.rows)
        total = time.perf_counter() - t0
        seeds = args.seeds
        if args.rows:
            with open(args.rows, "a") as f:
                f.write(json.dumps({"seconds": total}) + "\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(report(rows, facts, command, total, seeds))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
