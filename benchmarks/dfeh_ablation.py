"""DFEH's two ablations on cifar10-1k (48 bits, head mode on frozen EfficientNet-Lite0 128 px features).

1. Regularisation weight lambda = lambda_q = lambda_b in {0, 0.1, 0.01, 0.001}.
2. Each loss term removed: no contrastive, no quantization (lambda_q = 0), no balance (lambda_b = 0).

Run: flock /tmp/hashsearch-bench.lock nice -n 5 .venv/bin/python benchmarks/dfeh_ablation.py
Writes benchmarks/results/dfeh-ablation.md (+ .json).
"""

from __future__ import annotations

from pathlib import Path

from hashsearch.backbones import create_backbone
from hashsearch.data.protocols import cifar10_root, load_protocol
from hashsearch.data.sources import open_source
from hashsearch.evaluation.report import write_results
from hashsearch.evaluation.runner import machine_description, run_methods, split_features

CONFIGS = {
    "dfeh lambda=0": {"lambda_q": 0.0, "lambda_b": 0.0},
    "dfeh lambda=0.1": {"lambda_q": 0.1, "lambda_b": 0.1},
    "dfeh lambda=0.01": {"lambda_q": 0.01, "lambda_b": 0.01},
    "dfeh lambda=0.001": {"lambda_q": 0.001, "lambda_b": 0.001},
    "dfeh without contrastive": {"use_contrastive": False},
    "dfeh without quantization": {"lambda_q": 0.0},
    "dfeh without balance": {"lambda_b": 0.0},
}
# The paper's ablation tables (CIFAR-10) are not legible in the stored text (../shared/papers), so
# no published numbers are quoted beside these rows.


def main() -> None:
    split = load_protocol("cifar10-1k", seed=0)
    feats = split_features(open_source(cifar10_root()), split, create_backbone("efficientnet-lite0", input_size=128))
    rows = []
    for label, params in CONFIGS.items():
        (row,) = run_methods(feats, ["dfeh"], [48], seed=0, params={"dfeh": params})
        row["method"] = label
        rows.append(row)
    out = Path("benchmarks/results/dfeh-ablation")
    write_results(rows, out, title="DFEH ablations on cifar10-1k, 48 bits (head mode)", notes="\n".join([
        "Command: `python benchmarks/dfeh_ablation.py`",
        f"Protocol: {split.description}",
        "Backbone: efficientnet-lite0 at 128px, frozen; DFEH trains its feature-enhancement and hash layers only.",
        f"Machine: {machine_description()}.",
    ]))
    print(f"wrote {out}.md")


if __name__ == "__main__":
    main()
