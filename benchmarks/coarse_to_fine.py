"""Coarse-to-fine search (Lin et al.'s Hierarchical Deep Search) vs plain Hamming ranking.

On the cifar10-1k protocol (1,000 queries, 59,000-image database, CIFAR-10 (JPEG)), with
DLBHC 48-bit codes and ITQ 64-bit codes over EfficientNet-Lite0 features (128 px): precision@k
and time per query for (a) Hamming ranking, (b) coarse-to-fine (candidates within radius 2, or
the top M by Hamming distance when fewer; re-ranked by Euclidean distance of the features), and
(c) exhaustive Euclidean search over the float features, for reference.

    python benchmarks/coarse_to_fine.py          # writes benchmarks/results/coarse-to-fine.md
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from hashsearch.backbones import create_backbone
from hashsearch.data.protocols import cifar10_root, load_protocol
from hashsearch.data.sources import open_source
from hashsearch.evaluation.report import machine_description
from hashsearch.experiments import split_features
from hashsearch.hashing import create_hasher
from hashsearch.index import create_index
from hashsearch.index.coarse_to_fine import coarse_to_fine

KS = (10, 100)


def precision(ids: np.ndarray, yq: np.ndarray, yd: np.ndarray, k: int) -> float:
    return float((yd[ids[:, :k]] == yq[:, None]).mean())


def main() -> None:
    split = load_protocol("cifar10-1k")
    feats = split_features(open_source(cifar10_root()), split, create_backbone("efficientnet-lite0", input_size=128))
    Xd, yd = feats.database.features, feats.database.labels
    Xq, yq = feats.query.features, feats.query.labels
    Xd16 = Xd.astype(np.float16)
    lines = [
        "# Coarse-to-fine search vs Hamming ranking",
        "",
        "Command: `python benchmarks/coarse_to_fine.py`",
        f"Data: cifar10-1k, CIFAR-10 (JPEG): {len(yq)} queries, {len(yd)}-image database; efficientnet-lite0 128 px features (float16 stored for re-ranking).",
        f"Machine: {machine_description()}. Times are per query, all {len(yq)} queries run as one batch, one process.",
        "",
        "| codes | search | " + " | ".join(f"P@{k}" for k in KS) + " | ms / query |",
        "|---|---|" + "---:|" * (len(KS) + 1),
    ]
    kmax = max(KS)
    t = time.perf_counter()
    d2 = (Xq**2).sum(1)[:, None] - 2 * Xq @ Xd.T + (Xd**2).sum(1)[None]
    exact = np.argsort(d2, axis=1, kind="stable")[:, :kmax]
    t_exact = (time.perf_counter() - t) / len(yq) * 1e3
    for method, bits in (("dlbhc", 48), ("itq", 64)):
        hasher = create_hasher(method, n_bits=bits).fit(
            feats.train.features, feats.train.labels if create_hasher(method).supervised else None
        )
        index = create_index("flat", n_bits=bits)
        index.add(hasher.encode(Xd))
        qc = hasher.encode(Xq)
        t = time.perf_counter()
        ham = index.search(qc, kmax)
        t_ham = (time.perf_counter() - t) / len(yq) * 1e3
        row = [precision(ham.ids, yq, yd, k) for k in KS]
        lines.append(
            f"| {method} {bits} | Hamming ranking | " + " | ".join(f"{p:.4f}" for p in row) + f" | {t_ham:.2f} |"
        )
        for m in (200, 1000):
            t = time.perf_counter()
            c2f = coarse_to_fine(index, qc, Xq, lambda ids: Xd16[ids], k=kmax, radius=2, n_candidates=m)
            t_c2f = (time.perf_counter() - t) / len(yq) * 1e3
            row = [precision(c2f.ids, yq, yd, k) for k in KS]
            lines.append(
                f"| {method} {bits} | coarse-to-fine, r=2, M={m} | "
                + " | ".join(f"{p:.4f}" for p in row)
                + f" | {t_c2f:.2f} |"
            )
    row = [precision(exact, yq, yd, k) for k in KS]
    lines.append(
        "| float 1280-d | exhaustive Euclidean | " + " | ".join(f"{p:.4f}" for p in row) + f" | {t_exact:.2f} |"
    )
    out = Path(__file__).parent / "results" / "coarse-to-fine.md"
    out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
