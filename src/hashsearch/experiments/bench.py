"""The job behind `hashsearch bench`: every method x bit length on a protocol, with the papers' numbers beside ours."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path

from hashsearch.backbones import Backbone
from hashsearch.data.protocols import load_protocol, protocol_data, protocol_root
from hashsearch.data.sources import open_source
from hashsearch.evaluation.published import dataset_of, published_map, tables_markdown
from hashsearch.evaluation.report import (
    machine_description,
    plot_loss_curves,
    plot_pr_curves,
    plot_results,
    plot_train_time,
    write_results,
)
from hashsearch.experiments.features import FeatureProvider
from hashsearch.experiments.jobs import trained_notes
from hashsearch.experiments.runner import check_mode, parse_method, run_methods
from hashsearch.hashing import list_hashers

#: The mAP@ALL at 48 bits that `bench` reports against on cifar10-1k (the project's goal).
GOAL_MAP_48 = 0.85
#: Where the levers that close the gap are measured (each file names the command that wrote it).
GAP_LEVERS = (
    "What closes it, measured: the input resolution (benchmarks/results/resolution.md, `python "
    "benchmarks/resolution.py`), fine-tuning the backbone with the hash loss and crop/flip "
    "augmentation (benchmarks/results/cifar10-1k-finetune.md, `hashsearch bench --mode finetune`), "
    "and a larger backbone (`--backbone efficientnet-lite2 --input-size 224`); the papers' 0.79-0.82 "
    "fine-tune a whole CNN at 224 px on a GPU."
)


#: How a report's cells quote the papers, per data set (`dataset_of`).
PAPER_NOTES = {
    "cifar10": "Cells read 'ours (paper)'. The papers' numbers are under their own protocols (GIST or "
    "raw-pixel inputs, end-to-end fine-tuned CNNs), listed below; cells at 12/24/36/48 bits "
    "quote the DFEH table where it has the method, others the RITQ paper's Table II.",
    "mnist": "Cells read 'ours (paper)'; the paper's cells are the MNIST columns of the RITQ paper's Table II "
    "(GIST-512 features for the shallow methods, 224 px raw pixels and a fine-tuned CNN for DLBH and RITQ), "
    "listed below.",
}


def gpu_description() -> str:
    """Whether training had a GPU, for a report's notes (finetune mode is meant for one)."""
    import torch

    if torch.cuda.is_available():
        return f"{torch.cuda.get_device_name(0)} available."
    return (
        "none on this machine: finetune mode ran on the CPU only where a results file says so (it is meant for a GPU)."
    )


def resolve_methods(methods: Sequence[str]) -> list[str]:
    """`all` -> every registered method (not "deep", the composition that the deep presets are
    made of); otherwise the names, checked against the registry."""
    names = list(methods)
    if names == ["all"]:
        # DHFI's comparison: its ResNet subnetwork alone at the same total bits (the pretrained
        # one alone is the 'dpsh' row).
        return [m for m in list_hashers() if m != "deep"] + ["dhfi[use=b]"]
    for m in names:
        parse_method(m)  # unknown name -> ValueError listing the registered ones
    return names


def bench(
    *,
    protocol: str,
    methods: Sequence[str],
    bits: Sequence[int],
    seed: int,
    out: Path | None,
    backbone: Backbone,
    cache_dir=None,
    batch_size: int = 64,
    command: str = "",
    mode: str = "head",
    finetune_epochs: int | None = None,
    log=print,
) -> list[dict]:
    """Run every method at every bit length; attach the published mAP as each row's "reference".

    `mode="finetune"` trains each (deep) method together with the backbone (see `run_methods`)."""
    methods = resolve_methods(methods)
    check_mode(mode)  # before the long feature pass
    t0 = time.perf_counter()
    split = load_protocol(protocol, seed=seed)
    source = open_source(protocol_root(protocol))
    log(f"{split.name}: {len(split.train)} train, {len(split.query)} queries, {len(split.database)} database images")
    provider = FeatureProvider(
        source,
        split,
        backbone,
        cache_dir=cache_dir,
        batch_size=batch_size,
        seed=seed,
        finetune_epochs=finetune_epochs,
        log=log,
    )
    provider.features(None)
    rows = run_methods(provider, methods, bits, seed=seed, mode=mode, log=log)
    dataset = dataset_of(protocol)
    for row in rows:
        ref = published_map(row["method"].removesuffix(" (finetune)"), int(row["bits"]), dataset)
        if ref is not None:
            row["reference"] = {"map": ref[0]}
            row["reference_source"] = ref[1]
    total = time.perf_counter() - t0
    if out is not None:
        out = Path(out)
        at48 = [r for r in rows if int(r["bits"]) == 48]
        goal = ""
        if at48 and protocol == "cifar10-1k":
            best = max(at48, key=lambda r: r["metrics"]["map"])
            gap = GOAL_MAP_48 - best["metrics"]["map"]
            goal = (
                f"Goal: best mAP@ALL at 48 bits >= {GOAL_MAP_48}. Best here: {best['method']} "
                f"{best['metrics']['map']:.4f}, " + ("goal met." if gap <= 0 else f"short by {gap:.4f}. " + GAP_LEVERS)
            )
        notes = "\n".join(
            [
                f"Command: `{command}`" if command else "",
                f"Protocol: {split.name} (seed {split.seed}): {split.description}",
                f"Data: {protocol_data(protocol)}",
                f"Backbone: {backbone.name} at {backbone.preprocess.input_size}px, "
                + (
                    "frozen ImageNet weights (head mode: only the hash head is trained, on cached features)."
                    if mode == "head"
                    else "ImageNet weights fine-tuned with each method's head and loss (finetune mode, crop/flip "
                    "augmentation; the fit time is the fine-tuning)."
                ),
                f"GPU: {gpu_description()}",
                f"Machine: {machine_description()}. Total wall time {total:.0f}s.",
                *trained_notes(provider),
                goal,
                "",
                PAPER_NOTES.get(dataset, "No paper among ours reports this data set: the cells are ours only."),
                "",
                tables_markdown(dataset),
            ]
        )
        write_results(rows, out, title=f"All methods on {split.name}", notes=notes)
        plot_results(rows, out.with_name(out.name + "-map.png"))
        pr_bits = 48 if 48 in bits else max(bits)
        plot_pr_curves(rows, pr_bits, out.with_name(out.name + f"-pr{pr_bits}.png"))
        plot_train_time(rows, out.with_name(out.name + "-time.png"))
        plot_loss_curves(rows, pr_bits, out.with_name(out.name + f"-loss{pr_bits}.png"))
        log(f"wrote {out}.md, {out}.json and plots; total {total:.0f}s")
    return rows
