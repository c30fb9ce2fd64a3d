"""Every deep method in finetune mode at 48 bits on cifar10-1k, beside head mode and the papers (issue 20.4).

    python benchmarks/finetune_all.py           # runs the methods whose results file is missing, then the table
    python benchmarks/finetune_all.py --redo    # runs every method again (about 90 minutes on 2 cores)
    python benchmarks/finetune_all.py --no-run  # the table from the results files at hand

Each method's row comes from its own `hashsearch bench --mode finetune --finetune-epochs 4 --protocol
cifar10-1k --bits 48 --methods M --out benchmarks/results/cifar10-1k-finetune-M` run (the command is
in that results file; DLBHC's, the first run, wrote `cifar10-1k-finetune`). Head mode is the same
method's 48-bit row of benchmarks/results/cifar10-1k.json (the frozen backbone's cached features,
`make bench-methods`); the papers' number is `hashsearch.evaluation.published.published_map`.
RITQ trains its own ResNet-32 from scratch in every mode, so it has one row, its head-mode one.
Writes benchmarks/results/cifar10-1k-finetune-all.md and a bar chart beside it (-map.png).
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
from pathlib import Path

from hashsearch.evaluation.published import published_map

RESULTS = Path(__file__).parent / "results"
BITS = 48
METHODS = ("dlbhc", "dpsh", "dsh", "dfeh", "hashnet", "csq", "dhfi")
#: DLBHC's finetune run came first and wrote the protocol's plain finetune name.
FILES = {m: f"cifar10-1k-finetune-{m}" for m in METHODS} | {"dlbhc": "cifar10-1k-finetune"}
OWN_NETWORK = ("ritq",)


def bench_command(method: str) -> list[str]:
    return [
        "hashsearch", "bench", "--mode", "finetune", "--finetune-epochs", "4", "--protocol", "cifar10-1k",
        "--methods", method, "--bits", str(BITS), "--out", str(RESULTS / FILES[method]),
    ]  # fmt: skip


def read_row(path: Path) -> dict:
    rows = [r for r in json.loads(path.read_text())["rows"] if int(r["bits"]) == BITS]
    if len(rows) != 1:
        raise SystemExit(f"{path}: expected one {BITS}-bit row, found {len(rows)}")
    return rows[0]


def notes_line(path: Path, prefix: str) -> str:
    return next((s for s in json.loads(path.read_text())["notes"].splitlines() if s.startswith(prefix)), "")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--redo", action="store_true", help="run every method again, not only the missing ones")
    ap.add_argument("--no-run", action="store_true", help="only the table, from the results files at hand")
    ap.add_argument("--out", type=Path, default=RESULTS / "cifar10-1k-finetune-all.md")
    args = ap.parse_args()

    for m in METHODS:
        if not args.no_run and (args.redo or not (RESULTS / f"{FILES[m]}.json").exists()):
            cmd = bench_command(m)
            print("$ " + shlex.join(cmd), flush=True)
            subprocess.run(cmd, check=True)

    head = {
        r["method"]: r for r in json.loads((RESULTS / "cifar10-1k.json").read_text())["rows"] if int(r["bits"]) == BITS
    }
    rows = []
    for m in (*METHODS, *OWN_NETWORK):
        done = m in FILES and (RESULTS / f"{FILES[m]}.json").exists()
        tuned = read_row(RESULTS / f"{FILES[m]}.json") if done else None
        paper = published_map(m, BITS)
        rows.append(
            {
                "method": m,
                "head": head[m]["metrics"]["map"],
                "head_s": head[m]["timings"]["fit_s"],
                "finetune": None if tuned is None else tuned["metrics"]["map"],
                "p1000": None if tuned is None else tuned["metrics"]["p@1000"],
                "finetune_min": None if tuned is None else tuned["timings"]["fit_s"] / 60,
                "paper": paper,
                "file": f"{FILES[m]}.md" if m in FILES else "cifar10-1k.md",
            }
        )

    def f(x, fmt=".4f"):
        return "" if x is None else format(x, fmt)

    lines = [
        f"# Every deep method fine-tuned with its backbone: cifar10-1k, {BITS} bits",
        "",
        "Command: `python benchmarks/finetune_all.py` (`make bench-finetune`); each finetune row is one",
        "`hashsearch bench --mode finetune --finetune-epochs 4 --protocol cifar10-1k --bits 48 --methods M`",
        "run, its command, machine and wall time in the results file named in the row. Data: CIFAR-10 (JPEG),",
        "protocol cifar10-1k (seed 0): 1,000 queries, 5,000 training images, 59,000-image database.",
        "Backbone EfficientNet-Lite0 at 128 px (ImageNet weights): head mode trains the method's head on",
        "its frozen features (30 epochs); finetune mode trains the head 30 epochs, then the head with the",
        "backbone 4 epochs (crop/flip augmentation, constant rate: bench's finetune mode = `--recipe paper`).",
        "DHFI fine-tunes both its subnetworks (the pretrained backbone, and its ResNet-32 trained from",
        "scratch first). RITQ trains its own ResNet-32 from scratch in every mode: one row.",
        "Minutes: the fine-tuning's wall time on the 2-core CPU, machine shared with other work at times",
        "(see each file's notes). The papers fine-tune larger CNNs at 224 px on GPUs, under their own",
        "protocols (mAP over the database); their numbers are quoted for scale, not as the same experiment.",
        "",
        "| method | head mAP@ALL | finetune mAP@ALL | gain | P@1000 (finetune) | paper | finetune min | results file |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        gain = None if r["finetune"] is None else r["finetune"] - r["head"]
        paper = "" if r["paper"] is None else f"{r['paper'][0]:.3f}"
        lines.append(
            f"| {r['method']} | {f(r['head'])} | {f(r['finetune'])} | {f(gain, '+.4f')} | {f(r['p1000'])} | "
            f"{paper} | {f(r['finetune_min'], '.1f')} | {r['file']} |"
        )
    sources = sorted({r["paper"][1] for r in rows if r["paper"] is not None})
    best = max((r for r in rows if r["finetune"] is not None), key=lambda r: r["finetune"])
    lines += [
        "",
        f"Papers' column: {'; '.join(sources)} (DFEH's table where it has the method, else RITQ's Table II).",
        f"Best fine-tuned here: {best['method']} {best['finetune']:.4f}. With more epochs and the `cpu` recipe",
        "(cosine schedule, EMA) HashNet reaches 0.8140: benchmarks/results/recipe.md.",
    ]
    args.out.write_text("\n".join(lines) + "\n")
    plot(rows, args.out.with_name(args.out.stem + "-map.png"))
    print(args.out.read_text())


def plot(rows: list[dict], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 4))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    x = range(len(rows))
    w = 0.27
    ax.bar([i - w for i in x], [r["head"] for r in rows], w, label="head (frozen backbone)")
    ax.bar(x, [r["finetune"] or 0 for r in rows], w, label="finetune (4 joint epochs)")
    ax.bar([i + w for i in x], [r["paper"][0] if r["paper"] else 0 for r in rows], w, label="paper")
    ax.set_xticks(list(x), [r["method"] for r in rows])
    ax.set_ylabel(f"mAP@ALL, {BITS} bits")
    ax.set_ylim(0, 1)
    ax.set_title("cifar10-1k: head vs finetune vs the papers (2-core CPU)")
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
